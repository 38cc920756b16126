"""Comparing systems on the same prompts and seeds: the paper's measurements and the ones it lacked (evaluation.py,
and smart.py's end-of-run report).

A system is ``[NAME=]PATH``: a model directory or ``checkpoint-<step>`` folder (pieces are sampled, the same
prompts and seed for every model), a SMART run folder (its tuned model, or its latest complete checkpoint), or a
folder of MIDI files (used as they are; a ``samples.csv`` from generate.py supplies prompts). A run folder given
alone is compared with the base model named in its smart_config.json, and its reward logs are plotted. The first
system is the reference the others are compared against.

Per sample: the paper's MIDI features (smart_utils/features.py, muspy's definitions), the four Audiobox axes when a
checkpoint is given, and any named reward. Per system: diversity and the average piano roll. With held-out
soundfonts, the same MIDI is re-rendered and the change in every audio-domain score reported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile
import symusic
from tqdm import tqdm

from processors import (
    AudioBoxAesRewardProcessor,
    Processor,
    TinySoundfontSynthProcessor,
    build_reward_processors,
    known_rewards,
    reward_class,
    weight_models,
)
from smart_utils import features
from smart_utils.devices import compute_device
from smart_utils.features import AES_AXES
from smart_utils.files import list_midi_files
from smart_utils.generation import GenerationSettings, generate_pieces, read_samples_csv
from smart_utils.model_paths import is_hub_id, resolve_model_dir, weights_file
from smart_utils.records import crop_score, score_record
from smart_utils.report import Evaluation, write_report
from smart_utils.run_folder import RUN_CONFIG_FILE, last_complete_checkpoint, read_run_config
from smart_utils.run_logs import read_run_logs, read_trainer_log
from smart_utils.run_record import RECORD_FILE
from smart_utils.soundfont_sources import KNOWN_SOUNDFONTS, SoundfontNotFound, resolve_soundfont, soundfont_label

CHUNK = 8  # clips rendered and scored at once: bounds memory (a 10 s clip is 3.8 MB) and Audiobox's batch
MP3 = "MP3" in soundfile.available_formats()  # libsndfile >= 1.1 encodes MP3


# ---------------------------------------------------------------------------------------------------------------
# Systems


def is_run_dir(folder: Path) -> bool:
    """A SMART run folder: reward logs or HF checkpoints inside."""
    return (folder / "rl_logs").is_dir() or (folder.is_dir() and last_complete_checkpoint(folder)[0] is not None)


def base_model_of(run_dir: Path) -> str:
    """The BASE_MODEL_PATH a run was tuned from, read from the constants smart.py saved in the run folder."""
    config = read_run_config(run_dir)
    if config is not None and "BASE_MODEL_PATH" in config:
        return config["BASE_MODEL_PATH"]
    raise ValueError(f"{run_dir} has no {RUN_CONFIG_FILE} naming BASE_MODEL_PATH; "
                     f"give the base model explicitly: evaluation.py base=MODEL tuned={run_dir}")


def slug(name: str) -> str:
    """A system name that is safe as a folder name and in a URL."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "system"


def parse_systems(specs: Sequence[str]) -> tuple[dict[str, str], Path | None]:
    """``[NAME=]PATH`` arguments -> ordered name -> path, and the run folder whose logs to plot (if any).

    A single run folder expands to its base model ("base") and its tuned model ("tuned").
    """
    systems: dict[str, str] = {}
    run_dir = None
    for spec in specs:
        name, path = split_spec(spec)
        folder = Path(path)
        if not folder.exists() and not is_hub_id(path):
            raise FileNotFoundError(f"system {spec!r}: {path} does not exist")
        if run_dir is None and is_run_dir(folder):
            run_dir = folder
        name = slug(name or folder.resolve().name)
        while name in systems:
            name += "_"
        systems[name] = path
    if len(specs) == 1 and run_dir is not None and not split_spec(specs[0])[0]:
        systems = {"base": base_model_of(run_dir), "tuned": specs[0]}
    return systems, run_dir


def split_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare path (which may itself contain "=") -> ("", PATH)."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep and "/" not in name else ("", spec)


def is_model(source: str) -> bool:
    """Whether a system's samples must be generated (a model, checkpoint, run or hub id) or are MIDI files."""
    folder = Path(source)
    return weights_file(folder) is not None or is_run_dir(folder) or not folder.is_dir()


def sample_folder(name: str, source: str, out: Path, settings: GenerationSettings, device: str | None) -> Path:
    """The folder of MIDI files of a system: the folder itself, or pieces sampled now from a model."""
    if not is_model(source):
        return Path(source)
    model = resolve_model_dir(source)
    print(f"[evaluation] {name}: sampling {settings.n} pieces from {model}")
    generate_pieces(model, out / "samples" / name, settings, device=device)
    return out / "samples" / name


def source_description(source: str) -> str:
    """What a system's samples come from, for the report."""
    return f"sampled from model {resolve_model_dir(source)}" if is_model(source) else f"MIDI files in {source}"


# ---------------------------------------------------------------------------------------------------------------
# MIDI


def read_system(name: str, folder: Path, max_beats: int | None) -> tuple[list[dict], list[symusic.Score]]:
    """Every readable MIDI file of a folder as a features.csv row and a score (unreadable files are reported)."""
    prompts = read_samples_csv(folder)
    rows, scores = [], []
    for path in tqdm(list_midi_files(folder), desc=f"{name}: MIDI features", unit="file", leave=False):
        try:
            score = symusic.Score(str(path))
        except Exception as error:  # symusic raises several types on corrupt files
            print(f"[evaluation] {name}: skipped unreadable {path}: {error}")
            continue
        if max_beats is not None:
            score = crop_score(score, max_beats)
        sample = str(path.relative_to(folder))
        rows.append({"system": name, "sample": sample, "prompt": prompts.get(sample, ""), "midi_path": str(path),
                     "audio_file": "", **features.compute_features(score)})
        scores.append(score)
    if not scores:
        raise ValueError(f"system {name}: no readable MIDI file in {folder}")
    return rows, scores


# ---------------------------------------------------------------------------------------------------------------
# Audio


def load_audiobox(checkpoint: str | None, device: str | None = None) -> tuple[Processor | None, str | None]:
    """The Audiobox scorer, or None and the reason it is skipped (never invented numbers)."""
    if checkpoint is None:
        return None, ("no checkpoint given: pass --audiobox PATH (a checkpoint.pt) or --audiobox hub "
                      "(downloads facebook/audiobox-aesthetics, needs a network)")
    if checkpoint != "hub" and not Path(checkpoint).is_file():
        return None, f"checkpoint {checkpoint} does not exist"
    try:
        path = None if checkpoint == "hub" else checkpoint
        return AudioBoxAesRewardProcessor(path, device=compute_device(device)), None
    except Exception as error:  # hub/network/format errors all mean the same here: no scores
        return None, f"loading checkpoint {checkpoint!r} failed: {type(error).__name__}: {error}"


def named_reward_processors(names: Sequence[str], constants: Mapping[str, Any], device: str | None = None
                            ) -> list[Processor]:
    """Processors for the rewards the user named, built from ``constants`` (a run's, or smart.py's defaults) on
    ``device``; Audiobox axes are excluded (they are the CE..PQ columns)."""
    unknown = [n for n in names if reward_class(n, constants) is None]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known: {', '.join(known_rewards(constants))}")
    return build_reward_processors([n for n in names if n not in AES_AXES], constants, compute_device(device))


def audio_scores(
    scores: list[symusic.Score], synth: TinySoundfontSynthProcessor, scorers: list[Processor], desc: str,
    on_clip: Callable[[int, np.ndarray], None] | None = None,
) -> list[dict[str, float]]:
    """Render each score and run the scorers; return per-score audio-domain values (Audiobox axes, reward_*).

    Works in chunks and hands each clip to ``on_clip(index, audio)`` before dropping it, so that memory stays
    flat however many samples there are.
    """
    values = []
    for start in tqdm(range(0, len(scores), CHUNK), desc=desc, unit="chunk", leave=False):
        records = [score_record(i, s) for i, s in enumerate(scores[start : start + CHUNK], start)]
        synth(records)
        for scorer in scorers:
            scorer(records)
        for record in records:
            rewards = {f"reward_{k}": v for k, v in record["normalized_rewards"].items() if k not in AES_AXES}
            values.append({**record.get("aes_scores", {}), **rewards})
            if on_clip is not None:
                on_clip(record["idx"], record["audio"])
    return values


def write_listening_clip(stem: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """A clip for the report's players: MP3 (~0.15 MB per 10 s, every browser plays it) or WAV where this
    libsndfile cannot encode MP3. The scores are computed from the unencoded audio, never from this file."""
    path = stem.parent / (stem.name + (".mp3" if MP3 else ".wav"))
    encoding = {"format": "MP3", "subtype": "MPEG_LAYER_III"} if MP3 else {"subtype": "PCM_16"}
    soundfile.write(path, np.asarray(audio).T, sample_rate, **encoding)
    return path


def held_out_soundfonts(requested: Sequence[str] | None, main_path: str) -> dict[str, str]:
    """label -> path of the soundfonts to re-render with; ``None`` = every known soundfont found on this machine.

    Soundfonts the user named must exist (raises SoundfontNotFound); the main soundfont is never repeated.
    """
    if requested is None:
        found = {}
        for name in KNOWN_SOUNDFONTS:
            try:
                found[name] = resolve_soundfont(name, download=False)
            except SoundfontNotFound:
                continue
    else:
        found = {soundfont_label(name): resolve_soundfont(name) for name in requested}
    main = os.path.realpath(main_path)
    return {label: path for label, path in found.items() if os.path.realpath(path) != main}


def robustness_rows(
    table: pd.DataFrame, scores: Mapping[str, list[symusic.Score]], main_label: str, others: Mapping[str, str],
    scorers: list[Processor], audio_metrics: list[str], sample_rate: int, max_audio_seconds: float,
) -> pd.DataFrame:
    """Long table (system, sample, soundfont, metric, value): the main scores and each re-rendering's."""
    rows = [{"system": r.system, "sample": r.sample, "soundfont": main_label, "metric": m, "value": getattr(r, m)}
            for r in table.itertuples() for m in audio_metrics]
    for label, path in others.items():
        synth = TinySoundfontSynthProcessor(path, sample_rate, max_audio_seconds)
        for system, system_scores in scores.items():
            values = audio_scores(system_scores, synth, scorers, f"{system}: {label}")
            samples = table.loc[table.system == system, "sample"]
            rows += [{"system": system, "sample": s, "soundfont": label, "metric": m, "value": v.get(m, np.nan)}
                     for s, v in zip(samples, values) for m in audio_metrics]
    return pd.DataFrame(rows, columns=["system", "sample", "soundfont", "metric", "value"])


# ---------------------------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate_systems(
    systems: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    constants: Mapping[str, Any],
    generation: GenerationSettings | None = None,
    soundfont: str | None = "timgm6mb",
    robustness_soundfonts: Sequence[str] | None = None,
    audiobox: str | None = None,
    reward_names: Sequence[str] = (),
    run_dir: str | Path | None = None,
    listen: int | None = 100,
    max_beats: int | None = None,
    permutations: int = 10_000,
    device: str | None = None,
) -> Path:
    """Evaluate systems side by side and write the report folder; return the path of its report.html.

    systems: name -> model directory, checkpoint, run folder or MIDI folder; the first is the reference.
    generation: how pieces are sampled from the model systems (same prompts and seed for all of them).
    soundfont: renderer for the audio-domain scores and the listening clips; None = no audio at all.
    robustness_soundfonts: held-out soundfonts to re-render with; None = every known one found here, () = none.
    audiobox: a checkpoint.pt path, "hub", or None (the CE/CU/PC/PQ columns are then skipped, with the reason).
    constants: smart.py's constants (a run's, or its defaults): how clips are rendered (SAMPLE_RATE,
        MAX_AUDIO_DURATION) and how the named rewards are built (their CLAP prompts, models, ...).
    reward_names: rewards (a Processor's REWARDS) to compute per sample as reward_<name> columns.
    run_dir: a SMART run whose reward logs and KL to plot.
    listen: how many samples per system get an audio player in report.html (None = all; the default 100
        covers a default-sized run, and keeps a 10,000-file dataset folder from writing 10,000 MP3s).
    max_beats: crop MIDI-folder pieces to this many beats (generated pieces are already cropped as in training).
    device: where sampling, Audiobox and the rewards' models run (None: the GPU if there is one).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generation = generation or GenerationSettings()
    sample_rate, max_audio_seconds = constants["SAMPLE_RATE"], constants["MAX_AUDIO_DURATION"]
    reward_scorers = named_reward_processors(reward_names, constants, device)
    skipped: dict[str, str] = {}
    folders = {name: sample_folder(name, str(source), out, generation, device) for name, source in systems.items()}
    rows, scores = [], {}
    for name, folder in folders.items():
        system_rows, scores[name] = read_system(name, folder, max_beats)
        rows += system_rows
    table = pd.DataFrame(rows)

    robustness = None
    main_label = soundfont_label(soundfont) if soundfont else None
    if soundfont is None:
        skipped["audio"] = "no soundfont given: no rendering, no Audiobox scores, no audio rewards, no players"
    else:
        main_path = resolve_soundfont(soundfont)
        aes, why_not = load_audiobox(audiobox, device)
        if why_not:
            skipped["Audiobox aesthetics (CE, CU, PC, PQ)"] = why_not
        scorers = ([aes] if aes else []) + reward_scorers
        table = add_audio_scores(table, scores, out, main_path, scorers, listen, sample_rate, max_audio_seconds)
        audio_metrics = [c for c in table.columns if c in AES_AXES or c.startswith("reward_")]
        others = held_out_soundfonts(robustness_soundfonts, main_path)
        if not audio_metrics:
            skipped["soundfont robustness"] = "no audio-domain score to compare (no Audiobox, no reward named)"
        elif not others:
            skipped["soundfont robustness"] = ("no held-out soundfont: name some with --robustness-soundfonts "
                                               "(apt-get install fluid-soundfont-gm musescore-general-soundfont)")
        else:
            robustness = robustness_rows(
                table, scores, main_label, others, scorers, audio_metrics, sample_rate, max_audio_seconds)

    run = Path(run_dir) if run_dir is not None else None
    if run is None:
        skipped["training curves"] = "no run folder given"
    evaluation = Evaluation(
        table=table, scores=scores, sources={name: source_description(str(source)) for name, source in systems.items()},
        settings=report_settings(generation if any(map(is_model, map(str, systems.values()))) else None,
                                 soundfont, robustness, max_beats, sample_rate, max_audio_seconds),
        skipped=skipped,
        robustness=robustness, main_soundfont=main_label,
        run_logs=read_run_logs(run) if run else None, trainer_log=read_trainer_log(run) if run else None,
        same_prompts=all(is_model(str(source)) for source in systems.values()),
    )
    return write_report(evaluation, out, permutations)


def evaluate_run(
    run_dir: str | Path, config: Mapping[str, Any], n: int = 32, out_dir: str | Path | None = None, **overrides: Any
) -> Path:
    """smart.py's end-of-training report: the run's base model vs its tuned model, scored as it was trained.

    ``config`` is smart.py's resolved constants (BASE_MODEL_PATH, PROMPT_SOURCE, SOUNDFONT, REWARD_WEIGHTS, ...).
    Clips are rendered as in training: the run's SAMPLE_RATE and MAX_AUDIO_DURATION, and the soundfont file the
    run recorded in run_record.json (the same bytes, even if SOUNDFONT would resolve differently now).
    Both models answer ``n`` prompts drawn with seed SEED + 1, so they are not the first training prompts. The
    Audiobox axes are scored when the run optimised one of them (with its checkpoint, or the hub's); every
    other reward of REWARD_WEIGHTS becomes a reward_<name> column. No soundfont robustness by default (it costs
    a full re-scoring per soundfont). Writes ``<run>/eval`` unless ``out_dir``; ``overrides`` go to
    ``evaluate_systems`` (e.g. ``robustness_soundfonts=None`` to re-render with every other soundfont found).
    Ctrl-C (KeyboardInterrupt) stops it with a line saying that the tuned model is saved, then goes on up.
    """
    run = Path(run_dir)
    generation = GenerationSettings(
        n=n, prompt_source=config["PROMPT_SOURCE"], prompt_midi_dir=config["PROMPT_MIDI_DIR"], seed=config["SEED"] + 1,
        max_new_tokens=config["MAX_COMPLETION_LENGTH"], temperature=config["TEMPERATURE"], top_k=config["TOP_K"],
        top_p=config["TOP_P"], max_beats=config["MAX_BEATS"],
    )
    uses_audiobox = "audiobox" in weight_models(list(config["REWARD_WEIGHTS"]), config)
    record = run / RECORD_FILE
    soundfont = json.loads(record.read_text())["soundfont"]["path"] if record.is_file() else config["SOUNDFONT"]
    options = dict(
        constants=config, generation=generation, soundfont=soundfont, run_dir=run, robustness_soundfonts=(),
        audiobox=(config["AUDIOBOX_CHECKPOINT"] or "hub") if uses_audiobox else None,
        reward_names=[name for name in config["REWARD_WEIGHTS"] if name not in AES_AXES],
    )
    systems = {"base": config["BASE_MODEL_PATH"], "tuned": str(run)}
    out = Path(out_dir or run / "eval")
    try:
        return evaluate_systems(systems, out, **{**options, **overrides})
    except KeyboardInterrupt:  # Ctrl-C once training is over: the run is complete, only its report is not
        print(f"\n[smart] evaluation interrupted: the tuned model is saved in {run}; {out} is incomplete. Redo the "
              f"report with: python evaluation.py {run} --out {out}")
        raise


def add_audio_scores(
    table: pd.DataFrame, scores: Mapping[str, list[symusic.Score]], out: Path, soundfont_path: str,
    scorers: list[Processor], listen: int | None, sample_rate: int, max_audio_seconds: float,
) -> pd.DataFrame:
    """Render every sample once with the main soundfont: audio-domain columns, and a clip for the report's
    player for the first ``listen`` samples of each system (all when None)."""
    synth = TinySoundfontSynthProcessor(soundfont_path, sample_rate, max_audio_seconds)
    parts = []
    for system, system_scores in scores.items():
        rows = table[table.system == system].reset_index(drop=True)
        save = clip_saver(rows, out, out / "audio" / system, listen, sample_rate)
        values = audio_scores(system_scores, synth, scorers, f"{system}: audio", save)
        parts.append(pd.concat([rows, pd.DataFrame(values, index=rows.index)], axis=1))
    return pd.concat(parts, ignore_index=True)


def clip_saver(
    rows: pd.DataFrame, out: Path, folder: Path, listen: int | None, sample_rate: int
) -> Callable[[int, np.ndarray], None]:
    """An ``on_clip`` that writes the first ``listen`` clips into ``folder`` and notes each in ``rows.audio_file``
    (relative to ``out``, as report.html links it)."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(k: int, audio: np.ndarray) -> None:
        if listen is None or k < listen:
            stem = folder / f"{k:04d}_{slug(Path(rows.at[k, 'sample']).stem)}"
            rows.at[k, "audio_file"] = write_listening_clip(stem, audio, sample_rate).relative_to(out).as_posix()

    return save


def report_settings(
    generation: GenerationSettings | None, soundfont: str | None, robustness: pd.DataFrame | None,
    max_beats: int | None, sample_rate: int, max_audio_seconds: float,
) -> dict[str, str]:
    """The lines at the top of the report that say how samples were made and scored."""
    settings = {"soundfont": str(soundfont), "rendering": f"{sample_rate} Hz, at most {max_audio_seconds} s"}
    if generation is not None:
        g = generation
        settings["sampling (model systems)"] = (
            f"{g.n} pieces, prompts {g.prompt_source!r}, seed {g.seed}, {g.max_new_tokens} new tokens, "
            f"temperature {g.temperature}, top-k {g.top_k}, top-p {g.top_p}, cropped to {g.max_beats} beats")
    if robustness is not None:
        settings["held-out soundfonts"] = ", ".join(sorted(set(robustness.soundfont) - {soundfont_label(soundfont)}))
    if max_beats is not None:
        settings["MIDI folders cropped to"] = f"{max_beats} beats"
    return settings
