"""The paper's path on a GPU box in one command, with stand-ins, ending in the figures the README records.

    make gpu-check                          # python bench/gpu_check.py: the paper's size, a few real steps
    python bench/gpu_check.py --steps 6     # more steps (the first one includes warm-up)
    python bench/gpu_check.py --tiny        # the same path at toy size: what the test suite runs on a CPU

It needs no network and no downloaded weights. In a temporary Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1) it
builds stand-ins under the real repo ids: ``lucacasini/metamidipianophi3_4L`` as a random Phi-3 of the paper's size
(4 layers, hidden 512, 8 heads, vocabulary 413) with miditok's tokenizer.json, and ``facebook/audiobox-aesthetics``
as a full-size random Audiobox Aesthetics model saved as the hub holds it. Then it

1. runs ``python smart.py`` with the default constants (64 completions x 256 tokens, bf16 on a GPU, default
   RENDER_WORKERS; only the step count, the output folder and the end-of-run report are changed) and prints the
   seconds of each stage per step (generate, log-probs, decode, render, Audiobox, update), the step time and the
   peak GPU memory;
2. scores the last step's completions again with the original's serial method (decode, temp-file render with the
   whole score synthesised, the Audiobox predictor clip by clip) and with this project's reward stage, and prints
   both times, the speedup and the largest score difference;
3. prints how far opt-in bf16 Audiobox scores are from fp32 on the same clips.

It exits non-zero when anything fails or the two reward stages disagree.
"""

from __future__ import annotations

import argparse
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
from smart_utils.run_folder import read_run_config  # noqa: E402
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont  # noqa: E402

TINY = ["--BATCH_SIZE=2", "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=32"]  # --tiny: a CPU can run it
SCORE_TOLERANCE = 1e-3  # on the 1-10 scale; cuDNN/TF32 kernels differ from the CPU reference by ~1e-4


def machine() -> str:
    if not torch.cuda.is_available():
        return f"CPU only ({os.cpu_count()} cores), torch {torch.__version__}"
    name = torch.cuda.get_device_name(0)
    capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    return (f"{name} (compute {capability}, {memory:.0f} GiB) x{torch.cuda.device_count()}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores")


def pick_soundfont(requested: str | None) -> str:
    """The requested soundfont, else the default 'musescore' when it resolves here, else TimGM6mb (always there)."""
    if requested:
        return requested
    try:
        resolve_soundfont("musescore")
        return "musescore"
    except SoundfontNotFound as error:
        print(f"[gpu-check] soundfont 'musescore' unavailable ({str(error)[:120]}...); using timgm6mb")
        return "timgm6mb"


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


def stage_table(run_dir: Path, timings: dict) -> tuple[list[str], float]:
    """Per-step seconds of every stage, and the median step time over the steps after the first."""
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
    return lines, statistics.median(steady)


def reward_stage_comparison(
    run_dir: Path, soundfont_path: str
) -> tuple[list[str], float, np.ndarray, list[np.ndarray]]:
    """The last step's completions through the original serial method and through this project's reward stage:
    report lines, the largest score difference, this project's scores and audio."""
    from audiobox_aesthetics.infer import initialize_predictor

    from processors import AES_AXES, AudioBoxAesRewardProcessor, MidiTokToSymusicProcessor, TinySoundfontSynthProcessor
    from smart_utils.render_pool import default_render_workers
    from smart_utils.tokenizer import load_remi

    last = max(int(folder.name) for folder in (run_dir / "rl_logs").iterdir())
    records = [{**row, "normalized_rewards": {}, "errors": []}
               for row in pq.read_table(run_dir / "rl_logs" / str(last) / "logs.parquet").to_pylist()]
    config = read_run_config(run_dir)
    rate, seconds = config["SAMPLE_RATE"], config["MAX_AUDIO_DURATION"]
    remi = load_remi(POLICY_HUB_ID)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    original_renderer = OriginalTinySoundfontRenderer(soundfont_path, rate, seconds)
    reference = initialize_predictor()  # the original processor's predictor: the hub checkpoint, clip by clip
    t_decode_a, decoded_a = timed(lambda: original_decode(remi, fresh(records)), 1)
    t_render_a, rendered_a = timed(lambda: original_render(original_renderer, decoded_a), 1)

    def score_reference():
        rows = [reference.forward([{"path": torch.from_numpy(r["audio"]).float(), "sample_rate": rate}])[0]
                for r in rendered_a]
        sync()
        return np.array([[row[axis] for axis in AES_AXES] for row in rows])

    reference.forward([{"path": torch.zeros(2, rate), "sample_rate": rate}])  # warm-up outside the timing
    t_score_a, expected = timed(score_reference, 1)

    decoder = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=config["MAX_BEATS"])
    workers = config["RENDER_WORKERS"] or default_render_workers(len(records))
    synth = TinySoundfontSynthProcessor(soundfont_path, rate, seconds, num_workers=workers)
    scorer = AudioBoxAesRewardProcessor(None).scorer
    scorer.batched_scores([np.zeros((2, rate), np.float32)] * 2, rate)  # warm-up outside the timing
    t_decode_b, decoded_b = timed(lambda: decoder(fresh(records)), 1)
    t_render_b, rendered_b = timed(lambda: synth(decoded_b), 1)
    synth.close()
    audios = [r["audio"] for r in rendered_b]

    def score_ours():
        scores = scorer.batched_scores(audios, rate)
        sync()
        return scores

    t_score_b, got = timed(score_ours, 1)
    audio_diff = max(float(np.abs(a["audio"] - b["audio"]).max()) for a, b in zip(rendered_a, rendered_b))
    score_diff = float(np.abs(got - expected).max())
    total_a, total_b = t_decode_a + t_render_a + t_score_a, t_decode_b + t_render_b + t_score_b
    lines = [
        f"reward stage on step {last}'s {len(records)} completions | original (serial) | this project "
        f"({workers} render workers, batched Audiobox on {scorer.predictor.device})",
        f"  decode   {t_decode_a:8.2f} s | {t_decode_b:8.2f} s",
        f"  render   {t_render_a:8.2f} s | {t_render_b:8.2f} s   ({t_render_a / t_render_b:.2f}x)",
        f"  Audiobox {t_score_a:8.2f} s | {t_score_b:8.2f} s   ({t_score_a / t_score_b:.2f}x)",
        f"  total    {total_a:8.2f} s | {total_b:8.2f} s   reward-stage speedup: {total_a / total_b:.2f}x",
        f"  max |audio diff| {audio_diff:.1e}, max |score diff| {score_diff:.2e} (1-10 scale, fp32)",
    ]
    return lines, score_diff, got, audios


def bf16_difference(fp32_scores: np.ndarray, audios: list[np.ndarray], rate: int) -> str:
    from processors import AudioBoxAesRewardProcessor

    half = AudioBoxAesRewardProcessor(None, bf16=True).scorer
    diff = np.abs(half.batched_scores(audios, rate) - fp32_scores)
    return (f"bf16 Audiobox (opt-in) vs fp32 on the same {len(audios)} clips: max |diff| {diff.max():.3f}, "
            f"mean {diff.mean():.3f} (1-10 scale; rewards are score/10)")


def main(args: argparse.Namespace, workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        print(f"[gpu-check] machine: {machine()}")
        soundfont = pick_soundfont(args.soundfont)
        start = time.perf_counter()
        size = {"hidden_size": 32, "layers": 1} if args.tiny else PAPER_POLICY_SIZE
        commits = fill_paper_hub_cache(workdir / "hf", workdir / "standins", **size)
        print(f"[gpu-check] stand-ins in {workdir / 'hf'}: {POLICY_HUB_ID} ({size}), {AUDIOBOX_HUB_ID} "
              f"(full size, random) in {time.perf_counter() - start:.0f} s; commits {commits}", flush=True)
        run_dir, timings = run_smart(workdir, dict(os.environ), args.steps, soundfont, args.tiny)
        lines, step_time = stage_table(run_dir, timings)
        print("\n".join(lines))
        peak = timings["peak_bytes"]
        memory = (f"{peak / 2**30:.2f} GiB allocated, {timings['reserved_bytes'] / 2**30:.2f} GiB reserved"
                  if peak is not None else "n/a (no GPU)")
        print(f"step time: {step_time:.2f} s (median after step 1)\npeak GPU memory: {memory}")
        record = json.loads((run_dir / "run_record.json").read_text())
        print(f"run: {record['compute']}")
        comparison, score_diff, scores, audios = reward_stage_comparison(run_dir, record["soundfont"]["path"])
        print("\n".join(comparison))
        if not score_diff <= SCORE_TOLERANCE:
            print(f"MISMATCH: the reward stages disagree by more than {SCORE_TOLERANCE}")
            ok = False
        sample_rate = read_run_config(run_dir)["SAMPLE_RATE"]
        print(bf16_difference(scores, audios, sample_rate))
    except Exception:  # any failure is the check's answer: print it and exit non-zero
        traceback.print_exc()
        ok = False
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"gpu-check: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(ARGS, WORKDIR))
