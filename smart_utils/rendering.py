"""Render MIDI to audio with TinySoundFont: the file to open to change how SMART's reward hears a score.

``SoundfontRenderer`` gives the same audio as the original erl-j/SMART method (bench/original.py) with less
work: the MIDI comes from memory (no temp file) and only ``min(score duration, max_audio_seconds)`` is
synthesised, where the original synthesised the whole cropped score (up to 150 s at 40 BPM) and then cut it to
10 s. Before each score the previous sequencer is detached and the synth flushed exactly as the original does,
so a reused synth carries no state from one render to the next.

How clips are rendered is one value, ``RenderSettings``, handed whole to the renderer and, for parallel
rendering, to ``render_pool.RenderPool`` and the worker processes it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tinysoundfont

FLUSH_SECONDS = 4  # the original renders 4 s after sounds_off before each score, so voices fully decay


@dataclass(frozen=True)
class RenderSettings:
    """The soundfont, the sample rate (Hz) and the most seconds of audio per clip (smart.py's SOUNDFONT,
    SAMPLE_RATE and MAX_AUDIO_DURATION)."""

    soundfont_path: str
    sample_rate: int
    max_audio_seconds: float

    @property
    def max_samples(self) -> int:
        """The most samples per channel a render returns (1 s for an empty score, else the duration cap)."""
        return max(self.sample_rate, int(self.sample_rate * self.max_audio_seconds))


class SoundfontRenderer:
    """One TinySoundFont synth with the soundfont loaded, reused for every render."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings
        self.synth = tinysoundfont.Synth(samplerate=settings.sample_rate)
        self.synth.sfload(settings.soundfont_path)

    def _flush(self) -> None:
        self.synth.notes_off()
        self.synth.sounds_off()
        self.synth.callback = None  # the previous score's sequencer must not play into this flush
        self.synth.generate(FLUSH_SECONDS * self.settings.sample_rate)

    def render_midi(self, midi: bytes, duration_seconds: float, out: np.ndarray | None = None) -> np.ndarray:
        """Audio of a MIDI file's bytes as float32 of shape (2, samples), peak-normalised as x / (max|x| + 1e-6).

        ``duration_seconds`` is the score's length; the audio is ``min(duration, max_audio_seconds)`` long,
        or 1 s of silence for an empty score (as in the original). With ``out`` (a flat float32 array of at
        least ``2 * settings.max_samples`` values) the audio is written there and returned as a view of it.
        """
        self._flush()
        rate = self.settings.sample_rate
        num_samples = int(rate * min(duration_seconds, self.settings.max_audio_seconds))
        silent = num_samples <= 0
        if silent:
            num_samples = rate
        audio = np.empty((2, num_samples), dtype=np.float32) if out is None else out[: 2 * num_samples].reshape(2, -1)
        if silent:
            audio[:] = 0
            return audio
        sequencer = tinysoundfont.Sequencer(self.synth)
        sequencer.add(tinysoundfont.midi.load_memory(midi, persistent=False))
        interleaved = np.frombuffer(self.synth.generate(num_samples), dtype=np.float32)  # no copy: a view
        peak = max(interleaved.max(), -interleaved.min()) + np.float32(1e-6)  # max |x|, without a temporary
        np.divide(interleaved[0::2], peak, out=audio[0])
        np.divide(interleaved[1::2], peak, out=audio[1])
        return audio

    def render_many(
        self, jobs: Sequence[tuple[bytes, float]], costs: Sequence[float] | None = None
    ) -> list[np.ndarray | str]:
        """``RenderPool.render_many`` in this process: per ``(midi bytes, seconds)`` job its audio or an error
        message, in order (``costs`` only orders a pool's hand-out)."""
        results: list[np.ndarray | str] = []
        for midi, seconds in jobs:
            try:
                results.append(self.render_midi(midi, seconds))
            except Exception as error:  # a score the synth cannot play must not stop the run
                results.append(f"{type(error).__name__}: {error}")
        return results
