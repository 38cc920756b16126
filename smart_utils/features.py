"""MIDI features of the SMART paper, reimplemented from muspy's definitions, plus diversity measures.

The paper's analysis (docs/paper.md) read each generated MIDI file with ``muspy.read_midi`` and called muspy's
metrics. muspy is not a dependency here, so this module recomputes the same numbers from a ``symusic.Score``,
following muspy 0.5's ``muspy/metrics/metrics.py`` where the paper used it (checked against muspy 0.5.0 itself on
300 random MIDI files at 12-480 ticks per quarter, drums included: identical values for every file with notes).
Like ``muspy.read_midi``, every time-based feature works in the score's own ticks (the MIDI file's ticks per
quarter note): scores in quarters or seconds are converted to ticks first, and one "beat" is one quarter note
(muspy's ``resolution``), whatever the time signature.

Every feature is a function ``(score) -> float`` and is defined on an empty score (no tracks or no notes):
``note_count`` is 0 there; every other feature returns ``math.nan`` because it has no meaning without notes (the
reward code maps NaN to its own fallback, and the paper dropped note-less samples from its plots). Drum tracks are
ignored by the pitch features (pitch range, polyphony, scale consistency, pitch-class entropy, pitch histogram,
piano rolls), as in muspy; note count, velocities and beat occupancy use every track, as the paper did. So a
multi-track model's pieces need no per-track variant: drum "pitches" (GM kit pieces) never count as pitches, and
``instrument_count`` says how many instruments play.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import symusic
from symusic.core import ScoreTick

AES_AXES = ("CE", "CU", "PC", "PQ")  # the paper's audio-domain measurements: Audiobox Aesthetics' four axes
PAPER_TPQ = 12  # the paper resampled to 12 ticks per beat for its piano rolls (plot_piano_rolls.py)
PAPER_BEATS = 16  # ...and drew the first 16 beats
N_PITCHES = 128

# muspy's scale masks (C root), rolled to each of the 12 roots.
_MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)
_MINOR = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], bool)
_SCALES = np.stack([np.roll(mask, root) for mask in (_MAJOR, _MINOR) for root in range(12)])  # (24, 12)


# ---------------------------------------------------------------------------------------------------------------
# Note access


def as_ticks(score: symusic.Score) -> ScoreTick:
    """The score in ticks at its own ticks-per-quarter, which is the time grid muspy reads a MIDI file on."""
    return score if isinstance(score, ScoreTick) else score.to("tick")


def note_arrays(score: symusic.Score, drums: bool) -> dict[str, np.ndarray]:
    """All notes of a tick score as int64 arrays ``start``, ``end``, ``pitch``, ``velocity``.

    ``drums=False`` leaves drum tracks out (muspy's rule for pitch features). int64 because symusic hands pitch and
    velocity back as int8, which overflows in differences.
    """
    columns: dict[str, list[np.ndarray]] = {"start": [], "end": [], "pitch": [], "velocity": []}
    for track in score.tracks:
        if track.is_drum and not drums:
            continue
        notes = track.notes.numpy()
        columns["start"].append(notes["time"])
        columns["end"].append(notes["time"] + notes["duration"])
        columns["pitch"].append(notes["pitch"])
        columns["velocity"].append(notes["velocity"])
    return {key: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            for key, parts in columns.items()}


def _length(notes: dict[str, np.ndarray]) -> int:
    """Last note end in ticks: muspy's ``max(track.get_end_time())``, 0 without notes."""
    return int(notes["end"].max()) if len(notes["end"]) else 0


def _sounding_pitch_counts(notes: dict[str, np.ndarray], length: int) -> np.ndarray:
    """Number of distinct pitches sounding at each tick ``0 .. length-1``.

    The same as summing muspy's boolean piano roll (``roll[start:end, pitch] = 1``) over pitches, without building
    a (length x 128) array: overlapping notes of one pitch are merged first so that they count once.
    """
    change = np.zeros(length + 1, np.int64)
    for pitch in np.unique(notes["pitch"]):
        of_pitch = notes["pitch"] == pitch
        order = np.argsort(notes["start"][of_pitch], kind="stable")
        starts, ends = notes["start"][of_pitch][order], notes["end"][of_pitch][order]
        run_start, run_end = starts[0], ends[0]
        for start, end in zip(starts[1:], ends[1:]):
            if start > run_end:
                change[run_start] += 1
                change[run_end] -= 1
                run_start, run_end = start, end
            else:
                run_end = max(run_end, end)
        change[run_start] += 1
        change[run_end] -= 1
    return np.cumsum(change)[:length]


# ---------------------------------------------------------------------------------------------------------------
# The paper's features (docs/paper.md)


def note_count(score: symusic.Score) -> float:
    """Number of notes in every track, drums included: symusic's ``note_num()``, which is what the paper used."""
    return float(score.note_num())


def polyphony_rate(score: symusic.Score, threshold: int = 2) -> float:
    """Fraction of ticks at which MORE than ``threshold`` distinct pitches sound (muspy.polyphony_rate).

    muspy's definition taken exactly: the denominator is every tick from 0 to the last note end (leading and
    inner silence included, measured over all tracks), and the numerator counts ticks with ``> threshold`` pitches,
    so with the default threshold 2 a two-note interval does not count and a triad does (muspy's docstring says
    "multiple pitches" but its code compares with ``>``). Drum tracks are ignored. NaN without notes.
    """
    ticks = as_ticks(score)
    length = _length(note_arrays(ticks, drums=True))
    if length < 1:
        return math.nan
    counts = _sounding_pitch_counts(note_arrays(ticks, drums=False), length)
    return float(np.count_nonzero(counts > threshold) / length)


def polyphony(score: symusic.Score) -> float:
    """Mean number of distinct pitches sounding, over the ticks where at least one sounds (muspy.polyphony).

    Drum tracks are ignored. NaN without (non-drum) notes. The paper computed it but did not plot it.
    """
    ticks = as_ticks(score)
    length = _length(note_arrays(ticks, drums=True))
    counts = _sounding_pitch_counts(note_arrays(ticks, drums=False), length)
    active = np.count_nonzero(counts)
    return float(counts.sum() / active) if active else math.nan


def empty_beat_rate(score: symusic.Score) -> float:
    """Fraction of beats (quarter notes) in which no note sounds (muspy.empty_beat_rate, exactly).

    muspy's conventions, kept so that numbers match the paper's: there are ``last_note_end // tpq + 1`` beats,
    and a note occupies every beat from ``start // tpq`` to ``end // tpq`` INCLUSIVE, so a note that ends exactly
    on a beat line also marks the following beat as not empty (legato writing never leaves an empty beat; a
    staccato note leaves the rest of its beat's neighbours empty). All tracks count, drums included. NaN without
    notes.
    """
    ticks = as_ticks(score)
    notes = note_arrays(ticks, drums=True)
    length = _length(notes)
    if length < 1:
        return math.nan
    n_beats = length // ticks.tpq + 1
    change = np.zeros(n_beats + 1, np.int64)
    np.add.at(change, notes["start"] // ticks.tpq, 1)
    np.add.at(change, notes["end"] // ticks.tpq + 1, -1)
    occupied = np.count_nonzero(np.cumsum(change)[:n_beats] > 0)
    return float(1 - occupied / n_beats)


def pitch_class_histogram(score: symusic.Score) -> np.ndarray:
    """Count of (non-drum) notes per pitch class C, C#, ..., B: a (12,) float array."""
    pitches = note_arrays(score, drums=False)["pitch"]
    return np.bincount(pitches % 12, minlength=12).astype(float)


def scale_consistency(score: symusic.Score) -> float:
    """Largest fraction of notes inside one of the 24 major / natural-minor scales (muspy.scale_consistency).

    Counts notes, not durations; drum tracks ignored; NaN without notes.
    """
    classes = pitch_class_histogram(score)
    total = classes.sum()
    if total < 1:
        return math.nan
    return float((_SCALES @ classes).max() / total)


def pitch_class_entropy(score: symusic.Score) -> float:
    """Shannon entropy in bits of the note-count pitch-class histogram (muspy.pitch_class_entropy).

    0 for a single pitch class, log2(12) ~ 3.585 for all twelve equally often. Drum tracks ignored; NaN without
    notes.
    """
    classes = pitch_class_histogram(score)
    total = classes.sum()
    if total < 1:
        return math.nan
    prob = classes[classes > 0] / total
    return float(-(prob * np.log2(prob)).sum())


def pitch_range(score: symusic.Score) -> float:
    """Highest minus lowest pitch in semitones over non-drum notes (muspy.pitch_range).

    NaN without notes, where muspy returns 0: a range of nothing is undefined, and 0 would read as "one pitch".
    """
    pitches = note_arrays(score, drums=False)["pitch"]
    return float(pitches.max() - pitches.min()) if len(pitches) else math.nan


def velocity_range(score: symusic.Score) -> float:
    """Highest minus lowest MIDI velocity over all notes: the paper's "dynamic range" (get_dynamic_range).

    NaN without notes (the paper's helper returned 0 there, but it also dropped note-less samples).
    """
    velocities = note_arrays(score, drums=True)["velocity"]
    return float(velocities.max() - velocities.min()) if len(velocities) else math.nan


def score_seconds(score: symusic.Score) -> float:
    """The score's end in seconds (tempo map applied): its last event of any kind, 0 for a score without events.
    How long the reward renders a score (``processors``)."""
    return float(score.to(symusic.TimeUnit.second).end())


def duration_seconds(score: symusic.Score) -> float:
    """Length of the music in seconds: ``score_seconds``, but 0 without notes (a lone tempo or control event at
    10 s is no music)."""
    return score_seconds(score) if score.note_num() else 0.0


def instrument_count(score: symusic.Score) -> float:
    """Number of instruments that play: distinct programs among tracks with notes, all drum tracks counting as
    one (what a multi-track prompt asks for; see multitrack.py). 1 for a piano piece, 0 without notes."""
    return float(len({"drums" if track.is_drum else track.program for track in score.tracks if track.note_num()}))


FEATURES: dict[str, Callable[[symusic.Score], float]] = {
    "note_count": note_count,
    "polyphony_rate": polyphony_rate,
    "empty_beat_rate": empty_beat_rate,
    "scale_consistency": scale_consistency,
    "pitch_range": pitch_range,
    "velocity_range": velocity_range,
    "pitch_class_entropy": pitch_class_entropy,
}
"""The paper's scalar features, keyed by their ``features.csv`` column names."""

EXTRA_FEATURES: dict[str, Callable[[symusic.Score], float]] = {
    "polyphony": polyphony,
    "duration_seconds": duration_seconds,
    "instrument_count": instrument_count,
}
"""Features the paper computed but did not plot (and, for multi-track models, ``instrument_count``); reported by
evaluation.py next to ``FEATURES``."""


def compute_features(score: symusic.Score) -> dict[str, float]:
    """Every feature of one score (``FEATURES`` and ``EXTRA_FEATURES``), as a column-name -> value dict."""
    return {name: fn(score) for name, fn in {**FEATURES, **EXTRA_FEATURES}.items()}


# ---------------------------------------------------------------------------------------------------------------
# Distributions (the paper's pitch and velocity panels)


def pitch_histogram(score: symusic.Score) -> np.ndarray:
    """Count of non-drum notes per MIDI pitch 0..127: a (128,) float array (sum over samples to plot a set)."""
    return np.bincount(note_arrays(score, drums=False)["pitch"], minlength=N_PITCHES).astype(float)


def velocity_histogram(score: symusic.Score) -> np.ndarray:
    """Count of notes per MIDI velocity 0..127: a (128,) float array."""
    return np.bincount(note_arrays(score, drums=True)["velocity"], minlength=N_PITCHES).astype(float)


# ---------------------------------------------------------------------------------------------------------------
# Piano rolls (the paper's over-optimisation figure)


def piano_roll(score: symusic.Score, tpq: int = PAPER_TPQ, frames: int | None = None) -> np.ndarray:
    """A (128, frames) roll at ``tpq`` frames per beat: the number of non-drum notes sounding per pitch and frame.

    As the paper's ``get_pr``: resample to ``tpq`` (notes may shrink to 0 frames), symusic's "frame" roll without
    velocity, summed over tracks. symusic makes the roll ``end + 1`` frames long; with ``frames`` only the first
    ``frames`` are made (silence-padded), so an event far past the music (MIDI files from other generators can
    carry a tempo change at tick 2**28) cannot make a roll of billions of frames.
    """
    resampled = as_ticks(score).resample(tpq, 0)
    if frames is not None:
        resampled = resampled.clip(0, frames, clip_end=True)
    for index in reversed(range(len(resampled.tracks))):
        if resampled.tracks[index].is_drum:
            del resampled.tracks[index]
    width = resampled.end() + 1 if frames is None else frames
    result = np.zeros((N_PITCHES, width))
    if resampled.tracks:
        roll = resampled.pianoroll(modes=["frame"], pitch_range=(0, N_PITCHES), encode_velocity=False)
        summed = roll.sum(axis=(0, 1))[:, :width]
        result[:, : summed.shape[1]] = summed
    return result


def roll_frames(score: symusic.Score, tpq: int = PAPER_TPQ) -> int:
    """How many frames the score's full piano roll has (its end at ``tpq``, plus one)."""
    return as_ticks(score).resample(tpq, 0).end() + 1


def average_piano_roll(
    scores: Sequence[symusic.Score], tpq: int = PAPER_TPQ, beats: int = PAPER_BEATS
) -> tuple[np.ndarray, int]:
    """Mean of the first ``beats`` beats of each score's piano roll, and how many scores went into it.

    Scores shorter than ``beats`` beats are left out, as in the paper (plot_piano_rolls.py). Returns a
    (128, tpq * beats) array, all NaN when no score is long enough (so a plot shows nothing rather than silence).
    """
    frames = tpq * beats
    rolls = [piano_roll(s, tpq, frames) for s in scores if roll_frames(s, tpq) >= frames]
    if not rolls:
        return np.full((N_PITCHES, frames), math.nan), 0
    return np.mean(rolls, axis=0), len(rolls)


# ---------------------------------------------------------------------------------------------------------------
# Diversity (the number the paper only showed as pictures)


def onset_histogram(score: symusic.Score, tpq: int = PAPER_TPQ) -> np.ndarray:
    """Count of non-drum note onsets per position inside the beat, at ``tpq`` positions: a (tpq,) array.

    A meter-free rhythm fingerprint: straight eighths fill positions 0 and tpq/2, triplets 0, tpq/3, 2tpq/3.
    """
    starts = note_arrays(as_ticks(score).resample(tpq, 0), drums=False)["start"]
    return np.bincount(starts % tpq, minlength=tpq).astype(float)


def style_descriptor(score: symusic.Score) -> np.ndarray | None:
    """Normalised pitch-class histogram (12) followed by normalised onset-in-beat histogram (12); None if no notes."""
    classes, onsets = pitch_class_histogram(score), onset_histogram(score)
    if classes.sum() < 1:
        return None
    return np.concatenate([classes / classes.sum(), onsets / onsets.sum()])


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of the total-variation distances of the two halves: 0 for the same histograms, 1 for disjoint ones.

    Broadcasts over leading axes, so one descriptor can be compared with a stack of them.
    """
    return 0.25 * np.abs(a - b).sum(axis=-1)


def summed_distances(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    """Each of n >= 1 descriptors' summed ``descriptor_distance`` to all the others, as an (n,) array: what both a
    set's diversity (``mean_pairwise_distance``) and the group_diversity reward are made of. Row by row, so a set
    of thousands of pieces (an evaluated MIDI folder) needs no n x n x 24 array."""
    stacked = np.stack(descriptors)
    return np.array([descriptor_distance(stacked, row).sum() for row in stacked])


def mean_pairwise_distance(scores: Sequence[symusic.Score]) -> float:
    """Diversity of a set: mean ``descriptor_distance`` over all pairs of scores with notes (NaN below two).

    0 when every sample uses the same pitch classes with the same rhythm; higher is more diverse. Note-less
    samples are left out because they have no descriptor.
    """
    descriptors = [d for d in map(style_descriptor, scores) if d is not None]
    n = len(descriptors)
    if n < 2:
        return math.nan
    return float(summed_distances(descriptors).sum() / (n * (n - 1)))


def near_duplicate_share(
    scores: Sequence[symusic.Score], threshold: float = 0.9, tpq: int = PAPER_TPQ, beats: int = PAPER_BEATS
) -> float:
    """Share of samples (with notes) whose opening is a near copy of another sample's: NaN below two samples.

    Two samples are near duplicates when their binary piano rolls over the first ``beats`` beats at ``tpq`` frames
    per beat (shorter samples padded with silence) have Jaccard similarity (shared pitch-frames over used
    pitch-frames) of at least ``threshold``. Mode collapse, the paper's over-optimisation symptom, drives this to 1.
    """
    frames = tpq * beats
    rolls = []
    for score in scores:
        if score.note_num() == 0:
            continue
        rolls.append((piano_roll(score, tpq, frames) > 0).astype(np.float32).ravel())
    if len(rolls) < 2:
        return math.nan
    matrix = np.stack(rolls)
    shared = matrix @ matrix.T
    sizes = matrix.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - shared
    similarity = np.divide(shared, union, out=np.ones_like(shared), where=union > 0)
    np.fill_diagonal(similarity, 0.0)
    return float(np.mean(similarity.max(axis=1) >= threshold))


def diversity(scores: Sequence[symusic.Score]) -> dict[str, float]:
    """The two diversity numbers of a set of samples, keyed as in ``summary.md``."""
    return {
        "mean_pairwise_distance": mean_pairwise_distance(scores),
        "near_duplicate_share": near_duplicate_share(scores),
    }
