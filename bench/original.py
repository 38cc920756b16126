"""The original erl-j/SMART rendering method, reimplemented for equality tests and benchmarks only.

Per score: write a temporary .mid, notes_off + sounds_off, render a 4 s flush, create a new Sequencer, load the
file, synthesise the whole (cropped) score duration, then cut to ``max_duration_seconds`` and peak-normalise.
The project's ``TinySoundfontSynthProcessor`` must produce the same audio with less work.
"""

from __future__ import annotations

import tempfile

import numpy as np
import symusic
import tinysoundfont


class OriginalTinySoundfontRenderer:
    """The original processor's render loop, kept as close to its behaviour as possible."""

    def __init__(self, soundfont_path: str, sample_rate: int, max_duration_seconds: float):
        self.sample_rate = sample_rate
        self.max_duration_seconds = max_duration_seconds
        self.synth = tinysoundfont.Synth(samplerate=sample_rate)
        self.synth.sfload(soundfont_path)

    def render_file(self, midi_path: str, duration_seconds: float) -> np.ndarray:
        self.synth.notes_off()
        self.synth.sounds_off()
        self.synth.generate(4 * self.sample_rate)
        sequencer = tinysoundfont.Sequencer(self.synth)
        sequencer.midi_load(midi_path)
        block = np.frombuffer(bytes(self.synth.generate(int(self.sample_rate * duration_seconds))), dtype=np.float32)
        stereo = np.stack([block[::2], block[1::2]])
        stereo = stereo[:, : int(self.max_duration_seconds * self.sample_rate)]
        stereo = stereo[:, : int(duration_seconds * self.sample_rate)]
        if stereo.shape[1] == 0:
            stereo = np.zeros((2, self.sample_rate))
        return stereo / (np.abs(stereo).max() + 1e-6)

    def render(self, score: symusic.Score, duration_seconds: float) -> np.ndarray:
        with tempfile.NamedTemporaryFile(suffix=".mid") as file:
            score.dump_midi(file.name)
            return self.render_file(file.name, duration_seconds)
