"""Read back what a SMART run logged while training: its reward logs and the trainer's log history.

``reward_manager.RewardManager`` writes ``rl_logs/<step>/logs*.parquet`` (one row per completion); TRL's trainer
writes ``trainer_state.json`` into every checkpoint. smart.py plots both at the end of a run (report.py's
``plot_training``), and evaluation.py adds them to its report when it is given a run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from smart_utils.run_folder import last_complete_checkpoint


def read_run_logs(run_dir: Path) -> pd.DataFrame | None:
    """Every training sample's reward_step, reward and normalised rewards (one column each) from rl_logs/."""
    files = sorted(run_dir.glob("rl_logs/*/logs*.parquet"))
    if not files:
        return None
    logs = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    per_reward = pd.DataFrame([r if isinstance(r, dict) else {} for r in logs.get("normalized_rewards", [])])
    return pd.concat([logs[["reward_step", "reward"]], per_reward], axis=1).sort_values("reward_step")


def read_trainer_log(run_dir: Path) -> pd.DataFrame | None:
    """The trainer's log history (loss, kl, reward per optimizer step) from the latest checkpoint."""
    last, _ = last_complete_checkpoint(run_dir) if run_dir.is_dir() else (None, [])
    state = Path(last or run_dir) / "trainer_state.json"
    if not state.is_file():
        return None
    return pd.DataFrame(json.loads(state.read_text()).get("log_history", []))
