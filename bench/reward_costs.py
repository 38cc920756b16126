"""Benchmark (not a test): what each stage and each reward processor costs per clip on this machine.

    python bench/reward_costs.py                      # 64 completions of the shipped model; CLAP at larger_clap's size
    python bench/reward_costs.py --clap-size tiny     # the tests' tiny CLAP stand-in (seconds, not representative)
    python bench/reward_costs.py --clips 16

The batch is bench/reward_pipeline.py's: 64 seeded completions x 256 tokens from ``models/piano-tiny`` (8 prompts x
8 generations, so ``group_diversity`` sees 8 GRPO groups), decoded, cropped to 100 beats and rendered as smart.py
does (10 s at 48 kHz with TimGM6mb, in-process). Then every processor class that writes a reward
(``processors.processor_classes``: those whose ``reward_names`` are not empty) is built once from smart.py's
constants, as smart.py builds it (``processors.build_processor``), and timed on copies of the same records, its
model already loaded (loading is a one-off cost), and every reward it writes is checked to be in [0, 1] for every
clip (the exit status is 1 otherwise).

Model-based rewards run random weights of the real architecture, which cost what the real weights cost: Audiobox
at full size (bench/standins.py), and CLAP with the audio encoder of laion's "larger" checkpoints (HTSAT-base:
128-wide patch embedding, stages of depth 2, 2, 12, 2, as we read the published configuration; the text side,
used once per run for the prompts, is small). The ``listeners`` reward runs a stand-in model over every feature a
fit may use (bench/standins.py). The last column is the milliseconds per clip.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python bench/x.py`: the repository root on the path instead of bench/
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.reward_pipeline import MAX_AUDIO_DURATION, MAX_BEATS, SAMPLE_RATE, make_completions  # noqa: E402
from bench.standins import make_audiobox_checkpoint, make_listeners_model, make_tiny_clap  # noqa: E402
from configurator import smart_constants  # noqa: E402
from processors import (  # noqa: E402
    MidiTokToSymusicProcessor,
    Processor,
    TinySoundfontSynthProcessor,
    build_processor,
    processor_classes,
)
from smart_utils.records import Record  # noqa: E402
from smart_utils.soundfont_sources import resolve_soundfont  # noqa: E402

# laion/larger_clap_*'s audio encoder (HTSAT-base), as we read its published config; the weights are random.
LARGER_CLAP_AUDIO = dict(depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32], patch_embeds_hidden_size=128,
                         hidden_size=1024, projection_hidden_size=768, enable_fusion=False)


def copies(records: list[Record]) -> list[Record]:
    """Records as the reward stage receives them: shared scores and audio, fresh reward fields."""
    fresh = []
    for record in records:
        clone = copy.copy(record)
        clone["normalized_rewards"], clone["errors"] = {}, list(record["errors"])
        fresh.append(clone)
    return fresh


def timed(processor: Processor, records: list[Record]) -> float:
    """Seconds for one call of ``processor`` on the batch (after one warm-up call on one GRPO group of 8 records)."""
    processor(copies(records[:8]))
    start = time.perf_counter()
    processor(records)
    return time.perf_counter() - start


def out_of_range(records: list[Record], names: list[str]) -> list[str]:
    """The rewards among ``names`` that some record lacks or has outside [0, 1] (the bench then exits with 1)."""
    bad = []
    for name in names:
        values = [record["normalized_rewards"].get(name) for record in records]
        if not all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            bad.append(name)
    return bad


def reward_names_by_class(constants: dict) -> dict[type[Processor], list[str]]:
    """Each processor class that writes a reward under ``constants`` and the rewards it writes, in definition
    order (how REWARD_WEIGHTS finds them)."""
    return {cls: list(cls.reward_names(constants)) for cls in processor_classes() if cls.reward_names(constants)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="completions timed (a multiple of 8)")
    parser.add_argument("--clap-size", choices=("larger", "tiny"), default="larger")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("[costs] sampling the completions, building the stand-ins ...", flush=True)
        model_name, remi, records, _ = make_completions(workdir)
        records = records[: args.clips]
        clap = make_tiny_clap(workdir / "clap", audio_config=LARGER_CLAP_AUDIO if args.clap_size == "larger" else None)
        constants = {
            **smart_constants(), "AUDIOBOX_CHECKPOINT": str(make_audiobox_checkpoint(workdir / "audiobox.pt")),
            "SAMPLE_RATE": SAMPLE_RATE, "MAX_AUDIO_DURATION": MAX_AUDIO_DURATION, "CLAP_MODEL": str(clap),
            "CLAP_CLF_MODEL": str(clap), "PAM_MODEL": str(clap),
            "LISTENERS_MODEL": str(make_listeners_model(workdir / "listeners")),
        }
        rows, bad = [], []
        decode = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=MAX_BEATS)
        rows.append(("decode (miditok -> symusic)", "MidiTokToSymusicProcessor", timed(decode, records)))
        render = TinySoundfontSynthProcessor(resolve_soundfont("timgm6mb"), SAMPLE_RATE, MAX_AUDIO_DURATION)
        rows.append(("render (TinySoundFont, 1 process)", "TinySoundfontSynthProcessor", timed(render, records)))
        for cls, names in reward_names_by_class(constants).items():
            print(f"[costs] {cls.__name__} ...", flush=True)
            processor = build_processor(cls, constants)
            shown = ", ".join(names) if len(names) <= 4 else f"{len(names)} names: {', '.join(names[:2])}, ..."
            batch = copies(records)
            rows.append((shown, cls.__name__, timed(processor, batch)))
            bad += out_of_range(batch, names)
    print(f"\n{len(records)} clips of {model_name}, {MAX_AUDIO_DURATION} s at {SAMPLE_RATE} Hz, "
          f"{torch.get_num_threads()} torch threads, CLAP: {args.clap_size}\n")
    print(f"| {'stage / reward':40} | {'processor':42} | {'s / batch':>9} | {'ms / clip':>9} |")
    print(f"|{'-' * 42}|{'-' * 44}|{'-' * 11}|{'-' * 11}|")
    for shown, cls_name, seconds in rows:
        print(f"| {shown:40} | {cls_name:42} | {seconds:9.3f} | {1000 * seconds / len(records):9.2f} |")
    print(f"\nrewards outside [0, 1] or missing: {bad or 'none'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
