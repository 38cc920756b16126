"""Statistics and reports of a reward audit: how each reward moves under each change, over the same pieces.

Each piece is scored before and after a change, so the comparison is paired: ``paired_change`` summarises the
per-piece differences (after - before) of one reward under one change as their mean, a confidence interval and
the share of pieces whose reward rose. An ``AuditRow`` holds that summary under its reward and change names, and
the writers turn a list of rows into a markdown table, a CSV, a heatmap and an HTML page.

The interval is a percentile bootstrap of the mean change. Reward changes are often skewed or bounded (an
aesthetic score saturates, a few pieces collapse under a change) and an audit has tens of pieces, so an interval
that assumes no shape for them is the safer reading; it is seeded, so a report reproduces. It runs a little narrow
for very few pieces, which is why every row reports n; with fewer than two pairs there is no spread to resample
and the interval is NaN.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Collection, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np

from smart_utils.perturbations import EXPLOIT_PROBES

BOOTSTRAP_DRAWS_PER_CHUNK = 1_000_000  # resampled values held in memory at once, whatever the number of pieces
AudioExample = tuple[str, str, str, str]  # piece label, change name, before wav and after wav (relative paths)


@dataclass(frozen=True)
class PairedChange:
    """The paired change of one reward under one change.

    ``n`` pairs were used and ``dropped`` left out because a value was NaN or infinite (a reward that failed on a
    piece, or a piece a change emptied). ``mean``, ``ci_low``, ``ci_high`` and ``share_rose`` are NaN when no
    pair is left; the interval is also NaN for a single pair.
    """

    n: int
    dropped: int
    mean: float
    ci_low: float
    ci_high: float
    share_rose: float
    confidence: float


def paired_change(before: Sequence[float], after: Sequence[float], confidence: float = 0.95,
                  n_boot: int = 10_000, seed: int = 0) -> PairedChange:
    """Mean of ``after - before`` over the pairs with both values finite, its bootstrap interval at
    ``confidence`` (``n_boot`` resamples from a generator seeded with ``seed``) and the share of those pairs whose
    value rose strictly (a tie is not a rise, so a reward blind to a change has share 0)."""
    before_values, after_values = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before_values.shape != after_values.shape or before_values.ndim != 1:
        raise ValueError(f"before and after must be two sequences of one length, got shapes "
                         f"{before_values.shape} and {after_values.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    finite = np.isfinite(before_values) & np.isfinite(after_values)
    changes = after_values[finite] - before_values[finite]
    dropped = int(np.count_nonzero(~finite))
    if not len(changes):
        return PairedChange(0, dropped, math.nan, math.nan, math.nan, math.nan, confidence)
    ci_low, ci_high = bootstrap_interval(changes, confidence, n_boot, seed)
    share_rose = float(np.count_nonzero(changes > 0) / len(changes))
    return PairedChange(len(changes), dropped, float(changes.mean()), ci_low, ci_high, share_rose, confidence)


def bootstrap_interval(changes: np.ndarray, confidence: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``changes``; NaN for fewer than two values.

    The resamples are drawn in chunks so that memory stays bounded however many pieces the audit has.
    """
    if len(changes) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resamples_per_chunk = max(1, BOOTSTRAP_DRAWS_PER_CHUNK // len(changes))
    means = np.concatenate([
        changes[rng.integers(0, len(changes), size=(min(resamples_per_chunk, n_boot - done), len(changes)))]
        .mean(axis=1)
        for done in range(0, n_boot, resamples_per_chunk)
    ])
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class AuditRow:
    """One reward under one change: the result the writers take (the CSV's columns, in this order)."""

    reward: str
    change: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    share_rose: float
    dropped: int = 0

    @classmethod
    def from_paired(cls, reward: str, change: str, paired: PairedChange) -> AuditRow:
        """The row of ``paired`` under its reward and change names."""
        return cls(reward, change, paired.n, paired.mean, paired.ci_low, paired.ci_high, paired.share_rose,
                   paired.dropped)


def likely_exploits(rows: Sequence[AuditRow], exploit_probes: Collection[str] = EXPLOIT_PROBES) -> list[AuditRow]:
    """The rows of an exploit probe whose reward rose on average with its whole interval above 0.

    Such a reward rises reliably under a change that makes the music worse, a direction GRPO will follow.
    """
    return [row for row in rows if row.change in exploit_probes and row.mean > 0 and row.ci_low > 0]


TABLE_HEADER = ("reward", "change", "n", "dropped", "mean change", "CI low", "CI high", "share rose")


def _signed(value: float) -> str:
    """A change for reading: signed, four significant digits, "n/a" for NaN."""
    return "n/a" if math.isnan(value) else f"{value:+.4g}"


def _table_cells(row: AuditRow) -> list[str]:
    """The cells of ``row`` in ``TABLE_HEADER`` order, as the markdown and HTML tables show them."""
    share = "n/a" if math.isnan(row.share_rose) else f"{row.share_rose:.0%}"
    return [row.reward, row.change, str(row.n), str(row.dropped), _signed(row.mean), _signed(row.ci_low),
            _signed(row.ci_high), share]


def markdown_table(rows: Sequence[AuditRow]) -> str:
    """The rows as a markdown table, one line per row (a ``|`` inside a name is escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line(TABLE_HEADER), line(["---"] * len(TABLE_HEADER))]
    return "\n".join(lines + [line(_table_cells(row)) for row in rows]) + "\n"


def write_markdown(rows: Sequence[AuditRow], path: str | Path) -> None:
    """Write ``markdown_table(rows)`` to ``path``."""
    Path(path).write_text(markdown_table(rows), encoding="utf-8")


def write_csv(rows: Sequence[AuditRow], path: str | Path) -> None:
    """Write the rows as CSV with ``AuditRow``'s fields as columns; floats are written exactly (``read_csv``
    gives the same rows back)."""
    with Path(path).open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([field.name for field in fields(AuditRow)])
        writer.writerows(astuple(row) for row in rows)


def read_csv(path: str | Path) -> list[AuditRow]:
    """The rows of a CSV that ``write_csv`` wrote, each column parsed back to its field's type."""
    parsers = {"str": str, "int": int, "float": float}
    field_parsers = {field.name: parsers[field.type] for field in fields(AuditRow)}
    with Path(path).open(newline="", encoding="utf-8") as file:
        return [AuditRow(**{name: field_parsers[name](value) for name, value in record.items()})
                for record in csv.DictReader(file)]


def _in_order_of_appearance(names: Sequence[str]) -> list[str]:
    """Each distinct name once, where it first appears: the audit's own order of rewards and of changes."""
    return list(dict.fromkeys(names))


def write_heatmap(rows: Sequence[AuditRow], path: str | Path) -> None:
    """A PNG of rewards (rows) by changes (columns), each cell coloured by its mean change, the value written in.

    Rewards have different scales, so each reward's row is coloured relative to its own largest absolute mean
    change (red for a rise, blue for a fall); one colour scale for all would wash out every reward but the
    widest. The written values are the raw mean changes.
    """
    if not rows:
        raise ValueError("no results to plot")
    rewards = _in_order_of_appearance([row.reward for row in rows])
    changes = _in_order_of_appearance([row.change for row in rows])
    means = np.full((len(rewards), len(changes)), np.nan)
    for row in rows:
        means[rewards.index(row.reward), changes.index(row.change)] = row.mean
    finite_abs = np.where(np.isfinite(means), np.abs(means), 0.0)
    row_scale = finite_abs.max(axis=1, keepdims=True)
    relative = means / np.where(row_scale > 0, row_scale, 1.0)
    colours = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")
    figure, axes = plt.subplots(figsize=(2.5 + 0.9 * len(changes), 1.8 + 0.5 * len(rewards)))
    image = axes.imshow(np.ma.masked_invalid(relative), cmap=colours, vmin=-1, vmax=1, aspect="auto")
    axes.set_xticks(range(len(changes)), changes, rotation=45, ha="right")
    axes.set_yticks(range(len(rewards)), rewards)
    for (reward_index, change_index), mean in np.ndenumerate(means):
        on_dark = abs(relative[reward_index, change_index]) > 0.6
        axes.text(change_index, reward_index, "n/a" if math.isnan(mean) else f"{mean:+.3g}", ha="center",
                  va="center", fontsize=8, color="white" if on_dark else "black")
    figure.colorbar(image, ax=axes, label="mean / row's largest |mean|")
    axes.set_title("Mean reward change under each change")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An HTML table of already escaped cells."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" for cells in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _exploit_warning(rows: Sequence[AuditRow], exploit_probes: Collection[str]) -> str:
    """The page's warning paragraph: every reward that rises under an exploit probe, or that none does."""
    probes = html.escape(", ".join(sorted(exploit_probes)))
    exploits = likely_exploits(rows, exploit_probes)
    if not exploits:
        return (f"<p class=clear>No reward rises under an exploit probe ({probes}) with its confidence interval "
                f"above 0.</p>")
    items = "".join(
        f"<li><b>{html.escape(row.reward)}</b> under <b>{html.escape(row.change)}</b>: mean change "
        f"{_signed(row.mean)} (CI {_signed(row.ci_low)} to {_signed(row.ci_high)}), rose for "
        f"{row.share_rose:.0%} of {row.n} pieces</li>"
        for row in exploits
    )
    return (f"<div class=warning><p><b>GRPO will likely exploit this:</b> these rewards rise, with their "
            f"confidence interval above 0, under a change that makes the music worse (exploit probes: "
            f"{probes}).</p><ul>{items}</ul></div>")


def _audio_table(audio_examples: Sequence[AudioExample]) -> str:
    """Before/after players for a few pieces, so that a reader can hear what each change does."""
    def player(src: str) -> str:
        return f'<audio controls preload=none src="{html.escape(src)}"></audio>'

    body = [[html.escape(piece), html.escape(change), player(before), player(after)]
            for piece, change, before, after in audio_examples]
    return _html_table(["piece", "change", "before", "after"], body)


def write_html(rows: Sequence[AuditRow], path: str | Path, heatmap_src: str,
               audio_examples: Sequence[AudioExample] = (), exploit_probes: Collection[str] = EXPLOIT_PROBES,
               title: str = "Reward audit") -> None:
    """A self-contained HTML page: the exploit warning, the heatmap, the table and the before/after players.

    ``heatmap_src`` and the wav paths are relative to the page's folder, so the folder opens anywhere offline.
    Every name is escaped, so a reward or change called ``<b>`` shows as written.
    """
    table = _html_table([html.escape(cell) for cell in TABLE_HEADER],
                        [[html.escape(cell) for cell in _table_cells(row)] for row in rows])
    parts = [
        "<!DOCTYPE html><html><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.warning{background:#fdd;border:2px solid #c00;padding:0 1em}"
        ".clear{background:#dfd;padding:0.5em 1em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _exploit_warning(rows, exploit_probes),
        "<h2>Mean change per reward and change</h2>",
        f'<img src="{html.escape(heatmap_src)}" alt="heatmap of the mean reward changes">',
        "<h2>Paired changes (after - before)</h2>",
        table,
    ]
    if audio_examples:
        parts += ["<h2>Listen: before and after</h2>", _audio_table(audio_examples)]
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts) + "\n", encoding="utf-8")
