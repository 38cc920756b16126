"""Shared stand-ins, built once per test session in temp dirs (nothing is downloaded)."""

from __future__ import annotations

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
