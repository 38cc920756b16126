"""smart.py end to end, resuming: a run killed at any point continues with ``python smart.py --RESUME=<run_dir>``:
same final step, reward steps numbered on, and no artefact of a completed step rewritten (redone steps' old files
move to interrupted/)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from conftest import ROOT

STEPS = 8  # enough that the SIGTERM below lands before the last step, however fast steps are


def start_smart(args: list[str], log: Path) -> subprocess.Popen:
    # Resumed runs may only unpickle plain weights: TORCH_FORCE_WEIGHTS_ONLY_LOAD makes any other torch.load fail.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
    return subprocess.Popen([sys.executable, "smart.py", *args], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_for(process: subprocess.Popen, *paths: Path, timeout: float = 300) -> None:
    """Poll until every path exists; fail if the run ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        assert process.poll() is None, f"smart.py ended (rc {process.returncode}) before {paths} existed"
        assert time.monotonic() < deadline, f"{paths} did not appear within {timeout} s"
        time.sleep(0.05)


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def snapshot(run_dir: Path, parts: list[str]) -> dict[str, tuple[str, int]]:
    """Hash and mtime of every file under the given parts of the run directory."""
    files = [f for part in parts for f in sorted((run_dir / part).rglob("*")) if f.is_file()]
    return {str(f.relative_to(run_dir)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in files}


def test_sigkill_then_resume_then_sigterm_then_resume_continues_the_run(tmp_path, tiny_policy):
    run_dir = tmp_path / "run"
    args = [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            f"--NUM_TRAIN_STEPS={STEPS}", "--SAVE_STEPS=2", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2",
            "--MAX_COMPLETION_LENGTH=32", "--AUDIO_SAVE_INTERVAL=1", "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1",
            f"--OUTPUT_DIR={run_dir}"]

    # 1. Killed without warning during step 3, after checkpoint-2 and reward step 2's log were written.
    first = start_smart(args, tmp_path / "first.log")
    wait_for(first, run_dir / "checkpoint-2" / "trainer_state.json", run_dir / "rl_logs" / "2" / "logs.parquet")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    completed_parts = ["rl_logs/0", "rl_logs/1", "midi/0", "midi/1", "audio/0", "audio/1", "checkpoint-2"]
    completed = snapshot(run_dir, completed_parts)
    assert len(completed) > 20
    step2_log = hashlib.sha256((run_dir / "rl_logs" / "2" / "logs.parquet").read_bytes()).hexdigest()
    half_saved = run_dir / "checkpoint-3"  # as a kill in the middle of a save leaves it: no trainer_state.json
    half_saved.mkdir()
    (half_saved / "model.safetensors").write_bytes(b"truncated")

    # 2. Resumed with the one documented command, then stopped with SIGTERM during its first step.
    second = start_smart([f"--RESUME={run_dir}"], tmp_path / "second.log")
    wait_for(second, run_dir / "interrupted")  # the killed run's step 2 moved away,
    wait_for(second, run_dir / "rl_logs" / "2" / "logs.parquet")  # and step 2 redone
    second.send_signal(signal.SIGTERM)
    output = finish(second, tmp_path / "second.log")
    assert f"(resuming from {run_dir / 'checkpoint-2'})" in output
    assert "SIGTERM: saving a checkpoint after this step" in output
    stopped = re.search(rf"stopped at step (\d+); continue with: python smart.py --RESUME={run_dir}\n", output)
    assert stopped is not None and 3 <= int(stopped.group(1)) < STEPS, output[-2000:]
    stop_step = int(stopped.group(1))
    state = json.loads((run_dir / f"checkpoint-{stop_step}" / "trainer_state.json").read_text())
    assert state["global_step"] == stop_step

    # 3. Resumed again: runs to the end.
    output = finish(start_smart([f"--RESUME={run_dir}"], tmp_path / "third.log"), tmp_path / "third.log")
    assert f"(resuming from {run_dir / f'checkpoint-{stop_step}'})" in output and "[smart] done" in output

    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    assert [entry["step"] for entry in state["log_history"] if "reward" in entry] == list(range(1, STEPS + 1))
    for step in range(STEPS):
        rows = pq.read_table(run_dir / "rl_logs" / str(step) / "logs.parquet").to_pylist()
        assert len(rows) == 4 and {row["reward_step"] for row in rows} == {step}
        assert len(list((run_dir / "midi" / str(step)).glob("*.mid"))) == 4
        assert len(list((run_dir / "audio" / str(step)).glob("*.wav"))) == 4
    assert sorted(p.name for p in (run_dir / "rl_logs").iterdir()) == [str(step) for step in range(STEPS)]

    # Completed steps' files were never rewritten; the killed run's step 2 and its half-saved checkpoint moved.
    assert snapshot(run_dir, completed_parts) == completed
    [archive] = (run_dir / "interrupted").iterdir()
    assert hashlib.sha256((archive / "rl_logs" / "2" / "logs.parquet").read_bytes()).hexdigest() == step2_log
    assert (archive / "checkpoint-3" / "model.safetensors").read_bytes() == b"truncated"

    # The resumed run redid step 2 with the same prompts and the same samples: data order and RNG were restored.
    redone = pq.read_table(run_dir / "rl_logs" / "2" / "logs.parquet").to_pylist()
    killed = pq.read_table(archive / "rl_logs" / "2" / "logs.parquet").to_pylist()
    assert [row["prompt"] for row in redone] == [row["prompt"] for row in killed]
    assert [row["completion"] for row in redone] == [row["completion"] for row in killed]
