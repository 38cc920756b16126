"""smart_utils/features.py: every feature on hand-made scores whose answers are known by hand (muspy's definitions,
see features.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import symusic

from smart_utils import features as F

TPQ = 24  # one beat = 24 ticks in the hand-made scores


def score_of(notes: list[tuple[int, int, int, int]], tpq: int = TPQ, drum_notes=()) -> symusic.Score:
    """A one-track tick score from (start, end, pitch, velocity) tuples, plus an optional drum track."""
    score = symusic.Score(tpq)
    for is_drum, group in ((False, notes), (True, drum_notes)):
        if not group:
            continue
        track = symusic.Track("drums" if is_drum else "piano", 0, is_drum)
        for start, end, pitch, velocity in group:
            track.notes.append(symusic.Note(start, end - start, pitch, velocity))
        score.tracks.append(track)
    return score


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
C_MAJOR_SCALE = score_of([(i * TPQ, (i + 1) * TPQ, p, 60 + 4 * i) for i, p in enumerate(C_MAJOR)])
CHROMATIC = score_of([(i * TPQ, (i + 1) * TPQ, 60 + i, 80) for i in range(12)])


def test_feature_names_are_the_papers_columns():
    assert list(F.FEATURES) == [
        "note_count", "polyphony_rate", "empty_beat_rate", "scale_consistency",
        "pitch_range", "velocity_range", "pitch_class_entropy",
    ]


def test_every_feature_of_a_c_major_scale():
    values = F.compute_features(C_MAJOR_SCALE)
    assert values["note_count"] == 8
    assert values["scale_consistency"] == 1.0
    assert values["pitch_range"] == 12
    assert values["velocity_range"] == 28
    assert values["polyphony_rate"] == 0.0
    assert values["empty_beat_rate"] == 0.0
    # C twice, six other classes once: -(1/4 log2 1/4 + 6/8 log2 1/8) = 0.5 + 2.25
    assert values["pitch_class_entropy"] == pytest.approx(2.75)
    assert values["duration_seconds"] == pytest.approx(4.0)  # 8 beats at the default 120 qpm
    assert values["instrument_count"] == 1


def test_chromatic_scale_is_inconsistent_and_maximally_entropic():
    assert F.scale_consistency(CHROMATIC) == pytest.approx(7 / 12)
    assert F.pitch_class_entropy(CHROMATIC) == pytest.approx(math.log2(12))


def test_a_minor_melody_is_fully_in_scale_and_one_pitch_class_has_zero_entropy():
    a_minor = score_of([(i * TPQ, (i + 1) * TPQ, p, 80) for i, p in enumerate([57, 59, 60, 62, 64, 65, 67])])
    assert F.scale_consistency(a_minor) == 1.0
    octaves = score_of([(0, TPQ, 48, 80), (TPQ, 2 * TPQ, 60, 80), (2 * TPQ, 3 * TPQ, 72, 80)])
    assert F.pitch_class_entropy(octaves) == 0.0
    assert F.pitch_range(octaves) == 24


def test_one_silent_beat_in_four():
    # staccato notes in beats 0, 2 and 3; beat 1 is silent. Last end = 3.5 beats -> 3 // 1 + 1 = 4 beats.
    score = score_of([(0, 12, 60, 80), (2 * TPQ, 2 * TPQ + 12, 62, 80), (3 * TPQ, 3 * TPQ + 12, 64, 80)])
    assert F.empty_beat_rate(score) == 0.25


def test_empty_beat_rate_counts_a_note_ending_on_a_beat_line_in_the_next_beat():
    # muspy's convention: a note [0, 1 beat) also occupies beat 1, so this score has no empty beat although
    # beat 1 is silent, and four beats (last end 3 beats -> 3 + 1) rather than three.
    legato = score_of([(0, TPQ, 60, 80), (2 * TPQ, 3 * TPQ, 62, 80)])
    assert F.empty_beat_rate(legato) == 0.0
    long_rest = score_of([(0, TPQ, 60, 80), (4 * TPQ, 5 * TPQ, 62, 80)])  # beats 0,1 and 4,5 of 6 occupied
    assert F.empty_beat_rate(long_rest) == pytest.approx(2 / 6)


def test_polyphony_rate_counts_more_than_threshold_pitches():
    # a triad for one beat, then a dyad for one beat: only the triad has more than 2 pitches
    triad = [(0, TPQ, p, 80) for p in (60, 64, 67)]
    score = score_of(triad + [(TPQ, 2 * TPQ, p, 80) for p in (60, 64)])
    assert F.polyphony_rate(score) == 0.5
    assert F.polyphony_rate(score, threshold=1) == 1.0
    assert F.polyphony(score) == pytest.approx(2.5)


def test_polyphony_rate_counts_silence_and_merges_repeated_pitches():
    # a triad for the second beat only (first beat silent) -> 1/2; a doubled C does not make a third pitch
    score = score_of([(TPQ, 2 * TPQ, p, 80) for p in (60, 64, 67)])
    assert F.polyphony_rate(score) == 0.5
    doubled = score_of([(0, TPQ, 60, 80), (0, TPQ, 60, 90), (0, TPQ, 64, 80)])
    assert F.polyphony_rate(doubled) == 0.0


def test_drums_are_ignored_by_pitch_features_but_counted_as_notes():
    drums = [(i * 6, i * 6 + 3, 37 + i, 127) for i in range(20)]
    with_drums = score_of([(i * TPQ, (i + 1) * TPQ, p, 60 + 4 * i) for i, p in enumerate(C_MAJOR)], drum_notes=drums)
    assert F.scale_consistency(with_drums) == 1.0
    assert F.pitch_range(with_drums) == 12
    assert F.pitch_class_entropy(with_drums) == pytest.approx(2.75)
    assert F.note_count(with_drums) == 28
    assert F.velocity_range(with_drums) == 127 - 60
    assert F.pitch_histogram(with_drums).sum() == 8


def score_with_empty_track() -> symusic.Score:
    score = symusic.Score(TPQ)
    score.tracks.append(symusic.Track("piano", 0, False))
    return score


@pytest.mark.parametrize("score", [symusic.Score(TPQ), score_with_empty_track()], ids=["no tracks", "empty track"])
def test_every_feature_is_defined_on_an_empty_score(score):
    values = F.compute_features(score)
    assert values.pop("note_count") == 0
    assert values.pop("duration_seconds") == 0
    assert values.pop("instrument_count") == 0
    assert all(math.isnan(v) for v in values.values()), values
    assert F.pitch_histogram(score).sum() == 0 and F.velocity_histogram(score).sum() == 0


def test_time_unit_does_not_change_features():
    ticks = F.compute_features(C_MAJOR_SCALE)
    assert F.compute_features(C_MAJOR_SCALE.to("quarter")) == pytest.approx(ticks)
    assert F.compute_features(C_MAJOR_SCALE.to("second")) == pytest.approx(ticks)


def test_pitch_and_velocity_histograms_count_each_note_once():
    pitches = F.pitch_histogram(C_MAJOR_SCALE)
    assert pitches.shape == (128,) and pitches[60] == 1 and pitches[61] == 0 and pitches.sum() == 8
    velocities = F.velocity_histogram(C_MAJOR_SCALE)
    assert velocities.shape == (128,) and velocities[60] == 1 and velocities[88] == 1 and velocities.sum() == 8


def test_average_piano_roll_excludes_short_scores_and_averages_frames():
    sixteen_beats = 16 * TPQ
    held_c = score_of([(0, sixteen_beats, 60, 80)])
    held_d = score_of([(0, sixteen_beats, 62, 80)])
    short = score_of([(0, TPQ, 64, 80)])
    roll, used = F.average_piano_roll([held_c, held_d, short])
    assert used == 2
    assert roll.shape == (128, 12 * 16)
    assert np.all(roll[60] == 0.5) and np.all(roll[62] == 0.5) and roll[64].sum() == 0
    assert roll.sum() == pytest.approx(12 * 16)


def test_average_piano_roll_of_only_short_scores_is_nan():
    roll, used = F.average_piano_roll([score_of([(0, TPQ, 60, 80)])])
    assert used == 0 and np.isnan(roll).all()


def test_diversity_of_identical_and_distinct_sets():
    identical = F.diversity([C_MAJOR_SCALE] * 5)
    assert identical == {"mean_pairwise_distance": 0.0, "near_duplicate_share": 1.0}
    # disjoint pitch classes and disjoint onset positions: distance 1 between every pair
    distinct = [score_of([(i * TPQ + offset, i * TPQ + offset + 2, pc + 12 * i % 24 + 48, 80) for i in range(8)])
                for pc, offset in zip(range(0, 12, 3), (0, 6, 12, 18))]
    assert F.diversity(distinct) == {"mean_pairwise_distance": pytest.approx(1.0), "near_duplicate_share": 0.0}


def test_near_duplicates_are_found_among_distinct_samples():
    tweaked = score_of([(i * TPQ, (i + 1) * TPQ, p, 80) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 73])])
    assert F.near_duplicate_share([C_MAJOR_SCALE, tweaked, CHROMATIC], threshold=0.7) == pytest.approx(2 / 3)
    assert math.isnan(F.near_duplicate_share([C_MAJOR_SCALE]))  # undefined below two samples


def test_diversity_ignores_empty_samples():
    assert math.isnan(F.mean_pairwise_distance([C_MAJOR_SCALE, symusic.Score(TPQ)]))


def test_piano_rolls_ignore_events_far_past_the_music():
    """A tempo change at tick 2**28 (seen in MIDI files from a random model) must not make a 2**28-frame roll."""
    late = score_of([(0, 16 * TPQ, 60, 80)])
    late.tempos.append(symusic.Tempo(2**28, 90.0))
    roll, used = F.average_piano_roll([late, score_of([(0, 16 * TPQ, 62, 80)])])
    assert used == 2 and roll.shape == (128, 12 * 16) and np.all(roll[60] == 0.5)
    empty = symusic.Score(TPQ)
    empty.tempos.append(symusic.Tempo(2**28, 90.0))
    assert F.piano_roll(empty, frames=12 * 16).shape == (128, 12 * 16)
    assert F.near_duplicate_share([late, late]) == 1.0
