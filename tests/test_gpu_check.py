"""bench/gpu_check.py (``make gpu-check``) runs here at toy size: the same path a GPU box runs at the paper's."""

import subprocess
import sys

from conftest import ROOT


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)


def test_the_gpu_check_runs_the_default_path_and_prints_every_figure():
    result = gpu_check("--steps", "2", "--soundfont", "timgm6mb")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for stage in ("generate", "log-probs", "decode", "render", "Audiobox", "update", "step"):
        assert f"\n  {stage:<10}" in out
    assert "step time:" in out and "peak GPU memory:" in out
    assert "reward-stage speedup:" in out and "max |audio diff| 0.0e+00" in out
    assert "bf16 Audiobox (opt-in) vs fp32" in out
    assert out.rstrip().endswith("gpu-check: ok")


def test_the_gpu_check_fails_loudly():
    result = gpu_check("--steps", "2", "--soundfont", "no-such-soundfont")
    assert result.returncode == 1
    assert "soundfont 'no-such-soundfont' not found" in result.stderr
    assert result.stdout.rstrip().endswith("gpu-check: FAILED")
