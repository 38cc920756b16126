"""Write an evaluation's outputs: features.csv, summary.md, figures/ and an offline report.html.

evaluation.py measures; this module only presents. Everything it writes lies in one folder and every link in
report.html is relative to it, so the folder can be zipped, mailed and opened anywhere without a network.

Statistics: mean and standard error per system and metric over the samples where the metric is defined (NaN
left out, so the paper's rule of dropping note-less samples holds for every MIDI feature), and for each system
after the first the difference of means against the first with a two-sided permutation test (exchanging
system labels; no distributional assumption and no scipy), Holm-adjusted across the metrics of one comparison.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
import symusic

from smart_utils import features
from smart_utils.features import AES_AXES

ID_COLUMNS = ("system", "sample", "prompt", "midi_path", "audio_file")
AES_TITLES = {
    "CE": "Content Enjoyment", "CU": "Content Usefulness", "PC": "Production Complexity", "PQ": "Production Quality"
}
FIGURES = "figures"


@dataclass
class Evaluation:
    """Everything measured about a set of systems; ``write_report`` turns it into files."""

    table: pd.DataFrame  # one row per sample: ID_COLUMNS, then one column per metric
    scores: dict[str, list[symusic.Score]]  # per system, in the table's row order
    sources: dict[str, str]  # system -> what its samples came from
    settings: dict[str, str] = field(default_factory=dict)  # how the samples were made and scored
    skipped: dict[str, str] = field(default_factory=dict)  # part of the evaluation -> why it was not done
    robustness: pd.DataFrame | None = None  # long table: system, sample, soundfont, metric, value
    main_soundfont: str | None = None  # label of the soundfont the main scores used
    run_logs: pd.DataFrame | None = None  # training samples: reward_step, reward, one column per reward
    trainer_log: pd.DataFrame | None = None  # the trainer's log history (step, kl, ...)
    same_prompts: bool = False  # every system was sampled now, row k of each answering prompt k with seed k

    @property
    def systems(self) -> list[str]:
        return list(self.scores)

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.table.columns if c not in ID_COLUMNS]


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def mean_se(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error of the mean and count of the finite values (NaN for what is undefined)."""
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se, n


def permutation_p_value(a: np.ndarray, b: np.ndarray, permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(b) - mean(a) under random relabelling of the pooled finite values (scipy's
    ``permutation_test``: exact when there are fewer relabellings than ``permutations``, else (count + 1) /
    (permutations + 1), never 0). NaN when a side has fewer than two values: no relabelling test then."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    result = scipy.stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis), permutation_type="independent",
        vectorized=True, n_resamples=permutations, alternative="two-sided", rng=seed)
    return float(result.pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error), NaNs left as they are."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = list(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


# ---------------------------------------------------------------------------------------------------------------
# Tables (each built once, written as markdown and as html)


Table = tuple[list[str], list[list[str]]]


def per_system_table(ev: Evaluation) -> Table:
    header = ["metric", *(f"{s} (mean ± se, n)" for s in ev.systems)]
    rows = []
    for metric in ev.metrics:
        cells = [metric]
        for system in ev.systems:
            mean, se, n = mean_se(ev.table.loc[ev.table.system == system, metric].to_numpy(float))
            cells.append(f"{fmt(mean)} ± {fmt(se, 2)} ({n})")
        rows.append(cells)
    return header, rows


def comparison_table(ev: Evaluation, permutations: int) -> Table:
    """Difference of means of every later system against the first, with permutation and Holm p-values."""
    reference = ev.systems[0]
    values = {s: {m: ev.table.loc[ev.table.system == s, m].to_numpy(float) for m in ev.metrics} for s in ev.systems}
    header = ["metric"]
    columns = []
    for system in ev.systems[1:]:
        header += [f"{system} − {reference}", "p", "p (Holm)"]
        a, b = values[reference], values[system]
        deltas = [mean_se(b[m])[0] - mean_se(a[m])[0] for m in ev.metrics]
        p_values = [permutation_p_value(a[m], b[m], permutations) for m in ev.metrics]
        columns.append((deltas, p_values, holm(p_values)))
    rows = []
    for i, metric in enumerate(ev.metrics):
        cells = [metric]
        for deltas, p_values, adjusted in columns:
            star = " *" if adjusted[i] < 0.05 else ""
            cells += [f"{fmt(deltas[i])}{star}", fmt(p_values[i], 2), fmt(adjusted[i], 2)]
        rows.append(cells)
    return header, rows


def diversity_table(ev: Evaluation) -> Table:
    header = ["system", "mean pairwise distance", "near-duplicate share", "samples in the average piano roll"]
    rows = []
    for system, scores in ev.scores.items():
        values = features.diversity(scores)
        used = features.average_piano_roll(scores)[1]
        rows.append([system, fmt(values["mean_pairwise_distance"]), fmt(values["near_duplicate_share"]),
                     f"{used} of {len(scores)}"])
    return header, rows


def robustness_table(ev: Evaluation) -> Table:
    """Per system, metric and held-out soundfont: the mean, and the mean change and mean absolute change per
    sample against the main soundfont."""
    header = ["system", "metric", "soundfont", "mean", f"mean change vs {ev.main_soundfont}", "mean absolute change"]
    rows = []
    data = ev.robustness
    wide = data.pivot_table(index=["system", "sample", "metric"], columns="soundfont", values="value", aggfunc="first")
    for (system, metric), group in wide.groupby(level=["system", "metric"], sort=False):
        main = group[ev.main_soundfont].to_numpy(float)
        for soundfont in [c for c in group.columns if c != ev.main_soundfont]:
            change = group[soundfont].to_numpy(float) - main
            rows.append([system, metric, soundfont, fmt(np.nanmean(group[soundfont].to_numpy(float))),
                         fmt(np.nanmean(change)), fmt(np.nanmean(np.abs(change)))])
    return header, rows


def markdown_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------------------------------------------
# Figures


def _with_notes(ev: Evaluation, system: str) -> pd.DataFrame:
    """The system's rows with at least one note: the paper dropped note-less samples from its feature plots."""
    rows = ev.table[ev.table.system == system]
    return rows[rows.note_count > 0]


def _overlaid_histograms(ax, ev: Evaluation, column: str, bins) -> None:
    for system in ev.systems:
        values = _with_notes(ev, system)[column].dropna()
        ax.hist(values, bins=bins, alpha=0.5, label=system)


def plot_features(ev: Evaluation, path: Path) -> None:
    """The paper's 8-panel figure: notes, polyphony rate, empty-beat rate, scale consistency, pitch and
    velocity distributions, pitch and velocity ranges; one colour per system."""
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    panels = [("note_count", "Number of notes"), ("polyphony_rate", "Polyphony rate"),
              ("empty_beat_rate", "Empty beat rate"), ("scale_consistency", "Scale consistency"),
              (None, "Pitch distribution"), ("pitch_range", "Pitch range"),
              (None, "Velocity distribution"), ("velocity_range", "Velocity range")]
    for ax, (column, title) in zip(axes.flat, panels):
        ax.set_title(title)
        if column is not None:
            everything = ev.table.loc[ev.table.note_count > 0, column].dropna()
            low, high = (everything.min(), everything.max()) if len(everything) else (0.0, 1.0)
            _overlaid_histograms(ax, ev, column, np.linspace(low, high if high > low else low + 1, 31))
    for ax, histogram in ((axes[1, 0], features.pitch_histogram), (axes[1, 2], features.velocity_histogram)):
        for system, scores in ev.scores.items():
            counts = np.sum([histogram(s) for s in scores], axis=0) if scores else np.zeros(128)
            ax.stairs(counts / max(counts.sum(), 1), np.arange(129), fill=True, alpha=0.5, label=system)
        ax.set_ylabel("share of notes")
    axes[1, 0].set_xlim(21, 109)  # the piano's keys
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_audiobox(ev: Evaluation, path: Path) -> None:
    """Audiobox axes as in the paper: 32 bins over [1, 10] per axis, one colour per system."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, axis in zip(axes, AES_AXES):
        for system in ev.systems:
            values = ev.table.loc[ev.table.system == system, axis].dropna()
            ax.hist(values, bins=np.linspace(1, 10, 33), alpha=0.5, label=system)
        ax.set_title(f"Predicted {AES_TITLES[axis]}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_piano_rolls(ev: Evaluation, path: Path) -> None:
    """Average piano rolls (12 frames per beat, first 16 beats, pieces shorter than that left out) side by side."""
    rolls = {system: features.average_piano_roll(scores) for system, scores in ev.scores.items()}
    top = max([np.nanmax(roll) for roll, used in rolls.values() if used] + [1e-9])
    fig, axes = plt.subplots(1, len(rolls), figsize=(5 * len(rolls), 4), squeeze=False)
    for ax, (system, (roll, used)) in zip(axes[0], rolls.items()):
        ax.imshow(roll[21:109], aspect="auto", origin="lower", cmap="gray_r", vmin=0, vmax=top,
                  extent=(0, features.PAPER_BEATS, 21, 109))
        ax.set_title(f"{system} (n={used})")
        ax.set_xlabel("beat")
    axes[0, 0].set_ylabel("MIDI pitch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(logs: pd.DataFrame, trainer_log: pd.DataFrame | None, path: Path) -> None:
    """Reward of every training sample and its mean per step, each reward's mean per step, the KL if logged, and
    the watch (smart_utils/watch.py) if the run had one: the trained reward beside the held-out judges and the
    diversity on one timeline, where over-optimisation shows as the lines parting."""
    kl = trainer_log[["step", "kl"]].dropna() if trainer_log is not None and "kl" in trainer_log else None
    watched = [c for c in trainer_log.columns if c.startswith("watch/")] if trainer_log is not None else []
    has_kl = kl is not None and len(kl) > 0
    panels = 2 + has_kl + bool(watched)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4))
    axes[0].scatter(logs.reward_step, logs.reward, s=3, alpha=0.2)
    axes[0].plot(logs.groupby("reward_step").reward.mean(), color="black", label="mean")
    axes[0].set(title="Reward of every training sample", xlabel="reward step", ylabel="reward")
    for name in [c for c in logs.columns if c not in ("reward_step", "reward")]:
        axes[1].plot(logs.groupby("reward_step")[name].mean(), label=name)
    axes[1].set(title="Mean normalised reward per step", xlabel="reward step")
    if axes[1].lines:
        axes[1].legend()
    if has_kl:
        axes[2].plot(kl.step, kl.kl)
        axes[2].set(title="KL to the base model", xlabel="optimizer step")
    if watched:
        ax = axes[-1]
        trained = trainer_log[["step", "reward"]].dropna()
        ax.plot(trained.step, trained.reward, color="black", linewidth=2, label="trained reward")
        for name in watched:
            series = trainer_log[["step", name]].dropna()
            ax.plot(series.step, series[name], label=name.removeprefix("watch/"),
                    linestyle="--" if "diversity" in name else "-")
        ax.set(title="Trained reward vs the watch (never optimised)", xlabel="optimizer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_figures(ev: Evaluation, out: Path) -> dict[str, str]:
    """Draw every figure the data allows; return title -> path relative to ``out``."""
    (out / FIGURES).mkdir(exist_ok=True)
    drawn = {}
    plans = [("MIDI features", "features.png", plot_features, True),
             ("Audiobox aesthetics", "audiobox.png", plot_audiobox, all(a in ev.table for a in AES_AXES)),
             ("Average piano rolls", "piano_rolls.png", plot_piano_rolls, True)]
    for title, name, plot, possible in plans:
        if possible:
            plot(ev, out / FIGURES / name)
            drawn[title] = f"{FIGURES}/{name}"
    if ev.run_logs is not None and len(ev.run_logs) > 0:
        plot_training(ev.run_logs, ev.trainer_log, out / FIGURES / "training.png")
        drawn["Training curves"] = f"{FIGURES}/training.png"
    return drawn


# ---------------------------------------------------------------------------------------------------------------
# Files


def distributions(ev: Evaluation) -> pd.DataFrame:
    """Pooled pitch and velocity counts per system (the data behind the two distribution panels)."""
    rows = []
    for system, scores in ev.scores.items():
        for kind, histogram in (("pitch", features.pitch_histogram), ("velocity", features.velocity_histogram)):
            counts = np.sum([histogram(s) for s in scores], axis=0) if scores else np.zeros(128)
            rows += [{"system": system, "kind": kind, "value": v, "count": int(c)} for v, c in enumerate(counts) if c]
    return pd.DataFrame(rows, columns=["system", "kind", "value", "count"])


def sections(ev: Evaluation, permutations: int) -> list[tuple[str, str, Table | None]]:
    """(title, explanation, table) for every summary section, shared by summary.md and report.html."""
    out = [("Per system", "Mean ± standard error over the samples where the metric is defined (n); "
            "MIDI features follow muspy's definitions (features.py); CE/CU/PC/PQ are Audiobox scores on 1-10; "
            "reward_* are normalised rewards in [0, 1].", per_system_table(ev))]
    if len(ev.systems) > 1:
        out.append(("Differences", f"Difference of means against {ev.systems[0]}; two-sided permutation test "
                    f"({permutations} relabellings), Holm-adjusted over the metrics; * marks Holm p < 0.05.",
                    comparison_table(ev, permutations)))
    out.append(("Diversity", "Mean pairwise distance: mean over pairs of samples of the total-variation distance "
                "between pitch-class histograms and between onset-in-beat histograms (0 = same, 1 = disjoint). "
                "Near-duplicate share: samples whose first 16 beats' piano roll has Jaccard similarity >= 0.9 "
                "with another sample's. Note-less samples are left out.", diversity_table(ev)))
    if ev.robustness is not None and len(ev.robustness):
        out.append(("Soundfont robustness", "The same MIDI re-rendered with soundfonts not used for the main "
                    "scores; change = score with that soundfont minus score with the main one, per sample.",
                    robustness_table(ev)))
    return out


def write_summary(ev: Evaluation, out: Path, figures: dict[str, str], permutations: int) -> None:
    lines = [f"# Evaluation of {', '.join(ev.systems)}", ""]
    lines += [f"- **{name}**: {source}" for name, source in ev.sources.items()]
    lines += [f"- {key}: {value}" for key, value in ev.settings.items()]
    if ev.skipped:
        lines += ["", "## Skipped", ""] + [f"- **{part}**: {why}" for part, why in ev.skipped.items()]
    for title, explanation, table in sections(ev, permutations):
        lines += ["", f"## {title}", "", explanation, "", markdown_table(table)]
    lines += ["", "## Figures", ""] + [f"![{title}]({path})" for title, path in figures.items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def listening_rows(ev: Evaluation) -> str:
    """One row per sample position with an audio file; the systems side by side (the same prompt and seed where
    every system was sampled, else the k-th file of each folder)."""
    positions = {system: ev.table[ev.table.system == system].reset_index(drop=True) for system in ev.systems}
    count = max((int((rows.audio_file != "").sum()) for rows in positions.values()), default=0)
    shown = [c for c in ("note_count", *AES_AXES) if c in ev.table]
    out = []
    for k in range(count):
        cells = []
        for rows in positions.values():
            if k >= len(rows) or not rows.audio_file[k]:
                cells.append("<td></td>")
                continue
            row = rows.iloc[k]
            facts = ", ".join(f"{c} {fmt(row[c])}" for c in shown)
            cells.append(f"<td><div class=name>{html.escape(row['sample'])}</div>"
                         f"<audio controls preload=none src=\"{html.escape(row['audio_file'])}\"></audio>"
                         f"<div class=facts>{html.escape(facts)}</div></td>")
        prompt = next((rows.prompt[k] for rows in positions.values() if k < len(rows)), "")
        out.append(f"<tr><td>{k}</td><td class=prompt>{html.escape(str(prompt))}</td>{''.join(cells)}</tr>")
    return "".join(out)


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}img{max-width:100%}.prompt{font-family:monospace;
font-size:12px}.name{font-weight:bold}.facts{font-size:12px;color:#555}audio{width:260px}"""


def write_html(ev: Evaluation, out: Path, figures: dict[str, str], permutations: int) -> None:
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>Evaluation</title><style>{STYLE}</style>"
             f"</head><body><h1>Evaluation of {html.escape(', '.join(ev.systems))}</h1><ul>"]
    parts += [f"<li><b>{html.escape(n)}</b>: {html.escape(s)}</li>" for n, s in ev.sources.items()]
    parts += [f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in ev.settings.items()]
    parts.append("</ul>")
    if ev.skipped:
        parts.append("<h2>Skipped</h2><ul>" + "".join(
            f"<li><b>{html.escape(p)}</b>: {html.escape(w)}</li>" for p, w in ev.skipped.items()) + "</ul>")
    listening = listening_rows(ev)
    if listening:
        head = "".join(f"<th>{html.escape(s)}</th>" for s in ev.systems)
        pairing = ("Same row = same prompt and seed." if ev.same_prompts else
                   "Same row = the same position in each system's file order (MIDI folders are not paired by prompt).")
        parts.append(f"<h2>Listen</h2><p>{pairing}</p>"
                     f"<table><tr><th>#</th><th>prompt</th>{head}</tr>{listening}</table>")
    for title, path in figures.items():
        parts.append(f"<h2>{html.escape(title)}</h2><img src=\"{html.escape(path)}\" alt=\"{html.escape(title)}\">")
    for title, explanation, table in sections(ev, permutations):
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(explanation)}</p>{html_table(table)}")
    data = ["features.csv", "summary.md", "distributions.csv"]
    if ev.robustness is not None and len(ev.robustness):
        data.append("soundfont_robustness.csv")
    parts.append("<p>Data: " + ", ".join(f"<a href=\"{name}\">{name}</a>" for name in data) + "</p></body></html>")
    (out / "report.html").write_text("\n".join(parts))


def write_report(ev: Evaluation, out_dir: str | Path, permutations: int = 10_000) -> Path:
    """Write features.csv, distributions.csv, soundfont_robustness.csv (if any), figures, summary.md and
    report.html into ``out_dir``; return the path of report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev.table.to_csv(out / "features.csv", index=False)
    distributions(ev).to_csv(out / "distributions.csv", index=False)
    if ev.robustness is not None and len(ev.robustness):
        ev.robustness.to_csv(out / "soundfont_robustness.csv", index=False)
    figures = write_figures(ev, out)
    write_summary(ev, out, figures, permutations)
    write_html(ev, out, figures, permutations)
    return out / "report.html"
