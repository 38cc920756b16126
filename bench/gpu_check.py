"""The paper's path on a GPU box in one command, with stand-ins, ending in the figures the README records.

    make gpu-check                          # python bench/gpu_check.py: the paper's size, a few real steps
    python bench/gpu_check.py --steps 6     # more steps (the first one includes warm-up)
    python bench/gpu_check.py --tiny        # the same path at toy size: what the test suite runs on a CPU
    make gpu-check WHEELHOUSE=wheelhouse PYTHON=python3   # an offline box with its own torch (bench/wheelhouse.py)

It needs no network and no downloaded weights. It first runs smart.py's machine checks (``preflight.gpu_problems``: a
torch build the GPU cannot use, no C compiler for Triton) and stops there if one fails. In a temporary Hugging Face
cache (HF_HOME, HF_HUB_OFFLINE=1) it builds stand-ins under the real repo ids: ``lucacasini/metamidipianophi3_4L``
as a random Phi-3 of the paper's size (4 layers, hidden 512, 8 heads, vocabulary 413) with miditok's tokenizer.json,
and ``facebook/audiobox-aesthetics`` as a full-size random Audiobox Aesthetics model saved as the hub holds it. Then it

1. runs ``python smart.py`` with the default constants (64 completions x 256 tokens, bf16 on a GPU, default
   RENDER_WORKERS; only the step count, the output folder and the end-of-run report are changed) and prints the
   seconds of each stage per step (generate, log-probs, decode, render, Audiobox, update), the step time and the
   peak GPU memory;
2. scores the last step's completions again with the original's serial method (decode, temp-file render with the
   whole score synthesised, the Audiobox predictor clip by clip) and with this project's reward stage, and prints
   both times, the speedup and the largest score difference; both score in full fp32 (``devices.exact_fp32``: no
   TF32), so that a difference is the project's, not the GPU's default precision;
3. prints how far opt-in bf16 Audiobox scores are from fp32 on the same clips, and on a GPU, for information, how
   far the reference predictor's scores move with the backends' default precision (TF32 convolutions).

Every figure is printed when it is measured and written at once to a JSON file (``--json``; replaced atomically
after each figure), so a check stopped at a time limit leaves all it had measured; ``status`` is ``running`` there
until the check ends with ``ok`` or ``FAILED``. The figures name the soundfont they were rendered with (name, path,
SHA-256) and the seconds each part took. It exits non-zero when anything fails or the two reward stages disagree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python bench/x.py`, which puts bench/ on the path: the repository root instead
    sys.path.insert(0, str(ROOT))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps to run and time (default %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a CPU runs it in a few minutes)")
    parser.add_argument("--soundfont", default=None, help="default: musescore when it resolves here, else timgm6mb")
    parser.add_argument("--keep", default=None, help="keep the stand-ins and the run in this folder")
    parser.add_argument("--json", type=Path, default=None,
                        help="the figures' JSON file (default: gpu_check.json in --keep's folder, else "
                             "artefacts/runs/gpu-check-<time>.json)")
    arguments = parser.parse_args()
    if arguments.steps < 2:
        parser.error("--steps must be >= 2 (the first step includes warm-up)")
    return arguments


if __name__ == "__main__":
    ARGS = parse_arguments()
    WORKDIR = Path(ARGS.keep or tempfile.mkdtemp(prefix="gpu-check-"))
    # huggingface_hub reads these when it is first imported (below), in this process and in smart.py's
    os.environ.update(HF_HOME=str(WORKDIR / "hf"), HF_HUB_OFFLINE="1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from bench.original import OriginalTinySoundfontRenderer  # noqa: E402
from bench.reward_pipeline import fresh, original_decode, original_render, run_timed_smart, timed  # noqa: E402
from bench.standins import AUDIOBOX_HUB_ID, PAPER_POLICY_SIZE, POLICY_HUB_ID, fill_paper_hub_cache  # noqa: E402
from smart_utils.devices import exact_fp32  # noqa: E402
from smart_utils.files import file_digest  # noqa: E402
from smart_utils.preflight import gpu_problems  # noqa: E402
from smart_utils.run_folder import read_run_config  # noqa: E402
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont  # noqa: E402

TINY = ["--BATCH_SIZE=2", "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=32"]  # --tiny: a CPU can run it
SCORE_TOLERANCE = 1e-3  # on the 1-10 scale, both sides in full fp32


class Figures:
    """The check's figures: each printed when it is measured and written at once to a JSON file, through a
    temporary file that replaces it (a check killed at any moment leaves a whole file with what it had measured)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"status": "running", "seconds": {}}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, key: str, value, line: str | None = None) -> None:
        self.data[key] = value
        if line is not None:
            print(line, flush=True)
        self.write()

    def took(self, part: str, seconds: float) -> None:
        self.data["seconds"][part] = round(seconds, 3)
        print(f"[gpu-check] {part}: {seconds:.1f} s", flush=True)
        self.write()

    def write(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(temporary, self.path)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> str:
    if not torch.cuda.is_available():
        return f"CPU only ({os.cpu_count()} cores), torch {torch.__version__}"
    name = torch.cuda.get_device_name(0)
    capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    return (f"{name} (compute {capability}, {memory:.0f} GiB) x{torch.cuda.device_count()}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores")


def pick_soundfont(requested: str | None) -> tuple[str, str]:
    """The requested soundfont, else the default 'musescore' when it resolves here, else TimGM6mb (pretty_midi's,
    which the requirements and the wheelhouse always bring): its name and file."""
    if requested:
        return requested, resolve_soundfont(requested)
    try:
        return "musescore", resolve_soundfont("musescore")
    except SoundfontNotFound as error:
        print(f"[gpu-check] soundfont 'musescore' unavailable ({str(error)[:120]}...); using timgm6mb")
        return "timgm6mb", resolve_soundfont("timgm6mb")


def run_smart(workdir: Path, env: dict[str, str], steps: int, soundfont: str, tiny: bool) -> tuple[Path, dict]:
    """smart.py with its defaults (and the stand-ins in the HF cache); returns the run folder and the timings."""
    run_dir = workdir / "run"
    args = [f"--NUM_TRAIN_STEPS={steps}", f"--OUTPUT_DIR={run_dir}", "--SAVE_STEPS=1000000", "--EVAL_SAMPLES=0",
            f"--SOUNDFONT={soundfont}", *(TINY if tiny else [])]
    print(f"[gpu-check] python smart.py {' '.join(args)}", flush=True)
    out = workdir / "timings.json"
    result = run_timed_smart(args, out, env)
    if result.returncode != 0:
        raise RuntimeError(f"smart.py exited with {result.returncode} (its output is above)")
    return run_dir, json.loads(out.read_text())


def stage_table(run_dir: Path, timings: dict) -> tuple[list[str], dict[str, list[float]], float]:
    """Per-step seconds of every stage (as lines and by stage), and the median step time over the steps after the
    first."""
    starts = timings["steps"][:-1]
    intervals = [b - a for a, b in zip(starts, starts[1:])]
    events: dict[str, list[float]] = {}
    for name, seconds in timings["events"]:
        events.setdefault(name.split(".", 1)[-1], []).append(seconds)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    per_processor = [entry for entry in history if "seconds/TinySoundfontSynthProcessor" in entry]

    def per_step(values: list[float], per: int = 1) -> list[float]:
        return [sum(values[i * per:(i + 1) * per]) for i in range(len(intervals))]

    prepare = per_step(events.get("_prepare_inputs", []))
    rows = {
        "generate": per_step(events.get("transformers.generate", [])),
        "log-probs": per_step(events.get("_get_per_token_logps_and_entropies", []), 2),
        "decode": [entry["seconds/MidiTokToSymusicProcessor"] for entry in per_processor][: len(intervals)],
        "render": [entry["seconds/TinySoundfontSynthProcessor"] for entry in per_processor][: len(intervals)],
        "Audiobox": [entry.get("seconds/AudioBoxAesRewardProcessor", 0.0) for entry in per_processor][: len(intervals)],
        "update": [total - p for total, p in zip(intervals, prepare)],
        "step": intervals,
    }
    lines = ["seconds per step (step 1 includes warm-up):",
             "  " + f"{'stage':<10}" + "".join(f"{f'step {i + 1}':>9}" for i in range(len(intervals)))]
    lines += ["  " + f"{name:<10}" + "".join(f"{v:9.2f}" for v in values) for name, values in rows.items()]
    lines.append("  (log-probs: reference + policy forward; update: loss, backward and optimizer, i.e. the step "
                 "minus generation and scoring)")
    steady = intervals[1:] or intervals
    return lines, rows, statistics.median(steady)


def reference_scores(predictor, audios: list[np.ndarray], rate: int, exact: bool = True) -> np.ndarray:
    """The reference predictor's scores, one clip per forward as the original scored them, in full fp32 like the
    project's scorer (``exact=False``: the backends' default precision, TF32 convolutions on a recent GPU)."""
    from smart_utils.features import AES_AXES

    with exact_fp32() if exact else contextlib.nullcontext():
        rows = [predictor.forward([{"path": torch.from_numpy(audio).float(), "sample_rate": rate}])[0]
                for audio in audios]
        synchronize()
    return np.array([[row[axis] for axis in AES_AXES] for row in rows])


def project_scores(scorer, audios: list[np.ndarray], rate: int) -> np.ndarray:
    """This project's batched Audiobox scores (in full fp32: ``batched_scores`` runs under ``exact_fp32``)."""
    scores = scorer.batched_scores(audios, rate)
    synchronize()
    return scores


def reward_stage_comparison(
    run_dir: Path, soundfont_path: str, figures: Figures
) -> tuple[float, np.ndarray, list[np.ndarray], object, list[np.ndarray], np.ndarray]:
    """The last step's completions through the original serial method and through this project's reward stage,
    each time added to ``figures`` when measured: the largest score difference, this project's scores and audio,
    the reference predictor with the original's audio and its scores."""
    from audiobox_aesthetics.infer import initialize_predictor

    from processors import AudioBoxAesRewardProcessor, MidiTokToSymusicProcessor, TinySoundfontSynthProcessor
    from smart_utils.render_pool import default_render_workers
    from smart_utils.tokenizer import load_remi

    last = max(int(folder.name) for folder in (run_dir / "rl_logs").iterdir())
    records = [{**row, "normalized_rewards": {}, "errors": []}
               for row in pq.read_table(run_dir / "rl_logs" / str(last) / "logs.parquet").to_pylist()]
    config = read_run_config(run_dir)
    rate, seconds = config["SAMPLE_RATE"], config["MAX_AUDIO_DURATION"]
    remi = load_remi(POLICY_HUB_ID)
    stage: dict = {"step": last, "completions": len(records), "original": {}, "project": {}}

    def measured(side: str, part: str, seconds: float) -> None:
        stage[side][part] = seconds
        figures.add("reward_stage", stage, f"[gpu-check] reward stage, {side}: {part} {seconds:.2f} s")

    original_renderer = OriginalTinySoundfontRenderer(soundfont_path, rate, seconds)
    reference = initialize_predictor()  # the original processor's predictor: the hub checkpoint, clip by clip
    t_decode_a, decoded_a = timed(lambda: original_decode(remi, fresh(records)), 1)
    measured("original", "decode", t_decode_a)
    t_render_a, rendered_a = timed(lambda: original_render(original_renderer, decoded_a), 1)
    measured("original", "render", t_render_a)
    original_audios = [r["audio"] for r in rendered_a]
    reference_scores(reference, [np.zeros((2, rate), np.float32)], rate)  # warm-up outside the timing
    t_score_a, expected = timed(lambda: reference_scores(reference, original_audios, rate), 1)
    measured("original", "Audiobox", t_score_a)

    decoder = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=config["MAX_BEATS"])
    workers = config["RENDER_WORKERS"] or default_render_workers(len(records))
    synth = TinySoundfontSynthProcessor(soundfont_path, rate, seconds, num_workers=workers)
    scorer = AudioBoxAesRewardProcessor(None).scorer
    stage |= {"render_workers": workers, "audiobox_device": str(scorer.predictor.device)}
    scorer.batched_scores([np.zeros((2, rate), np.float32)] * 2, rate)  # warm-up outside the timing
    t_decode_b, decoded_b = timed(lambda: decoder(fresh(records)), 1)
    measured("project", "decode", t_decode_b)
    t_render_b, rendered_b = timed(lambda: synth(decoded_b), 1)
    measured("project", "render", t_render_b)
    synth.close()
    audios = [r["audio"] for r in rendered_b]
    t_score_b, got = timed(lambda: project_scores(scorer, audios, rate), 1)
    measured("project", "Audiobox", t_score_b)

    audio_diff = max(float(np.abs(a - b).max()) for a, b in zip(original_audios, audios))
    score_diff = float(np.abs(got - expected).max())
    total_a, total_b = t_decode_a + t_render_a + t_score_a, t_decode_b + t_render_b + t_score_b
    stage |= {"speedup": total_a / total_b, "max_audio_diff": audio_diff, "max_score_diff": score_diff}
    figures.add("reward_stage", stage, "\n".join([
        f"reward stage on step {last}'s {len(records)} completions | original (serial) | this project "
        f"({workers} render workers, batched Audiobox on {scorer.predictor.device})",
        f"  decode   {t_decode_a:8.2f} s | {t_decode_b:8.2f} s",
        f"  render   {t_render_a:8.2f} s | {t_render_b:8.2f} s   ({t_render_a / t_render_b:.2f}x)",
        f"  Audiobox {t_score_a:8.2f} s | {t_score_b:8.2f} s   ({t_score_a / t_score_b:.2f}x)",
        f"  total    {total_a:8.2f} s | {total_b:8.2f} s   reward-stage speedup: {total_a / total_b:.2f}x",
        f"  max |audio diff| {audio_diff:.1e}, max |score diff| {score_diff:.2e} (1-10 scale, both in full fp32)",
    ]))
    return score_diff, got, audios, reference, original_audios, expected


def bf16_difference(fp32_scores: np.ndarray, audios: list[np.ndarray], rate: int, figures: Figures) -> None:
    from processors import AudioBoxAesRewardProcessor

    half = AudioBoxAesRewardProcessor(None, bf16=True).scorer
    diff = np.abs(half.batched_scores(audios, rate) - fp32_scores)
    figures.add("bf16_vs_fp32", {"max_diff": float(diff.max()), "mean_diff": float(diff.mean())},
                f"bf16 Audiobox (opt-in) vs fp32 on the same {len(audios)} clips: max |diff| {diff.max():.3f}, "
                f"mean {diff.mean():.3f} (1-10 scale; rewards are score/10)")


def tf32_difference(reference, audios: list[np.ndarray], rate: int, fp32_scores: np.ndarray, figures: Figures) -> None:
    """For information, never a failure: the reference predictor's scores with the backends' default precision."""
    diff = np.abs(reference_scores(reference, audios, rate, exact=False) - fp32_scores)
    figures.add("info_tf32_vs_fp32", {"max_diff": float(diff.max()), "mean_diff": float(diff.mean())},
                f"(information, not a check) reference Audiobox with the default precision (TF32 convolutions) vs "
                f"full fp32: max |diff| {diff.max():.2e}, mean {diff.mean():.2e} (1-10 scale)")


def json_path(args: argparse.Namespace) -> Path:
    if args.json is not None:
        return args.json
    if args.keep is not None:
        return Path(args.keep) / "gpu_check.json"
    return ROOT / "artefacts" / "runs" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}.json"


def check(args: argparse.Namespace, workdir: Path, figures: Figures, problems: list[str]) -> None:
    """Every part of the check in turn, each figure added when measured; what fails is appended to ``problems``."""
    described = machine()
    figures.add("machine", described, f"[gpu-check] machine: {described}")
    start = time.perf_counter()
    problems += gpu_problems()
    figures.add("machine_problems", list(problems))
    figures.took("machine checks", time.perf_counter() - start)
    if problems:
        print("[gpu-check] this machine cannot run the check:\n  " + "\n  ".join(problems), flush=True)
        return
    name, path = pick_soundfont(args.soundfont)
    digest = file_digest(path)
    figures.add("soundfont", {"name": name, "path": path, "sha256": digest},
                f"[gpu-check] soundfont of every figure: {name}, {path} (SHA-256 {digest[:16]}...)")
    start = time.perf_counter()
    size = {"hidden_size": 32, "layers": 1} if args.tiny else PAPER_POLICY_SIZE
    commits = fill_paper_hub_cache(workdir / "hf", workdir / "standins", **size)
    print(f"[gpu-check] stand-ins in {workdir / 'hf'}: {POLICY_HUB_ID} ({size}), {AUDIOBOX_HUB_ID} "
          f"(full size, random); commits {commits}", flush=True)
    figures.took("stand-ins", time.perf_counter() - start)
    start = time.perf_counter()
    run_dir, timings = run_smart(workdir, dict(os.environ), args.steps, name, args.tiny)
    figures.took(f"smart.py, {args.steps} steps", time.perf_counter() - start)
    lines, stages, step_time = stage_table(run_dir, timings)
    figures.add("stages", stages, "\n".join(lines))
    figures.add("step_seconds", step_time, f"step time: {step_time:.2f} s (median after step 1)")
    peak = timings["peak_bytes"]
    memory = (f"{peak / 2**30:.2f} GiB allocated, {timings['reserved_bytes'] / 2**30:.2f} GiB reserved"
              if peak is not None else "n/a (no GPU)")
    figures.add("peak_gpu_memory", {"allocated_bytes": peak, "reserved_bytes": timings["reserved_bytes"]},
                f"peak GPU memory: {memory}")
    record = json.loads((run_dir / "run_record.json").read_text())
    figures.add("run", record["compute"], f"run: {record['compute']}")
    sample_rate = read_run_config(run_dir)["SAMPLE_RATE"]
    start = time.perf_counter()
    score_diff, scores, audios, reference, original_audios, expected = reward_stage_comparison(
        run_dir, record["soundfont"]["path"], figures)
    figures.took("reward-stage comparison", time.perf_counter() - start)
    if not score_diff <= SCORE_TOLERANCE:
        problems.append(f"MISMATCH: the reward stages disagree by {score_diff:.2e}, more than {SCORE_TOLERANCE}")
        print(problems[-1], flush=True)
    start = time.perf_counter()
    bf16_difference(scores, audios, sample_rate, figures)
    figures.took("bf16 comparison", time.perf_counter() - start)
    if torch.cuda.is_available():
        start = time.perf_counter()
        tf32_difference(reference, original_audios, sample_rate, expected, figures)
        figures.took("TF32 comparison (information)", time.perf_counter() - start)


def main(args: argparse.Namespace, workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    figures = Figures(json_path(args))
    print(f"[gpu-check] figures: {figures.path}", flush=True)
    problems: list[str] = []
    try:
        check(args, workdir, figures, problems)
    except Exception as error:  # any failure is the check's answer: print it and exit non-zero
        traceback.print_exc()
        problems.append(f"{type(error).__name__}: {error}")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    figures.add("problems", problems)
    figures.add("status", "FAILED" if problems else "ok")
    print(f"[gpu-check] figures: {figures.path}")
    print(f"gpu-check: {'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(ARGS, WORKDIR))
