"""Shared stand-ins, built once per test session in temp dirs (nothing is downloaded), and the helpers more than
one test file uses: a free port, smart.py run in a process or in this one, TF32 switched on."""

from __future__ import annotations

import runpy
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.standins import make_audiobox_checkpoint, make_tiny_policy

ROOT = Path(__file__).resolve().parent.parent  # the repository root: scripts run from here, as the README runs them


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Phi-3 with the project's tokenizer, saved like the hub model."""
    return make_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="session")
def audiobox_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Audiobox Aesthetics checkpoint.pt in the format audiobox_aesthetics loads."""
    return make_audiobox_checkpoint(tmp_path_factory.mktemp("audiobox") / "checkpoint.pt")


@pytest.fixture(scope="session")
def soundfont() -> str:
    """The soundfont every install has (TimGM6mb.sf2 from the pretty_midi wheel)."""
    from smart_utils.soundfont_sources import resolve_soundfont

    return resolve_soundfont("timgm6mb")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound and released), for a launcher's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_smart(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python smart.py ARGS`` in a process of its own, from the repository root; its output captured."""
    return subprocess.run([sys.executable, "smart.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def run_smart_in_process(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> int | str | None:
    """smart.py's ``__main__`` in this process (its heavy imports are paid once): its exit code or message."""
    monkeypatch.setattr(sys, "argv", ["smart.py", *args])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runpy.run_path(str(ROOT / "smart.py"), run_name="__main__")
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        for sig, handler in handlers.items():  # StopOnSignal replaces them when training starts
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def warm_smart_imports():
    import smart  # noqa: F401  (trl, transformers, datasets: the seconds every real run pays before preflight)


@pytest.fixture
def good_args(tiny_policy, tmp_path, warm_smart_imports):
    """smart.py arguments of a runnable one-step config (for ``run_smart_in_process``), its run folder in tmp_path."""
    return [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            f"--OUTPUT_DIR={tmp_path / 'run'}", "--NUM_TRAIN_STEPS=1", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2"]


@pytest.fixture
def tf32_on():
    """TF32 allowed for convolutions and matrix products, as cuDNN's default and a user's setting would."""
    import torch

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32"
    yield
    conv.fp32_precision, matmul.fp32_precision = saved
