"""smart_utils/perturbations.py, the reward audit's changes, on hand-built scores whose every note is known."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import symusic

from scores import MELODY, make_multitrack_score, make_score
from smart_utils.perturbations import EXPLOIT_PROBES, PERTURBATIONS

TPQ = 480
BAR = 4 * TPQ  # ticks per 4/4 bar


def melody() -> symusic.Score:
    return make_score(MELODY, tpq=TPQ)


def notes_of(score: symusic.Score) -> list[tuple[int, int, int, int]]:
    """Every note of every track as (time, duration, pitch, velocity), sorted."""
    return sorted((note.time, note.duration, note.pitch, note.velocity)
                  for track in score.tracks for note in track.notes)


def bars_of(score: symusic.Score) -> dict[int, list[tuple[int, int, int, int]]]:
    """The notes of each 4/4 bar, keyed by bar number, with their onset taken inside the bar."""
    bars: dict[int, list[tuple[int, int, int, int]]] = {}
    for time, duration, pitch, velocity in notes_of(score):
        bars.setdefault(time // BAR, []).append((time % BAR, duration, pitch, velocity))
    return bars


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("semitones", [2, -2, 7, -7])
def test_transposition_moves_every_pitch_by_k_and_nothing_else(semitones: int) -> None:
    score = melody()
    moved = PERTURBATIONS[f"transpose{semitones:+d}"](score, rng())
    assert notes_of(moved) == sorted((t, d, p + semitones, v) for t, d, p, v in notes_of(score))
    assert moved.tempos == score.tempos and moved.time_signatures == score.time_signatures


def test_transposition_drops_notes_pushed_out_of_range_and_leaves_drums_alone() -> None:
    score = make_multitrack_score([(0, False, [(0, 1, 126, 80), (1, 1, 60, 80), (2, 1, 1, 80)]),
                                   (0, True, [(0, 1, 36, 100)])], tpq=TPQ)
    up, down = PERTURBATIONS["transpose+2"](score, rng()), PERTURBATIONS["transpose-2"](score, rng())
    assert [note.pitch for note in up.tracks[0].notes] == [62, 3]
    assert [note.pitch for note in down.tracks[0].notes] == [124, 58]
    assert [note.pitch for note in up.tracks[1].notes] == [36]


def test_a_score_in_quarters_is_changed_in_ticks() -> None:
    moved = PERTURBATIONS["transpose+2"](melody().to("quarter"), rng())
    assert isinstance(moved, symusic.core.ScoreTick)
    assert notes_of(moved) == sorted((t, d, p + 2, v) for t, d, p, v in notes_of(melody()))


def test_time_reversal_maps_onset_t_to_end_minus_t_minus_duration() -> None:
    score = melody()
    end = 12 * TPQ
    assert notes_of(PERTURBATIONS["time_reversed"](score, rng())) == sorted(
        (end - t - d, d, p, v) for t, d, p, v in notes_of(score))


def test_velocity_scaling_rounds_and_stays_within_1_to_127() -> None:
    score = make_score([(0, 1, 60, 1), (1, 1, 61, 80), (2, 1, 62, 100), (3, 1, 63, 127)], tpq=TPQ)
    softer, louder = PERTURBATIONS["velocity_x0.5"](score, rng()), PERTURBATIONS["velocity_x1.5"](score, rng())
    assert [note.velocity for note in softer.tracks[0].notes] == [1, 40, 50, 64]
    assert [note.velocity for note in louder.tracks[0].notes] == [2, 120, 127, 127]
    assert [n[:3] for n in notes_of(softer)] == [n[:3] for n in notes_of(score)]


@pytest.mark.parametrize(("name", "factor"), [("tempo_x0.5", 0.5), ("tempo_x2", 2.0)])
def test_tempo_scaling_changes_tempo_events_not_note_ticks(name: str, factor: float) -> None:
    score = melody()
    score.tempos.append(symusic.Tempo(4 * TPQ, 90.0))
    scaled = PERTURBATIONS[name](score, rng())
    assert [tempo.time for tempo in scaled.tempos] == [0, 4 * TPQ]
    assert [tempo.qpm for tempo in scaled.tempos] == pytest.approx([120 * factor, 90 * factor], rel=1e-5)
    assert notes_of(scaled) == notes_of(score)


def test_tempo_scaling_without_a_tempo_event_starts_from_120_qpm() -> None:
    score = melody()
    score.tempos.clear()
    scaled = PERTURBATIONS["tempo_x2"](score, rng())
    assert [(tempo.time, tempo.qpm) for tempo in scaled.tempos] == [(0, pytest.approx(240.0))]


def test_dropping_keeps_half_of_each_track_all_of_them_original_notes() -> None:
    score = make_multitrack_score([(0, False, MELODY), (0, True, [(beat, 0.5, 42, 90) for beat in range(7)])],
                                  tpq=TPQ)
    thinned = PERTURBATIONS["drop_half"](score, rng())
    assert [len(track.notes) for track in thinned.tracks] == [5, 4]
    assert not Counter(notes_of(thinned)) - Counter(notes_of(score))
    other = PERTURBATIONS["drop_half"](score, rng(1))
    assert notes_of(other) != notes_of(thinned)


def test_octave_doubling_adds_a_copy_twelve_up_of_each_note_that_stays_in_range() -> None:
    score = make_score([(0, 1, 60, 80), (1, 2, 115, 90), (3, 1, 116, 70)], tpq=TPQ)
    doubled = PERTURBATIONS["octave_doubling"](score, rng())
    assert notes_of(doubled) == sorted(notes_of(score) + [(0, TPQ, 72, 80), (TPQ, 2 * TPQ, 127, 90)])


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_bars_keep_each_bars_content_and_the_bar_count_but_not_the_order(seed: int) -> None:
    score = make_score(MELODY + [(12, 1, 48, 64), (13.5, 2, 50, 66)], tpq=TPQ)
    shuffled = PERTURBATIONS["bars_shuffled"](score, rng(seed))
    original_bars, shuffled_bars = bars_of(score), bars_of(shuffled)
    assert sorted(shuffled_bars) == sorted(original_bars) == [0, 1, 2, 3]
    assert sorted(map(tuple, shuffled_bars.values())) == sorted(map(tuple, original_bars.values()))
    assert shuffled_bars != original_bars


def meter_at(score: symusic.Score, time: int) -> tuple[int, int]:
    """The meter of the last time signature at or before ``time``."""
    signature = max((s for s in score.time_signatures if s.time <= time), key=lambda s: s.time)
    return signature.numerator, signature.denominator


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_bars_carry_their_meter_when_the_meter_changes(seed: int) -> None:
    score = make_score([(0, 1, 60, 80), (3, 1, 62, 80), (5, 1, 64, 80), (7, 1, 65, 80)], tpq=TPQ)
    score.time_signatures = [symusic.TimeSignature(0, 3, 4), symusic.TimeSignature(3 * TPQ, 2, 4)]
    meter_of_pitch = {60: (3, 4), 62: (2, 4), 64: (2, 4), 65: (2, 4)}
    bar_length_of_pitch = {60: 3 * TPQ, 62: 2 * TPQ, 64: 2 * TPQ, 65: 2 * TPQ}
    shuffled = PERTURBATIONS["bars_shuffled"](score, rng(seed))
    in_order = sorted(shuffled.tracks[0].notes, key=lambda note: note.time)
    assert [note.pitch for note in in_order] != [60, 62, 64, 65]
    assert [note.time for note in in_order] == list(
        np.cumsum([0] + [bar_length_of_pitch[note.pitch] for note in in_order[:-1]]))
    assert all(meter_at(shuffled, note.time) == meter_of_pitch[note.pitch] for note in in_order)


def test_random_pitches_keep_the_rhythm_and_the_pitch_range() -> None:
    score = melody()
    randomised = PERTURBATIONS["random_pitches"](score, rng())
    assert sorted((t, d, v) for t, d, _, v in notes_of(randomised)) == sorted(
        (t, d, v) for t, d, _, v in notes_of(score))
    pitches = [p for _, _, p, _ in notes_of(randomised)]
    assert min(pitches) >= 55 and max(pitches) <= 72
    assert Counter(pitches) != Counter(p for _, _, p, _ in notes_of(score))


def test_first_bar_repeated_makes_every_bar_equal_to_bar_one() -> None:
    score = melody()
    looped = PERTURBATIONS["first_bar_repeated"](score, rng())
    bars = bars_of(looped)
    assert sorted(bars) == [0, 1, 2]
    assert all(bar == bars_of(score)[0] for bar in bars.values())


def test_first_bar_repeated_fills_a_shorter_bar_with_what_fits() -> None:
    score = make_score([(beat, 1, 60 + beat, 80) for beat in range(4)] + [(5, 1, 70, 80)], tpq=TPQ)
    score.time_signatures.append(symusic.TimeSignature(BAR, 2, 4))
    looped = PERTURBATIONS["first_bar_repeated"](score, rng())
    assert notes_of(looped) == [(beat * TPQ, TPQ, 60 + beat, 80) for beat in range(4)] + [
        ((4 + beat) * TPQ, TPQ, 60 + beat, 80) for beat in range(2)]


def test_first_bar_repeated_skips_an_opening_rest() -> None:
    score = make_score([(5, 1, 60, 80), (6, 1, 62, 80), (9, 1, 64, 80)], tpq=TPQ)
    bars = bars_of(PERTURBATIONS["first_bar_repeated"](score, rng()))
    assert bars == {bar: [(TPQ, TPQ, 60, 80), (2 * TPQ, TPQ, 62, 80)] for bar in range(3)}


def test_jitter_never_moves_an_onset_before_zero() -> None:
    chord = make_score([(0, 1, pitch, 80) for pitch in range(60, 76)], tpq=TPQ)
    onsets = [note.time for note in PERTURBATIONS["timing_jitter"](chord, rng()).tracks[0].notes]
    assert min(onsets) == 0 and max(onsets) > 0


def test_jitter_keeps_durations_and_moves_onsets_a_little_never_before_zero() -> None:
    score = melody()
    jittered = PERTURBATIONS["timing_jitter"](score, rng())
    before = {note.pitch: note for note in score.tracks[0].notes}
    after = {note.pitch: note for note in jittered.tracks[0].notes}
    assert before.keys() == after.keys()
    assert all(after[p].duration == before[p].duration and after[p].velocity == before[p].velocity for p in before)
    moves = [after[p].time - before[p].time for p in before]
    assert any(moves) and max(map(abs, moves)) <= 5 * TPQ // 8
    assert min(note.time for note in jittered.tracks[0].notes) >= 0


def test_silence_removes_the_second_half_and_cuts_notes_crossing_the_middle() -> None:
    score = make_score([(0, 1, 60, 80), (2, 4, 62, 80), (4, 1, 64, 80), (7, 1, 65, 80)], tpq=TPQ)
    silenced = PERTURBATIONS["second_half_silent"](score, rng())
    middle = 4 * TPQ
    assert notes_of(silenced) == [(0, TPQ, 60, 80), (2 * TPQ, 2 * TPQ, 62, 80)]
    assert max(note.end for note in silenced.tracks[0].notes) <= middle
    assert silenced.end() == score.end()


def test_exploit_probes_name_changes_that_exist() -> None:
    assert PERTURBATIONS.keys() >= EXPLOIT_PROBES
    assert {"first_bar_repeated", "random_pitches"} <= EXPLOIT_PROBES


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_no_change_modifies_its_input_and_each_depends_only_on_its_inputs(name: str) -> None:
    score = make_multitrack_score([(0, False, MELODY), (0, True, [(0, 1, 36, 100), (2, 1, 38, 100)])], tpq=TPQ)
    before = score.dumps_midi()
    first, second = PERTURBATIONS[name](score, rng(3)), PERTURBATIONS[name](score, rng(3))
    assert score.dumps_midi() == before
    assert first.dumps_midi() == second.dumps_midi()
    assert first is not score


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_empty_scores_come_back_empty(name: str) -> None:
    no_tracks, silent_track = symusic.Score(TPQ), make_score([], tpq=TPQ)
    assert PERTURBATIONS[name](no_tracks, rng()).note_num() == 0
    assert PERTURBATIONS[name](silent_track, rng()).note_num() == 0
