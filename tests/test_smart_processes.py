"""smart.py end to end in two processes (gloo on the CPU standing in for two GPUs): each rank writes its own
artefacts, the reward TRL logs is the mean over both ranks' completions, and a SIGTERM to one rank stops both after
the same step with a checkpoint."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, free_port

STEPS = 2


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


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the smart.py processes started (at any depth) by the launcher."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    ranks, todo = {}, list(children.get(launcher_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "smart.py" in cmdline and "RANK" in environ and "--fork-server" not in cmdline:
            ranks[int(environ["RANK"])] = pid
    return ranks


def test_sigterm_to_one_rank_stops_both_ranks_after_the_same_step_with_a_checkpoint(tmp_path, tiny_policy):
    steps = 40  # far more than run before the signal lands
    run_dir = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), "smart.py"]
    args = [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            f"--NUM_TRAIN_STEPS={steps}", f"--SAVE_STEPS={steps}", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2",
            "--MAX_COMPLETION_LENGTH=32", "--AUDIO_SAVE_INTERVAL=100", "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1",
            f"--OUTPUT_DIR={run_dir}"]
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen([*launch, *args], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "rl_logs" / "1" / "logs.rank1.parquet").exists():
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "step 1 never finished"
            time.sleep(0.05)
        ranks = worker_pids(launcher.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGTERM)  # one rank only, as when a scheduler or a user signals one process
        launcher.wait(timeout=300)  # without agreement rank 0 would wait in a gather for the collective timeout
    finally:
        if launcher.poll() is None:
            launcher.kill()
    output = log.read_text()
    assert launcher.returncode == 0, output[-3000:]
    assert "SIGTERM: saving a checkpoint after this step" in output
    assert "another process was asked to stop" in output
    stopped = [int(step) for step in re.findall(r"stopped at step (\d+); continue with", output)]
    assert len(stopped) == 2 and stopped[0] == stopped[1] < steps, output[-3000:]
    state = json.loads((run_dir / f"checkpoint-{stopped[0]}" / "trainer_state.json").read_text())
    assert state["global_step"] == stopped[0]
