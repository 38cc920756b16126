"""bench/reward_pipeline.py keeps running offline: the original method and the project's pipeline agree on the
same batch (its exit status says so), and it prints the lines the README's figures come from."""

import re
import subprocess
import sys

import pytest

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
    # the avoided work: the project synthesises at most MAX_AUDIO_DURATION of each score, never more than (a)
    [scores] = [text for text in lines if text.startswith("scores: ")]
    original, project = (float(x) for x in re.search(r"original (\d+) s, project (\d+) s", scores).groups())
    assert project <= original and project <= 64 * 10
    # every stage of the table did work (a stage that returns at once prints 0.000), and the last line's speedup
    # is the table's decode+render (a) / (b), as the README quotes it
    table = {text.split("|")[0].strip(): [float(cell) for cell in text.split("|")[1:]]
             for text in lines if text.startswith("  ") and text.count("|") == 3}
    assert set(table) == {"decode", "render", "decode+render"} and all(v > 0 for row in table.values() for v in row)
    name, value = lines[-1].split(": ")
    a, _, b = table["decode+render"]
    assert name == "speedup" and float(value) == pytest.approx(a / b, rel=0.02, abs=0.01)
