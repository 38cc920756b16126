"""Benchmark (not a test): the listening-study loop on simulated listeners, study -> fit -> tune, with its figures.

    python bench/listeners_loop.py                          # 14 prompts x 2 systems, 12 listeners, 30 GRPO steps
    python bench/listeners_loop.py --steps 0                # build, listen and fit only
    python bench/listeners_loop.py --out artefacts/listeners_loop --prompts 15 --participants 12 --steps 40

What it runs, each step the command (or the server) a real study uses:

1. ``python listen.py build base=models/piano-tiny contrast=<folder> --soundfont timgm6mb``: the shipped model
   answers the prompts, and a folder of hand-made pieces (``write_contrast_pieces``: 16 beats each, note count and
   share of out-of-scale notes drawn independently) gives the study clips that differ clearly in the planted
   features, as a tuned model's clips would differ from the base model's.
2. Simulated listeners take the study through the real study server (``listening.server.StudyServer``, over HTTP
   on 127.0.0.1): consent, then every trial in the order the server drew for them, repeats included. Their
   ratings follow a planted rule (``planted_quality``): the clip's standardised note count plus its standardised
   scale consistency, plus the listener's own offset and noise, rounded and clipped into 1..10.
3. ``python listen.py fit STUDY --out MODEL``: the cross-validated Spearman and RMSE against the predict-the-mean
   baseline, the permutation p-value and the strongest features are printed from the saved reward_model.json.
4. ``python smart.py config/local.py --REWARD_WEIGHTS="{'listeners': 1.0}" --LISTENERS_MODEL=MODEL
   --NUM_TRAIN_STEPS=N``: a short offline GRPO run toward the fitted reward, with its end-of-run evaluation;
   the planted features (and the fitted reward) base vs tuned are read from the run's eval/features.csv.

The helpers (``write_contrast_pieces``, ``planted_quality``, ``simulate_listeners``) are shared with
tests/test_listen.py, which runs the same loop small.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python bench/x.py`: the repository root on the path instead of bench/
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402
import symusic  # noqa: E402

PLANTED = ("note_count", "scale_consistency")  # what the simulated listeners like: busier, more tonal pieces
RATING_MIN, RATING_MAX = 1, 10
TIMEOUT = 60  # seconds per request to the study server (bounds a hung server)
TPQ = 24
C_MAJOR = (0, 2, 4, 5, 7, 9, 11)
OUT_OF_SCALE = (1, 3, 6, 8, 10)


# ---------------------------------------------------------------------------------------------------------------
# The study's second system: pieces that differ in the planted features


def write_contrast_pieces(folder: Path, count: int, seed: int = 0, beats: int = 16) -> Path:
    """``count`` one-track piano pieces of ``beats`` quarter notes at 120 BPM (8 s for 16 beats), every beat
    sounding (so they pass the study's no-empty-beat rule), each with its own number of notes per beat (1-4) and
    its own share of notes outside C major (0-60 %), drawn independently; pitch register, range and velocity vary
    at random too, so that they are not confounded with the planted features."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k in range(count):
        per_beat = int(rng.integers(1, 5))
        chromatic = float(rng.uniform(0.0, 0.6))
        low, span = int(rng.integers(48, 64)), int(rng.integers(7, 25))
        velocity = int(rng.integers(55, 105))
        score = symusic.Score(TPQ)
        track = symusic.Track("piano", 0, False)
        step = TPQ // per_beat
        for n in range(beats * per_beat):
            classes = OUT_OF_SCALE if rng.random() < chromatic else C_MAJOR
            candidates = [p for p in range(low, low + span + 1) if p % 12 in classes]
            pitch = int(rng.choice(candidates)) if candidates else low
            track.notes.append(symusic.Note(n * step, step, pitch, int(np.clip(velocity + rng.integers(-8, 9), 1,
                                                                                 127))))
        score.tracks.append(track)
        score.dump_midi(str(folder / f"piece{k:03d}.mid"))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The planted rule and the simulated listeners


def planted_quality(features_by_clip: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """clip id -> the planted quality: the sum of the clip's z-scores (over the study's clips) of PLANTED."""
    clips = sorted(features_by_clip)
    quality = np.zeros(len(clips))
    for name in PLANTED:
        values = np.array([float(features_by_clip[clip][name]) for clip in clips])
        quality += (values - values.mean()) / (values.std() or 1.0)
    return dict(zip(clips, quality.tolist()))


def clip_keys(study: Path) -> dict[str, tuple[int, int]]:
    """clip id -> (system number, prompt index): names that do not change when the same study is rebuilt (clip ids
    are random), so that the simulated ratings are the same for the same pieces."""
    manifest = json.loads((study / "manifest.json").read_text())
    systems = list(manifest["systems"])
    return {c["id"]: (systems.index(c["system"]), int(c["prompt_index"])) for c in manifest["clips"]}


def listener_rating(quality: float | None, offset: float, rng: np.random.Generator, gain: float = 1.0,
                    noise: float = 0.8) -> int:
    """One answer: 5.5 + gain * quality + the listener's offset + noise, rounded and clipped into 1..10; without a
    quality (``None``) the answer has nothing to do with the clip (offset and a wider noise only)."""
    signal = 0.0 if quality is None else gain * quality
    spread = noise if quality is not None else 2 * noise
    return int(np.clip(round(5.5 + signal + offset + rng.normal(0.0, spread)), RATING_MIN, RATING_MAX))


def trial_on_page(html: str) -> tuple[int, str] | None:
    """(position, clip id) of the trial a participant's page shows, or None on the thank-you page."""
    found = re.search(r'name="position" value="(\d+)".*?name="clip" value="([0-9a-f]+)"', html, re.S)
    return (int(found[1]), found[2]) if found else None


def take_part(url: str, rate: Callable[[str, int], int]) -> tuple[str, list[tuple[int, str, int]]]:
    """One simulated participant through the study page at ``url``: consent, then every trial the page shows,
    answered with ``rate(clip id, how many times this clip was heard before)``. Returns the participant id and
    the (position, clip, rating) answers the server accepted (a refused answer raises)."""
    answers: list[tuple[int, str, int]] = []
    heard: dict[str, int] = {}
    with requests.Session() as session:
        start = session.post(url + "/start", data={"consent": "yes"}, allow_redirects=False, timeout=TIMEOUT)
        if start.status_code != 303:
            raise RuntimeError(f"consent refused: HTTP {start.status_code}")
        page = url + start.headers["Location"]
        while (trial := trial_on_page(session.get(page, timeout=TIMEOUT).text)) is not None:
            position, clip = trial
            rating = rate(clip, heard.get(clip, 0))
            heard[clip] = heard.get(clip, 0) + 1
            sent = session.post(page + "/answer", data={"position": position, "clip": clip, "rating": rating},
                                allow_redirects=False, timeout=TIMEOUT)
            if sent.status_code != 303:
                raise RuntimeError(f"answer {position} refused: HTTP {sent.status_code}")
            answers.append((position, clip, rating))
    return page.rsplit("/", 1)[1], answers


def simulate_listeners(study: Path, participants: int, quality: Mapping[str, float] | None, seed: int = 0,
                       repeats: int = 2, gain: float = 1.0, noise: float = 0.8, offset_spread: float = 1.0
                       ) -> dict[str, list[tuple[int, str, int]]]:
    """``participants`` simulated listeners take the study one after another through the real study server (over
    HTTP on 127.0.0.1, ``repeats`` repeated clips each). Listener p has an offset drawn from N(0, offset_spread)
    and rates with ``listener_rating``; the noise of each answer is seeded by (seed, p, the clip's system and
    prompt, which hearing it is), so the ratings do not depend on the random trial order the server draws.
    ``quality`` None gives ratings unrelated to the clips. Returns participant id -> accepted answers."""
    from listening.server import StudyServer

    keys = clip_keys(study)
    given: dict[str, list[tuple[int, str, int]]] = {}
    with StudyServer(study, repeats=repeats, threads=2) as server:
        for p in range(participants):
            offset = float(np.random.default_rng((seed, p)).normal(0.0, offset_spread))

            def rate(clip: str, hearing: int, p: int = p, offset: float = offset) -> int:
                rng = np.random.default_rng((seed, p, *keys[clip], hearing))
                return listener_rating(None if quality is None else quality[clip], offset, rng, gain, noise)

            participant, answers = take_part(server.url, rate)
            given[participant] = answers
    return given


# ---------------------------------------------------------------------------------------------------------------
# The loop


def run(command: list[str], log: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command from the repository root, its output to ``log``; returns it and its wall seconds."""
    print("[loop] $ " + " ".join(command), flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(f"[loop] {command[0]} failed (exit {result.returncode}) after {seconds:.0f} s; log "
                         f"{log}:\n{tail}")
    return result, seconds


def features_base_vs_tuned(features_csv: Path, names: list[str]) -> list[tuple[str, float, float]]:
    """(feature, base mean, tuned mean) from an evaluation's features.csv."""
    import pandas as pd

    table = pd.read_csv(features_csv)
    means = table.groupby("system")[[n for n in names if n in table.columns]].mean()
    return [(name, float(means.loc["base", name]), float(means.loc["tuned", name])) for name in names
            if name in means.columns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="working folder (default: a new temporary folder, kept)")
    parser.add_argument("--prompts", type=int, default=14, help="prompts each system answers in the study")
    parser.add_argument("--participants", type=int, default=12, help="simulated listeners")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens the model samples per study piece")
    parser.add_argument("--max-tries", type=int, default=3, help="sampling rounds for the study's stimulus rule")
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps toward the fitted reward (0: no tuning)")
    parser.add_argument("--eval-samples", type=int, default=16, help="pieces per model in the end-of-run report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the contrast pieces and the listeners")
    args = parser.parse_args()

    from listening.fit import load_model, strongest_features

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="listeners_loop_"))
    out.mkdir(parents=True, exist_ok=True)
    study, model_dir, run_dir = out / "study", out / "listeners_model", out / "run"
    timings: dict[str, float] = {}
    started = time.perf_counter()

    contrast = write_contrast_pieces(out / "contrast_midi", args.prompts, seed=args.seed)
    _, timings["build"] = run(
        ["listen.py", "build", "base=models/piano-tiny", f"contrast={contrast}", "--prompts", str(args.prompts),
         "--max-new-tokens", str(args.max_new_tokens), "--max-tries", str(args.max_tries),
         "--soundfont", "timgm6mb", "--device", "cpu", "--out", str(study)], out / "build.log", timeout=3600)

    from listening.fit import study_features

    quality = planted_quality(study_features(study))
    start = time.perf_counter()
    answers = simulate_listeners(study, args.participants, quality, seed=args.seed)
    timings["listeners"] = time.perf_counter() - start
    total = sum(len(a) for a in answers.values())
    print(f"[loop] {len(answers)} simulated listeners gave {total} ratings through the study server")

    _, timings["fit"] = run(["listen.py", "fit", str(study), "--out", str(model_dir)], out / "fit.log", timeout=1800)
    model = load_model(model_dir)
    cv, counts = model.cross_validation, model.counts
    print(f"[loop] fit: {counts.ratings} ratings, {counts.participants} listeners, {counts.clips} clips, "
          f"{counts.prompts} prompts; reliable={model.reliable}")
    print(f"[loop] cross-validated over prompts ({cv.folds} folds): Spearman {cv.spearman:.3f} (baseline "
          f"{cv.baseline_spearman:.3f}, permutation p = {cv.permutation_p:.3f}), RMSE {cv.rmse:.3f} vs baseline "
          f"{cv.baseline_rmse:.3f} rating points")
    strongest = strongest_features(model, 6)
    print("[loop] strongest features: " + ", ".join(f"{name} {value:+.3f}" for name, value in strongest))

    if args.steps > 0:
        _, timings["tune"] = run(
            ["smart.py", "config/local.py", "--REWARD_WEIGHTS={'listeners': 1.0}", f"--LISTENERS_MODEL={model_dir}",
             f"--NUM_TRAIN_STEPS={args.steps}", f"--EVAL_SAMPLES={args.eval_samples}", f"--OUTPUT_DIR={run_dir}",
             f"--SAVE_STEPS={args.steps}"], out / "smart.log", timeout=7200)
        names = [*PLANTED, "reward_note_density", "reward_scale_consistency", "reward_listeners"]
        print(f"[loop] base vs tuned after {args.steps} steps ({args.eval_samples} pieces each, "
              f"{run_dir / 'eval' / 'features.csv'}):")
        for name, base, tuned in features_base_vs_tuned(run_dir / "eval" / "features.csv", names):
            change = "" if not math.isfinite(base) or base == 0 else f" ({100 * (tuned - base) / abs(base):+.1f} %)"
            print(f"[loop]   {name:26s} base {base:8.3f}   tuned {tuned:8.3f}{change}")
    timings["total"] = time.perf_counter() - started
    print("[loop] wall time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timings.items()))
    print(f"[loop] everything in {out}")


if __name__ == "__main__":
    main()
