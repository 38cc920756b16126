"""corpus.py, the music21 -> piano MIDI conversion: valid single-track scores, varied velocities, caps and resuming."""

import json

import music21
import numpy as np
import symusic

import corpus
from smart_utils.tokenizer import default_remi


def _two_part_score() -> music21.stream.Score:
    """3/4 at 90 qpm, a melody with a grace note and an out-of-range pitch over a chordal bass."""
    melody, bass = music21.stream.Part(), music21.stream.Part()
    melody.append([music21.meter.TimeSignature("3/4"), music21.tempo.MetronomeMark(number=90)])
    for name in ["C5", "D5", "E5", "F5", "G5", "C9", "B4", "C5", "D5"]:
        melody.append(music21.note.Note(name, quarterLength=1))
    melody.insert(2.0, music21.note.Note("D6").getGrace())
    for _ in range(3):
        bass.append(music21.chord.Chord(["C3", "E3", "G3"], quarterLength=3))
    score = music21.stream.Score()
    score.insert(0, melody)
    score.insert(0, bass)
    return score


def test_hand_made_score_becomes_one_piano_track_with_varied_dynamics():
    notes, time_sigs, tempos = corpus.score_events(_two_part_score())
    score = corpus.build_score(notes, time_sigs, tempos, corpus.work_seed(0, "hand-made"))
    assert len(score.tracks) == 1 and score.tracks[0].program == 0 and not score.tracks[0].is_drum
    track = score.tracks[0].notes.numpy()
    assert len(track["pitch"]) == 9 + 9  # 9 melody notes (grace note dropped) + 3 three-note chords
    assert track["pitch"].min() >= 21 and track["pitch"].max() <= 108
    assert 108 in track["pitch"]  # C9 (120) folded down an octave, not dropped
    assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [(3, 4)]
    assert [round(t.qpm) for t in score.tempos] == [90]
    assert len(np.unique(track["velocity"])) >= 5 and track["velocity"].std() > 3


def test_velocities_are_reproducible_per_work():
    notes, ts, tempos = corpus.score_events(_two_part_score())
    first = corpus.build_score(notes, ts, tempos, corpus.work_seed(0, "a")).tracks[0].notes.numpy()["velocity"]
    again = corpus.build_score(notes, ts, tempos, corpus.work_seed(0, "a")).tracks[0].notes.numpy()["velocity"]
    other = corpus.build_score(notes, ts, tempos, corpus.work_seed(0, "b")).tracks[0].notes.numpy()["velocity"]
    assert (first == again).all() and (first != other).any()


def test_conversion_of_music21_works_is_capped_resumable_and_tokenizable(tmp_path):
    args = ["--out", str(tmp_path), "--keyboard", "chopin", "--folk", "oneills1850", "--folk-cap", "3",
            "--renaissance"]
    summary = corpus.main(args)
    assert summary["collections"]["chopin"]["pieces"] == 1
    assert summary["collections"]["oneills1850"]["pieces"] == 3
    manifest = (tmp_path / "manifest.jsonl").read_text().splitlines()

    assert corpus.main(args)["pieces"] == 4  # second run converts nothing new
    assert (tmp_path / "manifest.jsonl").read_text().splitlines() == manifest

    remi = default_remi()
    for record in map(json.loads, manifest):
        if record["kind"] == "work":
            score = symusic.Score(tmp_path / record["path"])
            assert score.note_num() == record["notes"] > 0
            tokens = remi(score)[0].tokens
            assert tokens[:2] == ["Bar_None", f"TimeSig_{score.time_signatures[0].numerator}/"
                                  f"{score.time_signatures[0].denominator}"]
            assert len({t for t in tokens if t.startswith("Velocity_")}) >= 3
