"""Small study folders for the listen.py tests, built by the real build from hand-made MIDI folders."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import symusic

from configurator import smart_constants
from listening.stimuli import STUDY_GENERATION, build_study

CONSTANTS = smart_constants()  # smart.py's defaults: clips rendered as its reward renders them
TPQ = 24  # ticks per quarter; with no tempo event a quarter lasts 0.5 s (120 BPM)


def write_pieces(folder: Path, beats: list[int], velocity: int = 80, voices: int = 1) -> Path:
    """One piano piece per entry of ``beats``: that many legato quarter notes (so no empty beat), ``voices`` notes
    at a time. A piece of b beats lasts b / 2 seconds."""
    folder.mkdir(parents=True)
    for k, count in enumerate(beats):
        score = symusic.Score(TPQ)
        track = symusic.Track("piano", 0, False)
        for beat in range(count):
            for voice in range(voices):
                track.notes.append(symusic.Note(beat * TPQ, TPQ, 60 + (beat * 5 + 4 * voice + k) % 24, velocity))
        score.tracks.append(track)
        score.dump_midi(str(folder / f"piece{k}.mid"))
    return folder


def short_study(root: Path, clips_per_system: int = 2) -> Path:
    """A built study of two MIDI-folder systems with 1 s clips (the browser can play them to the end quickly)."""
    base = write_pieces(root / "base_midi", [2] * clips_per_system, velocity=60)
    tuned = write_pieces(root / "tuned_midi", [2] * clips_per_system, velocity=110, voices=3)
    build_study({"base": str(base), "tuned": str(tuned)}, root / "study", constants=CONSTANTS,
                generation=replace(STUDY_GENERATION, n=clips_per_system), soundfont="timgm6mb")
    return root / "study"
