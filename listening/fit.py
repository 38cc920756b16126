"""A reward fitted on a listening study's ratings: ridge regression from per-clip features to the rating.

The study gives few, noisy numbers (tens of clips, a few hundred 1-10 ratings), so the model is deliberately
small and the numbers reported about it are the ones that would hold on new prompts:

- Targets. Each participant's mean rating is subtracted from their ratings (people use the scale differently: one
  listener's 4 is another's 7), and the centred ratings are averaged per clip. A plain mean per clip would mix
  "this clip is good" with "this clip happened to be heard by generous listeners"; the study plays every clip to
  every participant in a random order, so a participant's mean (over every answer they gave, repeats included) is
  a fair estimate of their offset even for an unfinished session. Clips are weighted equally: by design they have
  nearly the same number of ratings.
- Model. Ridge regression in closed form on standardised features (each feature centred and scaled by its training
  mean and standard deviation, so one penalty fits all and the coefficients compare). A missing or non-finite
  feature value is imputed with the training mean (a standardised 0: it moves the prediction neither way); a
  feature with one value on every clip carries no information and is dropped with a note.
- Validation. Pieces answering one prompt share its opening, so a clip's neighbours in feature space are often its
  own prompt's other answers: folds are whole prompts (group k-fold), never clips. The penalty is chosen from
  ALPHAS by grouped cross-validation, and the reported cross-validated numbers come from a nested loop: each outer
  fold's penalty is chosen by an inner grouped cross-validation on that fold's training prompts only, so the held
  out prompts never influence their own predictions. The final model's penalty is chosen by grouped
  cross-validation over every prompt and it is fitted on every clip.
- Baseline. Predicting the training folds' mean target. Its RMSE is computed from the same folds. Its Spearman is
  defined as 0: a constant prediction ranks nothing (the fold means it does produce differ only through which
  prompts were held out, and their correlation with the held-out targets is an artefact of leaving data out, not
  skill), so "better than the baseline at ranking" means a cross-validated Spearman above 0 by more than chance.
  The same artefact pulls the model's pooled out-of-fold Spearman below 0 when the chosen penalty shrinks it to
  nearly the mean; the permutation test below reruns the same folds on shuffled targets, so its null distribution
  carries the artefact too and the p-value stays fair.
- Reliability rule. The model is marked reliable when both (a) a permutation test finds its cross-validated
  Spearman above chance: the clip targets are shuffled PERMUTATIONS times (seeded), the whole nested procedure
  (penalty choice included, same prompt folds) is rerun on each shuffle, and the one-sided p-value
  (1 + #{shuffled >= observed}) / (1 + PERMUTATIONS) must be at most SIGNIFICANCE; and (b) its cross-validated RMSE
  is below the baseline's. The shuffle exchanges targets between clips freely, which is exact when the clips'
  targets are exchangeable under "no relation to the features". A model failing the rule is still returned, marked
  ``reliable: false`` with its numbers and the reasons; the caller decides whether to use it.
- Limits that stop a fit (FitError): fewer than MIN_RATINGS ratings on clips with features and prompts, or fewer
  than MIN_PROMPTS prompts (no three-fold cross-validation over prompts is possible).

The model is saved as JSON (``reward_model.json``, never a pickle: it holds numbers only and any tool reads it)
beside a human summary (``summary.md``).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import symusic
from scipy.stats import spearmanr

from listening.server import ResponseStore
from listening.study import DATABASE, MANIFEST, load_manifest
from smart_utils import features
from smart_utils.features import AES_AXES
from smart_utils.files import write_text_atomically

RATING_MIN, RATING_MAX = 1, 10  # the study's question is answered on a 1-10 scale

MODEL_FILE = "reward_model.json"
REPORT_FILE = "summary.md"  # the human summary, named as evaluation.py's and listen.py analyse's are
FORMAT = "smart-listening-reward"
VERSION = 1

MIN_RATINGS = 30  # below this a clip's mean rests on one or two noisy answers and CV numbers mean little
MIN_PROMPTS = 3  # three prompt folds are the fewest that leave two prompts to train each fold on
FOLDS = 5  # outer and inner folds (fewer when there are fewer prompts)
ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))  # from nearly least squares to nearly the mean
PERMUTATIONS = 999
SIGNIFICANCE = 0.05
TOP_FEATURES = 10  # how many of the strongest features the report lists

MODEL_KEYS = ("format", "version", "features", "means", "scales", "coefficients", "intercept", "rating_scale",
              "alpha", "reliable", "reasons", "notes", "cross_validation", "counts")


class FitError(ValueError):
    """A reward cannot be fitted, saved or loaded; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Rating:
    participant: str
    clip_id: str
    rating: int


@dataclass(frozen=True)
class ClipTarget:
    """A clip's mean rating after removing each rater's offset, and how many ratings it rests on."""

    clip_id: str
    target: float
    count: int


def stored_ratings(study_dir: str | Path) -> list[Rating]:
    """Every stored answer (repeated clips included: a repeat is one more judgement of the clip), read through the
    study server's own store, in participant and position order."""
    path = Path(study_dir) / DATABASE
    if not path.is_file():
        raise FitError(f"{path} not found: collect ratings first with python listen.py serve {study_dir}")
    try:
        answers = ResponseStore(path).answers()
    except sqlite3.DatabaseError as error:
        raise FitError(f"{path} is not a study's response database ({error})") from error
    if not answers:
        raise FitError(f"{path} holds no ratings yet: collect some with python listen.py serve {study_dir}")
    answers.sort(key=lambda answer: (answer["participant_id"], answer["position"]))
    return [Rating(str(a["participant_id"]), str(a["clip_id"]), int(a["rating"])) for a in answers]


def manifest_clips(study_dir: str | Path) -> list[dict[str, Any]]:
    """The clips of the study's manifest (``listening.study.load_manifest``), or FitError saying what to do."""
    try:
        return list(load_manifest(study_dir)["clips"])
    except FileNotFoundError as error:
        raise FitError(str(error)) from error
    except (ValueError, KeyError, TypeError) as error:
        path = Path(study_dir) / MANIFEST
        raise FitError(f"{path} is not a study manifest ({error!r}): rebuild the study") from error


def read_prompts(study_dir: str | Path) -> dict[str, int]:
    """clip id -> the index of the prompt it answers, from the study's manifest."""
    try:
        return {str(clip["id"]): int(clip["prompt_index"]) for clip in manifest_clips(study_dir)}
    except (KeyError, TypeError, ValueError) as error:
        raise FitError(f"{Path(study_dir) / MANIFEST} has clips without an id or prompt index ({error!r}): "
                       "rebuild the study") from error


def remove_participant_offsets(ratings: Sequence[Rating]) -> dict[str, ClipTarget]:
    """Per clip, the mean of (rating - that participant's mean rating); see the module docstring for why."""
    given: dict[str, list[int]] = defaultdict(list)
    for r in ratings:
        given[r.participant].append(r.rating)
    offset = {participant: sum(values) / len(values) for participant, values in given.items()}
    centred: dict[str, list[float]] = defaultdict(list)
    for r in ratings:
        centred[r.clip_id].append(r.rating - offset[r.participant])
    return {clip: ClipTarget(clip, sum(values) / len(values), len(values)) for clip, values in sorted(centred.items())}


def average_rater_level(ratings: Sequence[Rating]) -> float:
    """The mean of the participants' mean ratings: what the centred targets are added back to, so that a
    prediction reads as the rating of an average participant."""
    given: dict[str, list[int]] = defaultdict(list)
    for r in ratings:
        given[r.participant].append(r.rating)
    return float(np.mean([np.mean(values) for values in given.values()]))


# ---------------------------------------------------------------------------------------------------------------
# Ridge regression


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the mean of the finite values (0 when there are none) and the standard deviation after imputing
    that mean (1 where it is 0, so a constant column standardises to 0 and gets no weight)."""
    finite = np.isfinite(x)
    counts = finite.sum(axis=0)
    sums = np.where(finite, x, 0.0).sum(axis=0)
    means = np.divide(sums, counts, out=np.zeros(x.shape[1]), where=counts > 0)
    scales = np.where(finite, x, means).std(axis=0)
    return means, np.where(scales > 0, scales, 1.0)


def standardise(x: np.ndarray, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(x - mean) / scale, with a non-finite value imputed by the mean (a standardised 0)."""
    return np.where(np.isfinite(x), (x - means) / scales, 0.0)


def shrinkage(singular_values: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """(alphas, rank): the ridge solution's factors s / (s^2 + alpha) along each singular direction."""
    s = singular_values[None, :]
    return s / (s**2 + np.asarray(alphas)[:, None])


def ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Coefficients and intercept minimising |y - intercept - z b|^2 + alpha |b|^2 (intercept unpenalised)."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    mean = float(y.mean())
    return vt.T @ (shrinkage(s, [alpha])[0] * (u.T @ (y - mean))), mean


@dataclass(frozen=True)
class Split:
    """One train/test split with the linear maps from centred training targets to test predictions, one per alpha:
    they depend on the features only, so every permutation of the targets reuses them."""

    train: np.ndarray
    test: np.ndarray
    operators: np.ndarray  # (alphas, test clips, train clips)

    def predictions(self, targets: np.ndarray) -> np.ndarray:
        """(alphas, test clips, columns) for targets of shape (clips, columns)."""
        train = targets[self.train]
        mean = train.mean(axis=0)
        return self.operators @ (train - mean) + mean

    def squared_errors(self, targets: np.ndarray) -> np.ndarray:
        """(alphas, columns): the summed squared errors on the test clips."""
        return ((self.predictions(targets) - targets[self.test][None]) ** 2).sum(axis=1)


def make_split(x: np.ndarray, train: np.ndarray, test: np.ndarray) -> Split:
    """Standardise by the training clips only (imputation included) and precompute every alpha's operator."""
    means, scales = standardisation(x[train])
    u, s, vt = np.linalg.svd(standardise(x[train], means, scales), full_matrices=False)
    projected = standardise(x[test], means, scales) @ vt.T
    operators = np.einsum("tr,ar,nr->atn", projected, shrinkage(s, ALPHAS), u)
    return Split(train, test, operators)


def best_alpha_index(errors: np.ndarray) -> np.ndarray:
    """Per column of (alphas, columns) errors, the index of the lowest; on a tie the larger alpha (the simpler
    model)."""
    return len(ALPHAS) - 1 - np.argmin(errors[::-1], axis=0)


# ---------------------------------------------------------------------------------------------------------------
# Cross-validation over prompts


def prompt_folds(prompts: Sequence[int], folds: int, seed: int | np.random.Generator = 0) -> list[np.ndarray]:
    """Test indices of ``folds`` folds where every clip of a prompt lands in the same fold. Prompts are taken in a
    seeded random order, largest first, each into the fold holding the fewest clips so far (balanced sizes)."""
    unique = sorted(set(prompts))
    if not 2 <= folds <= len(unique):
        raise FitError(f"cannot make {folds} prompt folds from {len(unique)} prompt(s)")
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        members[prompt].append(index)
    order = [unique[k] for k in rng.permutation(len(unique))]
    order.sort(key=lambda prompt: -len(members[prompt]))  # stable: the shuffle breaks ties between sizes
    assigned: list[list[int]] = [[] for _ in range(folds)]
    for prompt in order:
        min(assigned, key=len).extend(members[prompt])
    return [np.array(sorted(fold)) for fold in assigned]


@dataclass(frozen=True)
class OuterFold:
    outer: Split
    inner: list[Split]


def nested_plan(x: np.ndarray, prompts: Sequence[int], rng: np.random.Generator) -> list[OuterFold]:
    """Outer prompt folds, each with inner prompt folds over its training clips (for choosing that fold's alpha)."""
    everything = np.arange(len(prompts))
    plan = []
    for test in prompt_folds(prompts, min(FOLDS, len(set(prompts))), rng):
        train = np.setdiff1d(everything, test)
        train_prompts = [prompts[k] for k in train]
        inner = [make_split(x, np.setdiff1d(train, train[fold]), train[fold])
                 for fold in prompt_folds(train_prompts, min(FOLDS, len(set(train_prompts))), rng)]
        plan.append(OuterFold(make_split(x, train, test), inner))
    return plan


@dataclass(frozen=True)
class CvRun:
    """Out-of-fold predictions of the nested procedure, the alpha each outer fold chose, and the outer folds'
    summed squared errors per alpha (for choosing the final model's alpha)."""

    predictions: np.ndarray  # (clips, columns)
    fold_alphas: np.ndarray  # (folds, columns): indices into ALPHAS
    outer_errors: np.ndarray  # (alphas, columns)


def cross_validate(plan: Sequence[OuterFold], targets: np.ndarray) -> CvRun:
    """Run the nested procedure on every column of ``targets`` (clips, columns) at once."""
    predictions = np.empty(targets.shape)
    outer_errors = np.zeros((len(ALPHAS), targets.shape[1]))
    chosen = []
    for fold in plan:
        choice = best_alpha_index(sum(split.squared_errors(targets) for split in fold.inner))
        every_alpha = fold.outer.predictions(targets)
        predictions[fold.outer.test] = np.take_along_axis(every_alpha, choice[None, None, :], axis=0)[0]
        outer_errors += ((every_alpha - targets[fold.outer.test][None]) ** 2).sum(axis=1)
        chosen.append(choice)
    return CvRun(predictions, np.array(chosen), outer_errors)


def rank_correlation(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Spearman's rho, 0 when either side is constant (a constant prediction ranks nothing)."""
    if np.ptp(predictions) == 0 or np.ptp(targets) == 0:
        return 0.0
    return float(spearmanr(predictions, targets).statistic)


def baseline_predictions(plan: Sequence[OuterFold], targets: np.ndarray) -> np.ndarray:
    """Each held-out clip predicted by its outer fold's training mean."""
    predictions = np.empty(len(targets))
    for fold in plan:
        predictions[fold.outer.test] = targets[fold.outer.train].mean()
    return predictions


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predictions - targets) ** 2)))


# ---------------------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold numbers of the nested prompt-grouped procedure (targets in rating points, offsets removed)."""

    spearman: float
    rmse: float
    baseline_rmse: float
    baseline_spearman: float  # defined as 0: see the module docstring
    permutation_p: float
    permutations: int
    folds: int
    fold_alphas: tuple[float, ...]


@dataclass(frozen=True)
class Counts:
    ratings: int
    participants: int
    clips: int
    prompts: int
    clips_left_out: int  # rated clips with no features or no prompt in the manifest


@dataclass(frozen=True)
class RewardModel:
    """rating = intercept + sum(coefficient * (feature - mean) / scale), in the units of the rating scale."""

    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    alpha: float
    reliable: bool
    reasons: tuple[str, ...]  # why the model is not reliable (empty when it is)
    notes: tuple[str, ...]  # what the fit did to the features
    cross_validation: CrossValidation
    counts: Counts
    rating_min: int = RATING_MIN
    rating_max: int = RATING_MAX

    @property
    def required_features(self) -> tuple[str, ...]:
        """The features ``predict`` needs, so a caller can check what it must compute before computing it."""
        return self.features


@dataclass(frozen=True)
class FitResult:
    model: RewardModel
    report: str
    reliable: bool
    reasons: tuple[str, ...]


def usable_clips(targets: Mapping[str, ClipTarget], prompt_of: Mapping[str, int],
                 features_by_clip: Mapping[str, Mapping[str, float]]) -> tuple[list[str], int]:
    """Rated clips with both features and a prompt, and how many rated clips lack one of them."""
    usable = [clip for clip in targets if clip in features_by_clip and clip in prompt_of]
    return usable, len(targets) - len(usable)


def feature_matrix(clips: Sequence[str], features_by_clip: Mapping[str, Mapping[str, float]]
                   ) -> tuple[list[str], np.ndarray, list[str]]:
    """The (clips, features) matrix over every feature name any clip has (a missing value is NaN, imputed later),
    without features that are constant over the clips, and notes saying what was imputed or dropped."""
    names = sorted({name for clip in clips for name in features_by_clip[clip]})
    try:
        x = np.array([[float(features_by_clip[clip].get(name, math.nan)) for name in names] for clip in clips])
    except (TypeError, ValueError) as error:
        raise FitError(f"every feature value must be a number ({error})") from error
    notes = []
    kept = []
    for j, name in enumerate(names):
        finite = x[np.isfinite(x[:, j]), j]
        if finite.size < len(clips):
            notes.append(f"{name}: {len(clips) - finite.size} of {len(clips)} clips missing or non-finite, "
                         f"imputed with the training mean")
        if finite.size == 0 or np.ptp(finite) == 0:
            notes.append(f"{name}: no two clips differ in it, dropped")
        else:
            kept.append(j)
    if not kept:
        raise FitError("no feature varies over the rated clips: nothing to fit")
    return [names[j] for j in kept], x[:, kept], notes


def check_enough(counts: Counts) -> None:
    if counts.ratings < MIN_RATINGS:
        raise FitError(f"only {counts.ratings} ratings on clips with features (at least {MIN_RATINGS} needed): "
                       f"collect more ratings before fitting a reward")
    if counts.prompts < MIN_PROMPTS:
        raise FitError(f"only {counts.prompts} prompt(s) among the rated clips (at least {MIN_PROMPTS} needed for "
                       f"cross-validation over prompts): build a study with more prompts")


def permuted_columns(y: np.ndarray, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(clips, permutations): each column a seeded shuffle of ``y``."""
    return rng.permuted(np.tile(y, (permutations, 1)), axis=1).T


def verdict(cv: CrossValidation) -> tuple[str, ...]:
    """The reliability rule (module docstring): the reasons the model fails it, none when it passes."""
    reasons = []
    if cv.permutation_p > SIGNIFICANCE:
        reasons.append(f"the cross-validated Spearman {cv.spearman:.3f} is not above what shuffled ratings reach "
                       f"(permutation p = {cv.permutation_p:.3f} > {SIGNIFICANCE})")
    if cv.rmse >= cv.baseline_rmse:
        reasons.append(f"the cross-validated RMSE {cv.rmse:.3f} is not below the predict-the-mean baseline's "
                       f"{cv.baseline_rmse:.3f}")
    return tuple(reasons)


def fit_ratings(ratings: Sequence[Rating], prompt_of: Mapping[str, int],
                features_by_clip: Mapping[str, Mapping[str, float]], *, seed: int = 0,
                permutations: int = PERMUTATIONS) -> FitResult:
    """Fit, cross-validate and judge a reward from ratings, each clip's prompt and each clip's features."""
    if (1 + permutations) * SIGNIFICANCE < 1:
        raise FitError(f"{permutations} permutations can never give p <= {SIGNIFICANCE}: use at least "
                       f"{math.ceil(1 / SIGNIFICANCE) - 1}")
    targets = remove_participant_offsets(ratings)
    clips, left_out = usable_clips(targets, prompt_of, features_by_clip)
    used = set(clips)
    counts = Counts(ratings=sum(targets[clip].count for clip in clips),
                    participants=len({r.participant for r in ratings if r.clip_id in used}),
                    clips=len(clips), prompts=len({prompt_of[clip] for clip in clips}), clips_left_out=left_out)
    check_enough(counts)
    names, x, notes = feature_matrix(clips, features_by_clip)
    if left_out:
        notes.append(f"{left_out} rated clip(s) have no features or no prompt in the manifest: left out")
    y = np.array([targets[clip].target for clip in clips])
    prompts = [prompt_of[clip] for clip in clips]

    rng = np.random.default_rng(seed)
    plan = nested_plan(x, prompts, rng)
    observed = cross_validate(plan, y[:, None])
    spearman = rank_correlation(observed.predictions[:, 0], y)
    cv = CrossValidation(
        spearman=spearman, rmse=rmse(observed.predictions[:, 0], y),
        baseline_rmse=rmse(baseline_predictions(plan, y), y), baseline_spearman=0.0,
        permutation_p=permutation_p(plan, y, spearman, permutations, rng), permutations=permutations,
        folds=len(plan), fold_alphas=tuple(ALPHAS[k] for k in observed.fold_alphas[:, 0]))
    alpha = ALPHAS[int(best_alpha_index(observed.outer_errors)[0])]
    means, scales = standardisation(x)
    coefficients, centre = ridge(standardise(x, means, scales), y, alpha)
    reasons = verdict(cv)
    model = RewardModel(
        features=tuple(names), means=tuple(means.tolist()), scales=tuple(scales.tolist()),
        coefficients=tuple(coefficients.tolist()), intercept=average_rater_level(ratings) + centre, alpha=alpha,
        reliable=not reasons, reasons=reasons, notes=tuple(notes), cross_validation=cv, counts=counts)
    return FitResult(model, report_markdown(model), model.reliable, reasons)


def permutation_p(plan: Sequence[OuterFold], y: np.ndarray, spearman: float, permutations: int,
                  rng: np.random.Generator) -> float:
    """One-sided p-value of the cross-validated Spearman: the nested procedure rerun on shuffled targets."""
    shuffled = permuted_columns(y, permutations, rng)
    predictions = cross_validate(plan, shuffled).predictions
    null = np.array([rank_correlation(predictions[:, b], shuffled[:, b]) for b in range(permutations)])
    return float((1 + np.count_nonzero(null >= spearman - 1e-12)) / (1 + permutations))


def fit_study(study_dir: str | Path, features_by_clip: Mapping[str, Mapping[str, float]], *, seed: int = 0,
              permutations: int = PERMUTATIONS) -> FitResult:
    """Fit a reward on a study's ratings (responses.sqlite) and prompts (manifest.json); deterministic given
    ``seed`` (folds and shuffles). Raises FitError when there are too few ratings or prompts to judge a fit."""
    return fit_ratings(stored_ratings(study_dir), read_prompts(study_dir), features_by_clip, seed=seed,
                       permutations=permutations)


# ---------------------------------------------------------------------------------------------------------------
# Using a model


def predict(model: RewardModel, features: Mapping[str, float]) -> float:
    """The predicted rating of an average participant, in the units of the rating scale. Not clipped: a piece
    unlike every rated one can land outside the scale (``normalised`` clips). A non-finite value is imputed with
    the training mean, as in the fit; extra features are ignored."""
    missing = [name for name in model.features if name not in features]
    if missing:
        raise FitError(f"the reward model needs features {', '.join(missing)} that were not given "
                       f"(it needs {', '.join(model.required_features)}): compute them or refit on these features")
    x = np.array([float(features[name]) for name in model.features])
    z = standardise(x, np.array(model.means), np.array(model.scales))
    return float(model.intercept + z @ np.array(model.coefficients))


def normalised(model: RewardModel, rating: float) -> float:
    """A rating mapped onto [0, 1] by the model's rating scale (its minimum to 0, its maximum to 1), clipped."""
    return float(np.clip((rating - model.rating_min) / (model.rating_max - model.rating_min), 0.0, 1.0))


def strongest_features(model: RewardModel, count: int = TOP_FEATURES) -> list[tuple[str, float]]:
    """The features with the largest standardised coefficients (rating points per standard deviation), signed."""
    pairs = sorted(zip(model.features, model.coefficients), key=lambda pair: -abs(pair[1]))
    return pairs[:count]


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading


def model_payload(model: RewardModel) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": VERSION,
        "features": list(model.features), "means": list(model.means), "scales": list(model.scales),
        "coefficients": list(model.coefficients), "intercept": model.intercept,
        "rating_scale": {"min": model.rating_min, "max": model.rating_max},
        "alpha": model.alpha, "reliable": model.reliable, "reasons": list(model.reasons), "notes": list(model.notes),
        "cross_validation": asdict(model.cross_validation), "counts": asdict(model.counts),
    }


def report_markdown(model: RewardModel) -> str:
    """A human summary: what the model rests on, how well it predicts new prompts, what drives it, the verdict."""
    cv, counts = model.cross_validation, model.counts
    verdict_line = ("**Reliable**: better than predicting the mean rating on held-out prompts." if model.reliable
                    else "**Not reliable**: " + "; ".join(model.reasons) + ".")
    lines = [
        "# Reward fitted on listening-study ratings", "", verdict_line, "",
        f"{counts.ratings} ratings by {counts.participants} participants on {counts.clips} clips answering "
        f"{counts.prompts} prompts ({counts.clips_left_out} rated clips left out).", "",
        f"Cross-validated over prompts ({cv.folds} folds, penalty chosen inside each fold):", "",
        "| | Spearman | RMSE (rating points) |", "|---|---|---|",
        f"| model | {cv.spearman:.3f} (permutation p = {cv.permutation_p:.3f}, {cv.permutations} shuffles) "
        f"| {cv.rmse:.3f} |",
        f"| predict the mean | {cv.baseline_spearman:.3f} (defined: a constant ranks nothing) "
        f"| {cv.baseline_rmse:.3f} |",
        "",
        f"Final model: ridge penalty {model.alpha:g} on standardised features, fitted on every clip. Strongest "
        f"features (rating points per standard deviation):", "",
        "| feature | coefficient |", "|---|---|",
        *(f"| {name} | {value:+.3f} |" for name, value in strongest_features(model)),
        "",
        f"Reliable means: permutation p <= {SIGNIFICANCE} for the cross-validated Spearman and a cross-validated "
        f"RMSE below the baseline's.",
    ]
    if model.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in model.notes)]
    return "\n".join(lines) + "\n"


def save_model(model: RewardModel, out_dir: str | Path) -> Path:
    """Write ``reward_model.json`` (strict JSON, no NaN) and ``summary.md`` into ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / MODEL_FILE, json.dumps(model_payload(model), indent=1, allow_nan=False) + "\n")
    write_text_atomically(out / REPORT_FILE, report_markdown(model))
    return out


def load_model(model_dir: str | Path) -> RewardModel:
    """Read and check a saved model; FitError says what is wrong and what to do."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise FitError(f"{path} not found: fit one first: python listen.py fit STUDY --out {model_dir}")
    try:
        payload = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise FitError(f"{path} is not valid JSON ({error}): refit the reward and save it again") from error
    try:
        return model_from_payload(payload)
    except (TypeError, ValueError) as error:
        raise FitError(f"{path} cannot be used: {error}. Refit it with this code: python listen.py fit "
                       f"STUDY --out {model_dir}") from error


def model_from_payload(payload: Any) -> RewardModel:
    """The model in a parsed reward_model.json; ValueError or TypeError for another format or version, missing
    keys, wrong types or inconsistent lengths."""
    if not isinstance(payload, dict):
        raise ValueError("it holds no JSON object")
    if (payload.get("format"), payload.get("version")) != (FORMAT, VERSION):
        raise ValueError(f"it is format {payload.get('format')!r} version {payload.get('version')!r}, but this code "
                         f"reads {FORMAT!r} version {VERSION}")
    require_keys(payload, MODEL_KEYS, "the model")
    features = payload["features"]
    if not isinstance(features, list) or not all(isinstance(name, str) for name in features):
        raise ValueError("features must be a list of names")
    arrays = {key: finite_numbers(payload[key], key) for key in ("means", "scales", "coefficients")}
    if len(set(features)) != len(features) or any(len(values) != len(features) for values in arrays.values()):
        raise ValueError(f"features, means, scales and coefficients must be equally long with unique features (got "
                         f"{len(features)}, {', '.join(str(len(v)) for v in arrays.values())})")
    if any(scale <= 0 for scale in arrays["scales"]):
        raise ValueError("every scale must be positive")
    scale = require_keys(payload["rating_scale"], ("min", "max"), "rating_scale")
    rating_min, rating_max = int(scale["min"]), int(scale["max"])
    if rating_min >= rating_max:
        raise ValueError(f"the rating scale {rating_min}..{rating_max} is empty")
    return RewardModel(
        features=tuple(features), means=arrays["means"], scales=arrays["scales"],
        coefficients=arrays["coefficients"], intercept=finite_numbers([payload["intercept"]], "intercept")[0],
        alpha=finite_numbers([payload["alpha"]], "alpha")[0], reliable=bool(payload["reliable"]),
        reasons=tuple(str(r) for r in payload["reasons"]), notes=tuple(str(n) for n in payload["notes"]),
        cross_validation=typed(CrossValidation, payload["cross_validation"], "cross_validation"),
        counts=typed(Counts, payload["counts"], "counts"), rating_min=rating_min, rating_max=rating_max)


def require_keys(section: Any, keys: Sequence[str], name: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ValueError(f"{name} must be a JSON object")
    missing = [key for key in keys if key not in section]
    if missing:
        raise ValueError(f"{name} lacks the key(s) {', '.join(missing)}")
    return section


def typed(kind: type, section: Any, name: str) -> Any:
    """A CrossValidation or Counts from its JSON object, each field converted to its declared type."""
    declared = fields(kind)
    require_keys(section, [field.name for field in declared], name)
    values = {}
    for field in declared:
        key = field.name
        if field.type == "tuple[float, ...]":
            values[key] = finite_numbers(section[key], f"{name}.{key}")
        else:
            values[key] = (int if field.type == "int" else float)(section[key])
    return kind(**values)


def finite_numbers(values: Any, key: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                               for v in values):
        raise ValueError(f"{key} must be a list of numbers")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{key} holds a non-finite number")
    return tuple(float(v) for v in values)


# ---------------------------------------------------------------------------------------------------------------
# Features: the same names at fit time (from the study's files) and at training time (from a record)

FEATURE_GROUPS = ("midi", "rewards", "audiobox")  # what a fit may use; "audiobox" only where the study scored it


def clip_features(score: symusic.Score, scores: Mapping[str, float], groups: Sequence[str] = FEATURE_GROUPS
                  ) -> dict[str, float]:
    """The features of one clip: the paper's MIDI features of its score (``midi``), the weight-free rewards
    (``rewards``, named ``reward_<name>``) and Audiobox's four axes (``audiobox``) among its audio ``scores``, as
    the study's manifest and evaluation.py name them."""
    values: dict[str, float] = {}
    if "midi" in groups:
        values.update(features.compute_features(score))
    if "rewards" in groups:
        values.update({k: float(v) for k, v in scores.items() if k.startswith("reward_")})
    if "audiobox" in groups:
        values.update({k: float(v) for k, v in scores.items() if k in AES_AXES})
    return values


def study_features(study_dir: str | Path, groups: Sequence[str] = FEATURE_GROUPS) -> dict[str, dict[str, float]]:
    """clip id -> ``clip_features`` for every clip of a built study (its MIDI file and its manifest scores)."""
    unknown = sorted(set(groups) - set(FEATURE_GROUPS))
    if unknown:
        raise FitError(f"unknown feature groups {unknown}; choose from {list(FEATURE_GROUPS)}")
    study = Path(study_dir)
    return {str(clip["id"]): clip_features(symusic.Score(str(study / clip["midi"])), clip.get("scores", {}), groups)
            for clip in manifest_clips(study)}
