"""Hand-made symusic scores for tests."""

from __future__ import annotations

import random

import symusic


def make_score(notes: list[tuple[float, float, int, int]], tpq: int = 12, qpm: float = 120.0) -> symusic.Score:
    """A one-track piano score from (start beat, duration beats, pitch, velocity) tuples."""
    score = symusic.Score(tpq)
    track = symusic.Track(program=0)
    for start, duration, pitch, velocity in notes:
        track.notes.append(symusic.Note(round(start * tpq), round(duration * tpq), pitch, velocity))
    score.tracks.append(track)
    score.tempos.append(symusic.Tempo(0, qpm))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    return score


def random_scores(count: int, seed: int = 0) -> list[symusic.Score]:
    """Varied scores: empty ones, slow and fast tempi, short and long notes, up to 60 beats."""
    rng = random.Random(seed)
    return [
        make_score(
            [(rng.uniform(0, 60), rng.uniform(0.1, 8), rng.randint(30, 100), rng.randint(1, 127))
             for _ in range(rng.choice([0, 1, 5, 40]))],
            qpm=rng.choice([40, 72, 120, 200]),
        )
        for _ in range(count)
    ]


def make_multitrack_score(tracks: list[tuple[int, bool, list[tuple[float, float, int, int]]]], tpq: int = 12,
                          qpm: float = 120.0) -> symusic.Score:
    """A score of several tracks from (program, is_drum, notes) with notes as in ``make_score``."""
    score = make_score([], tpq, qpm)
    score.tracks.clear()
    for program, is_drum, notes in tracks:
        score.tracks.append(make_score(notes, tpq, qpm).tracks[0])
        score.tracks[-1].program, score.tracks[-1].is_drum = program, is_drum
    return score


# Three 4/4 bars (in beats), every note starting and ending inside its bar, distinct pitches: a piece whose every
# note is known, for the reward audit's changes and statistics.
MELODY = [(0, 1, 60, 80), (1, 1, 64, 90), (2, 2, 67, 100),
          (4, 0.5, 72, 70), (4.5, 0.5, 71, 75), (5, 1, 69, 60), (6, 2, 65, 85),
          (8, 1, 62, 95), (8, 1, 55, 50), (9, 3, 58, 110)]
