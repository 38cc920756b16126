"""A SMART run's folder: where a new run goes, and how a stopped one continues in it without losing a file.

A run folder holds ``smart_config.json`` (the resolved constants, ``save_config``), ``checkpoint-<step>/`` (the
Trainer's), and one folder per reward step under ``rl_logs/``, ``midi/`` and ``audio/``. ``python smart.py
--RESUME=<run>`` reads the constants back (``configurator.resumed_config``), picks the newest checkpoint the Trainer
finished writing (``last_complete_checkpoint``) and moves aside what the resumed run will redo
(``archive_after_resume``).

Only the standard library is imported here: smart.py reads a resumed run's constants before its config is checked,
which is before torch, transformers and TRL load.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

RUN_CONFIG_FILE = "smart_config.json"  # the resolved constants (config.json is the model's); not a setting
LEGACY_CONFIG_FILE = "config.json"  # where the earliest runs saved them, beside nothing else of that name
RUNS_DIR = Path("artefacts/runs")  # where a run without OUTPUT_DIR gets its own new folder
STEP_FOLDERS = ("rl_logs", "midi", "audio")  # RewardManager's per-step output, one <step>/ folder each
CONFIG_FILES_DIR = "config_files"  # copies of the config files a run was started with, re-run when it resumes


def read_run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The constants smart.py saved in a run folder, or None when the folder holds none (not a run)."""
    for name in (RUN_CONFIG_FILE, LEGACY_CONFIG_FILE):
        try:
            return json.loads((Path(run_dir) / name).read_text())["config"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            continue
    return None


def save_config(run_dir: Path, config: dict[str, Any], config_files: list[str] | None = None) -> None:
    """Write the resolved constants, and a copy of each config file the run was started with, where
    ``configurator.resumed_config`` reads them back. The copies matter for a config file that defines a reward
    processor: a resumed run must define that class again before it can build its chain."""
    copies = []
    for index, path in enumerate(config_files or []):
        copy = Path(CONFIG_FILES_DIR) / f"{index:02d}-{Path(path).name}"
        (run_dir / copy).parent.mkdir(exist_ok=True)
        shutil.copyfile(path, run_dir / copy)
        copies.append(str(copy))
    (run_dir / RUN_CONFIG_FILE).write_text(json.dumps({"config": config, "config_files": copies}, indent=2))


def saved_config_files(run_dir: str | Path) -> list[Path]:
    """The copies of the config files a run was started with, in the order they were applied."""
    try:
        names = json.loads((Path(run_dir) / RUN_CONFIG_FILE).read_text()).get("config_files", [])
    except (OSError, json.JSONDecodeError):
        return []
    return [Path(run_dir) / name for name in names]


def new_run_dir(config: dict[str, Any]) -> Path:
    """A fresh run folder named after the model, prompts and beta; never one that exists."""
    name = f"{Path(config['BASE_MODEL_PATH']).name}-{config['PROMPT_SOURCE'].replace(' ', '-')}-beta{config['BETA']}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RUNS_DIR / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = RUNS_DIR / f"{name}-{stamp}-{suffix}"
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


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was saved at."""
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


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
