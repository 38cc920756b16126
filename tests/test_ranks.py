"""smart_utils/ranks.py in a real 2-process run (gloo on the CPU): with 4 completions per rank and groups of 8, every
GRPO group spans both ranks, and group_diversity and the watch's within-group diversity are computed over whole
groups, as if one process had seen the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import symusic

from conftest import ROOT, free_port
from processors import mean_distance_to_others
from smart_utils import features
from smart_utils.watch import group_mean_distance

STEPS = 2


def test_group_diversity_sees_whole_groups_split_across_ranks(tmp_path):
    run_dir = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    args = [f"--BASE_MODEL_PATH={ROOT / 'models/piano-tiny'}", "--SOUNDFONT=timgm6mb",  # pieces with notes
            "--REWARD_WEIGHTS={'group_diversity': 1.0, 'note_density': 1.0}", f"--NUM_TRAIN_STEPS={STEPS}",
            f"--SAVE_STEPS={STEPS}", "--BATCH_SIZE=4", "--NUM_GENERATIONS=8", "--MAX_COMPLETION_LENGTH=48",
            "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1", f"--OUTPUT_DIR={run_dir}"]
    result = subprocess.run([*launch, "smart.py", *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    log = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]
    watched = {entry["step"]: entry["watch/group_diversity"] for entry in log if "watch/group_diversity" in entry}
    for step in range(STEPS):
        rows, descriptors = [], []
        for rank in (0, 1):  # TRL's batch order: rank 0's completions, then rank 1's
            ranked = sorted(pq.read_table(run_dir / "rl_logs" / str(step) / f"logs.rank{rank}.parquet").to_pylist(),
                            key=lambda row: row["idx"])
            assert {row["prompt"] for row in ranked} == {ranked[0]["prompt"]}  # one group, split over the ranks
            for row in ranked:
                (midi,) = (run_dir / "midi" / str(step)).glob(f"rank{rank}_reward=*_{row['idx']}.mid")
                descriptors.append(features.style_descriptor(symusic.Score(str(midi))))
            rows += ranked
        assert rows[0]["prompt"] == rows[-1]["prompt"]
        assert not any("does not split" in row["errors"] for row in rows)
        expected = mean_distance_to_others(descriptors)  # the whole group of 8, computed in one place
        logged = [row["normalized_rewards"]["group_diversity"] for row in rows]
        assert logged == pytest.approx(expected, abs=1e-6)
        assert len(set(round(v, 6) for v in expected)) > 1  # a real spread, not a constant that would match anyway
        assert watched[step + 1] == pytest.approx(group_mean_distance(descriptors, 8)[1], abs=1e-6)
