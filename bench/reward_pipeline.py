"""Benchmark (not a test) of SMART's reward stage: the original method vs this project's pipeline, same inputs.

    python bench/reward_pipeline.py                        # all figures for this machine (a few minutes on a CPU)
    python bench/reward_pipeline.py --audiobox-clips 64    # score the whole batch with Audiobox (GPU box)
    python bench/reward_pipeline.py --e2e-steps 0          # skip the end-to-end GRPO timing
    python bench/reward_pipeline.py --soundfont musescore --audiobox-checkpoint checkpoint.pt \
        --e2e-paper-size-policy --e2e-override SOUNDFONT=musescore    # a GPU box: the paper's step, 64 x 256

One fixed, seeded batch of 64 completions x 256 tokens (8 procedural prompts with random tempi x 8 generations,
smart.py's sampling settings) comes from the shipped model ``models/piano-tiny`` (a tiny random Phi-3 when it is
absent). In one process, on identical inputs, it then times

  (a) the original erl-j/SMART method: decode, then render serially through a temp file with the 4 s flush and
      the whole cropped score synthesised before the cut to 10 s (bench/original.py);
  (b) the project's pipeline as smart.py runs it: ``MidiTokToSymusicProcessor`` and
      ``TinySoundfontSynthProcessor`` with ``RENDER_WORKERS`` processes (default: the available cores), and the
      same with 1 worker (in-process: avoided work only, no parallelism);

checks the audio and every weight-free reward agree, times the render stage again with the same scores re-timed to
fixed tempi (the avoided work is the audio past 10 s, so it grows as the tempo falls), times the Audiobox stage
(the reference predictor vs the batched forward; a random-weight checkpoint when no real one is given), then times
whole GRPO steps of the offline preset (config/local.py) and ends with ``speedup: X.XX`` = (a) / (b) over decode +
render.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python bench/x.py`, which puts bench/ on the path: the repository root instead
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import smart  # noqa: E402
from bench.original import OriginalTinySoundfontRenderer  # noqa: E402
from processors import (  # noqa: E402
    AudioActivityRewardProcessor,
    AudioBoxAesRewardProcessor,
    FilledBeatsRewardProcessor,
    MidiTokToSymusicProcessor,
    NoteDensityRewardProcessor,
    ScaleConsistencyReward,
    TinySoundfontSynthProcessor,
)
from smart_utils.features import AES_AXES, score_seconds  # noqa: E402
from smart_utils.prompts import build_prompts, tokens_of_kind  # noqa: E402
from smart_utils.records import Record, completion_record, crop_score  # noqa: E402
from smart_utils.render_pool import available_cores, default_render_workers  # noqa: E402
from smart_utils.soundfont_sources import resolve_soundfont  # noqa: E402
from smart_utils.tokenizer import load_tokenizers  # noqa: E402

# smart.py's defaults (the paper's run): 64 completions per step, 256 tokens, 100 beats, 10 s at 48 kHz.
SEED = 0
PROMPT_SOURCE = "procedural"  # Bar, TimeSig, Position, random Tempo, a starting note
NUM_GENERATIONS = 8
BATCH_SIZE = 64
MAX_COMPLETION_LENGTH = 256
TEMPERATURE, TOP_K, TOP_P = 1.0, 50, 1.0
MAX_BEATS = 100
SAMPLE_RATE = smart.SAMPLE_RATE
MAX_AUDIO_DURATION = smart.MAX_AUDIO_DURATION
SHIPPED_MODEL = ROOT / "models" / "piano-tiny"
LOCAL_PRESET = ROOT / "config" / "local.py"


def load_policy(workdir: Path) -> tuple[str, str, torch.nn.Module]:
    """The shipped model, or a tiny random Phi-3 (same vocabulary) when it is absent."""
    from transformers import AutoModelForCausalLM

    if (SHIPPED_MODEL / "config.json").is_file():
        path, name = SHIPPED_MODEL, "models/piano-tiny"
    else:
        from bench.standins import make_tiny_policy

        path = make_tiny_policy(workdir / "policy", hidden_size=64, layers=2)
        name = "a tiny random Phi-3 (no models/piano-tiny)"
    return str(path), name, AutoModelForCausalLM.from_pretrained(path).eval()


def make_completions(workdir: Path) -> tuple[str, object, list[dict], float]:
    """64 seeded completions as RewardManager's records: prompt + completion ids, cut after the first EOS."""
    path, name, model = load_policy(workdir)
    remi, bridge = load_tokenizers(path)
    prompts = build_prompts(PROMPT_SOURCE, remi, BATCH_SIZE // NUM_GENERATIONS, SEED)
    prompts = [p for p in prompts for _ in range(NUM_GENERATIONS)]
    torch.manual_seed(SEED)
    batch = bridge(prompts, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **batch, do_sample=True, max_new_tokens=MAX_COMPLETION_LENGTH, temperature=TEMPERATURE, top_k=TOP_K,
            top_p=TOP_P, pad_token_id=bridge.pad_token_id, eos_token_id=bridge.eos_token_id,
        )
    seconds = time.perf_counter() - start
    records = []
    width = batch["input_ids"].shape[1]
    for i, (ids, mask, completion) in enumerate(zip(batch["input_ids"], batch["attention_mask"], output[:, width:])):
        completion = completion.tolist()
        if bridge.eos_token_id in completion:
            completion = completion[: completion.index(bridge.eos_token_id) + 1]
        records.append(completion_record(i, prompts[i], ids[mask.bool()].tolist(), completion))
    return name, remi, records, seconds


def fresh(records: list[Record]) -> list[Record]:
    """New records with only the inputs (as RewardManager builds them), so every timed run starts equal."""
    def prompt_ids(record: Record) -> list[int]:
        return record["prompt_and_completion"][: len(record["prompt_and_completion"]) - len(record["completion"])]

    return [completion_record(r["idx"], r["prompt"], prompt_ids(r), r["completion"]) for r in records]


def original_decode(remi, records: list[dict]) -> list[dict]:
    """The original MidiTokToSymusicProcessor: tokens, miditok decode, crop to MAX_BEATS, duration."""
    for record in records:
        ids = record["prompt_and_completion"]
        record["prompt_and_completion_tokens"] = remi._ids_to_tokens(ids)
        score = crop_score(remi(torch.tensor(ids)[None, ...]), MAX_BEATS)
        record["sm"] = score
        record["sm_duration"] = score_seconds(score)
    return records


def original_render(renderer: OriginalTinySoundfontRenderer, records: list[dict]) -> list[dict]:
    """The original TinySoundfontSynthProcessor loop: one score after another through a temp file."""
    for record in records:
        record["audio"] = np.asarray(renderer.render(record["sm"], record["sm_duration"]), dtype=np.float32)
        record["sample_rate"] = SAMPLE_RATE
        record["audio_duration"] = record["audio"].shape[1] / SAMPLE_RATE
    return records


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` runs of ``function()``, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def export_seconds(records: list[dict], workdir: Path) -> tuple[float, float, float]:
    """RewardManager.export_records: seconds the trainer waits on a WAV step and on another step, and the
    seconds the background thread then takes to write the WAVs."""
    from reward_manager import RewardManager

    manager = RewardManager([], {"audio_activity": 1.0}, workdir / "export", audio_save_interval=2)
    rows = [{**r, "reward": r["normalized_rewards"]["audio_activity"], "reward_step": 0} for r in records]
    seconds = []
    for step in (0, 1):
        manager.global_reward_step = step
        start = time.perf_counter()
        manager.export_records(rows)
        seconds.append(time.perf_counter() - start)
        if step == 0:
            start = time.perf_counter()
            manager.wait_for_audio()
            background = seconds[0] + time.perf_counter() - start
    return seconds[0], seconds[1], background


def retimed(records: list[dict], bpm: float) -> list[dict]:
    """The decoded records with every score set to one tempo: same notes and beats, another length in seconds."""
    import symusic

    out = []
    for record in records:
        score = record["sm"].copy()
        score.tempos = [symusic.Tempo(0, qpm=bpm, ttype=score.ttype)]
        out.append({**record, "sm": score, "sm_duration": score_seconds(score)})
    return out


def tempo_sweep(records: list[dict], original: OriginalTinySoundfontRenderer,
                in_process: TinySoundfontSynthProcessor, tempo_tokens: list[str], repeats: int) -> list[str]:
    """Avoided-work speedup (in-process render vs the original) for the same scores at fixed tempi.

    The saving is the audio past MAX_AUDIO_DURATION, so it depends on how long the scores last: with ~20 beats
    per 256 tokens only slow tempi make them much longer than 10 s. Also prints the audio-seconds ratio expected
    over the prompt generator's tempi (the 32 tempo tokens, drawn uniformly), for these scores' beat counts.
    """
    lines = [f"avoided work by tempo (these scores re-timed to one tempo; 1 worker vs the original, median of "
             f"{repeats}):"]
    for bpm in (40, 60, 80, 120, 200):
        batch = retimed(records, bpm)
        durations = np.array([r["sm_duration"] for r in batch])
        t_a, a = timed(lambda batch=batch: original_render(original, [dict(r) for r in batch]), repeats)
        t_b, b = timed(lambda batch=batch: in_process([dict(r) for r in batch]), repeats)
        diff = max(float(np.abs(x["audio"] - y["audio"]).max()) for x, y in zip(a, b))
        lines.append(f"  {bpm:3d} BPM: median {np.median(durations):5.1f} s, audio-seconds ratio "
                     f"{durations.sum() / np.minimum(durations, MAX_AUDIO_DURATION).sum():4.2f}x, render "
                     f"{t_a:6.2f} s -> {t_b:5.2f} s = {t_a / t_b:4.2f}x, max |audio diff| {diff:.1e}")
    beats = np.array([r["sm"].end() / r["sm"].ticks_per_quarter for r in records])
    tempi = np.array([float(token.split("_")[1]) for token in tempo_tokens])
    seconds = 60 * beats[:, None] / tempi[None, :]
    lines.append(f"  expected audio-seconds ratio over the prompts' tempi ({tempi.min():.0f}-{tempi.max():.0f} BPM, "
                 f"uniform): {seconds.sum() / np.minimum(seconds, MAX_AUDIO_DURATION).sum():.2f}x")
    return lines


def weight_free_rewards(records: list[dict]) -> list[dict]:
    for processor in (ScaleConsistencyReward(), NoteDensityRewardProcessor(), FilledBeatsRewardProcessor(),
                      AudioActivityRewardProcessor(MAX_AUDIO_DURATION)):
        processor(records)
    return records


def random_audiobox_checkpoint(workdir: Path) -> str:
    path = workdir / "audiobox.pt"
    if not path.exists():
        from bench.standins import make_audiobox_checkpoint

        make_audiobox_checkpoint(path)
    return str(path)


def audiobox_stage(
    records: list[dict], checkpoint: str | None, workdir: Path, clips: int, bf16: bool
) -> tuple[list[str], float]:
    """Reference predictor (as the original processor calls it) vs the batched path, on the same clips."""
    from audiobox_aesthetics.infer import initialize_predictor

    note = "checkpoint " + checkpoint if checkpoint else "a random-weight checkpoint (no real one given)"
    checkpoint = checkpoint or random_audiobox_checkpoint(workdir)
    subset = [r for r in records][:clips]
    inputs = [{"path": torch.from_numpy(r["audio"]).float(), "sample_rate": r["sample_rate"]} for r in subset]
    reference = initialize_predictor(ckpt=checkpoint)
    ours = AudioBoxAesRewardProcessor(checkpoint).scorer
    device = str(ours.predictor.device)
    if device.startswith("cuda"):  # warm-up (cuDNN autotune, allocator) for both, outside the timings
        reference.forward(inputs[:2])
        ours.batched_scores([r["audio"] for r in subset[:2]], SAMPLE_RATE)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_reference():
        rows = reference.forward(inputs)
        sync()
        return np.array([[row[axis] for axis in AES_AXES] for row in rows])

    def run_ours():
        scores = ours.batched_scores([r["audio"] for r in subset], SAMPLE_RATE)
        sync()
        return scores

    t_ref, expected = timed(run_reference, 1)
    t_ours, got = timed(run_ours, 1)
    score_diff = float(np.abs(got - expected).max())
    lines = [
        f"audiobox ({len(subset)} clips, {note}, on {device}): reference predictor {t_ref:.2f} s, "
        f"batched {t_ours:.2f} s ({t_ref / t_ours:.2f}x), max |score diff| {score_diff:.2e} (fp32)"
    ]
    if bf16:
        del reference
        half = AudioBoxAesRewardProcessor(checkpoint, bf16=True).scorer
        t_half, got_half = timed(lambda: half.batched_scores([r["audio"] for r in subset], SAMPLE_RATE), 1)
        diff = np.abs(got_half - expected)
        lines.append(f"audiobox bf16 (opt-in): {t_half:.2f} s, score diff vs fp32 max {diff.max():.2e}, "
                     f"mean {diff.mean():.2e} (1-10 scale; rewards are /10)")
    return lines, score_diff


# smart.py run in a subprocess that records TRL's profiling events, each training step's start (after a CUDA sync,
# so that the GPU's queued work counts in its step) and the peak GPU memory; bench/gpu_check.py uses it too.
DRIVER = r"""
import json, os, runpy, sys, time
import torch, trl
from trl.extras import profiling
events, steps = [], []
profiling.ProfilingContext._log_metrics = lambda self, seconds: events.append((self.name, seconds))
step = trl.GRPOTrainer.training_step
def timed_step(self, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    steps.append(time.perf_counter())
    return step(self, *args, **kwargs)
trl.GRPOTrainer.training_step = timed_step
sys.argv = ["smart.py", *json.loads(os.environ["TIMED_SMART_ARGS"])]
try:
    runpy.run_path("smart.py", run_name="__main__")
finally:
    steps.append(time.perf_counter())
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    reserved = torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None
    with open(os.environ["TIMED_SMART_OUT"], "w") as out:
        json.dump({"events": events, "steps": steps, "peak_bytes": peak, "reserved_bytes": reserved}, out)
"""


def run_timed_smart(args: list[str], out: Path, env: dict[str, str], **options) -> subprocess.CompletedProcess:
    """``python smart.py ARGS`` through DRIVER, its timings written to ``out`` (JSON); ``options`` go to
    ``subprocess.run``."""
    env = {**env, "TIMED_SMART_ARGS": json.dumps(args), "TIMED_SMART_OUT": str(out)}
    return subprocess.run([sys.executable, "-c", DRIVER], cwd=ROOT, env=env, text=True, **options)


def grpo_steps(workdir: Path, steps: int, workers: int | None, preset: str | None, overrides: list[str]) -> str:
    """Seconds per GRPO step of a smart.py run with few steps: the offline preset by default."""
    if preset:
        args, what = [preset], preset
    elif preset is None and LOCAL_PRESET.is_file():
        args, what = [str(LOCAL_PRESET.relative_to(ROOT))], "config/local.py"
    elif overrides:
        args, what = [], "smart.py defaults"
    else:  # the preset is not written yet: small settings with the weight-free rewards
        model = SHIPPED_MODEL if (SHIPPED_MODEL / "config.json").is_file() else load_policy(workdir)[0]
        args = [f"--BASE_MODEL_PATH={model}", "--SOUNDFONT=timgm6mb", "--BATCH_SIZE=16", "--MAX_COMPLETION_LENGTH=128",
                "--REWARD_WEIGHTS={'audio_activity': 1.0, 'note_density': 1.0, 'scale_consistency': 1.0}"]
        what = "small settings (no config/local.py yet)"
    out_dir = workdir / f"run-{workers}"
    args += [f"--NUM_TRAIN_STEPS={steps}", f"--OUTPUT_DIR={out_dir}", "--SAVE_STEPS=100000", "--EVAL_SAMPLES=0"]
    if workers is not None:
        args.append(f"--RENDER_WORKERS={workers}")
    args += [f"--{override}" for override in overrides]
    what += "".join(f" --{override}" for override in overrides)
    start = time.perf_counter()
    result = run_timed_smart(args, workdir / f"steps-{workers}.json", dict(os.environ), capture_output=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        return f"GRPO steps ({what}): smart.py failed:\n{result.stderr[-3000:]}"
    data = json.loads((workdir / f"steps-{workers}.json").read_text())
    starts = data["steps"][:-1]  # the last mark is the end of the run (after saving the model)
    per_step_intervals = [b - a for a, b in zip(starts, starts[1:])]  # from one step's start to the next's
    if not per_step_intervals:
        return f"GRPO steps ({what}): need at least 2 steps to time one"
    steady = per_step_intervals[1:] or per_step_intervals
    events: dict[str, list[float]] = {}
    for name, seconds in data["events"]:
        events.setdefault(name.split(".", 1)[-1], []).append(seconds)

    def per_step(name: str, per: int = 1) -> str:  # ``per`` events of that name in each step, summed
        values = events.get(name, [])
        return " ".join(f"{sum(values[i * per:(i + 1) * per]):.2f}" for i in range(len(per_step_intervals)))

    reward_lines = [line for line in result.stdout.splitlines() if line.startswith("[reward step")]
    label = "as configured" if workers is None else workers
    return (
        f"GRPO step ({what}, RENDER_WORKERS={label}): median {statistics.median(steady):.2f} s/step over steps "
        f"2-{len(per_step_intervals)} (whole run incl. start-up and saving: {wall:.0f} s)\n"
        f"  per step, s:  total     {' '.join(f'{v:.2f}' for v in per_step_intervals)}\n"
        f"                generate  {per_step('transformers.generate')}\n"
        f"                log-probs {per_step('_get_per_token_logps_and_entropies', 2)} (reference + policy)\n"
        f"                reward    {per_step('RewardManager')}\n"
        f"  {reward_lines[-1] if reward_lines else '(no reward log)'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per render stage (median)")
    parser.add_argument("--workers", type=int, default=None, help="RENDER_WORKERS for (b); default: available cores")
    parser.add_argument("--soundfont", default="timgm6mb")
    parser.add_argument("--audiobox-checkpoint", default=None, help="a real checkpoint.pt; default: random weights")
    parser.add_argument("--audiobox-clips", type=int, default=None,
                        help="clips scored by Audiobox; default 64 on a GPU, 8 on a CPU (~2-3 s each), 0 = skip")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure the opt-in bf16 Audiobox mode (default: on a GPU only)")
    parser.add_argument("--tempo-sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the render stage with the scores re-timed to 40-200 BPM (~2 min on a CPU)")
    parser.add_argument("--e2e-steps", type=int, default=5, help="GRPO steps of the offline preset to time; 0 = skip")
    parser.add_argument("--e2e-preset", default=None,
                        help="smart.py config for the GRPO timing (default config/local.py; '' = smart.py defaults)")
    parser.add_argument("--e2e-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a smart.py constant for the GRPO timing, e.g. SOUNDFONT=musescore (repeatable)")
    parser.add_argument("--e2e-paper-size-policy", action="store_true",
                        help="time GRPO with a random Phi-3 of the paper's size (4 x 512) and, unless given, the "
                             "random-weight Audiobox checkpoint: the GPU-box target (<= 3 s per 64 x 256 step)")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    workers = args.workers or default_render_workers()
    soundfont = resolve_soundfont(args.soundfont)
    workdir = Path(tempfile.mkdtemp(prefix="reward_pipeline_"))

    model_name, remi, records, generate_seconds = make_completions(workdir)
    print(f"batch: {len(records)} completions x {MAX_COMPLETION_LENGTH} tokens from {model_name} "
          f"({PROMPT_SOURCE} prompts, seed {SEED}); generation took {generate_seconds:.2f} s on the CPU")
    print(f"machine: {available_cores()} cores available, torch threads {torch.get_num_threads()}, "
          f"GPU: {torch.cuda.get_device_name() if on_gpu else 'none'}; soundfont {Path(soundfont).name}, "
          f"{SAMPLE_RATE} Hz, {MAX_AUDIO_DURATION} s")

    # --- set-up, outside the timings: synths, pool start (once per run, in the background in smart.py) -------
    original = OriginalTinySoundfontRenderer(soundfont, SAMPLE_RATE, MAX_AUDIO_DURATION)
    in_process = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, MAX_AUDIO_DURATION)
    start = time.perf_counter()
    pooled = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, MAX_AUDIO_DURATION, num_workers=workers)
    warm = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=MAX_BEATS)(fresh(records[:workers]))
    pooled(warm)  # waits until every worker has loaded the soundfont
    pool_start = time.perf_counter() - start
    decoder = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=MAX_BEATS)

    # --- (a) the original method and (b) the project's pipeline, interleaved so that drift hits both -------
    decoded_a = original_decode(remi, fresh(records))
    decoded_b = decoder(fresh(records))
    stages = {
        "decode (a)": lambda: original_decode(remi, fresh(records)),
        "decode (b)": lambda: decoder(fresh(records)),
        "render (a)": lambda: original_render(original, decoded_a),
        "render (b) 1 worker": lambda: in_process([dict(r) for r in decoded_b]),
        "render (b)": lambda: pooled([dict(r) for r in decoded_b]),
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    outputs = {}
    for _ in range(args.repeats):
        for name, stage in stages.items():
            start = time.perf_counter()
            outputs[name] = stage()
            times[name].append(time.perf_counter() - start)
    pooled.close()
    median = {name: statistics.median(values) for name, values in times.items()}
    t_decode_a, t_decode_b = median["decode (a)"], median["decode (b)"]
    t_render_a, t_render_1, t_render_b = median["render (a)"], median["render (b) 1 worker"], median["render (b)"]
    rendered_a, rendered_1, rendered_b = outputs["render (a)"], outputs["render (b) 1 worker"], outputs["render (b)"]

    lengths = np.array([len(r["completion"]) for r in records])
    print(f"completions: {int((lengths < MAX_COMPLETION_LENGTH).sum())}/{len(lengths)} stop (EOS) before "
          f"{MAX_COMPLETION_LENGTH} tokens (median length {np.median(lengths):.0f}): what rendering during generation "
          f"could start early")
    durations = np.array([r["sm_duration"] for r in decoded_b])
    notes = np.array([r["sm"].note_num() for r in decoded_b])
    same_scores = all(a["sm"].dumps_midi() == b["sm"].dumps_midi() for a, b in zip(decoded_a, decoded_b))
    print(f"scores: {notes.mean():.0f} notes on average; duration median {np.median(durations):.1f} s "
          f"(min {durations.min():.1f}, max {durations.max():.1f}), {int((durations > MAX_AUDIO_DURATION).sum())} "
          f"longer than {MAX_AUDIO_DURATION} s; audio synthesised: original {durations.sum():.0f} s, project "
          f"{np.minimum(durations, MAX_AUDIO_DURATION).sum():.0f} s (+ a 4 s flush each in both)")

    # --- equality -----------------------------------------------------------------------------------------
    diffs = []
    for a, b in zip(rendered_a, rendered_b):
        assert a["audio"].shape == b["audio"].shape, (a["idx"], a["audio"].shape, b["audio"].shape)
        diffs.append(float(np.abs(a["audio"] - b["audio"]).max()))
    one_worker_diff = max(float(np.abs(a["audio"] - b["audio"]).max()) for a, b in zip(rendered_a, rendered_1))
    weight_free_rewards(rendered_a)
    weight_free_rewards(rendered_b)
    reward_diff = max(abs(a["normalized_rewards"][k] - b["normalized_rewards"][k])
                      for a, b in zip(rendered_a, rendered_b) for k in a["normalized_rewards"])
    print(f"equality: decoded scores identical: {same_scores}; max |audio (a) - (b)| {max(diffs):.1e} "
          f"({workers} workers), {one_worker_diff:.1e} (1 worker) over {len(diffs)} clips; weight-free rewards "
          f"({', '.join(rendered_a[0]['normalized_rewards'])}) max diff {reward_diff:.1e}")
    ok = same_scores and max(diffs) <= 1e-5 and one_worker_diff <= 1e-5 and reward_diff <= 1e-6

    # --- per-stage seconds --------------------------------------------------------------------------------
    rows = [("decode", t_decode_a, t_decode_b, t_decode_b), ("render", t_render_a, t_render_1, t_render_b),
            ("decode+render", t_decode_a + t_render_a, t_decode_b + t_render_1, t_decode_b + t_render_b)]
    print(f"\nseconds per reward step (median of {args.repeats}) | (a) original | (b) 1 worker | (b) {workers} workers")
    for name, a, one, b in rows:
        print(f"  {name:<14} | {a:12.3f} | {one:12.3f} | {b:13.3f}")
    print(f"  render pool start (once per run, while the model loads): {pool_start:.2f} s")
    speedup = rows[2][1] / rows[2][3]
    print(f"  decode+render speedup: {rows[2][1] / rows[2][2]:.2f}x in-process (avoided work alone), "
          f"{speedup:.2f}x with {workers} workers; audio-seconds ratio of this batch (the avoided-work bound when "
          f"synthesis dominates): {durations.sum() / np.minimum(durations, MAX_AUDIO_DURATION).sum():.2f}x")
    with_audio, without_audio, background = export_seconds(rendered_b, workdir)
    print(f"  RewardManager.export_records after the rewards (not part of the speedup): {without_audio:.2f} s per "
          f"step (parquet + MIDI); on WAV steps (every AUDIO_SAVE_INTERVAL) the trainer waits {with_audio:.2f} s "
          f"while a background thread writes the WAVs in {background:.2f} s")
    if args.tempo_sweep:
        print("\n".join(tempo_sweep(decoded_b, original, in_process, tokens_of_kind(remi, "Tempo"), args.repeats)))

    # --- Audiobox -----------------------------------------------------------------------------------------
    clips = args.audiobox_clips if args.audiobox_clips is not None else (64 if on_gpu else 8)
    if clips:
        lines, score_diff = audiobox_stage(rendered_b, args.audiobox_checkpoint, workdir, clips,
                                           args.bf16 if args.bf16 is not None else on_gpu)
        print("\n".join(lines))
        ok = ok and score_diff <= 1e-4

    # --- whole GRPO steps ---------------------------------------------------------------------------------
    if args.e2e_steps:
        overrides = list(args.e2e_override)
        preset = args.e2e_preset
        if args.e2e_paper_size_policy:
            preset = "" if preset is None else preset
            from bench.standins import PAPER_POLICY_SIZE, make_tiny_policy

            policy = make_tiny_policy(workdir / "phi3-4x512", **PAPER_POLICY_SIZE, seed=SEED)
            overrides.append(f"BASE_MODEL_PATH={policy}")
            if not any(o.startswith("AUDIOBOX_CHECKPOINT=") for o in overrides):
                checkpoint = args.audiobox_checkpoint or random_audiobox_checkpoint(workdir)
                overrides.append(f"AUDIOBOX_CHECKPOINT={checkpoint}")
        print(grpo_steps(workdir, args.e2e_steps, args.workers, preset, overrides))
    shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        print("MISMATCH: the pipelines disagree (see the equality line)")
    print(f"speedup: {speedup:.2f}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
