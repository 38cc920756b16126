"""The reward audit's changes (smart_utils.perturbations) and statistics (smart_utils.audit_stats), on
hand-built scores whose every note is known."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import astuple

import numpy as np
import pytest
import symusic

from scores import make_multitrack_score, make_score
from smart_utils.audit_stats import (
    AuditRow,
    likely_exploits,
    markdown_table,
    paired_change,
    read_csv,
    write_csv,
    write_heatmap,
    write_html,
    write_markdown,
)
from smart_utils.perturbations import EXPLOIT_PROBES, PERTURBATIONS

TPQ = 480
BAR = 4 * TPQ  # ticks per 4/4 bar

# Three 4/4 bars, every note starting and ending inside its bar, distinct pitches.
MELODY = [(0, 1, 60, 80), (1, 1, 64, 90), (2, 2, 67, 100),
          (4, 0.5, 72, 70), (4.5, 0.5, 71, 75), (5, 1, 69, 60), (6, 2, 65, 85),
          (8, 1, 62, 95), (8, 1, 55, 50), (9, 3, 58, 110)]


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


# Statistics: stand-in rewards whose response to each change is known exactly.

def note_count(score: symusic.Score) -> float:
    return float(score.note_num())


def distinct_onsets(score: symusic.Score) -> float:
    return float(len({note.time for track in score.tracks for note in track.notes}))


def pieces() -> list[symusic.Score]:
    return [
        melody(),
        make_score([(0, 1, 60, 80), (0, 1, 64, 80), (1, 2, 67, 90)], tpq=TPQ),
        make_score([(beat / 2, 0.5, 50 + beat, 70) for beat in range(16)], tpq=TPQ),
        make_score([(0, 4, 48, 60), (4, 4, 43, 60), (8, 2, 72, 100), (10, 2, 74, 100)], tpq=TPQ),
        make_score([(1, 1, 65, 90), (2, 1, 67, 90), (3, 1, 69, 90), (5, 3, 70, 90), (6, 1, 40, 50)], tpq=TPQ),
    ]


def audit(reward, change: str) -> tuple[list[float], list[float]]:
    """The reward of each piece before and after ``change``."""
    before = [reward(piece) for piece in pieces()]
    after = [reward(PERTURBATIONS[change](piece, rng(index))) for index, piece in enumerate(pieces())]
    return before, after


def test_a_note_counting_reward_rises_under_octave_doubling_on_every_piece() -> None:
    result = paired_change(*audit(note_count, "octave_doubling"))
    assert result.n == 5 and result.dropped == 0
    assert result.mean == pytest.approx(np.mean([piece.note_num() for piece in pieces()]))
    assert result.mean > 0 and result.ci_low > 0 and result.share_rose == 1


def test_a_note_counting_reward_falls_under_dropped_notes() -> None:
    result = paired_change(*audit(note_count, "drop_half"))
    assert result.mean < 0 and result.ci_high < 0 and result.share_rose == 0


def test_a_transposition_blind_reward_shows_no_change_under_transposition() -> None:
    result = paired_change(*audit(distinct_onsets, "transpose+7"))
    assert (result.mean, result.ci_low, result.ci_high, result.share_rose) == (0, 0, 0, 0)


def test_paired_change_counts_ties_as_no_rise_and_drops_non_finite_pairs() -> None:
    result = paired_change([1.0, 2.0, 3.0, math.nan, 5.0, 1.0], [1.0, 4.0, 2.0, 1.0, math.inf, 4.0])
    assert (result.n, result.dropped) == (4, 2)
    assert result.mean == pytest.approx((0 + 2 - 1 + 3) / 4)
    assert result.share_rose == pytest.approx(2 / 4)
    assert result.ci_low <= result.mean <= result.ci_high


def test_paired_change_interval_widens_with_confidence_and_reproduces_with_its_seed() -> None:
    before, after = list(range(20)), [value + (value % 5) - 1.5 for value in range(20)]
    narrow, wide = paired_change(before, after, confidence=0.5), paired_change(before, after, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.mean < narrow.ci_high < wide.ci_high
    assert paired_change(before, after, seed=7) == paired_change(before, after, seed=7)


def test_paired_change_without_pairs_or_with_one_pair_has_no_interval() -> None:
    assert math.isnan(paired_change([math.nan], [1.0]).mean)
    single = paired_change([1.0], [3.0])
    assert single.mean == 2 and single.share_rose == 1 and math.isnan(single.ci_low) and math.isnan(single.ci_high)


def test_paired_change_refuses_unpaired_values() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_change([1.0, 2.0], [1.0])


# Writers.

def planted_rows() -> list[AuditRow]:
    return [
        AuditRow("note count", "first_bar_repeated", 5, 3.0, 1.0, 5.0, 1.0),
        AuditRow("note count", "random_pitches", 5, 0.5, -0.2, 1.2, 0.4),
        AuditRow("note count", "octave_doubling", 5, 9.0, 6.0, 12.0, 1.0),
        AuditRow("<b>loud</b> | score", "drop_half", 3, -1.25, -2.0, -0.5, 0.0, dropped=2),
        AuditRow("onsets", "transpose+2", 0, math.nan, math.nan, math.nan, math.nan, dropped=5),
        AuditRow("<b>loud</b> | score", "second_half_silent", 4, 0.3, 0.1, 0.6, 0.75),
    ]


def test_csv_round_trips_every_row_exactly(tmp_path) -> None:
    write_csv(planted_rows(), tmp_path / "audit.csv")
    assert [repr(astuple(row)) for row in read_csv(tmp_path / "audit.csv")] == [
        repr(astuple(row)) for row in planted_rows()]


def test_markdown_has_one_line_per_result_and_escapes_pipes(tmp_path) -> None:
    write_markdown(planted_rows(), tmp_path / "audit.md")
    lines = (tmp_path / "audit.md").read_text().splitlines()
    assert lines == markdown_table(planted_rows()).splitlines()
    assert len(lines) == 2 + len(planted_rows())
    assert all(row.change in line for row, line in zip(planted_rows(), lines[2:]))
    assert "<b>loud</b> \\| score" in lines[5] and "-1.25" in lines[5]


def test_only_exploit_probes_rising_with_the_interval_above_zero_are_flagged() -> None:
    assert likely_exploits(planted_rows()) == [planted_rows()[0], planted_rows()[5]]
    assert likely_exploits(planted_rows(), exploit_probes={"octave_doubling"}) == [planted_rows()[2]]


def test_html_warns_of_a_planted_exploit_and_escapes_names(tmp_path) -> None:
    examples = [("piece <1>", "first_bar_repeated", "audio/p1_before.wav", "audio/p1 \"after\".wav")]
    write_html(planted_rows(), tmp_path / "audit.html", "heatmap.png", examples)
    page = (tmp_path / "audit.html").read_text()
    warning = page[page.index("GRPO will likely exploit this"):page.index("</div>")]
    assert "note count</b> under <b>first_bar_repeated" in warning
    assert "&lt;b&gt;loud&lt;/b&gt; | score</b> under <b>second_half_silent" in warning
    assert "random_pitches" not in warning.split("</p>")[1] and "octave_doubling" not in warning
    assert "&lt;b&gt;loud&lt;/b&gt;" in page and "<b>loud</b>" not in page
    assert "piece &lt;1&gt;" in page and 'src="audio/p1 &quot;after&quot;.wav"' in page
    assert '<img src="heatmap.png"' in page


def test_html_without_a_rising_probe_has_no_warning(tmp_path) -> None:
    write_html(planted_rows()[1:5], tmp_path / "audit.html", "heatmap.png")
    page = (tmp_path / "audit.html").read_text()
    assert "GRPO will likely exploit this" not in page and "No reward rises" in page


def test_heatmap_is_a_png(tmp_path) -> None:
    write_heatmap(planted_rows(), tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes().startswith(b"\x89PNG")
