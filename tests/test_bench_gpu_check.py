"""bench/gpu_check.py (``make gpu-check``) runs here at toy size: the same path a GPU box runs at the paper's."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from conftest import ROOT


def gpu_check(json_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--json", str(json_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)


def test_the_gpu_check_runs_the_default_path_and_prints_every_figure(tmp_path: Path):
    result = gpu_check(tmp_path / "figures.json", "--steps", "2", "--soundfont", "timgm6mb")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for stage in ("generate", "log-probs", "decode", "render", "Audiobox", "update", "step"):
        assert f"\n  {stage:<10}" in out
    assert "step time:" in out and "peak GPU memory:" in out
    assert "reward-stage speedup:" in out and "max |audio diff| 0.0e+00" in out
    assert "bf16 Audiobox (opt-in) vs fp32" in out
    assert "soundfont of every figure: timgm6mb, " in out and "TimGM6mb.sf2 (SHA-256 " in out
    for part in ("machine checks", "stand-ins", "smart.py, 2 steps", "reward-stage comparison", "bf16 comparison"):
        assert f"[gpu-check] {part}: " in out
    assert out.rstrip().endswith("gpu-check: ok")

    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["status"] == "ok" and figures["problems"] == [] and figures["machine_problems"] == []
    assert figures["soundfont"]["name"] == "timgm6mb" and len(figures["soundfont"]["sha256"]) == 64
    assert figures["soundfont"]["sha256"][:16] in out
    assert set(figures["stages"]) == {"generate", "log-probs", "decode", "render", "Audiobox", "update", "step"}
    assert figures["step_seconds"] > 0 and figures["bf16_vs_fp32"]["max_diff"] >= 0
    stage = figures["reward_stage"]
    assert set(stage["original"]) == set(stage["project"]) == {"decode", "render", "Audiobox"}
    assert stage["max_audio_diff"] == 0.0 and stage["max_score_diff"] <= 1e-3
    assert {"stand-ins", "smart.py, 2 steps", "reward-stage comparison", "bf16 comparison"} <= set(figures["seconds"])


def test_the_gpu_check_fails_loudly(tmp_path: Path):
    result = gpu_check(tmp_path / "figures.json", "--steps", "2", "--soundfont", "no-such-soundfont")
    assert result.returncode == 1
    assert "soundfont 'no-such-soundfont' not found" in result.stderr
    assert result.stdout.rstrip().endswith("gpu-check: FAILED")
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["status"] == "FAILED" and "no-such-soundfont" in figures["problems"][0]
    assert "stand-ins" not in figures["seconds"]  # it stopped before building anything


def test_a_check_killed_halfway_leaves_the_figures_it_had(tmp_path: Path):
    """Killed (SIGKILL, no chance to clean up) as soon as its first measured figure is in the JSON file, which is
    read whole every time it is polled."""
    path = tmp_path / "figures.json"
    check = subprocess.Popen([sys.executable, "bench/gpu_check.py", "--tiny", "--steps", "2", "--soundfont",
                              "timgm6mb", "--json", str(path), "--keep", str(tmp_path / "work")], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    reads = 0
    try:
        while time.monotonic() < deadline and check.poll() is None:
            if path.is_file():
                figures = json.loads(path.read_text())  # a half-written file would not parse
                reads += 1
                if "stand-ins" in figures["seconds"]:
                    break
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: the assertion below says so
            os.killpg(check.pid, signal.SIGKILL)
        check.wait()
    assert check.returncode == -signal.SIGKILL, "the check ended before its first figure"
    figures = json.loads(path.read_text())
    assert figures["status"] == "running" and reads > 1
    assert figures["machine"] and figures["machine_problems"] == []
    assert figures["soundfont"]["name"] == "timgm6mb"
    assert figures["seconds"]["stand-ins"] > 0


def test_both_audiobox_scorers_run_in_full_fp32(audiobox_checkpoint: Path):
    """The precision settings seen by each Audiobox model forward: the reference predictor's (clip by clip) and the
    project's (batched), as the check computes them; the TF32 line uses the default precision on purpose."""
    from audiobox_aesthetics.infer import initialize_predictor

    from bench.gpu_check import project_scores, reference_scores
    from processors import AudioBoxAesRewardProcessor

    reference = initialize_predictor(ckpt=str(audiobox_checkpoint))
    scorer = AudioBoxAesRewardProcessor(str(audiobox_checkpoint)).scorer
    seen: list[tuple[object, str, str]] = []

    def spy(module, _inputs):
        if module is reference.model or module is scorer.predictor.model:
            seen.append((module, torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))

    rate = 16000
    audios = [np.random.default_rng(seed).uniform(-0.5, 0.5, (2, rate // 2)).astype(np.float32) for seed in (0, 1)]
    default = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    assert default != ("ieee", "ieee")
    handle = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        expected = reference_scores(reference, audios, rate)
        got = project_scores(scorer, audios, rate)
        exact = list(seen)
        seen.clear()
        reference_scores(reference, audios, rate, exact=False)
    finally:
        handle.remove()
    assert [module for module, *_ in exact] == [reference.model] * 2 + [scorer.predictor.model]
    assert all(tuple(precision) == ("ieee", "ieee") for _, *precision in exact), exact
    assert [tuple(precision) for _, *precision in seen] == [default] * 2
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == default
    assert np.abs(got - expected).max() < 1e-3
