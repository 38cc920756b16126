"""Audit a reward before training: what does it respond to, before spending GPU hours on it?

    python audit.py models/piano-tiny --out audit/                      # 16 sampled pieces, weight-free rewards
    python audit.py artefacts/runs/<run> --out audit/ --audiobox checkpoint.pt --rewards note_density
    python audit.py samples/ --out audit/ --changes drop_half first_bar_repeated --other-soundfonts none

SYSTEM is one ``[NAME=]PATH`` as in evaluation.py: a model folder or checkpoint (pieces are sampled), a SMART run
folder (pieces sampled from its tuned model, rewards built from its saved constants) or a folder of MIDI files
(its first ``--n`` readable files, cropped to ``--max-beats`` as the training reward crops).

Each piece is scored as it is, rendered with ``--soundfont``; then every change of
smart_utils/perturbations.py is applied to it and the changed piece is rendered and scored again, and the
unchanged piece is re-rendered with every other soundfont (the ``soundfont:<label>`` changes). The paired
differences (after - before) give, per reward and change, the mean change, its bootstrap interval and the share of
pieces whose reward rose (smart_utils/audit_stats.py). A reward that rises under an exploit probe (a change that
makes any piece worse, such as looping the first bar) is flagged: GRPO will find that direction.

``--out`` gets audit.md, audit.csv, heatmap.png, index.html (open it offline), audio/ (before/after clips of the
first ``--examples`` pieces) and, for a model, samples/ (the pieces audited).
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import symusic

from configurator import smart_constants
from processors import (
    STANDALONE_REWARDS,
    Processor,
    TinySoundfontSynthProcessor,
    build_reward_processors,
    known_rewards,
    reward_class,
)
from smart_utils.audit_stats import (
    AudioExample,
    AuditRow,
    likely_exploits,
    markdown_table,
    paired_change,
    write_csv,
    write_heatmap,
    write_html,
)
from smart_utils.devices import compute_device
from smart_utils.evaluation import (
    audio_scores,
    held_out_soundfonts,
    is_model,
    is_run_dir,
    load_audiobox,
    sample_folder,
    slug,
    split_spec,
)
from smart_utils.features import AES_AXES
from smart_utils.files import MIDI_SUFFIXES, list_midi_files, write_wav
from smart_utils.generation import GenerationSettings, add_generation_arguments, settings_from_arguments
from smart_utils.model_paths import is_hub_id
from smart_utils.perturbations import EXPLOIT_PROBES, PERTURBATIONS
from smart_utils.records import crop_score
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont, soundfont_label

DEFAULT_PIECES = 16  # enough for the bootstrap interval to mean something, a few minutes on a CPU
SOUNDFONT_CHANGE = "soundfont:"  # prefix of the changes that re-render the unchanged piece with another soundfont
# Changes besides the exploit probes that get before/after players: the two a listener hears at once, and which
# tell a reward that likes density (doubling) or speed (tempo) from one that likes music.
LISTENING_CHANGES = ("octave_doubling", "tempo_x2")
ORIGINAL = "original"  # the clip name of a piece as it is


class AuditError(ValueError):
    """Bad input, found before any piece is sampled or scored; the command line prints it as a usage error."""


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The audit's options; the sampling options are evaluation.py's, with a smaller default ``--n``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", help="[NAME=]PATH: model folder, checkpoint, run folder or MIDI folder")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--rewards", nargs="+", default=list(STANDALONE_REWARDS),
                        help="rewards to audit, any processor's REWARDS (default: the weight-free %(default)s)")
    parser.add_argument("--audiobox", default=None,
                        help="Audiobox checkpoint.pt, or 'hub': also audit the axes CE, CU, PC, PQ (as reward/10)")
    parser.add_argument("--changes", nargs="+", default=["all"],
                        help=f"changes to apply: 'all' or names from {', '.join(PERTURBATIONS)}")
    parser.add_argument("--soundfont", default="timgm6mb", help="soundfont every piece is rendered with first")
    parser.add_argument("--other-soundfonts", nargs="+", default=["all"],
                        help="soundfonts to re-render the unchanged pieces with: 'all' (every known one installed), "
                             "'none', or names/paths")
    parser.add_argument("--examples", type=int, default=3,
                        help="pieces with before/after players in index.html (default %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for sampling and Audiobox (default: GPU if any)")
    add_generation_arguments(parser)  # --n, --seed (also the changes' seed), --max-beats, ...
    parser.set_defaults(n=DEFAULT_PIECES)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Checks: every bad name is found before the minutes of sampling and rendering


def chosen_changes(requested: Sequence[str]) -> list[str]:
    """The changes to apply, in PERTURBATIONS' order (neutral first, as the report reads best), whatever order
    they were given in; 'all' means every one."""
    if "all" in requested:
        return list(PERTURBATIONS)
    unknown = [name for name in requested if name not in PERTURBATIONS]
    if unknown:
        raise AuditError(f"unknown change(s) {unknown}; known: all, {', '.join(PERTURBATIONS)}")
    return [name for name in PERTURBATIONS if name in requested]


def chosen_rewards(requested: Sequence[str], audiobox: str | None, constants: Mapping[str, Any]) -> list[str]:
    """The rewards to audit: the named ones, then the Audiobox axes when a checkpoint is given.

    An axis named without ``--audiobox`` is an error rather than a silent gap: the audit would have no scorer for it.
    """
    names = list(dict.fromkeys(requested))
    try:
        unknown = [name for name in names if reward_class(name, constants) is None]
    except ValueError as error:  # two processors write one name
        raise AuditError(str(error)) from error
    if unknown:
        raise AuditError(f"unknown reward(s) {unknown}; known: {', '.join(known_rewards(constants))}")
    axes_named = [name for name in names if name in AES_AXES]
    if axes_named and audiobox is None:
        raise AuditError(f"{axes_named} are Audiobox axes: give --audiobox checkpoint.pt (or --audiobox hub)")
    if audiobox is not None:
        names += [axis for axis in AES_AXES if axis not in names]
    return names


def chosen_soundfonts(main: str, others: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The main soundfont's path and label -> path of the others ('all': every known one installed here)."""
    try:
        main_path = resolve_soundfont(main)
        if "none" in others:
            return main_path, {}
        return main_path, held_out_soundfonts(None if "all" in others else others, main_path)
    except SoundfontNotFound as error:
        raise AuditError(str(error)) from error


def build_scorers(rewards: Sequence[str], audiobox: str | None, constants: Mapping[str, Any],
                  device: str | None) -> list[Processor]:
    """The processors that write ``rewards``, built from the run's (or smart.py's) constants, Audiobox last.

    Audiobox is loaded here, before any piece exists, so that a missing checkpoint fails in seconds.
    """
    scorers = build_reward_processors([name for name in rewards if name not in AES_AXES], constants,
                                      compute_device(device))
    if audiobox is not None:
        scorer, why_not = load_audiobox(audiobox, device)
        if scorer is None:
            raise AuditError(f"--audiobox {audiobox}: {why_not}")
        scorers.append(scorer)
    return scorers


# ---------------------------------------------------------------------------------------------------------------
# Pieces


def system_name_and_path(spec: str) -> tuple[str, str]:
    """``[NAME=]PATH`` -> a folder-safe name and the path, which must exist (or be a hub model id)."""
    name, path = split_spec(spec)
    if not Path(path).exists() and not is_hub_id(path):
        raise AuditError(f"system {spec!r}: {path} does not exist")
    if Path(path).is_file() and Path(path).suffix.lower() in MIDI_SUFFIXES:
        raise AuditError(f"system {spec!r} is one MIDI file; give the folder it is in (an audit needs several pieces)")
    return slug(name or Path(path).resolve().name), path


def read_pieces(folder: Path, n: int, max_beats: int | None) -> list[tuple[str, symusic.Score]]:
    """The first ``n`` readable MIDI files of ``folder`` (sorted, so a rerun audits the same pieces) as
    (label, score), cropped to ``max_beats`` as the training reward crops; unreadable files are reported, skipped."""
    pieces = []
    files = list_midi_files(folder)
    for path in files:
        if len(pieces) == n:
            break
        try:
            score = symusic.Score(str(path))
        except Exception as error:  # symusic raises several types on corrupt files
            print(f"[audit] skipped unreadable {path}: {error}")
            continue
        label = path.relative_to(folder).with_suffix("").as_posix()
        pieces.append((label, crop_score(score, max_beats) if max_beats is not None else score))
    if not pieces:
        raise AuditError(f"no readable MIDI file in {folder} ({len(files)} file(s) with a MIDI suffix found)")
    return pieces


# ---------------------------------------------------------------------------------------------------------------
# Scoring


ClipHandler = Callable[[int, np.ndarray], None]


def reward_table(scores: list[symusic.Score], synth: TinySoundfontSynthProcessor, scorers: list[Processor],
                 rewards: Sequence[str], desc: str, on_clip: ClipHandler | None = None) -> np.ndarray:
    """Rewards of every score as an array (pieces, rewards): rendered and scored as evaluation.py scores them.

    Audiobox axes are taken as reward/10, the value GRPO sees, so every row of the audit is on its reward's own
    [0, 1] scale; a reward that wrote nothing for a piece is NaN (paired_change drops that pair and counts it).
    """
    values = audio_scores(scores, synth, scorers, desc, on_clip)

    def value(piece: dict[str, float], reward: str) -> float:
        return piece.get(reward, np.nan) / 10 if reward in AES_AXES else piece.get(f"reward_{reward}", np.nan)

    return np.array([[value(piece, reward) for reward in rewards] for piece in values], dtype=float)


def changed_scores(scores: list[symusic.Score], change: str, seed: int) -> list[symusic.Score]:
    """Every piece with ``change`` applied, each from its own generator seeded by (seed, piece, change).

    The change's index is its place in PERTURBATIONS, not in this audit's selection, so that auditing a subset
    of the changes gives exactly the pieces a full audit changes.
    """
    change_index = list(PERTURBATIONS).index(change)
    return [PERTURBATIONS[change](score, np.random.default_rng([seed, piece_index, change_index]))
            for piece_index, score in enumerate(scores)]


def clip_writer(folder: Path, labels: Sequence[str], clip: str, examples: int, sample_rate: int) -> ClipHandler:
    """An ``on_clip`` that keeps the first ``examples`` pieces' audio as ``folder/<piece>_<clip>.wav``."""
    def write(index: int, audio: np.ndarray) -> None:
        if index < examples:
            write_wav(folder / clip_name(labels[index], clip), audio, sample_rate)

    return write


def clip_name(label: str, clip: str) -> str:
    """The file name of one piece's clip: folder-safe and URL-safe ("transpose+2" -> "transpose_2")."""
    return f"{slug(label)}_{slug(clip)}.wav"


def listening_changes(changes: Sequence[str]) -> list[str]:
    """The changes that get players: every exploit probe audited, the two telling others (else the first two
    non-probes), and the first other soundfont, so that each warning can be heard."""
    probes = [change for change in changes if change in EXPLOIT_PROBES]
    perturbations = [change for change in changes if change in PERTURBATIONS and change not in EXPLOIT_PROBES]
    others = [change for change in LISTENING_CHANGES if change in perturbations] or perturbations[:2]
    soundfonts = [change for change in changes if change.startswith(SOUNDFONT_CHANGE)][:1]
    return probes + others + soundfonts


def audit_rows(before: np.ndarray, after: Mapping[str, np.ndarray], rewards: Sequence[str],
               seed: int) -> list[AuditRow]:
    """One row per reward and change: the paired change of that reward's column, the bootstrap seeded so that
    a rerun reports the same intervals."""
    return [AuditRow.from_paired(reward, change, paired_change(before[:, k], values[:, k], seed=seed))
            for k, reward in enumerate(rewards) for change, values in after.items()]


# ---------------------------------------------------------------------------------------------------------------
# Reports


def exploit_paragraph(rows: Sequence[AuditRow]) -> str:
    """The markdown warning: every reward that rises, interval above 0, under a change that makes music worse."""
    exploits = likely_exploits(rows)
    if not exploits:
        return (f"No reward rises under an exploit probe ({', '.join(sorted(EXPLOIT_PROBES))}) with its confidence "
                "interval above 0.\n")
    lines = [f"- **{row.reward}** under **{row.change}**: mean change {row.mean:+.4g} (CI {row.ci_low:+.4g} to "
             f"{row.ci_high:+.4g}), rose for {row.share_rose:.0%} of {row.n} pieces" for row in exploits]
    return ("**Warning: GRPO will exploit this.** These rewards rise, with their confidence interval above 0, under "
            "a change that makes any piece worse:\n\n" + "\n".join(lines) + "\n")


def write_markdown_report(rows: Sequence[AuditRow], path: Path, title: str, settings: Sequence[str]) -> None:
    """audit.md: how the audit was run, the exploit warning, the heatmap and the table, readable in any viewer."""
    text = "\n".join([f"# {title}", "", *(f"- {line}" for line in settings), "", exploit_paragraph(rows),
                      "![mean change per reward and change](heatmap.png)", "", markdown_table(rows)])
    path.write_text(text, encoding="utf-8")


def write_reports(rows: list[AuditRow], out: Path, title: str, settings: Sequence[str],
                  examples: Sequence[AudioExample]) -> Path:
    """audit.md, audit.csv, heatmap.png and index.html in ``out``; returns the page's path."""
    write_markdown_report(rows, out / "audit.md", title, settings)
    write_csv(rows, out / "audit.csv")
    write_heatmap(rows, out / "heatmap.png")
    page = out / "index.html"
    write_html(rows, page, "heatmap.png", examples, title=title)
    add_settings_to_page(page, settings)
    return page


def add_settings_to_page(page: Path, settings: Sequence[str]) -> None:
    """Put the settings under the page's title (write_html knows none) and fit the heatmap, which is wider than a
    window with all the changes, to the page's width."""
    settings_html = "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in settings) + "</ul>"
    text = page.read_text(encoding="utf-8")
    text = text.replace("</style>", "img{max-width:100%;height:auto}</style>", 1)
    page.write_text(text.replace("</h1>", "</h1>" + settings_html, 1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# The audit


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the audit the arguments describe; return the path of its index.html. Bad input exits with status 2
    and a message naming what is known, before any sampling or rendering."""
    args = parse_arguments(argv)
    try:
        return run_audit(args)
    except AuditError as error:
        print(f"audit.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def run_audit(args: argparse.Namespace) -> Path:
    """The audit top to bottom: check, collect pieces, score before, score after each change, report."""
    started = time.monotonic()
    if args.examples < 0 or args.n < 1:
        raise AuditError(f"--n must be at least 1 and --examples at least 0 (got {args.n} and {args.examples})")
    name, path = system_name_and_path(args.system)
    constants = smart_constants(path if is_run_dir(Path(path)) else None)
    changes = chosen_changes(args.changes)
    rewards = chosen_rewards(args.rewards, args.audiobox, constants)
    main_soundfont, other_soundfonts = chosen_soundfonts(args.soundfont, args.other_soundfonts)
    scorers = build_scorers(rewards, args.audiobox, constants, args.device)

    out = Path(args.out)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    settings: GenerationSettings = settings_from_arguments(args)
    pieces = read_pieces(sample_folder(name, path, out, settings, args.device), args.n, args.max_beats)
    labels, scores = [label for label, _ in pieces], [score for _, score in pieces]
    sample_rate, max_seconds = constants["SAMPLE_RATE"], constants["MAX_AUDIO_DURATION"]
    examples = min(args.examples, len(scores))
    soundfont_changes = {f"{SOUNDFONT_CHANGE}{label}": sf_path for label, sf_path in other_soundfonts.items()}
    heard = listening_changes(changes + list(soundfont_changes))
    print(f"[audit] {len(scores)} pieces x {len(changes) + len(soundfont_changes)} changes x {len(rewards)} rewards")

    synth = TinySoundfontSynthProcessor(main_soundfont, sample_rate, max_seconds)
    before = reward_table(scores, synth, scorers, rewards, "as is",
                          clip_writer(audio_dir, labels, ORIGINAL, examples, sample_rate))
    after: dict[str, np.ndarray] = {}
    for step, change in enumerate(changes + list(soundfont_changes), 1):
        print(f"[audit] {step}/{len(changes) + len(soundfont_changes)} {change}", flush=True)
        on_clip = clip_writer(audio_dir, labels, change, examples if change in heard else 0, sample_rate)
        if change in soundfont_changes:
            other_synth = TinySoundfontSynthProcessor(soundfont_changes[change], sample_rate, max_seconds)
            after[change] = reward_table(scores, other_synth, scorers, rewards, change, on_clip)
        else:
            after[change] = reward_table(changed_scores(scores, change, args.seed), synth, scorers, rewards, change,
                                         on_clip)

    rows = audit_rows(before, after, rewards, args.seed)
    audio_examples = [(labels[k], change, f"audio/{clip_name(labels[k], ORIGINAL)}",
                       f"audio/{clip_name(labels[k], change)}") for change in heard for k in range(examples)]
    source = "MIDI files in" if not is_model(path) else "sampled from"
    report_settings = [
        f"{len(scores)} pieces {source} {path} (seed {args.seed}, cropped to {args.max_beats} beats)",
        f"rendered with {soundfont_label(args.soundfont)} at {sample_rate} Hz, at most {max_seconds} s; other "
        f"soundfonts: {', '.join(other_soundfonts) or 'none'}",
        f"change = reward after - reward before, per piece; 95% bootstrap interval of the mean; exploit probes: "
        f"{', '.join(sorted(EXPLOIT_PROBES))}",
        f"audit took {time.monotonic() - started:.0f} s",
    ]
    page = write_reports(rows, out, f"Reward audit: {name}", report_settings, audio_examples)
    print(f"[audit] report: {page.resolve()}")
    return page


if __name__ == "__main__":
    main()
