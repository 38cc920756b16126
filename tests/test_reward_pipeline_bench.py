"""bench/reward_pipeline.py keeps running offline: the original method and the project's pipeline agree on the
same batch (its exit status says so), and it prints the per-stage figures and the final ``speedup:`` line."""

import re
import subprocess
import sys

from conftest import ROOT


def test_the_reward_pipeline_bench_runs_and_the_pipelines_agree():
    result = subprocess.run(
        [sys.executable, "bench/reward_pipeline.py", "--repeats", "1", "--e2e-steps", "0", "--audiobox-clips", "2",
         "--no-tempo-sweep"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = result.stdout
    assert "max |audio (a) - (b)| 0.0e+00" in out  # sample-equal audio, pooled and in-process
    score_diff = re.search(r"audiobox \(2 clips.*max \|score diff\| (\S+) \(fp32\)", out)
    assert score_diff and float(score_diff.group(1)) <= 1e-4
    for stage in ("decode ", "render ", "decode+render"):
        assert re.search(rf"^  {re.escape(stage)}\s*\|\s*\d+\.\d+ \|\s*\d+\.\d+ \|\s*\d+\.\d+$", out, re.M), stage
    assert re.search(r"^speedup: \d+\.\d\d$", out.rstrip().splitlines()[-1])
