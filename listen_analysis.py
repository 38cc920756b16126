"""Analysis of a listening study's ratings (listen.py analyse): does the tuned system sound better to people?

The test for "other - reference" respects the design: answers are paired by prompt (every system answers the same
prompts) and nested in participants (one person's ratings share their use of the scale). For each participant, the
differences other - reference are taken prompt by prompt over the prompts they rated for both systems, and
averaged: one number per participant. Under the null hypothesis that the system label does not change a
participant's ratings, each participant's mean difference is as likely to be negative as positive, so the test
flips their signs (all 2^P sign patterns when P <= EXACT_MAX_PARTICIPANTS, else random flips): a sign-flip
permutation test over participants, with the participant as the unit of replication. It needs no normality
(ratings are on a bounded 1-10 scale), it is exact for the paper's 14 listeners, and unlike a test over all
ratings it does not treat one person's 15 answers as 15 independent people. A mixed model (rating ~ system +
(1|participant) + (1|prompt)) would use the same structure with more assumptions and a heavier dependency. The
95% interval is a participant-cluster bootstrap of the same mean. Repeated clips (the consistency check) are left
out of the comparison and the agreement; only a clip's first playing counts there.

Writes ``<study>/analysis/``: summary.md, ratings.csv (every answer with its clip's system, prompt and scores),
ratings.png.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from listen_server import DATABASE, ResponseStore  # noqa: E402
from listen_stimuli import load_manifest  # noqa: E402
from report import fmt, holm, markdown_table  # noqa: E402

ANALYSIS_DIR = "analysis"
EXACT_MAX_PARTICIPANTS = 16  # 2^16 sign patterns are enumerated in well under a second
BOOTSTRAP = 10_000


@dataclass
class Comparison:
    """other - reference, from per-participant mean paired differences."""

    other: str
    reference: str
    participants: int
    pairs: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    exact: bool
    p_holm: float = math.nan


@dataclass
class Analysis:
    systems: pd.DataFrame  # system, ratings, participants, mean, se
    comparisons: list[Comparison]
    consistency: pd.DataFrame  # participant, pairs, mean_abs_difference, identical, within_one
    agreement: pd.DataFrame  # score, rho, p, clips
    participants: int
    answers: int
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Data


def read_ratings(study_dir: str | Path) -> pd.DataFrame:
    """Every stored answer joined with its clip's manifest entry (system, prompt_index, score_* columns)."""
    study = Path(study_dir)
    manifest = load_manifest(study)
    database = study / DATABASE
    answers = pd.DataFrame(ResponseStore(database).answers() if database.is_file() else [],
                           columns=["participant_id", "position", "clip_id", "is_repeat", "rating", "answered_at"])
    clips = pd.DataFrame([
        {"clip_id": c["id"], "system": c["system"], "prompt_index": c["prompt_index"],
         **{f"score_{name}": value for name, value in c["scores"].items()}}
        for c in manifest["clips"]
    ])
    ratings = answers.merge(clips, on="clip_id", how="left")
    return ratings.rename(columns={"participant_id": "participant"})


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def sign_flip_p_value(differences: np.ndarray, permutations: int = 20_000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p-value of mean(differences) = 0 by flipping the sign of each participant's difference; exact
    (every pattern) for up to EXACT_MAX_PARTICIPANTS participants, else ``permutations`` random patterns with the
    (count + 1) / (permutations + 1) estimate. Returns (p, exact)."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return math.nan, False
    observed = abs(d.mean()) - 1e-12
    if len(d) <= EXACT_MAX_PARTICIPANTS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d / len(d)) >= observed)), True
    rng = np.random.default_rng(seed)
    extreme = 0
    for chunk in np.array_split(np.arange(permutations), max(1, permutations // 2000)):
        signs = rng.choice((1.0, -1.0), size=(len(chunk), len(d)))
        extreme += int(np.count_nonzero(np.abs(signs @ d / len(d)) >= observed))
    return (extreme + 1) / (permutations + 1), False


def bootstrap_interval(values: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling participants (the clusters) with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def participant_differences(first: pd.DataFrame, reference: str, other: str) -> tuple[pd.Series, int]:
    """Per participant, the mean over prompts of rating(other) - rating(reference), using the prompts the participant
    rated for both; and the number of such (participant, prompt) pairs."""
    table = first[first.system.isin([reference, other])].pivot_table(
        index=["participant", "prompt_index"], columns="system", values="rating", aggfunc="mean")
    if reference not in table or other not in table:
        return pd.Series(dtype=float), 0
    paired = (table[other] - table[reference]).dropna()
    return paired.groupby(level="participant").mean(), len(paired)


def compare(first: pd.DataFrame, reference: str, others: Sequence[str], permutations: int) -> list[Comparison]:
    comparisons = []
    for other in others:
        per_participant, pairs = participant_differences(first, reference, other)
        p, exact = sign_flip_p_value(per_participant.to_numpy(), permutations)
        low, high = bootstrap_interval(per_participant.to_numpy())
        comparisons.append(Comparison(other, reference, len(per_participant), pairs,
                                      float(per_participant.mean()) if len(per_participant) else math.nan,
                                      low, high, p, exact))
    for comparison, adjusted in zip(comparisons, holm([c.p_value for c in comparisons])):
        comparison.p_holm = adjusted
    return comparisons


def system_table(first: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per system: the mean of the participants' mean ratings and its standard error over participants (each
    person counts once, however many clips they rated), plus the plain counts."""
    rows = []
    for system in order:
        ratings = first[first.system == system]
        per_participant = ratings.groupby("participant").rating.mean()
        n = len(per_participant)
        rows.append({
            "system": system, "ratings": len(ratings), "participants": n,
            "mean": float(per_participant.mean()) if n else math.nan,
            "se": float(per_participant.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        })
    return pd.DataFrame(rows)


def consistency_table(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per participant, their two ratings of each repeated clip: mean absolute difference, share identical, share
    within one point."""
    first = ratings[ratings.is_repeat == 0][["participant", "clip_id", "rating"]]
    again = ratings[ratings.is_repeat == 1][["participant", "clip_id", "rating"]]
    pairs = first.merge(again, on=["participant", "clip_id"], suffixes=("_first", "_repeat"))
    gap = (pairs.rating_first - pairs.rating_repeat).abs()
    pairs = pairs.assign(gap=gap, identical=gap == 0, within_one=gap <= 1)
    return (pairs.groupby("participant")
            .agg(pairs=("gap", "size"), mean_abs_difference=("gap", "mean"), identical=("identical", "mean"),
                 within_one=("within_one", "mean"))
            .reset_index())


def agreement_table(first: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation, over clips, between the mean human rating and each model score of the manifest
    (Audiobox axes, rewards). NaN where a score is constant or fewer than 3 clips were rated."""
    scores = [c for c in first.columns if c.startswith("score_")]
    per_clip = first.groupby("clip_id").agg(rating=("rating", "mean"), **{c: (c, "first") for c in scores})
    rows = []
    for column in scores:
        valid = per_clip[["rating", column]].dropna()
        constant = valid[column].nunique() < 2 or valid.rating.nunique() < 2
        rho, p = (math.nan, math.nan) if len(valid) < 3 or constant else spearmanr(valid.rating, valid[column])
        rows.append({"score": column.removeprefix("score_"), "rho": float(rho), "p": float(p), "clips": len(valid)})
    return pd.DataFrame(rows, columns=["score", "rho", "p", "clips"])


def analyse_ratings(ratings: pd.DataFrame, order: Sequence[str], reference: str | None = None,
                    permutations: int = 20_000) -> Analysis:
    """The whole analysis of a ratings table (as read_ratings returns it); ``order``: the systems, reference first
    unless ``reference`` names another."""
    reference = reference or order[0]
    if reference not in order:
        raise ValueError(f"reference system {reference!r} is not one of the study's systems {list(order)}")
    first = ratings[ratings.is_repeat == 0]
    notes = []
    unknown = ratings.system.isna().sum()
    if unknown:
        notes.append(f"{unknown} answer(s) name clips missing from the manifest and were left out")
        first = first.dropna(subset=["system"])
    return Analysis(
        systems=system_table(first, order),
        comparisons=compare(first, reference, [s for s in order if s != reference], permutations),
        consistency=consistency_table(ratings),
        agreement=agreement_table(first),
        participants=ratings.participant.nunique(),
        answers=len(ratings),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------------------
# Output


def plot(ratings: pd.DataFrame, analysis: Analysis, path: Path) -> None:
    """Left: each participant's mean rating per system (grey lines) and the system means ± SE. Right: per clip,
    the mean human rating against the first model score (Audiobox CE when scored)."""
    first = ratings[ratings.is_repeat == 0]
    order = list(analysis.systems.system)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    per_participant = first.pivot_table(index="participant", columns="system", values="rating", aggfunc="mean")
    x = np.arange(len(order))
    for _, row in per_participant.reindex(columns=order).iterrows():
        left.plot(x, row.to_numpy(), color="0.75", linewidth=0.8, marker=".", zorder=1)
    left.errorbar(x, analysis.systems["mean"], yerr=analysis.systems["se"], fmt="o", color="C0", capsize=6,
                  markersize=8, zorder=2, label="mean ± SE (participants)")
    left.set(xticks=x, xticklabels=order, ylim=(0.5, 10.5), ylabel="rating (1-10)",
             title="How much do you enjoy this piece?")
    left.legend(loc="lower right", fontsize=8)
    scores = analysis.agreement.dropna(subset=["rho"])
    if len(scores):
        preferred = "CE" if "CE" in set(scores.score) else scores.score.iloc[0]
        column = f"score_{preferred}"
        per_clip = first.groupby("clip_id").agg(rating=("rating", "mean"), score=(column, "first"),
                                                system=("system", "first"))
        for k, system in enumerate(order):
            part = per_clip[per_clip.system == system]
            right.scatter(part.score, part.rating, color=f"C{k}", label=system, s=18)
        rho = scores.set_index("score").rho[preferred]
        right.set(xlabel=preferred, ylabel="mean rating of the clip", title=f"per clip: Spearman ρ = {rho:.2f}")
        right.legend(fontsize=8)
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no model score varies across the rated clips", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(analysis: Analysis, study: Path) -> str:
    s = analysis.systems
    lines = [f"# Listening study: {study}", "",
             f"{analysis.participants} participant(s), {analysis.answers} answer(s) "
             f"(repeats included). Question: \"How much do you enjoy this piece?\" (1-10).", ""]
    lines += [f"- {note}" for note in analysis.notes]
    lines += ["## Ratings per system (first playing of each clip)", "",
              "Mean of the participants' mean ratings ± its standard error over participants.", "",
              markdown_table((["system", "mean ± SE", "ratings", "participants"],
                              [[r.system, f"{fmt(r.mean)} ± {fmt(r.se)}", str(r.ratings), str(r.participants)]
                               for r in s.itertuples()])), ""]
    lines += ["## Differences against the reference", "",
              "Per participant, the mean over prompts of rating(system) - rating(reference) (pairs: prompts rated "
              "for both); averaged over participants. p: two-sided sign-flip permutation test over participants "
              "(exact when every sign pattern is enumerated), Holm-adjusted over the comparisons; 95% CI: "
              "participant-cluster bootstrap. Why this test: answers are paired by prompt and nested in "
              "participants, so the participant is the unit that is resampled (see listen_analysis.py).", ""]
    if analysis.comparisons:
        lines += [markdown_table((
            ["comparison", "mean difference", "95% CI", "participants", "pairs", "p", "p (Holm)"],
            [[f"{c.other} - {c.reference}", fmt(c.mean_difference), f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]",
              str(c.participants), str(c.pairs), fmt(c.p_value) + (" (exact)" if c.exact else ""), fmt(c.p_holm)]
             for c in analysis.comparisons])), ""]
    else:
        lines += ["Only one system: nothing to compare.", ""]
    lines += ["## Consistency (clips heard twice)", ""]
    c = analysis.consistency
    if len(c):
        lines += [f"{int(c.pairs.sum())} repeated pair(s) from {len(c)} participant(s): mean |first - repeat| = "
                  f"{fmt(float((c.mean_abs_difference * c.pairs).sum() / c.pairs.sum()))} points.", "",
                  markdown_table((["participant", "pairs", "mean abs. difference", "identical", "within 1 point"],
                                  [[r.participant[:8], str(r.pairs), fmt(r.mean_abs_difference),
                                    f"{r.identical:.0%}", f"{r.within_one:.0%}"] for r in c.itertuples()])), ""]
    else:
        lines += ["No repeated clip was answered (serve with --repeats N to include some).", ""]
    lines += ["## Agreement with the model scores", "",
              "Spearman ρ over clips between the clip's mean human rating and each score in the manifest "
              "(computed on the rendered clip, as the reward sees it).", ""]
    if len(analysis.agreement):
        lines += [markdown_table((["score", "Spearman ρ", "p", "clips"],
                                  [[r.score, fmt(r.rho), fmt(r.p), str(r.clips)]
                                   for r in analysis.agreement.itertuples()])), ""]
    else:
        lines += ["The manifest holds no model score.", ""]
    lines += ["![ratings](ratings.png)", ""]
    return "\n".join(lines)


def analyse(study_dir: str | Path, reference: str | None = None, permutations: int = 20_000) -> Analysis | None:
    """Analyse a study folder and write ``<study>/analysis/``; None (and a message) when nobody has answered yet."""
    study = Path(study_dir)
    ratings = read_ratings(study)
    if ratings.empty:
        print(f"[listen] no responses yet in {study / DATABASE}: nothing to analyse "
              f"(collect some with python listen.py serve {study})")
        return None
    order = list(load_manifest(study)["systems"])
    analysis = analyse_ratings(ratings, order, reference, permutations)
    out = study / ANALYSIS_DIR
    out.mkdir(exist_ok=True)
    ratings.to_csv(out / "ratings.csv", index=False)
    plot(ratings, analysis, out / "ratings.png")
    (out / "summary.md").write_text(summary_markdown(analysis, study))
    for c in analysis.comparisons:
        print(f"[listen] {c.other} - {c.reference}: {c.mean_difference:+.2f} points "
              f"(95% CI {c.ci_low:+.2f} to {c.ci_high:+.2f}; p = {c.p_value:.3g}, {c.participants} participants)")
    print(f"[listen] summary: {out / 'summary.md'}")
    return analysis
