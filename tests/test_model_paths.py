"""smart_utils/model_paths.py: which model a path stands for (a model folder, a run's final model or its latest
complete checkpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smart_utils.model_paths import resolve_model_dir


def test_a_run_folder_stands_for_its_final_model_or_latest_checkpoint(tiny_policy: Path, tmp_path: Path):
    run = tmp_path / "run"
    for step in (2, 10, 20):
        shutil.copytree(tiny_policy, run / f"checkpoint-{step}")
    for step in (2, 10):  # the Trainer writes trainer_state.json last: checkpoint-20 was cut short
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert resolve_model_dir(run) == run / "checkpoint-10"
    shutil.copy(tiny_policy / "model.safetensors", run / "model.safetensors")
    assert resolve_model_dir(run) == run
    with pytest.raises(FileNotFoundError):
        resolve_model_dir(tmp_path / "empty")
