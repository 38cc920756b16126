"""listening/stimuli.py (listen.py build): the paper's clip rule with bounded retries, the same prompts and seeds for
every system, loudness-matched clips under names that do not reveal the system, and a complete manifest."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile

import listen
from listen_helpers import CONSTANTS, write_pieces
from listening.stimuli import (
    GORILLA_CSV,
    MANIFEST,
    PEAK_CEILING_DB,
    STUDY_GENERATION,
    build_study,
    integrated_loudness,
    loudness_target,
)
from processors import STANDALONE_REWARDS
from smart_utils.soundfont_sources import resolve_soundfont

CLIP_NAME = re.compile(r"stimuli/[0-9a-f]{12}\.wav")


def measured_lufs(path: Path) -> float:
    audio, rate = soundfile.read(path)
    return pyloudnorm.Meter(rate).integrated_loudness(audio)


@pytest.fixture(scope="module")
def folder_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two MIDI-folder systems of 3 pieces: 12 s pieces that meet the rule, at different loudness (quiet single
    notes vs loud chords), and a 3 s piece (prompt 2) that cannot."""
    root = tmp_path_factory.mktemp("listen_build")
    quiet = write_pieces(root / "quiet", [24, 24, 6], velocity=30)
    loud = write_pieces(root / "loud", [24, 24, 6], velocity=120, voices=4)
    report = build_study({"quiet": str(quiet), "loud": str(loud)}, root / "study", constants=CONSTANTS,
                         generation=replace(STUDY_GENERATION, n=3), soundfont="timgm6mb")
    return root / "study", {"report": report, "manifest": json.loads((root / "study" / MANIFEST).read_text())}


def test_manifest_records_prompt_system_seed_soundfont_and_scores(folder_study):
    study, built = folder_study
    manifest = built["manifest"]
    clips = manifest["clips"]
    assert len(clips) == 6
    digest = hashlib.sha256(Path(resolve_soundfont("timgm6mb")).read_bytes()).hexdigest()
    assert manifest["soundfont"]["sha256"] == digest
    for clip in clips:
        assert {"id", "file", "system", "prompt_index", "prompt", "seed", "tries", "passed_rule", "duration_s",
                "empty_beat_rate", "soundfont_sha256", "scores", "gain_db"} <= set(clip)
        assert clip["soundfont_sha256"] == digest
        assert set(clip["scores"]) == {f"reward_{name}" for name in STANDALONE_REWARDS}
        assert all(0 <= value <= 1 for value in clip["scores"].values())
        assert (study / clip["file"]).is_file() and (study / clip["midi"]).is_file()
    assert "no checkpoint given" in manifest["scores"]["audiobox_skipped"]  # Audiobox only when asked for
    for system in ("quiet", "loud"):
        assert sorted(c["prompt_index"] for c in clips if c["system"] == system) == [0, 1, 2]


def test_rule_failures_are_reported_as_fallbacks(folder_study):
    _, built = folder_study
    clips = built["manifest"]["clips"]
    assert {(c["system"], c["prompt_index"]) for c in clips if not c["passed_rule"]} == {("quiet", 2), ("loud", 2)}
    assert built["report"].fell_back == {"quiet": [2], "loud": [2]}
    assert any("fell back" in line and "[2]" in line for line in built["manifest"]["report"])
    short = next(c for c in clips if c["prompt_index"] == 2)
    assert short["duration_s"] < 8 <= min(c["duration_s"] for c in clips if c["passed_rule"])


def test_clips_are_loudness_matched(folder_study):
    study, built = folder_study
    clips = built["manifest"]["clips"]
    rendered = [c["loudness_lufs_rendered"] for c in clips]
    assert max(rendered) - min(rendered) > 2  # the renders really differ in loudness ...
    measured = [measured_lufs(study / c["file"]) for c in clips]
    target = built["manifest"]["loudness"]["effective_lufs"]
    assert max(abs(m - target) for m in measured) < 0.1  # ... and the written clips do not
    for clip in clips:
        audio, _ = soundfile.read(study / clip["file"])
        assert 20 * math.log10(np.abs(audio).max()) <= PEAK_CEILING_DB + 0.01  # no clipping


def test_loudness_target_is_lowered_rather_than_clipping():
    assert loudness_target([-12.0, -15.0], [1.0, 1.0], -23.0) == -23.0
    # a clip at -30 LUFS peaking at full scale could only reach -23 by clipping: everyone goes to -31
    assert loudness_target([-12.0, -30.0], [1.0, 1.0], -23.0) == pytest.approx(-31.0)
    assert loudness_target([math.nan, -12.0], [0.0, 1.0], -23.0) == -23.0  # silent clips are ignored


def test_silent_and_too_short_clips_have_no_loudness():
    assert math.isnan(integrated_loudness(np.zeros((2, 48000), np.float32), 48000))
    assert math.isnan(integrated_loudness(np.ones((2, 4800), np.float32) * 0.1, 48000))  # 0.1 s < one block


def test_file_names_do_not_reveal_the_system(folder_study):
    study, built = folder_study
    clips = built["manifest"]["clips"]
    assert all(CLIP_NAME.fullmatch(c["file"]) for c in clips)
    names = sorted(p.name for p in (study / "stimuli").iterdir())
    assert names == sorted(Path(c["file"]).name for c in clips)
    assert not any(system in name for name in names for system in ("quiet", "loud", "base", "tuned"))
    with open(study / GORILLA_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["display"] for r in rows] == ["Trial"] * 6
    assert sorted(r["Stimulus"] for r in rows) == names


def test_refuses_to_overwrite_a_study(folder_study, tmp_path: Path):
    study, _ = folder_study
    with pytest.raises(FileExistsError, match="not empty"):
        build_study({"a": "x", "b": "y"}, study, constants=CONSTANTS)


def test_models_answer_the_same_prompts_with_the_same_seeds_and_retries_are_bounded(tiny_policy, tmp_path: Path):
    """The same stand-in model as two systems: same prompts and seeds must give the same pieces. A random model
    rarely meets the rule, so the retry bound is what ends the search."""
    out = tmp_path / "study"
    listen.main(["build", f"base={tiny_policy}", f"tuned={tiny_policy}", "--prompts", "3", "--max-tries", "2",
                 "--max-new-tokens", "48", "--soundfont", "timgm6mb", "--device", "cpu", "--out", str(out)])
    clips = json.loads((out / MANIFEST).read_text())["clips"]
    by_system = {s: sorted((c for c in clips if c["system"] == s), key=lambda c: c["prompt_index"])
                 for s in ("base", "tuned")}
    assert [c["prompt_index"] for c in by_system["base"]] == [0, 1, 2]
    for base, tuned in zip(by_system["base"], by_system["tuned"]):
        assert base["prompt"] == tuned["prompt"] and base["prompt"].startswith("Bar_None TimeSig_")
        assert (base["seed"], base["tries"], base["accepted_try"]) == (tuned["seed"], tuned["tries"],
                                                                       tuned["accepted_try"])
        assert (out / base["midi"]).read_bytes() == (out / tuned["midi"]).read_bytes()
        assert 1 <= base["tries"] <= 2
        assert base["passed_rule"] or base["tries"] == 2  # a fallback only after every try


def test_audiobox_axes_are_scored_when_a_checkpoint_is_given(audiobox_checkpoint, tmp_path: Path):
    a = write_pieces(tmp_path / "a", [4], velocity=50)
    b = write_pieces(tmp_path / "b", [4], velocity=100, voices=3)
    build_study({"a": str(a), "b": str(b)}, tmp_path / "study", constants=CONSTANTS,
                generation=replace(STUDY_GENERATION, n=1), soundfont="timgm6mb", audiobox=str(audiobox_checkpoint))
    manifest = json.loads((tmp_path / "study" / MANIFEST).read_text())
    assert manifest["scores"]["audiobox_skipped"] is None
    for clip in manifest["clips"]:
        assert {"CE", "CU", "PC", "PQ"} <= set(clip["scores"])
        assert all(math.isfinite(clip["scores"][axis]) for axis in ("CE", "CU", "PC", "PQ"))
    with pytest.raises(ValueError, match="does not exist"):
        build_study({"a": str(a), "b": str(b)}, tmp_path / "other", constants=CONSTANTS,
                    generation=replace(STUDY_GENERATION, n=1), soundfont="timgm6mb",
                    audiobox=str(tmp_path / "missing.pt"))
