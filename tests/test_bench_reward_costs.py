"""bench/reward_costs.py, the README's cost column: it builds and times every processor class that writes a reward,
and exits 0 only when each of their rewards is in [0, 1] for every clip."""

import subprocess
import sys

import pytest

from conftest import ROOT


def test_the_reward_cost_bench_times_every_reward_processor():
    """bench/reward_costs.py (the README's cost column) builds and times every processor class that writes a
    reward, and exits 0 only when each of their rewards is in [0, 1] for every clip."""
    import processors
    from configurator import smart_constants

    result = subprocess.run([sys.executable, "bench/reward_costs.py", "--clips", "8", "--clap-size", "tiny"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "\n8 clips of " in result.stdout and "rewards outside [0, 1] or missing: none" in result.stdout
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ") and "ms / clip" not in line]
    timed = {cells[2].strip(): (float(cells[3]), float(cells[4])) for cells in rows}
    constants = smart_constants()
    # the project's classes (a test's own Processor subclasses may still be listed in this process)
    rewards = [cls for cls in processors.processor_classes()
               if cls.__module__ == processors.__name__ and cls.reward_names(constants)]
    assert set(timed) == {cls.__name__ for cls in rewards} | {"MidiTokToSymusicProcessor",
                                                              "TinySoundfontSynthProcessor"}
    for per_batch, per_clip in timed.values():  # the per-clip column is the batch's seconds over its 8 clips
        assert per_clip == pytest.approx(1000 * per_batch / 8, abs=0.01 + 1000 * 0.0005 / 8)  # both rounded
    # the processors that load weights really ran their models on the batch (a model forward takes milliseconds)
    for cls in rewards:
        if cls.models(constants):
            assert timed[cls.__name__][0] >= 0.001, cls.__name__
