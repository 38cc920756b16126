"""bench/reward_pipeline.py keeps running offline: the original method and the project's pipeline agree on the
same batch (its exit status says so), and it prints the lines the README's figures come from."""

import subprocess
import sys

from conftest import ROOT

# The batch, the equality check, the per-stage table's header and rows, and the Audiobox comparison.
ESSENTIAL_LINES = ("batch: ", "equality: ", "seconds per reward step",
                   *(f"  {stage:<14} |" for stage in ("decode", "render", "decode+render")), "audiobox (2 clips")


def test_the_reward_pipeline_bench_runs_and_the_pipelines_agree():
    result = subprocess.run(
        [sys.executable, "bench/reward_pipeline.py", "--repeats", "1", "--e2e-steps", "0", "--audiobox-clips", "2",
         "--no-tempo-sweep"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    # 0 only when the decoded scores, the audio, the weight-free rewards and the Audiobox scores all agree
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    found = {prefix: [text for text in lines if text.startswith(prefix)] for prefix in ESSENTIAL_LINES}
    assert all(len(texts) == 1 for texts in found.values()), found
    [equality] = found["equality: "]
    assert "decoded scores identical: True;" in equality
    assert "max |audio (a) - (b)| 0.0e+00 (" in equality and "0.0e+00 (1 worker)" in equality  # README: "0.0"
    name, value = lines[-1].split(": ")
    assert name == "speedup" and float(value) > 0


def test_the_reward_cost_bench_times_every_registered_reward():
    """bench/reward_costs.py (the README's cost column) builds and times every registered processor, and exits 0
    only when each of their rewards is in [0, 1] for every clip."""
    from processors import REWARD_PROCESSORS

    result = subprocess.run([sys.executable, "bench/reward_costs.py", "--clips", "8", "--clap-size", "tiny"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ") and "ms / clip" not in line]
    timed = {cells[2].strip(): float(cells[4]) for cells in rows}
    assert set(timed) == {cls.__name__ for cls in REWARD_PROCESSORS.values()} | {
        "MidiTokToSymusicProcessor", "TinySoundfontSynthProcessor"}
    assert all(seconds >= 0 for seconds in timed.values())
