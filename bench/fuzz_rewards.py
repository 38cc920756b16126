"""Fuzz the reward chain with token sequences a model could emit, and count what goes wrong.

    python bench/fuzz_rewards.py --n 10000            # the default chain: 48 kHz, 10 s audio, MAX_BEATS 100
    python bench/fuzz_rewards.py --n 500 --seconds 2  # a quick look
    python bench/fuzz_rewards.py --n 500 --clap standin   # also the CLAP rewards, on a random stand-in CLAP

Every sequence goes through the real chain smart.py builds for weight-free rewards: MidiTokToSymusicProcessor ->
TinySoundfontSynthProcessor (soundfont "timgm6mb") -> ScaleConsistencyReward, NoteDensityRewardProcessor,
FilledBeatsRewardProcessor, AudioActivityRewardProcessor (and with ``--clap`` the CLAP rewards clap, clap_clf and
pam_avg), each built from smart.py's constants as smart.py builds them (``processors.build_reward_processors``),
combined by a RewardManager, in batches of 64 (one reward step each, with its parquet log, MIDI and audio written
to a temporary folder). The sequences mix six generators
(``GENERATORS``): uniform random ids including ids outside the vocabulary, grammar-plausible REMI with
pathological values, special tokens (PAD/BOS/EOS/...) in the middle, chords of up to 10,000 notes, notes
followed by up to 1000 silent beats, and empty sequences.

A failure is an exception escaping the reward function, a reward that is not a finite number in [0, 1], or a
parquet log that does not hold the step's rewards. The last line is ``failures: N``; failing sequences are saved
to ``--failures-file`` for replay. Also printed: seconds, the slowest step, and how often each logged reason
(the parquet ``errors`` column, numbers replaced by N) occurred per generator.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import miditok
import pyarrow.parquet as pq

if not __package__:  # run as `python bench/x.py`, which puts bench/ on the path: the repository root instead
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smart
from configurator import smart_constants
from processors import MidiTokToSymusicProcessor, TinySoundfontSynthProcessor, build_reward_processors
from reward_manager import RewardManager
from smart_utils.soundfont_sources import resolve_soundfont
from smart_utils.tokenizer import default_remi

WEIGHTS = {"scale_consistency": 1.0, "note_density": 1.0, "filled_beats": 1.0, "audio_activity": 1.0}
CLAP_WEIGHTS = {"clap": 1.0, "clap_clf": 1.0, "pam_avg": 1.0}  # added by --clap
PROMPT = ["Bar_None", "TimeSig_4/4", "Position_0", "Tempo_120.0"]
MAX_CHORD = 10_000
MAX_SILENT_BEATS = 1000


def reward_chain(
    output_dir: Path, sample_rate: int = smart.SAMPLE_RATE, max_audio_seconds: float = smart.MAX_AUDIO_DURATION,
    max_beats: int = smart.MAX_BEATS, clap_model: str | None = None,
) -> tuple[miditok.MusicTokenizer, RewardManager]:
    """The project's tokenizer and a RewardManager over the weight-free rewards, as smart.py would build it, and
    the CLAP rewards too when ``clap_model`` (a folder or hub id, used for all three) is given."""
    remi = default_remi()
    weights = WEIGHTS if clap_model is None else {**WEIGHTS, **CLAP_WEIGHTS}
    models = {} if clap_model is None else dict(CLAP_MODEL=clap_model, CLAP_CLF_MODEL=clap_model, PAM_MODEL=clap_model)
    constants = {**smart_constants(), "MAX_AUDIO_DURATION": max_audio_seconds, "SAMPLE_RATE": sample_rate,
                 "MAX_BEATS": max_beats, **models}
    manager = RewardManager(
        processors=[
            MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=max_beats),
            TinySoundfontSynthProcessor(resolve_soundfont("timgm6mb"), sample_rate, max_audio_seconds),
            *build_reward_processors(list(weights), constants),
        ],
        reward_weights=weights,
        output_dir=output_dir,
        audio_save_interval=1_000_000,  # WAVs of the first step only: 10 s clips are 1.9 MB each
    )
    return remi, manager


def _of_kind(remi: miditok.MusicTokenizer, kind: str) -> list[int]:
    return [i for token, i in remi.vocab.items() if token.startswith(kind + "_")]


def uniform_ids(rng: random.Random, remi: miditok.MusicTokenizer) -> list[int]:
    """Uniform ids over the vocabulary and a margin around it (negative and too-large ids included)."""
    return [rng.randint(-3, len(remi) + 30) for _ in range(rng.randint(0, 512))]


def plausible_remi(rng: random.Random, remi: miditok.MusicTokenizer) -> list[int]:
    """REMI-shaped events with pathological values: extreme tempi, positions going backwards, odd meters."""
    kinds = {kind: _of_kind(remi, kind) for kind in ("Position", "Pitch", "Velocity", "Duration", "Tempo", "TimeSig")}
    extreme = {kind: [ids[0], ids[-1]] for kind, ids in kinds.items()}
    ids: list[int] = []
    for _ in range(rng.randint(1, 200)):
        pool = extreme if rng.random() < 0.5 else kinds
        event = rng.choice(("bar", "position", "note", "note", "note", "tempo", "timesig"))
        if event == "bar":
            ids.append(remi.vocab["Bar_None"])
        elif event == "note":
            ids += [rng.choice(pool["Pitch"]), rng.choice(pool["Velocity"]), rng.choice(pool["Duration"])]
        else:
            ids.append(rng.choice(pool[{"position": "Position", "tempo": "Tempo", "timesig": "TimeSig"}[event]]))
    return ids


def specials_in_the_middle(rng: random.Random, remi: miditok.MusicTokenizer) -> list[int]:
    """Plausible REMI with PAD/BOS/EOS and the other special tokens sprinkled anywhere, runs of them included."""
    ids = plausible_remi(rng, remi)
    specials = [i for token, i in remi.vocab.items() if token.endswith("_None") and token != "Bar_None"]
    for _ in range(rng.randint(1, 20)):
        ids[rng.randint(0, len(ids)) : rng.randint(0, len(ids))] = [rng.choice(specials)] * rng.randint(1, 5)
    return ids


def huge_chord(rng: random.Random, remi: miditok.MusicTokenizer) -> list[int]:
    """Up to 10,000 simultaneous notes (often exactly 10,000), one pitch or many, the longest duration."""
    size = MAX_CHORD if rng.random() < 0.3 else rng.randint(100, MAX_CHORD)
    pitches = _of_kind(remi, "Pitch")
    pitch = rng.choice(pitches)
    note = [remi.vocab["Velocity_127"] if "Velocity_127" in remi.vocab else _of_kind(remi, "Velocity")[-1],
            _of_kind(remi, "Duration")[-1]]
    ids = [remi.vocab["Position_0"]]
    for _ in range(size):
        ids += [pitch if rng.random() < 0.5 else rng.choice(pitches), *note]
    return ids


def long_silence(rng: random.Random, remi: miditok.MusicTokenizer) -> list[int]:
    """A note held as long as the vocabulary allows, then up to 1000 beats of empty bars, then maybe another note.
    (The longest Duration token is 4 beats, so this is the token-level form of a 1000-beat note.)"""
    note = [remi.vocab["Position_0"], rng.choice(_of_kind(remi, "Pitch")), _of_kind(remi, "Velocity")[-1],
            _of_kind(remi, "Duration")[-1]]
    ids = note + [remi.vocab["Bar_None"]] * rng.randint(1, MAX_SILENT_BEATS // 4)
    return ids + note if rng.random() < 0.5 else ids


def empty(rng: random.Random, remi: miditok.MusicTokenizer) -> list[int]:
    """Nothing at all (an immediate EOS is stripped by TRL, so the completion is empty)."""
    return []


Generator = Callable[[random.Random, miditok.MusicTokenizer], list[int]]
GENERATORS: dict[str, tuple[Generator, float]] = {  # name -> (generator, share of the sequences)
    "uniform_ids": (uniform_ids, 0.30),
    "plausible_remi": (plausible_remi, 0.30),
    "specials_in_the_middle": (specials_in_the_middle, 0.15),
    "huge_chord": (huge_chord, 0.07),
    "long_silence": (long_silence, 0.13),
    "empty": (empty, 0.05),
}


def reason_of(error: str) -> str:
    """An error message with its numbers replaced, so that messages of one kind count together."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "N", error)


def is_valid_reward(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def run_batch(manager: RewardManager, remi: miditok.MusicTokenizer, batch: list[list[int]], rng: random.Random
              ) -> tuple[list[float] | None, str | None]:
    """One reward step: rewards, or None and the escaped exception's description."""
    prompt_ids = [[remi.vocab[t] for t in PROMPT] if rng.random() < 0.5 else [] for _ in batch]
    try:
        rewards = manager(prompts=[""] * len(batch), completion_ids=batch, prompt_ids=prompt_ids,
                          log_metric=lambda name, value: None)
    except Exception as error:  # exactly what the bench is looking for
        return None, f"{type(error).__name__}: {error}"
    return rewards, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="sequences to run")
    parser.add_argument("--batch", type=int, default=64, help="sequences per reward step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=smart.MAX_AUDIO_DURATION, help="MAX_AUDIO_DURATION")
    parser.add_argument("--sample-rate", type=int, default=smart.SAMPLE_RATE)
    parser.add_argument("--failures-file", default="fuzz_failures.json", help="where failing sequences are saved")
    parser.add_argument("--clap", metavar="MODEL", help="also the CLAP rewards, with this CLAP model: a folder, a "
                        "hub id, or 'standin' (a random tiny CLAP built here, bench/standins.py)")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    names = list(GENERATORS)
    shares = [GENERATORS[name][1] for name in names]
    failures: list[dict] = []
    reasons: dict[str, Counter] = defaultdict(Counter)
    kinds: Counter = Counter()
    slowest = (0.0, -1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz_rewards_") as output_dir:
        clap = args.clap
        if clap == "standin":
            from bench.standins import make_tiny_clap

            clap = str(make_tiny_clap(Path(output_dir) / "clap_standin"))
        remi, manager = reward_chain(Path(output_dir), args.sample_rate, args.seconds, clap_model=clap)
        done = 0
        while done < args.n:
            batch_kinds = rng.choices(names, shares, k=min(args.batch, args.n - done))
            batch = [GENERATORS[kind][0](rng, remi) for kind in batch_kinds]
            step = manager.global_reward_step
            step_start = time.perf_counter()
            rewards, escaped = run_batch(manager, remi, batch, rng)
            slowest = max(slowest, (time.perf_counter() - step_start, step))
            kinds.update(batch_kinds)
            if escaped is not None:
                failures += [{"kind": k, "ids": ids, "why": escaped} for k, ids in zip(batch_kinds, batch)]
                manager.global_reward_step += 1
            else:
                rows = pq.read_table(Path(output_dir) / "rl_logs" / str(step) / "logs.parquet").to_pylist()
                logged = [row["reward"] for row in rows]
                for kind, ids, reward, row in zip(batch_kinds, batch, rewards, rows):
                    if not is_valid_reward(reward):
                        failures.append({"kind": kind, "ids": ids, "why": f"reward {reward!r}"})
                    for error in filter(None, row["errors"].split("; ")):
                        reasons[kind][reason_of(error)] += 1
                if logged != rewards:
                    failures.append({"kind": "batch", "ids": batch, "why": "parquet rewards differ from returned"})
            done += len(batch)
            print(f"[fuzz] {done}/{args.n} sequences, {time.perf_counter() - start:.0f} s, "
                  f"failures {len(failures)}", flush=True)
        manager.wait_for_audio()  # its WAV writer must finish before the directory goes

    seconds = time.perf_counter() - start
    print(f"\n{args.n} sequences in {seconds:.0f} s ({1000 * seconds / args.n:.1f} ms each, "
          f"{args.seconds:g} s audio at {args.sample_rate} Hz); slowest step {slowest[0]:.1f} s (step {slowest[1]})")
    print("sequences per generator: " + ", ".join(f"{k} {kinds[k]}" for k in names))
    for kind in names:
        for reason, count in reasons[kind].most_common():
            print(f"  {kind:24s} {count:6d}  {reason}")
    if failures:
        Path(args.failures_file).write_text(json.dumps(failures))
        print(f"failing sequences saved to {args.failures_file}")
    print(f"failures: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
