"""listening/analysis.py (listen.py analyse) on synthetic responses with a known answer: a planted +2 is found, a null
difference is not, repeats give the consistency table, and the human ratings agree with a score built to agree with
them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from listening.analysis import analyse, sign_flip_p_value
from listening.server import DATABASE, ResponseStore, trial_order
from listening.stimuli import MANIFEST

PROMPTS = 15
PARTICIPANTS = 14  # the paper's listeners


def synthetic_study(folder: Path, difference: float, seed: int) -> Path:
    """A study of base and tuned answering 15 prompts, rated by 14 participants who each hear every clip once and
    two clips again. rating = clip quality + participant bias + noise (+ ``difference`` for tuned), rounded into
    1-10; a repeat is rated exactly as the first time. The manifest's CE score is the clip quality."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    quality = {}
    clips = []
    for system in ("base", "tuned"):
        for prompt in range(PROMPTS):
            clip_id = f"{system[0]}{prompt:011d}"
            quality[clip_id] = rng.normal(5.0, 1.2) + (difference if system == "tuned" else 0.0)
            clips.append({"id": clip_id, "system": system, "prompt_index": prompt,
                          "scores": {"CE": quality[clip_id] - (difference if system == "tuned" else 0.0),
                                     "reward_constant": 1.0}})
    (folder / MANIFEST).write_text(json.dumps({"systems": {"base": "a", "tuned": "b"}, "clips": clips}))
    store = ResponseStore(folder / DATABASE)
    order_rng = np.random.default_rng(seed + 1)
    for _ in range(PARTICIPANTS):
        bias = rng.normal(0, 1.0)
        order = trial_order(sorted(quality), 2, __import__("random").Random(int(order_rng.integers(1 << 30))))
        participant = store.add_participant(order, "synthetic")
        given = {}
        for position, (clip, repeat) in enumerate(order):
            if not repeat:
                given[clip] = int(np.clip(round(quality[clip] + bias + rng.normal(0, 1.0)), 1, 10))
            store.answer(participant, position, clip, given[clip])
    return folder


def test_sign_flip_p_value_is_exact_for_few_participants():
    p, exact = sign_flip_p_value(np.array([1.0, 2.0, 0.5, 1.5, 3.0]))
    assert exact and p == pytest.approx(2 / 32)  # only all-plus and all-minus are as extreme
    p, exact = sign_flip_p_value(np.array([1.0, -1.0, 1.0, -1.0]))
    assert exact and p == 1.0
    p, exact = sign_flip_p_value(np.full(40, 0.3), permutations=2000)
    assert not exact and p == pytest.approx(2 / 2001)  # twice the smallest one-sided p, (0 + 1) / 2001


def test_planted_difference_of_two_points_is_found(tmp_path: Path):
    study = synthetic_study(tmp_path / "planted", difference=2.0, seed=0)
    result = analyse(study)
    (comparison,) = result.comparisons
    assert (comparison.other, comparison.reference) == ("tuned", "base")
    assert (comparison.participants, comparison.prompts) == (PARTICIPANTS, PROMPTS)
    assert comparison.pairs == PARTICIPANTS * PROMPTS
    assert comparison.mean_difference == pytest.approx(2.0, abs=0.5)
    assert comparison.exact and comparison.p_participants < 0.001 and comparison.p_prompts < 0.01
    assert comparison.p_value == max(comparison.p_participants, comparison.p_prompts)
    assert comparison.ci_low > 0
    systems = result.systems.set_index("system")
    assert systems.loc["tuned", "mean"] - systems.loc["base", "mean"] == pytest.approx(comparison.mean_difference)
    assert (systems.se > 0).all() and (systems.ratings == PARTICIPANTS * PROMPTS).all()
    # the repeats are not in the comparison, but they give the consistency table (rated identically here)
    assert len(result.consistency) == PARTICIPANTS and (result.consistency.pairs == 2).all()
    assert (result.consistency.mean_abs_difference == 0).all()
    agreement = result.agreement.set_index("score")
    assert agreement.loc["CE", "rho"] > 0.5 and agreement.loc["CE", "clips"] == 2 * PROMPTS
    assert np.isnan(agreement.loc["reward_constant", "rho"])  # a constant score has no rank correlation
    summary = (study / "analysis" / "summary.md").read_text()
    assert "sign-flip" in summary and "tuned - base" in summary
    assert (study / "analysis" / "ratings.png").stat().st_size > 10_000
    assert (study / "analysis" / "ratings.csv").read_text().count("\n") == PARTICIPANTS * (2 * PROMPTS + 2) + 1


def test_null_difference_is_not_significant(tmp_path: Path):
    """With this seed the 15 tuned clips happen to be 0.33 points worse than the base clips: a test over
    participants alone calls that significant (the same clips for everyone); over prompts it is chance."""
    study = synthetic_study(tmp_path / "null", difference=0.0, seed=1)
    (comparison,) = analyse(study).comparisons
    assert abs(comparison.mean_difference) < 0.5
    assert comparison.p_participants < 0.05 < comparison.p_prompts
    assert comparison.p_value > 0.05
    assert comparison.ci_low < 0 < comparison.ci_high


def test_no_responses_says_so(tmp_path: Path, capsys: pytest.CaptureFixture):
    study = synthetic_study(tmp_path / "empty", difference=0.0, seed=2)
    (study / DATABASE).unlink()
    assert analyse(study) is None
    assert "no responses yet" in capsys.readouterr().out
    assert not (study / "analysis").exists()
