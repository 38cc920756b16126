"""Analysis of a listening study's ratings (listen.py analyse): does the tuned system sound better to people?

The test for "other - reference" respects the design: answers are paired by prompt (every system answers the same
prompts with the same seeds) and nested in participants (one person's ratings share their use of the scale), and
the pieces are a sample too. Each paired difference d[p, i] = rating(other, prompt i) - rating(reference, prompt i)
by participant p fills a participants x prompts matrix; the estimate is the mean over participants of each
participant's mean difference. Two sign-flip permutation tests ask whether it could be chance:

- over participants: each participant's mean difference flips sign (all 2^P patterns when P <=
  EXACT_MAX_PARTICIPANTS, else random flips). This treats the participant as the unit of replication, so one
  person's 15 answers do not count as 15 people, but it takes the clips as fixed: with 14 listeners it calls a
  difference "significant" that is only due to which pieces happened to be sampled.
- over prompts: each prompt's mean difference (over participants) flips sign. This generalises over pieces.

The reported p is the larger of the two (Clark 1973's answer to the "language-as-fixed-effect fallacy": a
difference must hold over listeners *and* over pieces; rejecting only when both tests reject keeps the error rate
at most alpha). Sign flips need no normality (ratings are on a bounded 1-10 scale) and are exact at the paper's
size. The 95% interval resamples participants and prompts independently (a two-way cluster bootstrap). A crossed
mixed model (rating ~ system + (1|participant) + (1|prompt)) would use the same structure with more assumptions and
a heavier dependency. Repeated clips (the consistency check) are left out of the comparison and the agreement;
only a clip's first playing counts there.

Writes ``<study>/analysis/``: summary.md, ratings.csv (every answer with its clip's system, prompt and scores),
ratings.png.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
from scipy.stats import spearmanr

from listening.server import ResponseStore
from listening.study import DATABASE, load_manifest
from smart_utils.report import fmt, holm, markdown_table

ANALYSIS_DIR = "analysis"
EXACT_MAX_PARTICIPANTS = 16  # 2^16 sign patterns are enumerated in well under a second
BOOTSTRAP = 10_000


@dataclass
class Comparison:
    """other - reference, from the participants x prompts matrix of paired differences."""

    other: str
    reference: str
    participants: int
    prompts: int
    pairs: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_participants: float
    p_prompts: float
    exact: bool
    p_holm: float = math.nan

    @property
    def p_value(self) -> float:
        """Significant only if it holds over listeners and over pieces: the larger of the two p-values."""
        return max(self.p_participants, self.p_prompts)


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
    """Two-sided p-value of mean(differences) = 0 by flipping the sign of each participant's difference (scipy's
    ``permutation_test`` over the one sample): exact, every pattern, for up to EXACT_MAX_PARTICIPANTS
    participants, else ``permutations`` random patterns with the (count + 1) / (permutations + 1) estimate.
    Returns (p, exact)."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return math.nan, False
    exact = len(d) <= EXACT_MAX_PARTICIPANTS
    result = scipy.stats.permutation_test(
        (d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=max(permutations, 2 ** len(d)) if exact else permutations, alternative="two-sided", rng=seed)
    return float(result.pvalue), exact


def two_way_bootstrap(matrix: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of the row means of a participants x prompts matrix (NaN = not rated),
    resampling rows (participants) and columns (prompts) independently with replacement."""
    if matrix.shape[0] < 2 or matrix.shape[1] < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    valid = ~np.isnan(matrix)
    values = np.where(valid, matrix, 0.0)
    means = []
    for chunk in np.array_split(np.arange(resamples), max(1, resamples // 1000)):
        rows = rng.integers(0, matrix.shape[0], (len(chunk), matrix.shape[0]))[:, :, None]
        columns = rng.integers(0, matrix.shape[1], (len(chunk), matrix.shape[1]))[:, None, :]
        counts = valid[rows, columns].sum(axis=2)
        row_means = values[rows, columns].sum(axis=2) / np.maximum(counts, 1)
        rated = counts > 0
        with np.errstate(invalid="ignore"):
            means.append((row_means * rated).sum(axis=1) / rated.sum(axis=1))
    low, high = np.nanpercentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def difference_matrix(first: pd.DataFrame, reference: str, other: str) -> pd.DataFrame:
    """participants x prompts: rating(other) - rating(reference), NaN where a participant did not rate both."""
    table = first[first.system.isin([reference, other])].pivot_table(
        index=["participant", "prompt_index"], columns="system", values="rating", aggfunc="mean")
    if reference not in table or other not in table:
        return pd.DataFrame()
    return (table[other] - table[reference]).unstack("prompt_index")


def compare(first: pd.DataFrame, reference: str, others: Sequence[str], permutations: int) -> list[Comparison]:
    comparisons = []
    for other in others:
        matrix = difference_matrix(first, reference, other)
        by_participant = matrix.mean(axis=1).dropna().to_numpy()
        by_prompt = matrix.mean(axis=0).dropna().to_numpy()
        p_participants, exact_participants = sign_flip_p_value(by_participant, permutations)
        p_prompts, exact_prompts = sign_flip_p_value(by_prompt, permutations)
        low, high = two_way_bootstrap(matrix.to_numpy(dtype=float))
        comparisons.append(Comparison(
            other, reference, len(by_participant), len(by_prompt), int(matrix.notna().to_numpy().sum()),
            float(by_participant.mean()) if len(by_participant) else math.nan, low, high,
            p_participants, p_prompts, exact_participants and exact_prompts))
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
    left.set(xticks=x, xticklabels=order, xlim=(-0.4, len(order) - 0.6), ylim=(0.5, 10.5), ylabel="rating (1-10)",
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
              "Paired differences rating(system) - rating(reference) for the same prompt and participant (pairs); "
              "the estimate is the mean over participants of each one's mean difference. Two-sided sign-flip "
              "permutation tests: over participants (their mean differences) and over prompts (theirs); p is the "
              "larger, so a difference must hold over listeners and over pieces (exact: every sign pattern "
              "enumerated), Holm-adjusted over the comparisons. 95% CI: bootstrap resampling participants and "
              "prompts. Why: answers are paired by prompt and nested in participants, and the pieces are a sample "
              "too; a test over participants alone takes the clips as fixed (see listening/analysis.py).", ""]
    if analysis.comparisons:
        lines += [markdown_table((
            ["comparison", "mean difference", "95% CI", "participants", "prompts", "pairs", "p (participants)",
             "p (prompts)", "p", "p (Holm)"],
            [[f"{c.other} - {c.reference}", fmt(c.mean_difference), f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]",
              str(c.participants), str(c.prompts), str(c.pairs), fmt(c.p_participants), fmt(c.p_prompts),
              fmt(c.p_value) + (" (exact)" if c.exact else ""), fmt(c.p_holm)]
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
        if not c.pairs:
            print(f"[listen] {c.other} - {c.reference}: no participant has rated both for a prompt yet")
            continue
        print(f"[listen] {c.other} - {c.reference}: {c.mean_difference:+.2f} points "
              f"(95% CI {c.ci_low:+.2f} to {c.ci_high:+.2f}; p = {c.p_value:.3g} over {c.participants} participants "
              f"and {c.prompts} prompts)")
    print(f"[listen] summary: {out / 'summary.md'}")
    return analysis
