"""smart.py end to end on the paper's own path: its hub defaults (lucacasini/metamidipianophi3_4L,
facebook/audiobox-aesthetics), loaded by the real hub code from a pre-filled Hugging Face cache with HF_HUB_OFFLINE=1,
through the whole chain, and the run folder records what was used; compare_runs.py compares two such folders, and
generate.py and evaluation.py take the hub id too."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench.standins import AUDIOBOX_HUB_ID, POLICY_HUB_ID, fill_paper_hub_cache
from conftest import ROOT
from smart_utils.run_record import RECORD_FILE, differences


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    """An environment whose HF cache holds both hub repos (stand-ins), offline; and repo id -> commit."""
    work = tmp_path_factory.mktemp("hub")
    commits = fill_paper_hub_cache(work / "hf", work)
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(work / "xdg"),
           "PYTHONUNBUFFERED": "1"}
    return env, commits


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def hub_run(hub_env, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    env, _ = hub_env
    run_dir = tmp_path_factory.mktemp("runs") / "paper-defaults"
    result = run(
        "smart.py", "--SOUNDFONT=timgm6mb", "--NUM_TRAIN_STEPS=2", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2",
        "--MAX_COMPLETION_LENGTH=24", "--SAVE_STEPS=100", "--EVAL_SAMPLES=2", "--RENDER_WORKERS=1",
        f"--OUTPUT_DIR={run_dir}", env=env,
    )
    return run_dir, result


def test_default_model_and_audiobox_train_two_steps_from_the_hf_cache(hub_run):
    run_dir, result = hub_run
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run_dir / "smart_config.json").read_text())["config"]
    assert config["BASE_MODEL_PATH"] == POLICY_HUB_ID and config["AUDIOBOX_CHECKPOINT"] is None
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    for step in (0, 1):
        rows = pq.read_table(run_dir / "rl_logs" / str(step) / "logs.parquet").to_pylist()
        assert len(rows) == 4 and all(0 < row["normalized_rewards"]["CE"] < 1 for row in rows)
    features = (run_dir / "eval" / "features.csv").read_text().splitlines()
    assert len(features) == 1 + 2 * 2 and "CE" in features[0].split(",")  # the hub base model vs the tuned one


def test_the_run_folder_records_soundfont_models_device_and_versions(hub_run, hub_env):
    run_dir, result = hub_run
    _, commits = hub_env
    record = json.loads((run_dir / RECORD_FILE).read_text())
    from smart_utils.soundfont_sources import resolve_soundfont

    soundfont = Path(resolve_soundfont("timgm6mb"))
    assert record["soundfont"]["sha256"] == hashlib.sha256(soundfont.read_bytes()).hexdigest()
    assert record["soundfont"]["bytes"] == soundfont.stat().st_size
    assert record["soundfont"]["original_smart_file"] is False
    assert record["base_model"] == {"source": "hub", "id": POLICY_HUB_ID, "commit": commits[POLICY_HUB_ID]}
    assert record["audiobox"] == {"source": "hub", "id": AUDIOBOX_HUB_ID, "commit": commits[AUDIOBOX_HUB_ID]}
    assert record["compute"]["device"] == "cpu" and record["compute"]["policy_dtype"] == "float32"
    assert record["compute"]["mixed_precision"] == "no"
    expected = {"torch", "transformers", "trl", "accelerate", "miditok", "symusic", "tinysoundfont",
                "audiobox_aesthetics"}
    assert expected <= {name for name, version in record["versions"].items() if version}
    assert f"[run] soundfont  {soundfont.resolve()}" in result.stdout
    assert f"[run] base model {POLICY_HUB_ID} @ {commits[POLICY_HUB_ID]}" in result.stdout


def test_two_runs_compare_from_their_folders(hub_run, tmp_path):
    run_dir, _ = hub_run
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((run_dir / RECORD_FILE).read_text())
    record["versions"]["trl"] = "0.16.1"
    record["soundfont"]["sha256"] = "0" * 64
    (other / RECORD_FILE).write_text(json.dumps(record))
    config = json.loads((run_dir / "smart_config.json").read_text())
    config["config"]["BETA"] = 0.0
    (other / "smart_config.json").write_text(json.dumps(config))
    changed = {key for key, _, _ in differences(run_dir, other)}
    assert changed == {"versions.trl", "soundfont.sha256", "config.BETA"}
    result = subprocess.run([sys.executable, "compare_runs.py", str(run_dir), str(other)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "versions.trl: '1.16.0' -> '0.16.1'" in result.stdout


def test_generate_and_evaluate_accept_the_hub_id(hub_env, tmp_path):
    env, _ = hub_env
    result = run("generate.py", POLICY_HUB_ID, "--n", "2", "--max-new-tokens", "16", "--out", str(tmp_path / "g"),
                 env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "g").glob("*.mid"))) == 2
    result = run("evaluation.py", f"base={POLICY_HUB_ID}", str(tmp_path / "g"), "--n", "2", "--max-new-tokens", "16",
                 "--soundfont", "none", "--out", str(tmp_path / "e"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "e" / "summary.md").read_text()
    assert f"sampled from model {POLICY_HUB_ID}" in summary
