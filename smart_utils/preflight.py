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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smart_utils.model_paths import is_hub_id
from smart_utils.pam_prompts import PAM_AVERAGE
from smart_utils.prompts import PROMPT_SOURCES
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont, soundfont_names

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


def _watch_problems(config: dict[str, Any]) -> list[str]:
    """The watch's and the stop rules' settings (smart_utils/watch.py): in range, and each rule with what it reads."""
    problems = []
    if config.get("SOUNDFONT_COMBINE", "mean") not in ("mean", "min"):
        problems.append(f"SOUNDFONT_COMBINE={config['SOUNDFONT_COMBINE']!r} must be 'mean' or 'min'")
    if isinstance(config.get("SOUNDFONT"), list) and not config["SOUNDFONT"]:
        problems.append("SOUNDFONT=[] names no soundfont; give a name, a path or a list of them")
    fraction = config.get("STOP_DIVERSITY_FRACTION")
    if fraction is not None and not 0 < fraction < 1:
        problems.append(f"STOP_DIVERSITY_FRACTION={fraction!r} must be between 0 and 1 (e.g. 0.5), or None")
    if fraction is not None and not config.get("WATCH_DIVERSITY", True):
        problems.append("STOP_DIVERSITY_FRACTION needs WATCH_DIVERSITY=True: the rule reads the watched diversity")
    steps = config.get("STOP_JUDGE_STEPS")
    if steps is not None and steps < 2:
        problems.append(f"STOP_JUDGE_STEPS={steps!r} must be >= 2 (a trend needs two steps), or None")
    if steps is not None and not (config.get("WATCH_REWARDS") or config.get("WATCH_SOUNDFONTS")):
        problems.append("STOP_JUDGE_STEPS needs a held-out judge: name rewards in WATCH_REWARDS or soundfonts in "
                        "WATCH_SOUNDFONTS")
    return problems


def check_config(config: dict[str, Any], world_size: int = 1) -> list[str]:
    """Every problem with a resolved smart.py config, as messages a user can act on; empty when runnable. The
    rewards' own problems (unknown names, missing weights) are processors.reward_problems'."""
    problems = _positive(
        config,
        ("NUM_TRAIN_STEPS", "BATCH_SIZE", "NUM_GENERATIONS", "LEARNING_RATE", "MAX_COMPLETION_LENGTH",
         "MAX_BEATS", "SAMPLE_RATE", "MAX_AUDIO_DURATION", "SAVE_STEPS", "AUDIO_SAVE_INTERVAL",
         "GRADIENT_ACCUMULATION_STEPS", "NUM_ITERATIONS", "TEMPERATURE", "CLAP_TEMPERATURE", "PAM_TEMPERATURE",
         "WATCH_INTERVAL"),
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

    for key in ("SOUNDFONT", "WATCH_SOUNDFONTS"):
        for name in soundfont_names(config.get(key, [])):
            try:
                resolve_soundfont(name)
            except SoundfontNotFound as error:
                problems.append(f"{key}: {error}")
    problems += _watch_problems(config)

    model_problem = _model_problem(config["BASE_MODEL_PATH"])
    if model_problem:
        problems.append(model_problem)
    return problems


def gpu_problems(which: Callable[[str], str | None] | None = None, run: Callable[..., Any] | None = None,
                 ldconfig: Callable[[], str | None] | None = None) -> list[str]:
    """What stops this machine from training on its GPU, as messages that say what to install; empty when fine.

    - ``nvidia-smi`` lists a GPU but torch cannot use it: the installed torch build needs a newer driver
      (PyPI's torch 2.14 is built for CUDA 13) or is a CPU build, and training would silently run on the CPU
      for days. ``CUDA_VISIBLE_DEVICES=""`` (no GPU, on purpose) skips this.
    - torch sees the GPU but was not built for its compute capability (a V100 with the CUDA 13 build): the
      first kernel would fail.
    - TRL's log-prob kernel is Triton on CUDA, and Triton compiles a C helper at its first launch: that needs
      a C compiler (``$CC``, gcc or clang, the ones Triton looks for) and Python's headers (``Python.h``).
    - Triton links that helper against ``libcuda.so.1``, which it finds only through ``TRITON_LIBCUDA_PATH``, the
      linker cache or ``LD_LIBRARY_PATH`` (``libcuda_problem``): a container with a stale cache fails there.
    ``which`` and ``run`` default to ``shutil.which`` and ``subprocess.run``, ``ldconfig`` to ``ldconfig_listing``;
    tests pass stand-ins.
    """
    import torch

    which = which or shutil.which
    run = run or subprocess.run
    ldconfig = ldconfig or ldconfig_listing

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
    libcuda = libcuda_problem(ldconfig())
    if libcuda:
        problems.append(libcuda)
    return problems


LIBCUDA = "libcuda.so.1"  # the CUDA driver library Triton links against (-l:libcuda.so.1)
# Where drivers put it: Debian/Ubuntu, NVIDIA's container mounts, RHEL/SUSE, CUDA's forward-compat package, WSL.
LIBCUDA_PLACES = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib", "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/cuda/compat", "/usr/lib/wsl/lib",
)


def ldconfig_listing() -> str | None:
    """The linker cache as Triton reads it (``/sbin/ldconfig -p``), or None where that command fails."""
    try:
        listing = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return listing.stdout if listing.returncode == 0 else None


def _holds_libcuda(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, LIBCUDA))


def _cached_libcuda(listing: str | None) -> list[str]:
    """The paths the linker cache names for libcuda.so.1 ("libcuda.so.1 (libc6,x86-64) => /lib/.../libcuda.so.1")."""
    return [line.split()[-1] for line in (listing or "").splitlines() if LIBCUDA in line]


def triton_libcuda_dirs(listing: str | None, environ: Mapping[str, str]) -> list[str]:
    """The folders Triton links against libcuda.so.1 from (Triton 3's libcuda_dirs, triton/backends/nvidia/driver.py):
    ``TRITON_LIBCUDA_PATH`` as given; else those the linker cache names for it; only when the cache names none,
    the ``LD_LIBRARY_PATH`` folders holding it. Triton fails unless one of them holds the file."""
    if environ.get("TRITON_LIBCUDA_PATH"):
        return [environ["TRITON_LIBCUDA_PATH"]]
    cached = _cached_libcuda(listing)
    if cached:
        return [os.path.dirname(path) for path in cached]
    return [folder for folder in environ.get("LD_LIBRARY_PATH", "").split(":") if folder and _holds_libcuda(folder)]


def loaded_libcuda_dir(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The folder of the libcuda this process has loaded (torch loads it when it starts CUDA), or None."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    folders = (os.path.dirname(line.split(maxsplit=5)[-1]) for line in lines if "/libcuda.so" in line)
    return next((folder for folder in folders if _holds_libcuda(folder)), None)


def libcuda_problem(listing: str | None, environ: Mapping[str, str] = os.environ,
                    places: Sequence[str] | None = None) -> str | None:
    """Why Triton would not find ``libcuda.so.1`` on the first CUDA step (after the models have loaded), saying
    what to set, or None when it would.

    ``listing`` is ``ldconfig -p``'s output (None: it could not run, and Triton's own call would fail too).
    The fix names a folder that holds the file: the first of ``places`` that does (default: the folder of the
    driver this process loaded, then ``LIBCUDA_PLACES``). A ``TRITON_LIBCUDA_PATH`` without the file is always
    reported; otherwise, where no such folder exists (torch's CUDA answers come from no driver on this machine,
    as in tests), there is nothing to point at and nothing is said.
    """
    if any(_holds_libcuda(folder) for folder in triton_libcuda_dirs(listing, environ)):
        return None
    if places is None:
        places = [folder for folder in (loaded_libcuda_dir(), *LIBCUDA_PLACES) if folder]
    found = next((folder for folder in places if _holds_libcuda(folder)), None)
    cached = _cached_libcuda(listing)
    if environ.get("TRITON_LIBCUDA_PATH"):
        why = f"TRITON_LIBCUDA_PATH={environ['TRITON_LIBCUDA_PATH']} holds no {LIBCUDA}"
    elif found is None:
        return None
    elif listing is None:
        why = "/sbin/ldconfig -p, which Triton asks, could not run"
    elif cached:
        why = f"the linker cache names {', '.join(cached)}, which is not there (a stale cache: Triton then ignores " \
              "LD_LIBRARY_PATH)"
    else:
        why = "neither the linker cache (ldconfig -p) nor LD_LIBRARY_PATH has it"
    fix = f"export TRITON_LIBCUDA_PATH={found} (it holds {LIBCUDA})" if found else \
        f"export TRITON_LIBCUDA_PATH=<the folder holding {LIBCUDA}>"
    if not environ.get("TRITON_LIBCUDA_PATH"):  # a set one wins over the cache
        fix += ", or refresh the linker cache as root: ldconfig"
    return (f"TRL's log-prob kernel (Triton) links against {LIBCUDA} on its first CUDA step, after the models have "
            f"loaded, and would not find it: {why}. Fix: {fix}")


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
