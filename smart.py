"""SMART: tune a symbolic piano model with GRPO on an audio-domain aesthetic reward (Jonason, Casini, Sturm 2025).

    python smart.py                                   # the paper's experiment (needs the hub and a GPU box)
    python smart.py config/local.py                   # offline preset: shipped model, weight-free rewards, CPU
    python smart.py config/local.py --BETA=0.0        # any constant below, type-checked
    python smart.py --RESUME=artefacts/runs/<run>     # continue a stopped run from its last checkpoint

Each step: prompts -> the policy samples NUM_GENERATIONS completions per prompt -> RewardManager decodes them
to MIDI, renders audio, scores it -> TRL's GRPOTrainer updates the policy against the frozen base model.
The defaults are the public erl-j/SMART values; the TRL settings reproduce the TRL 0.16 algorithm it ran on.
"""

import os
import sys
import typing
from pathlib import Path
from typing import Any

from configurator import ConfigError, apply_overrides, config_files, resumed_config
from smart_utils import pam_prompts
from smart_utils.run_folder import (
    archive_after_resume,
    checkpoint_step,
    last_complete_checkpoint,
    new_run_dir,
    save_config,
)

if typing.TYPE_CHECKING:  # for the annotation only (TRL loads after the checks, below); not an UPPERCASE knob
    from trl import GRPOConfig

# --- reproducibility ---------------------------------------------------------------------------------------------
SEED = 1  # seed for the prompts (the original's SEED; the paper-era scripts used 0)
TRAINER_SEED = 42  # GRPOConfig.seed: prompt order, sampling, init; the original set none, so TRL's default 42
# --- model ----------------------------------------------------------------------------------------------------
BASE_MODEL_PATH = "lucacasini/metamidipianophi3_4L"  # hub id or local dir with config.json + miditok tokenizer.json
TRUST_REMOTE_CODE = False  # run code shipped with a hub model; off unless you trust it
IS_MULTITRACK: bool | None = None  # several instruments in one token stream; None = from the model's tokenizer
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
REWARD_WEIGHTS = {"CE": 1.0}  # reward name -> weight; reward = weighted mean (names: a Processor's REWARDS)
AUDIOBOX_CHECKPOINT: str | None = None  # None = facebook/audiobox-aesthetics from the hub; or a local checkpoint.pt
SOUNDFONT: str | list[str] = "musescore"  # soundfont name (soundfonts/README.md) or path; a list: rewards over all
SOUNDFONT_COMBINE = "mean"  # how each audio reward combines across several SOUNDFONTs: "mean" or "min"
SAMPLE_RATE = 48000  # render sample rate (Hz)
MAX_BEATS = 100  # crop decoded MIDI to this many beats
MAX_AUDIO_DURATION = 10  # seconds of audio rendered and scored (Audiobox's receptive field)
AUDIOBOX_BATCH_SIZE: int | None = None  # clips per Audiobox forward; None = what half the free GPU memory holds
RENDER_WORKERS: int | None = None  # render processes; None = CPU cores (quota-aware, per local rank, <= BATCH_SIZE)
# the CLAP text-audio rewards "clap", "clap_clf" and PAM's (docs/rewards.md); *_MODEL: hub id or folder
CLAP_PROMPT = "jazz"  # "clap": the text the audio should match (the original's piano runs used "jazz")
CLAP_K = 8  # "clap": the original's k, which its code never uses (its runs passed NUM_GENERATIONS); no effect
CLAP_MODEL = "laion/larger_clap_music"  # "clap": the CLAP model
CLAP_CLF_PROMPT = "beautiful, high quality, amazing music, natural, calming"  # "clap_clf": the class rewarded
CLAP_REFERENCE_PROMPTS: list[str] = ["dissonant, low quality, caucophonous music, glitch, midi"]  # its rivals
CLAP_TEMPERATURE = 0.25  # "clap_clf": softmax temperature over the cosines
CLAP_CLF_MODEL = "laion/larger_clap_general"  # "clap_clf": the CLAP model
PAM_PROMPTS: list[dict[str, str]] = [dict(p) for p in pam_prompts.PROMPT_PAIRS]  # {shorthand, positive, negative}
PAM_TEMPERATURE = 0.25  # PAM: softmax temperature over each positive/negative pair
PAM_MODEL = "laion/larger_clap_general"  # PAM: the CLAP model
CLAP_BATCH_SIZE: int | None = None  # clips per CLAP forward (all three rewards); None = the whole batch at once
LISTENERS_MODEL: str | None = None  # "listeners": a reward model fitted on a listening study (listen.py fit)
# --- watch: measured and logged, never optimised (smart_utils/watch.py) ---------------------------------------
WATCH_REWARDS: list[str] = []  # held-out judges, logged as watch/<name> (e.g. ["CU", "clap"]; weight-free ones)
WATCH_SOUNDFONTS: list[str] = []  # held-out soundfonts: the trained audio rewards re-scored as watch/CE@<name>
WATCH_DIVERSITY = True  # the step's diversity, overall and within GRPO groups (watch/diversity, .../group_diversity)
WATCH_INTERVAL = 1  # watch every this many reward steps
STOP_DIVERSITY_FRACTION: float | None = None  # stop once diversity < this x its first 5 watched steps' (e.g. 0.5)
STOP_JUDGE_STEPS: int | None = None  # stop once a judge falls while the trained reward rises over this many steps
# --- output ---------------------------------------------------------------------------------------------------
OUTPUT_DIR: str | None = None  # run directory; None = a new, timestamped folder under artefacts/runs/
SAVE_STEPS = 20  # checkpoint every this many steps
AUDIO_SAVE_INTERVAL = 10  # save WAVs every this many reward steps (MIDI is saved every step)
REPORT_TO = "none"  # "none", "wandb", "tensorboard", "trackio" (the logger must be installed)
AUDIO_TO_TRACKER = 4  # clips of each audio step sent to REPORT_TO's tracker, to be heard there (0 = none)
EVAL_SAMPLES = 32  # pieces per model in the end-of-run report, base vs tuned (evaluation.py); 0 = skip it
RESUME: str | None = None  # a run directory to continue from its last checkpoint, with its saved config


# --- what the recipe builds from the constants (functions, so tests can check them without a run) ----------------
def grpo_config(run_dir: Path, on_gpu: bool, bf16_native: bool, model_init_kwargs: dict[str, Any]) -> "GRPOConfig":
    """TRL's settings: every one that differs between TRL 0.16 (the paper's runs) and 1.16 is set explicitly, as
    docs/paper.md's table lists them (tests/test_smart.py checks each)."""
    from trl import GRPOConfig  # here, not at the top: TRL loads only once the config is checked

    from smart_utils.devices import ddp_timeout

    return GRPOConfig(
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
        bf16=USE_BF16 and bf16_native,
        use_cpu=not on_gpu,
        trust_remote_code=TRUST_REMOTE_CODE,
        model_init_kwargs=model_init_kwargs,
        logging_steps=1,
        save_steps=SAVE_STEPS,
        report_to=REPORT_TO,
        run_name=run_dir.name,
        seed=TRAINER_SEED,
        ddp_timeout=ddp_timeout(),  # the process group's, set when smart.py creates it (devices.process_state)
    )


def warn_about_weights_dtype(dtype: str, bf16: bool) -> None:
    """Warn when bf16 mixed precision would train weights that are not fp32 (no fp32 master copy: small updates
    are lost). ``dtype`` is the policy's, as run_record.json names it."""
    if bf16 and dtype != "float32":
        print(f"[smart] warning: the policy's weights are {dtype} (the model config's dtype), so bf16 training "
              "updates them without an fp32 master copy and small updates are lost; --FP32_WEIGHTS=True loads "
              "them in fp32")


if __name__ == "__main__":
    # --- overrides: config files and --KEY=value flags, or a stopped run's saved constants -------------------------
    try:
        config = apply_overrides(globals(), sys.argv[1:])
        if RESUME is not None:
            config = resumed_config(globals(), sys.argv[1:], RESUME)
    except ConfigError as error:
        sys.exit(f"smart.py: {error}")

    # --- checks: the config, then the machine ------------------------------------------------------------------
    # Everything slow is imported after these, so a bad config fails in the ~2 s that preflight's imports take,
    # not the ~6 s of transformers and TRL (CPU time). accelerate launch and torchrun set WORLD_SIZE.
    from processors import reward_problems
    from smart_utils.preflight import check_config, gpu_problems

    problems = check_config(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    problems += reward_problems(REWARD_WEIGHTS, config)
    if WATCH_REWARDS:
        problems += reward_problems(dict.fromkeys(WATCH_REWARDS, 1.0), config, setting="WATCH_REWARDS")
    if problems:
        sys.exit("smart.py: the config cannot run:\n- " + "\n- ".join(problems))
    from smart_utils.devices import one_gpu_unless_launched

    one_gpu_note = one_gpu_unless_launched()  # before anything starts CUDA
    problems = gpu_problems()
    if problems:
        sys.exit("smart.py: this machine cannot train on its GPU:\n- " + "\n- ".join(problems))

    # --- the libraries and the project's modules ---------------------------------------------------------------
    import random

    import numpy as np
    import torch
    from accelerate.utils import broadcast_object_list
    from datasets import Dataset
    from trl import GRPOTrainer

    from processors import (
        MidiTokToSymusicProcessor,
        SoundfontEnsembleProcessor,
        TinySoundfontSynthProcessor,
        build_processor,
        build_reward_processors,
        reward_classes,
        weight_models,
    )
    from reward_manager import RewardManager
    from smart_utils.devices import bf16_native, compute_device, policy_init_kwargs, process_state
    from smart_utils.evaluation import evaluate_run
    from smart_utils.multitrack import checked_multitrack_setting
    from smart_utils.prompts import build_prompts
    from smart_utils.render_pool import default_render_workers
    from smart_utils.report import plot_training
    from smart_utils.run_logs import read_run_logs, read_trainer_log
    from smart_utils.run_record import build_record, describe, write_record
    from smart_utils.soundfont_sources import resolve_soundfont, soundfont_label, soundfont_names
    from smart_utils.stop_on_signal import StopOnSignal
    from smart_utils.tokenizer import load_tokenizers
    from smart_utils.trackers import TrackerAudio
    from smart_utils.watch import STOPPED_FILE, WATCH_FILE, StopOnCollapse, StopRules, Watch

    # --- the device, the seeds and the run folder ------------------------------------------------------------------
    on_gpu = torch.cuda.is_available()
    # Without cpu=True a CPU-only launch of several processes (torchrun, accelerate launch) is not seen as
    # distributed: every rank would think it is alone, name its own run dir and write the same files.
    state = process_state(cpu=not on_gpu)  # the process group, with transformers' 30-minute ddp_timeout
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
        run_dir = Path(broadcast_object_list([str(new_run_dir(config)) if state.is_main_process else None])[0])
    else:
        run_dir = Path(OUTPUT_DIR)
        if RESUME is None and run_dir.exists() and any(run_dir.iterdir()):
            sys.exit(f"smart.py: OUTPUT_DIR={OUTPUT_DIR!r} already holds a run; use --RESUME={OUTPUT_DIR} or a new dir")
    state.wait_for_everyone()  # every rank has looked at OUTPUT_DIR before the main process fills it
    start_step = 0 if checkpoint is None else checkpoint_step(checkpoint) // NUM_ITERATIONS
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if RESUME is not None:
            archive_after_resume(run_dir, start_step, unfinished_checkpoints)
        else:
            save_config(run_dir, config, config_files(sys.argv[1:]))
    state.wait_for_everyone()
    print(f"[smart] run directory: {run_dir}" + (f" (resuming from {checkpoint})" if checkpoint else ""))

    # --- prompts and the token bridge ---------------------------------------------------------------------------
    remi, bridge = load_tokenizers(BASE_MODEL_PATH)
    try:
        is_multitrack = checked_multitrack_setting(IS_MULTITRACK, remi, REWARD_WEIGHTS)
    except ValueError as error:
        sys.exit(f"smart.py: {error}")
    num_prompts = NUM_PROMPTS or NUM_TRAIN_STEPS * BATCH_SIZE // NUM_GENERATIONS * 10
    prompts = build_prompts(PROMPT_SOURCE, remi, num_prompts, SEED, PROMPT_MIDI_DIR)
    train_dataset = Dataset.from_dict({"prompt": prompts, "prompt_ids": bridge(prompts)["input_ids"]})

    # --- the reward chain: decode, render, score; with several SOUNDFONTs each audio reward combines them --------
    render_workers = default_render_workers(BATCH_SIZE) if RENDER_WORKERS is None else RENDER_WORKERS

    def synth(path: str) -> TinySoundfontSynthProcessor:
        return TinySoundfontSynthProcessor(path, SAMPLE_RATE, MAX_AUDIO_DURATION, num_workers=render_workers)

    soundfonts = {soundfont_label(name): resolve_soundfont(name) for name in soundfont_names(SOUNDFONT)}
    soundfont_path = next(iter(soundfonts.values()))
    main_synth = synth(soundfont_path)
    rewards = build_reward_processors(list(REWARD_WEIGHTS), config, device)
    audio_rewards = [processor for processor in rewards if processor.READS_AUDIO]
    if len(soundfonts) > 1 and audio_rewards:  # the first is main_synth's rendering, which the records carry
        synths = {label: None if k == 0 else synth(path) for k, (label, path) in enumerate(soundfonts.items())}
        rewards = [p for p in rewards if not p.READS_AUDIO] + [
            SoundfontEnsembleProcessor(synths, audio_rewards, SOUNDFONT_COMBINE)]

    # --- the watch: held-out judges, held-out soundfonts, diversity; logged every WATCH_INTERVAL steps ------------
    in_chain = {type(p) for p in [*rewards, *audio_rewards]}  # their rewards are in the records already
    judges = [cls for cls in reward_classes(WATCH_REWARDS, config) if cls not in in_chain]
    watch_processors = [build_processor(cls, config, device) for cls in judges]
    held_out = {soundfont_label(name): resolve_soundfont(name) for name in WATCH_SOUNDFONTS}
    if held_out and audio_rewards:  # only the held-out renderings: the chain has scored its own already
        watch_processors.append(SoundfontEnsembleProcessor(
            {label: synth(path) for label, path in held_out.items()}, audio_rewards))
    watch = Watch(
        watch_processors, trained=list(REWARD_WEIGHTS), judges=WATCH_REWARDS, num_generations=NUM_GENERATIONS,
        interval=WATCH_INTERVAL, diversity=WATCH_DIVERSITY,
        history_file=run_dir / WATCH_FILE if state.is_main_process else None,
        resumed_before=start_step if checkpoint is not None else None,
    ) if watch_processors or WATCH_DIVERSITY or WATCH_REWARDS else None
    tracker_audio = TrackerAudio(AUDIO_TO_TRACKER) if REPORT_TO != "none" and AUDIO_TO_TRACKER else None

    reward_manager = RewardManager(
        processors=[MidiTokToSymusicProcessor(remi, is_multitrack=is_multitrack, max_beats=MAX_BEATS), main_synth,
                    *rewards],
        reward_weights=REWARD_WEIGHTS,
        output_dir=run_dir,
        audio_save_interval=AUDIO_SAVE_INTERVAL,
        start_step=start_step,
        process_index=state.process_index,
        num_processes=state.num_processes,
        watch=watch,
        on_audio_step=tracker_audio,
    )

    # --- GRPO ---------------------------------------------------------------------------------------------------
    if REPORT_TO == "wandb":
        os.environ.setdefault("WANDB_PROJECT", "music-grpo")
    model_init_kwargs = policy_init_kwargs(device, state.num_processes > 1, FP32_WEIGHTS, TRUST_REMOTE_CODE)
    training_args = grpo_config(run_dir, on_gpu, bf16, model_init_kwargs)
    stop_on_signal = StopOnSignal()
    rules = StopRules(STOP_DIVERSITY_FRACTION, STOP_JUDGE_STEPS)
    collapse_rules = []  # stop rules read the watch's history
    if watch is not None and rules.active():
        collapse_rules.append(StopOnCollapse(watch, rules, run_dir, state.is_main_process))
    trainer = GRPOTrainer(
        model=BASE_MODEL_PATH,
        reward_funcs=reward_manager,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=bridge,
        callbacks=[stop_on_signal, *collapse_rules],
    )
    if tracker_audio is not None:
        tracker_audio.attach(trainer)

    # --- what this run really used: printed, and saved beside smart_config.json ----------------------------------
    reference = getattr(trainer, "ref_model", None)
    record = build_record(
        soundfont_path=soundfont_path, base_model=BASE_MODEL_PATH, models=weight_models(list(REWARD_WEIGHTS), config),
        device=trainer.accelerator.device, policy_dtype=trainer.model.dtype,
        reference_dtype=None if reference is None else reference.dtype,
        mixed_precision="bf16" if training_args.bf16 else "no", num_processes=state.num_processes,
    )
    if state.is_main_process:
        print(describe(record))
        write_record(run_dir, record, resumed=checkpoint is not None)
        warn_about_weights_dtype(record["compute"]["policy_dtype"], training_args.bf16)

    # --- train, then the tuned model, the reward curve and the base-vs-tuned report ----------------------------
    try:
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    finally:
        reward_manager.wait_for_audio()  # the last audio step's WAVs are written in the background
    collapse = next((rule.stopped for rule in collapse_rules if rule.stopped), None)
    stopped_early = trainer.state.global_step < NUM_TRAIN_STEPS
    if stopped_early and collapse is None:  # Ctrl-C or SIGTERM: the checkpoint is saved, nothing else is wanted
        print(f"[smart] stopped at step {trainer.state.global_step}; continue with: python smart.py --RESUME={run_dir}")
        sys.exit(0)
    if not stopped_early:
        trainer.save_model()  # the tuned model (and its tokenizer.json) in the run directory itself
        trainer.save_state()
    stop_on_signal.uninstall()  # training is over: Ctrl-C stops the report below instead of asking for a checkpoint
    if state.is_main_process:
        plot_training(read_run_logs(run_dir), read_trainer_log(run_dir), run_dir / "reward_curve.png")
        print(f"[smart] reward curve: {run_dir / 'reward_curve.png'}")
        if EVAL_SAMPLES:
            try:
                print(f"[smart] evaluation report: {evaluate_run(run_dir, config, n=EVAL_SAMPLES)}")
            except KeyboardInterrupt:  # evaluate_run has said what is saved and how to redo the report
                sys.exit(130)
    if stopped_early:  # over-optimisation: the report above is of the checkpoint the stop saved
        print(f"[smart] stopped for over-optimisation at step {trainer.state.global_step}: {collapse} (in "
              f"{run_dir / STOPPED_FILE}); continue without that rule with: python smart.py --RESUME={run_dir}")
        sys.exit(0)
    print(f"[smart] done: tuned model and logs in {run_dir}")
