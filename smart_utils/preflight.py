"""Check a resolved SMART config before anything slow happens: no model load, no generation.

``check_config`` returns one message per problem, each naming the constant, its bad value and a fix, so a
mistake costs seconds instead of a model load (or an hour of training before a crash in a reward step).
Network checks are quick: a hub id is looked up once with a short timeout, and the HF cache counts as present.
``gpu_problems`` checks the machine instead (a GPU torch cannot use, the build tools Triton needs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smart_utils.model_paths import is_hub_id
from smart_utils.pam_prompts import PAM_AVERAGE
from smart_utils.prompts import PROMPT_SOURCES
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont

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
    if not is_hub_id(path):
        return f"BASE_MODEL_PATH={path!r} is neither an existing local directory nor a hub id 'owner/name'"
    problem = hub_problem(path, "config.json")
    return f"BASE_MODEL_PATH={path!r}: {problem}. {OFFLINE_HINT}" if problem else None


def _positive(config: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [f"{key}={config[key]!r} must be > 0" for key in keys if key in config and not config[key] > 0]


PAIR_KEYS = ("negative", "positive", "shorthand")  # a PAM_PROMPTS entry's keys


def _pam_problems(pairs: Any) -> list[str]:
    """PAM_PROMPTS must be a list of {shorthand, positive, negative}; a shorthand names a reward, so once only."""
    if not (isinstance(pairs, list) and all(isinstance(p, dict) and sorted(p) == list(PAIR_KEYS) for p in pairs)):
        return [f"PAM_PROMPTS={pairs!r} must be a list of dicts with exactly the keys {list(PAIR_KEYS)}"]
    names = [p["shorthand"] for p in pairs]
    taken = sorted({n for n in names if n == PAM_AVERAGE})
    repeated = sorted({n for n in names if names.count(n) > 1})
    return [f"PAM_PROMPTS: shorthand {n!r} is {why}; rename it" for why, found in
            (("the name of their mean", taken), ("used twice", repeated)) for n in found]


def check_config(config: dict[str, Any], world_size: int = 1) -> list[str]:
    """Every problem with a resolved smart.py config, as messages a user can act on; empty when runnable. The
    rewards' own problems (unknown names, missing weights) are processors.reward_problems'."""
    problems = _positive(
        config,
        ("NUM_TRAIN_STEPS", "BATCH_SIZE", "NUM_GENERATIONS", "LEARNING_RATE", "MAX_COMPLETION_LENGTH",
         "MAX_BEATS", "SAMPLE_RATE", "MAX_AUDIO_DURATION", "SAVE_STEPS", "AUDIO_SAVE_INTERVAL",
         "GRADIENT_ACCUMULATION_STEPS", "NUM_ITERATIONS", "TEMPERATURE", "CLAP_TEMPERATURE", "PAM_TEMPERATURE"),
    )
    if config.get("AUDIOBOX_BATCH_SIZE") is not None and config["AUDIOBOX_BATCH_SIZE"] < 1:
        problems.append(
            f"AUDIOBOX_BATCH_SIZE={config['AUDIOBOX_BATCH_SIZE']!r} must be >= 1, or None (fit the free GPU memory)"
        )
    if config.get("CLAP_BATCH_SIZE") is not None and config["CLAP_BATCH_SIZE"] < 1:
        problems.append(f"CLAP_BATCH_SIZE={config['CLAP_BATCH_SIZE']!r} must be >= 1, or None (the whole batch)")
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

    problems += _pam_problems(config.get("PAM_PROMPTS", []))

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

    model_problem = _model_problem(config["BASE_MODEL_PATH"])
    if model_problem:
        problems.append(model_problem)
    return problems


def gpu_problems(which: Callable[[str], str | None] | None = None, run: Callable[..., Any] | None = None) -> list[str]:
    """What stops this machine from training on its GPU, as messages that say what to install; empty when fine.

    - ``nvidia-smi`` lists a GPU but torch cannot use it: the installed torch build needs a newer driver
      (PyPI's torch 2.14 is built for CUDA 13) or is a CPU build, and training would silently run on the CPU
      for days. ``CUDA_VISIBLE_DEVICES=""`` (no GPU, on purpose) skips this.
    - torch sees the GPU but was not built for its compute capability (a V100 with the CUDA 13 build): the
      first kernel would fail.
    - TRL's log-prob kernel is Triton on CUDA, and Triton compiles a C helper at its first launch: that needs
      a C compiler (``$CC``, gcc or clang, the ones Triton looks for) and Python's headers (``Python.h``).
    ``which`` and ``run`` default to ``shutil.which`` and ``subprocess.run``; tests pass stand-ins.
    """
    import torch

    which = which or shutil.which
    run = run or subprocess.run

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    with warnings.catch_warnings(record=True) as caught:  # torch warns why CUDA cannot start (driver too old)
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        gpus = _nvidia_smi_gpus(which, run)
        if not gpus:
            return []
        reason = "; ".join(str(w.message).strip().splitlines()[0] for w in caught) or "no reason given"
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return [
            f"nvidia-smi sees {', '.join(gpus)} but torch {torch.__version__} ({build}) cannot use it ({reason}); "
            f"training would run on the CPU instead. {_driver_hint(run)}Install the torch build for this driver: "
            f"rm -rf .venv && make setup CUDA=cu126 (see README 'Running on a GPU box'), or train on the CPU on "
            f"purpose with CUDA_VISIBLE_DEVICES= python smart.py ..."
        ]
    problems = [_capability_problem(torch, index) for index in range(torch.cuda.device_count())]
    problems = [problem for problem in problems if problem]
    missing = []
    if os.environ.get("CC") is None and not (which("gcc") or which("clang")):
        missing.append("a C compiler (gcc or clang, or set CC)")
    if not python_header().is_file():
        missing.append(f"Python's headers ({python_header()})")
    if missing:
        problems.append(
            f"TRL's log-prob kernel (Triton) compiles a small C helper on its first CUDA step and needs "
            f"{' and '.join(missing)}. Install them: apt-get install build-essential python3-dev (Debian/Ubuntu; "
            f"python{sys.version_info.major}.{sys.version_info.minor}-dev for a non-default Python), "
            f"dnf install gcc python3-devel (Fedora/RHEL), or conda install -c conda-forge gcc in a conda Python"
        )
    return problems


def python_header() -> Path:
    """Where Triton looks for ``Python.h`` (its scheme rule: Debian's posix_local reads as posix_prefix)."""
    scheme = sysconfig.get_default_scheme()
    include = sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    return Path(include) / "Python.h"


def _nvidia_smi_gpus(which: Callable[[str], str | None], run: Callable[..., Any]) -> list[str]:
    """The GPUs ``nvidia-smi -L`` lists ("NVIDIA A100-SXM4-40GB"), none where it is missing or fails."""
    if not which("nvidia-smi"):
        return []
    try:
        listing = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    return [match.group(1) for match in re.finditer(r"^GPU \d+: (.+?)(?: \(UUID|$)", listing.stdout, re.MULTILINE)]


def _driver_hint(run: Callable[..., Any]) -> str:
    """'The driver supports CUDA 12.4. ' from nvidia-smi's banner, or nothing."""
    try:
        banner = run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.search(r"CUDA Version:\s*([\d.]+)", banner or "")
    return f"The driver supports CUDA {found.group(1)}. " if found else ""


def _capability_problem(torch: Any, index: int) -> str | None:
    """Why torch's build cannot run kernels on GPU ``index``, or None if it can.

    A build's ``sm_XY`` code runs on GPUs of the same major version with minor >= Y; its ``compute_XY`` code (PTX)
    is compiled at load time for any GPU >= XY.
    """
    arch_list = torch.cuda.get_arch_list()
    if not arch_list:
        return None
    major, minor = torch.cuda.get_device_capability(index)
    device = 10 * major + minor
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        code = int(number.rstrip("af"))
        if (kind == "sm" and code // 10 == major and code <= device) or (kind == "compute" and code <= device):
            return None
    return (
        f"GPU {index}, {torch.cuda.get_device_name(index)} (compute capability {major}.{minor}), is not supported by "
        f"torch {torch.__version__} (built for {' '.join(arch_list)}): its first kernel would fail. Install a "
        f"build that covers it: rm -rf .venv && make setup CUDA=cu126 (sm_50 to sm_90; README 'Running on a GPU box')"
    )
