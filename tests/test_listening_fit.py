"""listening/fit.py on synthetic studies with a known answer: a planted rule is recovered and judged reliable,
ratings unrelated to the features are not, prompt folds keep prompts whole, and a saved model loads back only when
it is intact, of this format and given the features it needs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from listening.fit import (
    MODEL_FILE,
    REPORT_FILE,
    FitError,
    FitResult,
    Rating,
    fit_study,
    load_model,
    normalised,
    predict,
    prompt_folds,
    remove_participant_offsets,
    save_model,
    stored_ratings,
    strongest_features,
)
from listening.server import DATABASE, ResponseStore, trial_order
from listening.stimuli import MANIFEST

PROMPTS = 15
SYSTEMS = ("base", "tuned")
PARTICIPANTS = 10
PLANTED = ("note_density", "scale_consistency")
IRRELEVANT = ("pitch_range", "velocity_mean", "polyphony")


def clip_features(rng: np.random.Generator) -> dict[str, float]:
    return {"note_density": float(rng.uniform(0.5, 4.0)), "scale_consistency": float(rng.uniform(0.6, 1.0)),
            "pitch_range": float(rng.uniform(10, 60)), "velocity_mean": float(rng.uniform(50, 110)),
            "polyphony": float(rng.uniform(1, 4))}


def quality(features: dict[str, float]) -> float:
    """The planted rule: about 3.3 rating points from the sparsest, least tonal clip to the densest, most tonal."""
    return 0.5 * features["note_density"] + 4.0 * features["scale_consistency"]


def write_study(folder: Path, planted: bool, seed: int, participants: int = PARTICIPANTS,
                prompts: int = PROMPTS) -> dict[str, dict[str, float]]:
    """A study folder (manifest.json laid out as listen_stimuli writes it, responses.sqlite through listen_server's
    own store) whose participants each rate every clip once and two again: rating = 2 + quality (when ``planted``)
    + participant offset + noise, rounded into 1-10. Returns the clips' features."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    features, clips = {}, []
    for system in SYSTEMS:
        for prompt in range(prompts):
            clip_id = f"{system[0]}{prompt:011d}"
            features[clip_id] = clip_features(rng)
            clips.append({"id": clip_id, "file": f"stimuli/{clip_id}.wav", "system": system, "prompt_index": prompt,
                          "prompt": f"prompt {prompt}", "seed": seed, "scores": {}})
    (folder / MANIFEST).write_text(json.dumps({"systems": {s: s for s in SYSTEMS}, "clips": clips}))
    store = ResponseStore(folder / DATABASE)
    for _ in range(participants):
        offset = rng.normal(0, 1.2)
        order = trial_order(sorted(features), 2, random.Random(int(rng.integers(1 << 30))))
        participant = store.add_participant(order, "synthetic")
        for position, (clip, _) in enumerate(order):
            signal = quality(features[clip]) if planted else 4.3
            store.answer(participant, position, clip, int(np.clip(round(2 + signal + offset + rng.normal(0, 0.6)),
                                                                  1, 10)))
    return features


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FitResult, dict[str, dict[str, float]]]:
    study = tmp_path_factory.mktemp("planted") / "study"
    features = write_study(study, planted=True, seed=1)
    return fit_study(study, features, seed=0), features


def test_planted_rule_is_recovered_and_reliable(planted: tuple[FitResult, dict]):
    result, _ = planted
    model, cv = result.model, result.model.cross_validation
    coefficient = dict(zip(model.features, model.coefficients))
    assert coefficient["note_density"] > 0 and coefficient["scale_consistency"] > 0
    assert {name for name, _ in strongest_features(model, 2)} == set(PLANTED)
    assert min(coefficient[name] for name in PLANTED) > 2 * max(abs(coefficient[name]) for name in IRRELEVANT)
    assert cv.spearman > 0.6 > cv.baseline_spearman
    assert cv.rmse < 0.7 * cv.baseline_rmse
    assert cv.permutation_p <= 0.01
    assert cv.folds == 5 and len(cv.fold_alphas) == 5
    assert result.reliable and model.reliable and result.reasons == ()
    assert model.counts.ratings == PARTICIPANTS * (PROMPTS * len(SYSTEMS) + 2)
    assert model.counts.clips == PROMPTS * len(SYSTEMS) and model.counts.prompts == PROMPTS
    assert "**Reliable**" in result.report and "note_density" in result.report


def test_unrelated_ratings_are_not_reliable(tmp_path: Path):
    features = write_study(tmp_path / "study", planted=False, seed=2)
    result = fit_study(tmp_path / "study", features, seed=0)
    cv = result.model.cross_validation
    assert not result.reliable and not result.model.reliable
    assert cv.permutation_p > 0.05 or cv.rmse >= cv.baseline_rmse
    assert result.reasons and "Not reliable" in result.report
    assert all(reason in result.report for reason in result.reasons)


def test_fit_is_deterministic_given_a_seed(tmp_path: Path):
    features = write_study(tmp_path / "study", planted=False, seed=3, participants=3)
    first, second = (fit_study(tmp_path / "study", features, seed=5, permutations=99) for _ in range(2))
    assert first.model == second.model


def test_prompt_folds_never_split_a_prompt():
    rng = np.random.default_rng(0)
    prompts = [int(p) for p in rng.integers(0, 9, size=40)]
    folds = prompt_folds(prompts, 4, seed=7)
    assert len(folds) == 4 and all(len(fold) for fold in folds)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(prompts)))
    fold_of_prompt: dict[int, set[int]] = {}
    for k, fold in enumerate(folds):
        for index in fold:
            fold_of_prompt.setdefault(prompts[index], set()).add(k)
    assert all(len(where) == 1 for where in fold_of_prompt.values())
    assert [f.tolist() for f in prompt_folds(prompts, 4, seed=7)] == [f.tolist() for f in folds]
    with pytest.raises(FitError, match="cannot make 10 prompt folds from 9"):
        prompt_folds(prompts, 10)


def test_participant_offsets_are_removed_before_averaging():
    ratings = [Rating("a", "x", 2), Rating("a", "y", 4), Rating("b", "x", 8), Rating("b", "y", 10),
               Rating("b", "y", 10), Rating("b", "x", 8)]
    targets = remove_participant_offsets(ratings)
    assert targets["x"].target == pytest.approx(-1.0) and targets["y"].target == pytest.approx(1.0)
    assert (targets["x"].count, targets["y"].count) == (3, 3)


def test_a_study_without_ratings_says_so(tmp_path: Path):
    with pytest.raises(FitError, match="responses.sqlite not found"):
        stored_ratings(tmp_path)
    store = ResponseStore(tmp_path / DATABASE)
    store.add_participant([("c1", False)], "synthetic")
    with pytest.raises(FitError, match="holds no ratings yet"):
        stored_ratings(tmp_path)


def test_too_few_ratings_or_prompts_stop_the_fit(tmp_path: Path):
    features = write_study(tmp_path / "few", planted=True, seed=4, participants=1, prompts=10)
    with pytest.raises(FitError, match=r"only 22 ratings .*\(at least 30 needed\)"):
        fit_study(tmp_path / "few", features)
    features = write_study(tmp_path / "narrow", planted=True, seed=4, participants=10, prompts=2)
    with pytest.raises(FitError, match=r"only 2 prompt.*\(at least 3 needed"):
        fit_study(tmp_path / "narrow", features)


def test_missing_values_are_imputed_and_constant_features_dropped(tmp_path: Path):
    features = write_study(tmp_path / "study", planted=True, seed=5, participants=4)
    for k, clip in enumerate(sorted(features)):
        features[clip]["constant"] = 3.0
        if k % 4 == 0:
            features[clip]["pitch_range"] = float("nan")
    result = fit_study(tmp_path / "study", features, seed=0, permutations=99)
    model = result.model
    assert "constant" not in model.required_features and "pitch_range" in model.required_features
    assert any("constant" in note and "dropped" in note for note in model.notes)
    assert any("pitch_range: 8 of 30" in note and "imputed" in note for note in model.notes)
    assert np.all(np.isfinite(model.coefficients))
    clip = sorted(features)[0]
    assert predict(model, features[clip]) == pytest.approx(
        predict(model, {**features[clip], "pitch_range": model.means[model.features.index("pitch_range")]}))


def test_save_and_load_predict_the_same(planted: tuple[FitResult, dict], tmp_path: Path):
    result, features = planted
    save_model(result.model, tmp_path / "reward")
    loaded = load_model(tmp_path / "reward")
    assert loaded == result.model
    assert loaded.required_features == result.model.required_features
    for clip in sorted(features)[:5]:
        assert predict(loaded, features[clip]) == predict(result.model, features[clip])
    payload = json.loads((tmp_path / "reward" / MODEL_FILE).read_text())
    assert (payload["format"], payload["version"], payload["rating_scale"]) == (
        "smart-listening-reward", 1, {"min": 1, "max": 10})
    assert payload["reliable"] is True and payload["alpha"] == result.model.alpha
    report = (tmp_path / "reward" / REPORT_FILE).read_text()
    assert "**Reliable**" in report and "| note_density | +" in report and "| scale_consistency | +" in report


def test_predictions_follow_the_planted_rule(planted: tuple[FitResult, dict]):
    result, features = planted
    clips = sorted(features, key=lambda clip: quality(features[clip]))
    worst, best = predict(result.model, features[clips[0]]), predict(result.model, features[clips[-1]])
    assert 1 <= worst < best <= 10
    assert 0 <= normalised(result.model, worst) < normalised(result.model, best) <= 1


def test_normalised_maps_the_rating_scale_onto_0_1(planted: tuple[FitResult, dict]):
    model = planted[0].model
    assert [normalised(model, r) for r in (1, 5.5, 10, -3, 14)] == [0.0, 0.5, 1.0, 0.0, 1.0]


def test_damaged_models_are_refused_with_advice(planted: tuple[FitResult, dict], tmp_path: Path):
    with pytest.raises(FitError, match="not found: fit one first: python listen.py fit"):
        load_model(tmp_path / "nothing")
    folder = save_model(planted[0].model, tmp_path / "reward")
    path = folder / MODEL_FILE
    good = json.loads(path.read_text())

    path.write_text(path.read_text()[:-40])
    with pytest.raises(FitError, match="not valid JSON.*refit"):
        load_model(folder)
    for damage, message in [
        ({"version": 2}, "version 2, but this code reads 'smart-listening-reward' version 1"),
        ({"format": "pickle"}, "format 'pickle'"),
        ({"coefficients": good["coefficients"][:-1]}, r"equally long .*\(got 5, 5, 5, 4\)"),
        ({"scales": [0.0] * 5}, "every scale must be positive"),
        ({"means": ["a"] * 5}, "means must be a list of numbers"),
        ({"counts": {"ratings": 3}}, "counts lacks the key"),
    ]:
        path.write_text(json.dumps({**good, **damage}))
        with pytest.raises(FitError, match=message):
            load_model(folder)
    path.write_text(json.dumps({key: value for key, value in good.items() if key != "intercept"}))
    with pytest.raises(FitError, match="lacks the key.*intercept.*Refit"):
        load_model(folder)


def test_features_the_model_needs_must_be_given(planted: tuple[FitResult, dict]):
    result, features = planted
    clip = sorted(features)[0]
    given = {name: value for name, value in features[clip].items() if name != "scale_consistency"}
    with pytest.raises(FitError, match="needs features scale_consistency that were not given"):
        predict(result.model, given)
    assert predict(result.model, {**features[clip], "unknown": 1.0}) == predict(result.model, features[clip])
