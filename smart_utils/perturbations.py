"""Controlled changes to a piece, the probes of a reward audit.

A reward audit renders each piece before and after each change and compares the rewards. A reward that judges
music should barely move under a neutral change (a transposition by a tone) and fall under a destructive one
(random pitches, the first bar looped); one that rises under a destructive change gives GRPO a way up that makes
no better music.

Every change is a pure function ``(score, rng) -> score``, listed under a stable short name in ``PERTURBATIONS``.
Rules they share:

- The input is never modified: each change edits a deep copy in ticks (a score in quarters or seconds is converted)
  and returns that tick score.
- Pitch changes leave drum tracks alone: a drum note's pitch picks an instrument, not a pitch.
- A note that a pitch change would push out of 0..127 is dropped, not clamped. Clamping would stack notes on the
  edge pitch, which no transposition does; dropping keeps every remaining note exactly where the change puts it.
- Only notes move in time. Tempo, time signature, pedal and controller events stay where they are, except where a
  change says otherwise (the project's tokenizer decodes no pedals or controllers).
- Bars come from the time signatures; before the first one, and in a score without any, the meter is 4/4.
- A score without notes comes back as a copy without notes, and no change raises on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import symusic
from symusic.core import ScoreTick, TrackTick

Perturbation = Callable[[symusic.Score, np.random.Generator], ScoreTick]
Notes = dict[str, np.ndarray]

LOWEST_PITCH, HIGHEST_PITCH = 0, 127
LOWEST_VELOCITY, HIGHEST_VELOCITY = 1, 127
OCTAVE = 12
DEFAULT_QPM = 120.0  # what a MIDI player assumes when a file has no tempo event
JITTER_SD_QUARTERS = 1 / 8  # one 32nd note: audible as sloppy playing, too small to change the rhythm's shape


def _tick_copy(score: symusic.Score) -> ScoreTick:
    """A deep copy of ``score`` in ticks: what every change edits, so that its input stays as it was."""
    return score.copy() if isinstance(score, ScoreTick) else score.to("tick")


def _pitched_tracks(score: ScoreTick) -> list[TrackTick]:
    """The tracks whose note pitches are pitches (all but drum tracks)."""
    return [track for track in score.tracks if not track.is_drum]


def _notes(track: TrackTick) -> Notes:
    """A track's notes as int64 arrays ``time``, ``duration``, ``pitch``, ``velocity``.

    int64 because symusic stores pitch and velocity as int8, which would wrap around on ``pitch + 12``.
    """
    return {field: values.astype(np.int64) for field, values in track.notes.numpy().items()}


def _set_notes(track: TrackTick, notes: Notes) -> None:
    """Replace a track's notes with ``notes`` (arrays as ``_notes`` gives them), sorted by onset."""
    track.notes = symusic.Note.from_numpy(
        notes["time"].astype(np.int32), notes["duration"].astype(np.int32),
        notes["pitch"].astype(np.int8), notes["velocity"].astype(np.int8),
    )
    track.notes.sort()


def _select(notes: Notes, which: np.ndarray) -> Notes:
    """The notes picked by ``which``: a boolean mask or an array of indices."""
    return {field: values[which] for field, values in notes.items()}


def _concatenate(parts: list[Notes]) -> Notes:
    """The notes of every part together, in one set of arrays."""
    return {field: np.concatenate([part[field] for part in parts]) for field in parts[0]}


def _in_pitch_range(pitches: np.ndarray) -> np.ndarray:
    """Mask of the pitches a MIDI note can have."""
    return (pitches >= LOWEST_PITCH) & (pitches <= HIGHEST_PITCH)


def _note_end(score: ScoreTick) -> int:
    """The tick where the last note ends (0 without notes): the end of the music, whatever other events follow."""
    return max((note.end for track in score.tracks for note in track.notes), default=0)


@dataclass(frozen=True)
class _Bars:
    """The bars covering ``[0, end)``: downbeat tick, length in ticks and meter (numerator, denominator) of each."""

    starts: np.ndarray
    lengths: np.ndarray
    meters: list[tuple[int, int]]

    def index_of(self, times: np.ndarray) -> np.ndarray:
        """The bar each tick in ``times`` falls in."""
        return np.searchsorted(self.starts, times, side="right") - 1


def _bars(score: ScoreTick, end: int) -> _Bars:
    """The bars of ``score`` up to ``end``, from its time signatures (4/4 before the first and without any).

    A time signature that comes mid-bar cuts that bar short, as a MIDI file's meter change does.
    """
    signatures = sorted((signature.time, signature.numerator, signature.denominator)
                        for signature in score.time_signatures)
    if not signatures or signatures[0][0] > 0:
        signatures.insert(0, (0, 4, 4))
    starts: list[int] = []
    lengths: list[int] = []
    meters: list[tuple[int, int]] = []
    next_times = [time for time, _, _ in signatures[1:]] + [end]
    for (time, numerator, denominator), next_time in zip(signatures, next_times):
        bar_length = max(1, score.ticks_per_quarter * 4 * numerator // denominator)
        for start in range(time, min(next_time, end), bar_length):
            starts.append(start)
            lengths.append(min(bar_length, next_time - start) if next_time < end else bar_length)
            meters.append((numerator, denominator))
    return _Bars(np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64), meters)


def _moved_order(count: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``count`` items that moves at least one of them when there are two or more.

    A permutation that happens to keep every bar in place would be no probe at all; rolling it by one turns the
    identity into a cyclic shift and leaves every other permutation random.
    """
    order = rng.permutation(count)
    return np.roll(order, 1) if np.array_equal(order, np.arange(count)) else order


def transposition(semitones: int) -> Perturbation:
    """The change that moves every pitched note by ``semitones`` (see ``transpose`` inside)."""

    def transpose(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
        """Every pitched note moved by the same number of semitones; notes pushed out of 0..127 dropped.

        A piece in another key is the same music, so a reward should barely move: a tone probes key preference, a
        fifth probes register (the soundfont's samples differ across the keyboard).
        """
        perturbed = _tick_copy(score)
        for track in _pitched_tracks(perturbed):
            notes = _notes(track)
            notes["pitch"] += semitones
            _set_notes(track, _select(notes, _in_pitch_range(notes["pitch"])))
        return perturbed

    return transpose


def velocity_scaling(factor: float) -> Perturbation:
    """The change that multiplies every note's velocity by ``factor`` (see ``scale_velocities`` inside)."""

    def scale_velocities(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
        """Every note's velocity multiplied by the same factor, rounded and kept within 1..127.

        The render is peak-normalised, so what changes is timbre (a soundfont's soft and loud samples differ) and
        dynamic range, not level: it shows whether a reward prefers one end of the dynamics.
        """
        perturbed = _tick_copy(score)
        for track in perturbed.tracks:
            notes = _notes(track)
            scaled = np.rint(notes["velocity"] * factor).astype(np.int64)
            notes["velocity"] = np.clip(scaled, LOWEST_VELOCITY, HIGHEST_VELOCITY)
            _set_notes(track, notes)
        return perturbed

    return scale_velocities


def tempo_scaling(factor: float) -> Perturbation:
    """The change that multiplies every tempo by ``factor`` (see ``scale_tempo`` inside)."""

    def scale_tempo(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
        """Every tempo event's quarter notes per minute multiplied by the same factor; notes keep their ticks.

        The piece plays slower or faster with the same notes, which shows whether a reward has a favourite tempo.
        A score with notes and no tempo event plays at 120 qpm, so it gets one event at 120 qpm times the factor.
        """
        perturbed = _tick_copy(score)
        if perturbed.note_num() and not perturbed.tempos:
            perturbed.tempos.append(symusic.Tempo(0, DEFAULT_QPM))
        for tempo in perturbed.tempos:
            tempo.qpm *= factor
        return perturbed

    return scale_tempo


def drop_half(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """Half of every track's notes (rounded down), chosen at random, removed; the other notes untouched.

    A thinner texture with the same style: a reward that rises under it would let GRPO thin pieces out toward
    silence.
    """
    perturbed = _tick_copy(score)
    for track in perturbed.tracks:
        notes = _notes(track)
        count = len(notes["time"])
        kept = np.sort(rng.choice(count, size=count - count // 2, replace=False))
        _set_notes(track, _select(notes, kept))
    return perturbed


def octave_doubling(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """Every pitched note gets a copy an octave up (same onset, duration and velocity) where that is below 128.

    The harmony stays the same and the sound gets fuller and brighter: it tells a reward that likes density
    from one that likes music.
    """
    perturbed = _tick_copy(score)
    for track in _pitched_tracks(perturbed):
        notes = _notes(track)
        octave_up = dict(notes, pitch=notes["pitch"] + OCTAVE)
        _set_notes(track, _concatenate([notes, _select(octave_up, _in_pitch_range(octave_up["pitch"]))]))
    return perturbed


def shuffle_bars(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """The bars put in a random order, end to end; a note keeps its offset inside its bar and its bar's meter.

    Every bar sounds as before, only the form is gone: a reward that does not fall hears texture, not structure.
    A note belongs to the bar it starts in and moves with it whole, even if it rings into the next bar. The
    time signatures are rewritten to follow the bars when the piece changes meter; tempo events stay in place.
    """
    perturbed = _tick_copy(score)
    end = _note_end(perturbed)
    if not end:
        return perturbed
    bars = _bars(perturbed, end)
    order = _moved_order(len(bars.starts), rng)
    new_starts = np.empty_like(bars.starts)
    new_starts[order] = np.concatenate(([0], np.cumsum(bars.lengths[order])[:-1]))
    for track in perturbed.tracks:
        notes = _notes(track)
        bar_of_note = bars.index_of(notes["time"])
        notes["time"] += new_starts[bar_of_note] - bars.starts[bar_of_note]
        _set_notes(track, notes)
    if len(set(bars.meters)) > 1:
        meters_in_order = [bars.meters[bar] for bar in order]
        perturbed.time_signatures = [
            symusic.TimeSignature(int(new_starts[bar]), *bars.meters[bar])
            for position, bar in enumerate(order)
            if position == 0 or meters_in_order[position] != meters_in_order[position - 1]
        ]
    return perturbed


def reverse_time(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """The piece played backwards, note by note: onset t and duration d go to onset end - t - d.

    ``end`` is where the last note ends, so the reversed piece spans the same time. Each note still sounds
    forwards (a piano attack, then decay); what reverses is the order, which keeps pitches, chords and density
    and destroys phrases and cadences. Tempo events stay in place, which is exact for a piece with one tempo.
    """
    perturbed = _tick_copy(score)
    end = _note_end(perturbed)
    for track in perturbed.tracks:
        notes = _notes(track)
        notes["time"] = end - notes["time"] - notes["duration"]
        _set_notes(track, notes)
    return perturbed


def random_pitches(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """Every pitched note given a pitch drawn uniformly from the piece's own lowest..highest pitch.

    Onsets, durations and velocities stay, so the rhythm and register are those of the piece and only melody
    and harmony are gone: a reward that does not fall does not hear pitch.
    """
    perturbed = _tick_copy(score)
    pitched = _pitched_tracks(perturbed)
    pitches = [note.pitch for track in pitched for note in track.notes]
    if not pitches:
        return perturbed
    for track in pitched:
        notes = _notes(track)
        notes["pitch"] = rng.integers(min(pitches), max(pitches) + 1, size=len(notes["pitch"]))
        _set_notes(track, notes)
    return perturbed


def repeat_first_bar(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """The first bar that has a note, copied into every bar up to the piece's end; every other note removed.

    A loop of one bar is the degenerate piece a policy falls into most easily, so a reward must not prefer it.
    The first bar with a note rather than bar one, so that a piece opening on a rest does not become silence.
    Each track repeats its own notes of that bar; a shorter bar (after a meter change) gets those that start
    within its length.
    """
    perturbed = _tick_copy(score)
    end = _note_end(perturbed)
    if not end:
        return perturbed
    bars = _bars(perturbed, end)
    first_onset = min(note.time for track in perturbed.tracks for note in track.notes)
    source = bars.index_of(np.array([first_onset]))[0]
    source_start, source_end = bars.starts[source], bars.starts[source] + bars.lengths[source]
    for track in perturbed.tracks:
        notes = _notes(track)
        motif = _select(notes, (notes["time"] >= source_start) & (notes["time"] < source_end))
        offsets = motif["time"] - source_start
        copies = [_select(dict(motif, time=offsets + start), offsets < length)
                  for start, length in zip(bars.starts, bars.lengths)]
        _set_notes(track, _concatenate(copies))
    return perturbed


def jitter_timing(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """Each onset moved by its own normal random amount (sd one 32nd note, clamped at 0); durations kept.

    Sloppy playing of the same notes: a reward that hears timing falls a little; one that rises favours loose
    timing, which GRPO can produce at no cost.
    """
    perturbed = _tick_copy(score)
    spread = JITTER_SD_QUARTERS * perturbed.ticks_per_quarter
    for track in perturbed.tracks:
        notes = _notes(track)
        moved = notes["time"] + rng.normal(0.0, spread, size=len(notes["time"]))
        notes["time"] = np.maximum(0, np.rint(moved)).astype(np.int64)
        _set_notes(track, notes)
    return perturbed


def silence_second_half(score: symusic.Score, rng: np.random.Generator) -> ScoreTick:
    """No note in the second half: notes starting at or after the middle removed, notes crossing it cut there.

    The middle is half of where the last note ends. A marker at the original score's end keeps its length, so a
    render to the score's end (as the reward's renders are) has the second half as silence, not a shorter clip:
    a reward that rises under it would let GRPO stop pieces early.
    """
    perturbed = _tick_copy(score)
    original_end, music_end = perturbed.end(), _note_end(perturbed)
    if not music_end:
        return perturbed
    middle = music_end // 2
    for track in perturbed.tracks:
        notes = _notes(track)
        notes = _select(notes, notes["time"] < middle)
        notes["duration"] = np.minimum(notes["duration"], middle - notes["time"])
        _set_notes(track, notes)
    perturbed.markers.append(symusic.TextMeta(original_end, "end of the silent second half"))
    return perturbed


PERTURBATIONS: dict[str, Perturbation] = {
    "transpose+2": transposition(2),
    "transpose-2": transposition(-2),
    "transpose+7": transposition(7),
    "transpose-7": transposition(-7),
    "velocity_x0.5": velocity_scaling(0.5),
    "velocity_x1.5": velocity_scaling(1.5),
    "tempo_x0.5": tempo_scaling(0.5),
    "tempo_x2": tempo_scaling(2.0),
    "drop_half": drop_half,
    "octave_doubling": octave_doubling,
    "bars_shuffled": shuffle_bars,
    "time_reversed": reverse_time,
    "random_pitches": random_pitches,
    "first_bar_repeated": repeat_first_bar,
    "timing_jitter": jitter_timing,
    "second_half_silent": silence_second_half,
}
"""Every change under its stable name, in the order an audit reports them (neutral changes first)."""

# Changes that make any piece worse and that a policy can reproduce cheaply: loop one bar, play random notes,
# stop half way, thin the texture out, lose the form. A reward that rises under one of them hands GRPO a direction
# that raises the reward and lowers the music, and GRPO finds such directions. The other changes (key, register,
# dynamics, tempo, doubling, reversal, jitter) are matters of taste or of performance, where a rise is a
# preference to know about rather than a hole to be exploited.
EXPLOIT_PROBES: frozenset[str] = frozenset(
    {"first_bar_repeated", "random_pitches", "second_half_silent", "drop_half", "bars_shuffled"}
)
