"""smart_utils/audit_stats.py, the reward audit's statistics and writers: the paired change of a reward under
each change of smart_utils/perturbations.py, for stand-in rewards whose response is known exactly, on hand-built
pieces; and the CSV, markdown, HTML page and heatmap it is written as."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest
import symusic

from scores import MELODY, make_score
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
from smart_utils.perturbations import PERTURBATIONS

TPQ = 480


def melody() -> symusic.Score:
    return make_score(MELODY, tpq=TPQ)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


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
