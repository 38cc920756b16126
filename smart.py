"""SMART: tune a symbolic piano model with GRPO on an audio-domain aesthetic reward (Jonason, Casini, Sturm 2025).

    python smart.py                                   # the paper's experiment (needs the hub and a GPU box)
    python smart.py config/local.py                   # offline preset: shipped model, weight-free rewards, CPU
    python smart.py config/local.py --BETA=0.0        # any constant below, type-checked
    python smart.py --RESUME=artefacts/runs/<run>     # continue a stopped run from its last checkpoint

Each step: prompts -> the policy samples NUM_GENERATIONS completions per prompt -> RewardManager decodes them
to MIDI, renders audio, scores it -> TRL's GRPOTrainer updates the policy against the frozen base model.
The defaults are the public erl-j/SMART values; the TRL settings reproduce the TRL 0.16 algorithm it ran on.
"""

import json
import os
import sys
from pathlib import Path

from configurator import ConfigError, apply_overrides, apply_values

# --- reproducibility ---------------------------------------------------------------------------------------------
SEED = 1  # seed for the prompts (the original's SEED; the paper-era scripts used 0)
TRAINER_SEED = 42  # GRPOConfig.seed: prompt order, sampling, init; the original set none, so TRL's default 42
# --- model ----------------------------------------------------------------------------------------------------
BASE_MODEL_PATH = "lucacasini/metamidipianophi3_4L"  # hub id or local dir with config.json + miditok tokenizer.json
TRUST_REMOTE_CODE = False  # run code shipped with a hub model; off unless you trust it
# --- prompts --------------------------------------------------------------------------------------------------
PROMPT_SOURCE = "procedural"  # procedural | procedural-no-starting-note (paper) | no prompt | dataset
PROMPT_MIDI_DIR: str | None = None  # folder of MIDI files for PROMPT_SOURCE="dataset"
NUM_PROMPTS: int | None = None  # prompts in the training set; None = NUM_TRAIN_STEPS*BATCH_SIZE/NUM_GENERATIONS*10
# --- GRPO -----------------------------------------------------------------------------------------------------
NUM_TRAIN_STEPS = 200  # optimizer steps
BATCH_SIZE = 64  # completions per step and device (BATCH_SIZE / NUM_GENERATIONS prompts)
NUM_GENERATIONS = 8  # completions per prompt: the group GRPO normalises rewards within
LEARNING_RATE = 1e-4  # AdamW learning rate
SCHEDULE_TYPE = "linear"  # learning-rate schedule (no warmup)
BETA = 0.04  # KL penalty toward the base model; 0.0 gives the paper's "very over-optimized" run
TEMPERATURE = 1.0  # sampling temperature
TOP_K = 50  # top-k sampling (TRL 0.16 inherited transformers' 50; TRL 1.16 defaults to off)
TOP_P = 1.0  # nucleus sampling (1.0 = off)
NUM_ITERATIONS = 1  # policy updates per generated batch (1: pi_old = pi_theta)
SCALE_REWARDS = True  # divide advantages by the group's reward std
LOSS_TYPE = "bnpo"  # TRL 0.16's token-mean over the batch; "grpo" is the paper's written per-sequence mean
GRADIENT_ACCUMULATION_STEPS = 1  # micro-batches per optimizer step
USE_BF16 = True  # bf16 mixed precision on a GPU with native bf16 (compute capability >= 8.0); fp32 elsewhere
FP32_WEIGHTS = False  # load policy and reference weights in fp32; False = the hub config's dtype, as the original
MAX_COMPLETION_LENGTH = 256  # tokens generated after the prompt
CPU_THREADS: int | None = None  # torch threads when training on a CPU; None = torch's default (all cores)
# --- reward ---------------------------------------------------------------------------------------------------
REWARD_WEIGHTS = {"CE": 1.0}  # reward name -> weight; reward = weighted mean (names: processors.REWARD_PROCESSORS)
AUDIOBOX_CHECKPOINT: str | None = None  # None = facebook/audiobox-aesthetics from the hub; or a local checkpoint.pt
SOUNDFONT = "musescore"  # soundfont name (see soundfonts/README.md) or path to a .sf2/.sf3
SAMPLE_RATE = 48000  # render sample rate (Hz)
MAX_BEATS = 100  # crop decoded MIDI to this many beats
MAX_AUDIO_DURATION = 10  # seconds of audio rendered and scored (Audiobox's receptive field)
AUDIOBOX_BATCH_SIZE: int | None = None  # clips per Audiobox forward; None = what half the free GPU memory holds
RENDER_WORKERS: int | None = None  # render processes; None = CPU cores (quota-aware, per local rank, <= BATCH_SIZE)
# --- output ---------------------------------------------------------------------------------------------------
OUTPUT_DIR: str | None = None  # run directory; None = a new, timestamped folder under artefacts/runs/
SAVE_STEPS = 20  # checkpoint every this many steps
AUDIO_SAVE_INTERVAL = 10  # save WAVs every this many reward steps (MIDI is saved every step)
REPORT_TO = "none"  # "none", "wandb", "tensorboard", "trackio" (the logger must be installed)
EVAL_SAMPLES = 32  # pieces per model in the end-of-run report, base vs tuned (evaluation.py); 0 = skip it
RESUME: str | None = None  # a run directory to continue from its last checkpoint, with its saved config

config = {}
if __name__ == "__main__":
    try:
        config = apply_overrides(globals(), sys.argv[1:])
    except ConfigError as error:
        sys.exit(f"smart.py: {error}")

RUN_CONFIG_FILE = "smart_config.json"  # the resolved constants (config.json is the model's); not a setting


def resumed_config(namespace: dict, argv: list[str], run_dir: str) -> dict:
    """Apply the constants a run was started with (its smart_config.json) to ``namespace``, to continue it."""
    if len(argv) > 1 or not argv[0].startswith("--RESUME="):
        raise ConfigError("--RESUME continues a run with its saved config; give no other arguments")
    saved = Path(run_dir) / RUN_CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"RESUME={run_dir!r} has no {RUN_CONFIG_FILE}; give a run directory made by smart.py")
    values = {k: v for k, v in json.loads(saved.read_text())["config"].items() if k != "RESUME"}
    apply_values(namespace, {**values, "OUTPUT_DIR": run_dir}, str(saved))
    return {**values, "RESUME": run_dir, "OUTPUT_DIR": run_dir}


if __name__ == "__main__":
    if RESUME is not None:
        try:
            config = resumed_config(globals(), sys.argv[1:], RESUME)
        except ConfigError as error:
            sys.exit(f"smart.py: {error}")
    # Checked before transformers and TRL load, so a bad config costs ~2 s of imports, not ~6 (CPU time).
    # accelerate launch and torchrun set WORLD_SIZE.
    from preflight import check_config, gpu_problems

    problems = check_config(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if problems:
        sys.exit("smart.py: the config cannot run:\n- " + "\n- ".join(problems))
    from devices import one_gpu_unless_launched

    one_gpu_note = one_gpu_unless_launched()  # before anything starts CUDA
    problems = gpu_problems()
    if problems:
        sys.exit("smart.py: this machine cannot train on its GPU:\n- " + "\n- ".join(problems))

import random  # noqa: E402  (heavy imports come after the config is known to be valid)
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from accelerate.utils import broadcast_object_list  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from devices import bf16_native, compute_device, policy_init_kwargs  # noqa: E402
from evaluation import evaluate_run  # noqa: E402
from midi_tokenizer import load_tokenizers  # noqa: E402
from processors import (  # noqa: E402
    AUDIOBOX_HUB_ID, AudioBoxAesRewardProcessor, MidiTokToSymusicProcessor, REWARD_PROCESSORS, RewardSettings,
    TinySoundfontSynthProcessor, reward_processors_for,
)
from prompts import build_prompts  # noqa: E402
from render_pool import default_render_workers  # noqa: E402
from report import plot_training  # noqa: E402
from reward_manager import RewardManager  # noqa: E402
from run_logs import read_run_logs, read_trainer_log  # noqa: E402
from run_record import build_record, describe, write_record  # noqa: E402
from soundfonts import resolve_soundfont  # noqa: E402

STEP_FOLDERS = ("rl_logs", "midi", "audio")


class StopOnSignal(TrainerCallback):
    """On Ctrl-C / SIGTERM, finish the current step, save a checkpoint and stop, so the run can be resumed.

    With several processes every rank must stop after the same step: one that went on would wait in TRL's next
    gather for ranks that have left, until the collective timeout, and no checkpoint would be written. Ranks can
    see a signal at different steps (it reached one rank only, or arrived at a step's end), so after each step
    they agree: any rank's request stops them all (``any_rank``).
    """

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request)

    def _request(self, signum: int, _frame: object) -> None:
        print(f"\n[smart] {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.requested, None if args is None else args.device):
            if not self.requested:
                print("\n[smart] another process was asked to stop: saving a checkpoint after this step, then stopping")
            control.should_save = True
            control.should_training_stop = True
        return control


def any_rank(flag: bool, device: torch.device | None) -> bool:
    """``flag`` or'ed over all ranks (a MAX all-reduce on ``device``, which NCCL needs to be the rank's GPU);
    ``flag`` itself when there is one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    if torch.distributed.get_world_size() == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
    return bool(agreed.item())


def warn_about_weights_dtype(dtype: torch.dtype, bf16: bool) -> None:
    """Warn when bf16 mixed precision would train weights that are not fp32 (no fp32 master copy: small updates
    are lost). The dtype itself is in run_record.json."""
    if bf16 and dtype != torch.float32:
        print(f"[smart] warning: the policy's weights are {str(dtype).removeprefix('torch.')} (the model config's "
              "dtype), so bf16 training updates them without an fp32 master copy and small updates are lost; "
              "--FP32_WEIGHTS=True loads them in fp32")


def new_run_dir(config: dict) -> Path:
    """A fresh run folder named after the model, prompts and beta; never one that exists."""
    name = f"{Path(config['BASE_MODEL_PATH']).name}-{config['PROMPT_SOURCE'].replace(' ', '-')}-beta{config['BETA']}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path("artefacts/runs") / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path("artefacts/runs") / f"{name}-{stamp}-{suffix}"
    return run_dir


def last_complete_checkpoint(run_dir: Path) -> tuple[Path | None, list[Path]]:
    """The newest checkpoint-<step> the Trainer finished writing, and the newer ones it did not finish.

    The Trainer writes trainer_state.json last, so a checkpoint without a readable one was cut short (killed
    during a save); transformers' get_last_checkpoint would still pick it, and the resume would crash.
    """
    checkpoints = [path for path in run_dir.glob("checkpoint-*") if path.name.split("-")[-1].isdigit()]
    unfinished = []
    for checkpoint in sorted(checkpoints, key=lambda path: int(path.name.split("-")[-1]), reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return checkpoint, unfinished
        except (OSError, ValueError):
            unfinished.append(checkpoint)
    return None, unfinished


def archive_after_resume(run_dir: Path, first_stale_step: int, unfinished_checkpoints: list[Path]) -> None:
    """Move what the resumed run redoes to interrupted/<time>/, so nothing is overwritten: the step folders from
    ``first_stale_step`` on, and checkpoints the Trainer did not finish writing."""
    stale = [
        step_dir
        for folder in STEP_FOLDERS
        for step_dir in sorted((run_dir / folder).glob("*"))
        if step_dir.name.isdigit() and int(step_dir.name) >= first_stale_step
    ]
    archive = run_dir / "interrupted" / time.strftime("%Y%m%d-%H%M%S")
    while archive.exists():  # two resumes within a second
        archive = archive.with_name(archive.name + "+")
    for path in stale + unfinished_checkpoints:
        (archive / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), archive / path.relative_to(run_dir))
    if stale or unfinished_checkpoints:
        print(f"[smart] steps from {first_stale_step} on are redone after the resume; the old ones are in {archive}")


if __name__ == "__main__":
    on_gpu = torch.cuda.is_available()
    # Without cpu=True a CPU-only launch of several processes (torchrun, accelerate launch) is not seen as
    # distributed: every rank would think it is alone, name its own run dir and write the same files.
    state = PartialState(cpu=not on_gpu)
    device = compute_device()  # this rank's GPU by index (PartialState made it current), or the CPU
    checkpoint, unfinished_checkpoints = last_complete_checkpoint(Path(RESUME)) if RESUME is not None else (None, [])
    if not on_gpu:
        print("[smart] no GPU found: training in fp32 on the CPU (TRL refuses bf16 there); USE_BF16 is ignored")
        if CPU_THREADS is not None:
            torch.set_num_threads(CPU_THREADS)
    elif one_gpu_note:
        print(f"[smart] {one_gpu_note}")
    bf16, no_bf16_reason = bf16_native()
    if on_gpu and USE_BF16 and not bf16:
        print(f"[smart] USE_BF16 ignored: {no_bf16_reason}; emulated bf16 is slower than fp32, so training in fp32")
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    if OUTPUT_DIR is None:
        OUTPUT_DIR = str(broadcast_object_list([str(new_run_dir(config)) if state.is_main_process else None])[0])
    elif RESUME is None and Path(OUTPUT_DIR).exists() and any(Path(OUTPUT_DIR).iterdir()):
        sys.exit(f"smart.py: OUTPUT_DIR={OUTPUT_DIR!r} already holds a run; use --RESUME={OUTPUT_DIR} or a new dir")
    state.wait_for_everyone()  # every rank has looked at OUTPUT_DIR before the main process fills it
    run_dir = Path(OUTPUT_DIR)
    start_step = 0
    if checkpoint is not None:
        start_step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"] // NUM_ITERATIONS
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if RESUME is not None:
            archive_after_resume(run_dir, start_step, unfinished_checkpoints)
        else:
            (run_dir / RUN_CONFIG_FILE).write_text(json.dumps({"config": config}, indent=2))
    state.wait_for_everyone()
    print(f"[smart] run directory: {run_dir}" + (f" (resuming from {checkpoint})" if checkpoint else ""))

    # --- prompts and the token bridge ---------------------------------------------------------------------------
    remi, bridge = load_tokenizers(BASE_MODEL_PATH)
    num_prompts = NUM_PROMPTS or NUM_TRAIN_STEPS * BATCH_SIZE // NUM_GENERATIONS * 10
    prompts = build_prompts(PROMPT_SOURCE, remi, num_prompts, SEED, PROMPT_MIDI_DIR)
    train_dataset = Dataset.from_dict({"prompt": prompts, "prompt_ids": bridge(prompts)["input_ids"]})

    # --- the reward chain -----------------------------------------------------------------------------------------
    soundfont_path = resolve_soundfont(SOUNDFONT)
    reward_settings = RewardSettings(AUDIOBOX_CHECKPOINT, AUDIOBOX_BATCH_SIZE, device, MAX_AUDIO_DURATION)
    reward_manager = RewardManager(
        processors=[
            MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=MAX_BEATS),
            TinySoundfontSynthProcessor(
                soundfont_path, SAMPLE_RATE, MAX_AUDIO_DURATION,
                num_workers=default_render_workers(BATCH_SIZE) if RENDER_WORKERS is None else RENDER_WORKERS,
            ),
            *reward_processors_for(REWARD_WEIGHTS, reward_settings),
        ],
        reward_weights=REWARD_WEIGHTS,
        output_dir=run_dir,
        audio_save_interval=AUDIO_SAVE_INTERVAL,
        start_step=start_step,
        process_index=state.process_index,
        num_processes=state.num_processes,
    )

    # --- GRPO: every setting that differs between TRL 0.16 (the paper's runs) and 1.16 is set explicitly -------
    if REPORT_TO == "wandb":
        os.environ.setdefault("WANDB_PROJECT", "music-grpo")
    training_args = GRPOConfig(
        output_dir=str(run_dir),
        max_steps=NUM_TRAIN_STEPS,
        per_device_train_batch_size=BATCH_SIZE,
        num_generations=NUM_GENERATIONS,
        gradient_accumulation_steps=GRADIENT_ACCUMULATION_STEPS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type=SCHEDULE_TYPE,
        beta=BETA,
        loss_type=LOSS_TYPE,
        use_bias_correction_kl=False,  # TRL 0.16: plain k3 KL estimator
        scale_rewards="group" if SCALE_REWARDS else "none",
        num_iterations=NUM_ITERATIONS,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        top_p=TOP_P,
        max_completion_length=MAX_COMPLETION_LENGTH,
        gradient_checkpointing=False,
        bf16=USE_BF16 and bf16,
        use_cpu=not on_gpu,
        trust_remote_code=TRUST_REMOTE_CODE,
        model_init_kwargs=policy_init_kwargs(device, state.num_processes > 1, FP32_WEIGHTS, TRUST_REMOTE_CODE),
        logging_steps=1,
        save_steps=SAVE_STEPS,
        report_to=REPORT_TO,
        run_name=run_dir.name,
        seed=TRAINER_SEED,
    )
    trainer = GRPOTrainer(
        model=BASE_MODEL_PATH,
        reward_funcs=reward_manager,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=bridge,
        callbacks=[StopOnSignal()],
    )

    # --- what this run really used: printed, and saved beside smart_config.json ----------------------------------
    reference = getattr(trainer, "ref_model", None)
    record = build_record(
        soundfont_path=soundfont_path, base_model=BASE_MODEL_PATH, audiobox_checkpoint=AUDIOBOX_CHECKPOINT,
        uses_audiobox=any(REWARD_PROCESSORS[name] is AudioBoxAesRewardProcessor for name in REWARD_WEIGHTS),
        audiobox_hub_id=AUDIOBOX_HUB_ID, device=trainer.accelerator.device, policy_dtype=trainer.model.dtype,
        reference_dtype=None if reference is None else reference.dtype,
        mixed_precision="bf16" if training_args.bf16 else "no", num_processes=state.num_processes,
    )
    if state.is_main_process:
        print(describe(record))
        write_record(run_dir, record, resumed=checkpoint is not None)
        warn_about_weights_dtype(trainer.model.dtype, training_args.bf16)
    try:
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    finally:
        reward_manager.wait_for_audio()  # the last audio step's WAVs are written in the background
    if trainer.state.global_step < NUM_TRAIN_STEPS:
        print(f"[smart] stopped at step {trainer.state.global_step}; continue with: python smart.py --RESUME={run_dir}")
        sys.exit(0)
    trainer.save_model()  # the tuned model (and its tokenizer.json) in the run directory itself
    trainer.save_state()
    if state.is_main_process:
        plot_training(read_run_logs(run_dir), read_trainer_log(run_dir), run_dir / "reward_curve.png")
        print(f"[smart] reward curve: {run_dir / 'reward_curve.png'}")
        if EVAL_SAMPLES:
            print(f"[smart] evaluation report: {evaluate_run(run_dir, config, n=EVAL_SAMPLES)}")
    print(f"[smart] done: tuned model and logs in {run_dir}")
