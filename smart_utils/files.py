"""Files every tool reads or writes the same way: MIDI folders, file digests, WAV clips, JSON written atomically."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

MIDI_SUFFIXES = (".mid", ".midi")


def list_midi_files(folder: str | Path) -> list[Path]:
    """Every MIDI file below a folder, sorted so that a seed always picks the same pieces."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)


@functools.lru_cache(maxsize=32)
def _digest(path: str, algorithm: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, algorithm).hexdigest()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file; cached while the file's size and mtime stay the same (soundfonts are hashed by
    every run record, study build and evaluation, and a big one takes a second)."""
    stat = os.stat(path)
    return _digest(str(path), algorithm, stat.st_size, stat.st_mtime_ns)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """A (2, samples) float clip as 16-bit PCM: the format training saves (generate.py and listen.py too)."""
    soundfile.write(path, np.asarray(audio).T, sample_rate, subtype="PCM_16")


def write_text_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so that an interrupted write never leaves half a file."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text)
    partial.replace(path)


def write_json_atomically(path: Path, payload: Any) -> None:
    """``payload`` as JSON (NaN allowed, numpy numbers as floats), written by ``write_text_atomically``."""
    write_text_atomically(path, json.dumps(payload, indent=1, default=float, allow_nan=True))
