"""Check a resolved SMART config before anything slow happens: no model load, no generation.

``check_config`` returns one message per problem, each naming the constant, its bad value and a fix, so a
mistake costs seconds instead of a model load (or an hour of training before a crash in a reward step).
Network checks are quick: a hub id is looked up once with a short timeout, and the HF cache counts as present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processors import REWARD_PROCESSORS
from prompts import PROMPT_SOURCES
from soundfonts import SoundfontNotFound, resolve_soundfont

AUDIOBOX_HUB_ID = "facebook/audiobox-aesthetics"
OFFLINE_HINT = (
    "Without a network, run the offline preset: python smart.py config/local.py "
    "(shipped model models/piano-tiny, weight-free rewards)"
)


def hub_problem(repo_id: str, file_name: str) -> str | None:
    """Why ``file_name`` of a hub repo cannot be had (not cached and hub unreachable), or None if it can."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, file_name), str):
        return None
    try:
        HfApi().model_info(repo_id, timeout=5)
    except Exception as error:  # DNS failure, timeout, 404, gated repo: all mean "cannot fetch"
        return f"could not fetch {file_name!r} of hub repo {repo_id!r} ({type(error).__name__}: {error})"
    return None


def _model_problem(path: str) -> str | None:
    local = Path(path)
    if local.is_dir():
        missing = [name for name in ("config.json", "tokenizer.json") if not (local / name).is_file()]
        if missing:
            return f"BASE_MODEL_PATH={path!r} is a folder without {', '.join(missing)}; give a model directory"
        return None
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        return f"BASE_MODEL_PATH={path!r} is neither an existing local directory nor a hub id 'owner/name'"
    problem = hub_problem(path, "config.json")
    return f"BASE_MODEL_PATH={path!r}: {problem}. {OFFLINE_HINT}" if problem else None


def _positive(config: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [f"{key}={config[key]!r} must be > 0" for key in keys if key in config and not config[key] > 0]


def check_config(config: dict[str, Any], world_size: int = 1) -> list[str]:
    """Every problem with a resolved smart.py config, as messages a user can act on; empty when runnable."""
    problems = _positive(
        config,
        ("NUM_TRAIN_STEPS", "BATCH_SIZE", "NUM_GENERATIONS", "LEARNING_RATE", "MAX_COMPLETION_LENGTH",
         "MAX_BEATS", "SAMPLE_RATE", "MAX_AUDIO_DURATION", "SAVE_STEPS", "AUDIO_SAVE_INTERVAL",
         "GRADIENT_ACCUMULATION_STEPS", "NUM_ITERATIONS", "TEMPERATURE"),
    )
    if config["BETA"] < 0:
        problems.append(f"BETA={config['BETA']!r} must be >= 0 (0 disables the KL penalty)")
    if config["NUM_GENERATIONS"] < 2:
        problems.append(f"NUM_GENERATIONS={config['NUM_GENERATIONS']!r}: GRPO needs >= 2 completions per prompt")
    generation_batch = config["BATCH_SIZE"] * world_size * config["GRADIENT_ACCUMULATION_STEPS"]
    if config["NUM_GENERATIONS"] > 0 and generation_batch % config["NUM_GENERATIONS"]:
        problems.append(
            f"BATCH_SIZE={config['BATCH_SIZE']!r} (x {world_size} processes x GRADIENT_ACCUMULATION_STEPS) is not "
            f"divisible by NUM_GENERATIONS={config['NUM_GENERATIONS']!r}; use a multiple, e.g. "
            f"{config['NUM_GENERATIONS'] * max(1, config['BATCH_SIZE'] // max(1, config['NUM_GENERATIONS']))}"
        )

    weights = config["REWARD_WEIGHTS"]
    unknown = sorted(set(weights) - set(REWARD_PROCESSORS))
    if unknown:
        problems.append(
            f"REWARD_WEIGHTS has {unknown}, which no processor produces; known rewards: {sorted(REWARD_PROCESSORS)} "
            "(add a Processor and register it in processors.REWARD_PROCESSORS)"
        )
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        problems.append(f"REWARD_WEIGHTS={weights!r}: weights must be >= 0 and sum to more than 0")

    if config["PROMPT_SOURCE"] not in PROMPT_SOURCES:
        problems.append(f"PROMPT_SOURCE={config['PROMPT_SOURCE']!r} is not one of {PROMPT_SOURCES}")
    elif config["PROMPT_SOURCE"] == "dataset" and not (
        config["PROMPT_MIDI_DIR"] and Path(config["PROMPT_MIDI_DIR"]).is_dir()
    ):
        problems.append(f"PROMPT_MIDI_DIR={config['PROMPT_MIDI_DIR']!r}: PROMPT_SOURCE='dataset' needs a MIDI folder")

    try:
        resolve_soundfont(config["SOUNDFONT"])
    except SoundfontNotFound as error:
        problems.append(f"SOUNDFONT: {error}")

    uses_audiobox = any(REWARD_PROCESSORS.get(name) is REWARD_PROCESSORS["CE"] for name in weights)
    checkpoint = config["AUDIOBOX_CHECKPOINT"]
    if uses_audiobox and checkpoint is not None and not Path(checkpoint).is_file():
        problems.append(f"AUDIOBOX_CHECKPOINT={checkpoint!r} does not exist; give a checkpoint.pt path or None (hub)")
    elif uses_audiobox and checkpoint is None:
        problem = hub_problem(AUDIOBOX_HUB_ID, "model.safetensors")
        if problem:
            problems.append(
                f"AUDIOBOX_CHECKPOINT=None (the hub checkpoint): {problem}. Give a local checkpoint.pt, or "
                f"use weight-free rewards. {OFFLINE_HINT}"
            )

    model_problem = _model_problem(config["BASE_MODEL_PATH"])
    if model_problem:
        problems.append(model_problem)
    return problems
