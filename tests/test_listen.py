"""listen.py end to end, the listening-study loop study -> fit -> reward (processors.py's ListenersRewardProcessor),
on simulated listeners with a known taste.

A small study is built by the real ``listen.py build`` (the shipped ``models/piano-tiny`` answering 10 prompts, and
a folder of hand-made pieces whose note count and scale consistency vary independently), simulated participants
take it through the real study server over HTTP (consent, the trial order the server drew, repeats), rating by a
planted rule: busier, more tonal clips get higher ratings, plus each listener's offset and noise. Then:

(a) ``listen.py fit`` recovers the planted features (positive, among the strongest) and calls the model reliable;
(b) ratings unrelated to the clips make ``listen.py fit`` refuse, writing no model;
(c) bad inputs (no ratings, a corrupt model, another format version, an unknown feature, Audiobox axes without a
    checkpoint, an unreliable model) are each named by ``processors.reward_problems`` and stop ``smart.py`` at
    its start;
(d) the ``listeners`` reward, built as smart.py builds it, scores decoded records in [0, 1] in the planted order.

The simulation (bench/listeners_loop.py's helpers, shared with the benchmark that runs the same loop larger)
seeds each answer by the clip's system and prompt, not by its random id, so the ratings are reproducible.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import symusic
from scipy.stats import spearmanr

import listen
from bench.listeners_loop import planted_quality, simulate_listeners, write_contrast_pieces
from configurator import smart_constants
from conftest import ROOT
from listening.fit import MODEL_FILE, REPORT_FILE, load_model, predict, strongest_features, study_features
from listening.server import create_app
from listening.study import DATABASE, TOKEN_FILE
from processors import (
    ListenersRewardProcessor,
    MidiTokToSymusicProcessor,
    TinySoundfontSynthProcessor,
    build_processor,
    reward_problems,
)
from smart_utils.tokenizer import load_tokenizers

PROMPTS = 10  # 20 clips: enough for five prompt folds and a permutation test with room to spare
PARTICIPANTS = 12
REPEATS = 2
DENSITY = {"note_count", "reward_note_density"}  # the planted "busier" (the fit may credit either name)
TONALITY = {"scale_consistency", "reward_scale_consistency"}  # the planted "more tonal" (identical for one track)
LISTENERS = {"listeners": 1.0}


def fit(*argv: str) -> tuple[str, str | int | None]:
    """``listen.py fit`` in this process: (what it printed, its exit code: None on success, the message when it
    exits with one, which the interpreter turns into exit status 1)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            listen.main(["fit", *argv])
        except SystemExit as stop:
            return printed.getvalue(), stop.code
    return printed.getvalue(), None


def unrated_copy(study: Path, destination: Path) -> Path:
    """The built study's clips and manifest without its ratings (as if just built)."""
    shutil.copytree(study, destination, ignore=shutil.ignore_patterns(DATABASE + "*", TOKEN_FILE))
    return destination


def constants_with(model: Path | None, **more: object) -> dict:
    return {**smart_constants(), "LISTENERS_MODEL": None if model is None else str(model), **more}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("listeners")
    contrast = write_contrast_pieces(root / "contrast_midi", PROMPTS, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        listen.main(["build", f"base={ROOT / 'models' / 'piano-tiny'}", f"contrast={contrast}",
                     "--prompts", str(PROMPTS), "--max-new-tokens", "128", "--max-tries", "1",
                     "--soundfont", "timgm6mb", "--device", "cpu", "--out", str(root / "study")])
    return root / "study"


@pytest.fixture(scope="module")
def planted(built: Path, tmp_path_factory: pytest.TempPathFactory):
    """The study rated by PARTICIPANTS simulated listeners who follow the planted rule."""
    study = unrated_copy(built, tmp_path_factory.mktemp("planted") / "study")
    features = study_features(study)
    quality = planted_quality(features)
    answers = simulate_listeners(study, PARTICIPANTS, quality, seed=0, repeats=REPEATS)
    return study, features, quality, answers


@pytest.fixture(scope="module")
def fitted(planted, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str | int | None]:
    out = tmp_path_factory.mktemp("fitted") / "listeners_model"
    printed, code = fit(str(planted[0]), "--out", str(out))
    return out, printed, code


@pytest.fixture(scope="module")
def unrelated(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study rated by listeners whose answers have nothing to do with the clips (no repeats: the same ratings
    whatever trial order the server draws)."""
    study = unrated_copy(built, tmp_path_factory.mktemp("unrelated") / "study")
    simulate_listeners(study, PARTICIPANTS, None, seed=0, repeats=0)
    return study


# ---------------------------------------------------------------------------------------------------------------
# (a) the planted rule is recovered


def test_simulated_listeners_answered_through_the_server(planted):
    study, _, _, answers = planted
    clips = 2 * PROMPTS
    with sqlite3.connect(study / DATABASE) as db:
        stored = db.execute("SELECT participant_id, position, clip_id, rating FROM answers").fetchall()
        finished = db.execute("SELECT COUNT(*) FROM participants WHERE finished_at IS NOT NULL").fetchone()[0]
        repeated = db.execute("SELECT COUNT(*) FROM trials WHERE is_repeat = 1").fetchone()[0]
    sent = {(participant, *answer) for participant, given in answers.items() for answer in given}
    assert len(sent) == PARTICIPANTS * (clips + REPEATS)
    assert set(stored) == sent and len(stored) == len(sent)
    assert finished == PARTICIPANTS and repeated == PARTICIPANTS * REPEATS
    assert all(1 <= rating <= 10 for *_, rating in stored)


def test_fit_recovers_the_planted_features_and_is_reliable(fitted, planted):
    out, printed, code = fitted
    assert code is None, code
    assert (out / MODEL_FILE).is_file() and (out / REPORT_FILE).is_file()
    model = load_model(out)
    cv = model.cross_validation
    assert model.reliable and model.reasons == ()
    assert cv.permutation_p <= 0.01
    assert cv.spearman > 0.6 > cv.baseline_spearman
    assert cv.rmse < 0.7 * cv.baseline_rmse
    assert model.counts.ratings == PARTICIPANTS * (2 * PROMPTS + REPEATS)
    assert (model.counts.clips, model.counts.prompts, model.counts.participants) == (2 * PROMPTS, PROMPTS,
                                                                                     PARTICIPANTS)
    strongest = strongest_features(model, 4)
    assert strongest[0][0] in DENSITY | TONALITY and strongest[0][1] > 0, strongest
    assert any(name in DENSITY and value > 0 for name, value in strongest), strongest
    assert any(name in TONALITY and value > 0 for name, value in strongest), strongest
    coefficient = dict(zip(model.features, model.coefficients))
    assert all(coefficient[name] > 0 for name in DENSITY | TONALITY if name in coefficient)
    assert "**Reliable**" in printed and "reward model in" in printed
    assert f"--LISTENERS_MODEL={out}" in printed


def test_fitted_model_predicts_the_planted_order_of_the_clips(fitted, planted):
    _, features, quality, _ = planted
    model = load_model(fitted[0])
    clips = sorted(features)
    predicted = [predict(model, features[clip]) for clip in clips]
    assert spearmanr(predicted, [quality[clip] for clip in clips]).statistic > 0.8


# ---------------------------------------------------------------------------------------------------------------
# (b) ratings unrelated to the clips


def test_unrelated_ratings_are_refused_and_no_model_is_written(unrelated: Path, tmp_path: Path):
    out = tmp_path / "listeners_model"
    printed, code = fit(str(unrelated), "--out", str(out))
    assert isinstance(code, str) and code  # sys.exit(message): exit status 1
    assert "no model written" in code and "no better than their mean" in code
    assert "permutation p" in code or "RMSE" in code
    assert not (out / MODEL_FILE).exists()
    assert "**Not reliable**" in printed


# ---------------------------------------------------------------------------------------------------------------
# (c) bad inputs stop the fit, the reward and smart.py with a clear message


@pytest.fixture(scope="module")
def bad_models(fitted, unrelated: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders that must not be tuned toward, by what is wrong with them."""
    good = fitted[0]
    root = tmp_path_factory.mktemp("bad_models")
    payload = json.loads((good / MODEL_FILE).read_text())

    def variant(name: str, text: str) -> Path:
        folder = root / name
        folder.mkdir()
        (folder / MODEL_FILE).write_text(text)
        return folder

    unknown = {**payload, "features": ["listener_mood", *payload["features"][1:]]}
    audiobox = {**payload, "features": [*payload["features"], "CE"], "means": [*payload["means"], 5.0],
                "scales": [*payload["scales"], 1.0], "coefficients": [*payload["coefficients"], 0.5]}
    models = {
        "never fitted": root / "never_fitted",
        "corrupt": variant("corrupt", (good / MODEL_FILE).read_text()[:-60]),
        "other version": variant("other_version", json.dumps({**payload, "version": 2})),
        "unknown feature": variant("unknown_feature", json.dumps(unknown)),
        "audiobox": variant("audiobox", json.dumps(audiobox)),
    }
    printed, code = fit(str(unrelated), "--out", str(root / "unreliable"), "--keep-unreliable")
    assert code is None, code
    models["unreliable"] = root / "unreliable"
    return models


def test_a_study_without_ratings_stops_the_fit(built: Path, tmp_path: Path):
    never_served = unrated_copy(built, tmp_path / "never_served")
    printed, code = fit(str(never_served), "--out", str(tmp_path / "m1"))
    assert isinstance(code, str) and "responses.sqlite not found" in code and "listen.py serve" in code
    joined_only = unrated_copy(built, tmp_path / "joined_only")
    client = create_app(joined_only, repeats=0).test_client()
    assert client.post("/start", data={"consent": "yes"}).status_code == 303  # a participant who never answered
    printed, code = fit(str(joined_only), "--out", str(tmp_path / "m2"))
    assert isinstance(code, str) and "holds no ratings yet" in code
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_reward_problems_name_each_bad_model(fitted, bad_models: dict[str, Path], tmp_path: Path):
    assert reward_problems(LISTENERS, constants_with(fitted[0])) == []  # the good model: nothing to report
    expected = {
        "never fitted": r"reward_model.json not found: fit one first: python listen.py fit",
        "corrupt": r"is not valid JSON",
        "other version": r"version 2, but this code reads 'smart-listening-reward' version 1",
        "unknown feature": r"needs features this project cannot compute: \['listener_mood'\]",
        "unreliable": r"is marked unreliable .*collect more ratings",
    }
    for case, message in expected.items():
        folder = bad_models[case]
        problems = reward_problems(LISTENERS, constants_with(folder))
        assert len(problems) == 1, (case, problems)
        assert f"LISTENERS_MODEL={str(folder)!r}" in problems[0], (case, problems)
        assert re.search(message, problems[0]), (case, problems)

    missing = tmp_path / "no_such_checkpoint.pt"
    problems = reward_problems(LISTENERS, constants_with(bad_models["audiobox"], AUDIOBOX_CHECKPOINT=str(missing)))
    assert len(problems) == 1 and "needs the Audiobox features ['CE']" in problems[0], problems
    assert str(missing) in problems[0] and "does not exist" in problems[0]
    assert "--features midi rewards" in problems[0]
    # the same model is fine where the checkpoint exists, and the good model never needs one
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"stand-in")
    assert reward_problems(LISTENERS, constants_with(bad_models["audiobox"], AUDIOBOX_CHECKPOINT=str(checkpoint))
                           ) == []
    assert reward_problems(LISTENERS, constants_with(fitted[0], AUDIOBOX_CHECKPOINT=str(missing))) == []

    problems = reward_problems(LISTENERS, constants_with(None))
    assert len(problems) == 1 and "LISTENERS_MODEL is None" in problems[0]


@pytest.mark.parametrize("case, message", [("corrupt", "is not valid JSON"), ("unreliable", "marked unreliable")])
def test_smart_stops_at_its_start_on_a_bad_model(bad_models: dict[str, Path], tmp_path: Path, case: str,
                                                 message: str):
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "smart.py", "config/local.py", f"--LISTENERS_MODEL={bad_models[case]}",
         "--REWARD_WEIGHTS={'listeners': 1.0}", f"--OUTPUT_DIR={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the config cannot run" in result.stderr and message in result.stderr, result.stderr
    assert f"LISTENERS_MODEL={str(bad_models[case])!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()  # stopped before the run folder, the model or the trainer
    assert seconds < 90, f"{seconds:.0f} s"  # the checks come before the slow imports (seconds, not minutes)


# ---------------------------------------------------------------------------------------------------------------
# (d) the reward on decoded records


def decoded_records(scores: list[symusic.Score], constants: dict, soundfont: str) -> list[dict]:
    """Records as smart.py's chain makes them: token ids (the model's REMI encoding of each score), decoded and
    cropped by MidiTokToSymusicProcessor, rendered by TinySoundfontSynthProcessor."""
    remi, _ = load_tokenizers(str(ROOT / "models" / "piano-tiny"))
    records = [{"prompt_and_completion": remi.encode(score)[0].ids, "normalized_rewards": {}, "errors": []}
               for score in scores]
    records = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=constants["MAX_BEATS"])(records)
    return TinySoundfontSynthProcessor(soundfont, constants["SAMPLE_RATE"], constants["MAX_AUDIO_DURATION"])(records)


def piece(per_beat: int, pitches: list[int], beats: int = 16) -> symusic.Score:
    """``per_beat`` notes per beat for ``beats`` beats, cycling through ``pitches``, at one velocity."""
    score = symusic.Score(24)
    track = symusic.Track("piano", 0, False)
    step = 24 // per_beat
    for n in range(beats * per_beat):
        track.notes.append(symusic.Note(n * step, step, pitches[n % len(pitches)], 80))
    score.tracks.append(track)
    return score


def test_listeners_reward_scores_decoded_records_in_the_planted_order(fitted, planted, soundfont: str):
    study, features, quality, _ = planted
    constants = constants_with(fitted[0])
    reward = build_processor(ListenersRewardProcessor, constants)
    model = load_model(fitted[0])
    manifest = json.loads((study / "manifest.json").read_text())
    clips = [clip["id"] for clip in manifest["clips"]]
    records = decoded_records([symusic.Score(str(study / clip["midi"])) for clip in manifest["clips"]], constants,
                              soundfont)
    records = reward(records)
    values = np.array([record["normalized_rewards"]["listeners"] for record in records])
    assert np.all((values >= 0) & (values <= 1)) and np.ptp(values) > 0.1
    ratings = np.array([record["listeners_rating"] for record in records])
    assert np.allclose(values, np.clip((ratings - 1) / 9, 0, 1))
    # the features recomputed from each record give the fit's prediction for its clip
    assert np.allclose(ratings, [predict(model, features[clip]) for clip in clips], atol=0.1)
    assert spearmanr(values, [quality[clip] for clip in clips]).statistic > 0.8
    assert all(record["errors"] == [] for record in records)

    # two pieces no listener heard: busy and in key beats sparse and out of key
    c_major, chromatic = [60, 62, 64, 65, 67, 69, 71, 72], list(range(60, 73))
    busy, sparse = reward(decoded_records([piece(4, c_major), piece(1, chromatic)], constants, soundfont))
    assert busy["normalized_rewards"]["listeners"] > sparse["normalized_rewards"]["listeners"]
