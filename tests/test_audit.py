"""audit.py, the reward audit: on hand-built pieces and stand-in rewards whose response to each change is known,
the table must show that response, the page must warn about a planted exploit, and bad input must stop the audit
before any work. One short run of the real command line samples from the shipped model."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic

import audit
from conftest import ROOT
from processors import Processor
from scores import make_score
from smart_utils.audit_stats import AuditRow, read_csv
from smart_utils.perturbations import PERTURBATIONS
from smart_utils.records import Record

TPQ = 480
PIECE_SIZES = (8, 11, 14, 17, 20)  # notes per piece, one per beat: 2 to 5 bars of 4/4, some ending mid-bar


class NoteCountStandIn(Processor):
    """Rises with every added note: a reward that likes density, whatever the music."""

    REWARDS = ("note_count_reward",)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            record["normalized_rewards"]["note_count_reward"] = min(record["sm"].note_num() / 200, 1.0)
        return records


class OnsetCountStandIn(Processor):
    """Distinct onsets / 100: blind to pitch, so a transposition cannot move it."""

    REWARDS = ("onset_count_reward",)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            onsets = {note.time for track in record["sm"].tracks for note in track.notes}
            record["normalized_rewards"]["onset_count_reward"] = len(onsets) / 100
        return records


class RepetitionStandIn(Processor):
    """1 - distinct pitches / notes: rewards repetition, so looping the first bar raises it (the planted exploit)."""

    REWARDS = ("repetition_reward",)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            pitches = [note.pitch for track in record["sm"].tracks for note in track.notes]
            value = 1 - len(set(pitches)) / len(pitches) if pitches else 0.0
            record["normalized_rewards"]["repetition_reward"] = value
        return records


STAND_INS = ["note_count_reward", "onset_count_reward", "repetition_reward"]


def write_pieces(folder: Path) -> Path:
    """Pieces of 8-20 notes, one per beat, every pitch of a piece distinct (48..80, so doubling and a tone up stay
    in range): the stand-ins' values before and after each change follow from that."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, size in enumerate(PIECE_SIZES):
        notes = [(beat, 1, 48 + (7 * beat + k) % 33, 70 + beat) for beat in range(size)]
        make_score(notes, tpq=TPQ).dump_midi(str(folder / f"piece{k}.mid"))
    return folder


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, soundfont: str) -> Path:
    """One audit of the pieces with every change, and a byte copy of the main soundfont as the other soundfont."""
    root = tmp_path_factory.mktemp("audit")
    pieces = write_pieces(root / "pieces")
    copy = shutil.copy(soundfont, root / "copy.sf2")
    out = root / "out"
    page = audit.main([str(pieces), "--rewards", *STAND_INS, "--soundfont", "timgm6mb", "--other-soundfonts",
                       str(copy), "--examples", "2", "--out", str(out)])
    assert page == out / "index.html"
    return out


def row(rows: list[AuditRow], reward: str, change: str) -> AuditRow:
    (found,) = [r for r in rows if r.reward == reward and r.change == change]
    return found


def test_every_reward_gets_a_row_per_change_over_every_piece(audited: Path) -> None:
    rows = read_csv(audited / "audit.csv")
    changes = [*PERTURBATIONS, "soundfont:copy"]
    assert [(r.reward, r.change) for r in rows] == [(reward, change) for reward in STAND_INS for change in changes]
    assert {r.n for r in rows} == {len(PIECE_SIZES)} and {r.dropped for r in rows} == {0}


def test_a_density_reward_rises_under_doubling_and_falls_when_notes_are_dropped(audited: Path) -> None:
    rows = read_csv(audited / "audit.csv")
    doubled = row(rows, "note_count_reward", "octave_doubling")
    assert doubled.mean > 0 and doubled.ci_low > 0 and doubled.share_rose == 1
    assert doubled.mean == pytest.approx(np.mean(PIECE_SIZES) / 200)  # every note doubled: + notes / 200
    thinned = row(rows, "note_count_reward", "drop_half")
    assert thinned.mean < 0 and thinned.ci_high < 0 and thinned.share_rose == 0


def test_a_pitch_blind_reward_does_not_move_under_transposition(audited: Path) -> None:
    moved = row(read_csv(audited / "audit.csv"), "onset_count_reward", "transpose+2")
    assert moved.mean == 0 and moved.ci_low == 0 and moved.ci_high == 0 and moved.share_rose == 0


def test_the_same_soundfont_under_another_name_changes_nothing(audited: Path) -> None:
    rows = read_csv(audited / "audit.csv")
    assert [row(rows, reward, "soundfont:copy").mean for reward in STAND_INS] == [0, 0, 0]


def warning_of(page_text: str) -> str:
    """The page's exploit warning block (empty when the page has none)."""
    match = re.search(r"<div class=warning>(.*?)</div>", page_text, re.S)
    return match.group(1) if match else ""


def test_the_planted_exploit_is_named_in_the_page_and_the_markdown(audited: Path) -> None:
    planted = row(read_csv(audited / "audit.csv"), "repetition_reward", "first_bar_repeated")
    assert planted.ci_low > 0 and planted.share_rose == 1
    warning = warning_of((audited / "index.html").read_text())
    assert "<b>repetition_reward</b> under <b>first_bar_repeated</b>" in warning
    assert "<b>onset_count_reward</b> under <b>drop_half</b>" not in warning  # it falls there: no warning
    markdown = (audited / "audit.md").read_text()
    assert "GRPO will exploit this" in markdown and "**repetition_reward** under **first_bar_repeated**" in markdown


def test_the_reports_exist_and_every_player_points_at_a_written_clip(audited: Path) -> None:
    for name in ("audit.md", "audit.csv", "heatmap.png", "index.html"):
        assert (audited / name).stat().st_size > 0
    assert (audited / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (audited / "index.html").read_text()
    assert '<img src="heatmap.png"' in page
    sources = re.findall(r'<audio controls preload=none src="([^"]+)"', page)
    # 2 pieces x (5 exploit probes + octave_doubling + tempo_x2 + the other soundfont), before and after each
    assert len(sources) == 2 * 8 * 2
    assert all(not Path(src).is_absolute() and (audited / src).is_file() for src in sources)
    assert "first_bar_repeated" in page and "soundfont:copy" in page


def test_each_change_is_seeded_by_seed_piece_and_change() -> None:
    scores = [make_score([(beat, 1, 50 + beat, 80) for beat in range(12)], tpq=TPQ) for _ in range(2)]

    def notes(score: symusic.Score) -> list[tuple[int, int]]:
        return [(note.time, note.pitch) for note in score.tracks[0].notes]

    first, again = audit.changed_scores(scores, "drop_half", 0), audit.changed_scores(scores, "drop_half", 0)
    assert [notes(s) for s in first] == [notes(s) for s in again]
    assert notes(first[0]) != notes(first[1])  # same piece twice, different piece index: a different draw
    assert [notes(s) for s in audit.changed_scores(scores, "drop_half", 1)] != [notes(s) for s in first]


def test_a_change_that_empties_a_piece_is_scored_not_dropped(tmp_path: Path) -> None:
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    make_score([(0, 1, 126, 80), (1, 1, 127, 80)], tpq=TPQ).dump_midi(str(pieces / "high.mid"))
    audit.main([str(pieces), "--rewards", "note_count_reward", "--changes", "transpose+2", "--other-soundfonts",
                "none", "--examples", "0", "--out", str(tmp_path / "out")])
    (emptied,) = read_csv(tmp_path / "out" / "audit.csv")
    assert (emptied.n, emptied.dropped) == (1, 0) and emptied.mean == pytest.approx(-2 / 200)
    assert math.isnan(emptied.ci_low)  # one pair: no spread to resample


def audit_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The message audit.main exits with (status 2) for bad input."""
    with pytest.raises(SystemExit) as stopped:
        audit.main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_unknown_names_fail_before_any_sampling_and_list_the_known_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    model = str(ROOT / "models" / "piano-tiny")
    message = audit_error(capsys, [model, "--changes", "drop_half", "loop_forever", "--out", str(out)])
    assert "unknown change(s) ['loop_forever']" in message and "first_bar_repeated" in message
    message = audit_error(capsys, [model, "--rewards", "note_density", "beauty", "--out", str(out)])
    assert "unknown reward(s) ['beauty']" in message and "audio_activity" in message
    message = audit_error(capsys, [model, "--rewards", "CE", "--out", str(out)])
    assert "--audiobox" in message
    message = audit_error(capsys, [model, "--other-soundfonts", "no_such_font", "--out", str(out)])
    assert "no_such_font" in message and "not found" in message
    assert not out.exists()  # nothing sampled, nothing written


def test_a_folder_without_readable_midi_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    (pieces / "broken.mid").write_bytes(b"not a MIDI file")
    message = audit_error(capsys, [str(pieces), "--other-soundfonts", "none", "--out", str(tmp_path / "out")])
    assert "no readable MIDI file in" in message and "1 file(s)" in message


def test_the_command_line_audits_pieces_sampled_from_the_shipped_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "audit.py", "models/piano-tiny", "--n", "4", "--max-new-tokens", "48", "--device", "cpu",
         "--changes", "transpose+2", "first_bar_repeated", "--other-soundfonts", "none", "--examples", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[audit] report: {(out / 'index.html').resolve()}" in result.stdout
    rows = read_csv(out / "audit.csv")
    assert {(r.reward, r.change) for r in rows} == {
        (reward, change) for reward in ("scale_consistency", "note_density", "filled_beats", "audio_activity")
        for change in ("transpose+2", "first_bar_repeated")}
    assert {r.n + r.dropped for r in rows} == {4}
    assert len(list((out / "samples" / "piano-tiny").glob("*.mid"))) == 4
