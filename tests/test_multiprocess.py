"""Two processes (accelerate launch, gloo on the CPU): each rank writes its own artefacts, and the reward TRL logs
is the mean over both ranks' completions."""

import json
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import ROOT

STEPS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_write_their_own_artefacts_and_log_the_all_rank_mean(tmp_path, tiny_policy):
    run_dir = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    args = [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            f"--NUM_TRAIN_STEPS={STEPS}", f"--SAVE_STEPS={STEPS}", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2",
            "--MAX_COMPLETION_LENGTH=32", "--AUDIO_SAVE_INTERVAL=1", "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1",
            f"--OUTPUT_DIR={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launch, "smart.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    logged = {entry["step"]: entry["reward"] for entry in state["log_history"] if "reward" in entry}
    for step in range(STEPS):
        assert sorted(p.name for p in (run_dir / "rl_logs" / str(step)).iterdir()) == [
            "logs.rank0.parquet", "logs.rank1.parquet"]
        ranks = [pq.read_table(run_dir / "rl_logs" / str(step) / f"logs.rank{k}.parquet").to_pylist() for k in (0, 1)]
        assert [len(rows) for rows in ranks] == [4, 4]
        assert {row["prompt"] for row in ranks[0]}.isdisjoint(row["prompt"] for row in ranks[1])  # sharded prompts
        rewards = [row["reward"] for rows in ranks for row in rows]
        assert logged[step + 1] == pytest.approx(sum(rewards) / len(rewards), abs=1e-6)
        for folder in ("midi", "audio"):
            names = [p.name for p in (run_dir / folder / str(step)).iterdir()]
            assert sorted(name[:6] for name in names) == ["rank0_"] * 4 + ["rank1_"] * 4, names
    assert (run_dir / "model.safetensors").is_file()
