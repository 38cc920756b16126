"""Build an offline single-track piano MIDI corpus from the music21 corpus installed with the venv.

Why: a machine without a network can download no MIDI dataset, but music21's wheel ships a substantial score
collection (about 3,100 files: Bach chorales, quartets, folk-song collections, early polyphony). Each work is turned
into one program-0 piano track and saved as a ``.mid`` file, so ``pretrain.py`` can train on this folder exactly as
it would on any other folder of MIDI (MAESTRO, ...).

Design choices:
- Scores are built directly as ``symusic.Score`` from the flattened notes; music21's own MIDI writer stalls on
  tunes taken from ABC opuses.
- The encodings have one velocity everywhere, but SMART prompts contain ``Velocity_*`` tokens, so every work gets a
  seeded synthetic dynamic: a smooth phrase-level curve plus downbeat/top-voice accents and per-note jitter.
- Keyboard-like material (Bach, quartets, piano pieces) is small, so monophonic folk tunes and Renaissance vocal
  polyphony are capped per collection to keep keyboard-like material a large share of the corpus.
- The conversion is resumable: ``manifest.jsonl`` gets one line per work (converted or skipped, and why) and
  one line per finished source file, which is skipped on the next run.

Usage: ``python corpus.py`` (defaults below), ``python corpus.py --folk-cap 0 --renaissance-cap 100``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import music21
import numpy as np
import symusic
from tqdm import tqdm

CORPUS_ROOT = Path(music21.__file__).parent / "corpus"
SCORE_SUFFIXES = {".krn", ".abc", ".mxl", ".xml", ".musicxml"}
TPQ = 480  # ticks per quarter note of the written MIDI files
DEFAULT_QPM = 120.0  # tempo when a score gives none
PIANO_LOW, PIANO_HIGH = 21, 108  # the REMI pitch range (88 keys)

# Collections, grouped by how piano-like their texture is (each collection's texture is noted beside it).
KEYBOARD = [
    "bach", "beethoven", "mozart", "haydn", "schumann_robert", "schumann_clara", "chopin", "joplin", "beach",
    "schubert", "weber", "handel", "verdi", "corelli", "cpebach", "webern", "schoenberg", "liliuokalani",
    "johnson_j_r",
]
FOLK = ["essenFolksong", "oneills1850"]
RENAISSANCE = ["palestrina"]

# Licence terms per collection, for the model card (from music21's corpus licence files and file headers).
LICENCE_NOTES = {
    "essenFolksong": "Essen folksong database (ABC by Seymour Schlien): non-commercial distribution and use only",
    "palestrina": "Humdrum encodings 'Copyright 2000, John Miller' (encoded by Craig Sapp); research use",
    "oneills1850": "O'Neill's Music of Ireland (1850), public-domain book; ABC encoding distributed with music21",
}
DEFAULT_LICENCE = "public-domain work; encoding distributed with music21 (may carry non-commercial terms)"


@dataclass(frozen=True)
class Selection:
    """Which collections to convert, and the most works to take from each capped group."""

    keyboard: tuple[str, ...]
    folk: tuple[str, ...]
    renaissance: tuple[str, ...]
    folk_cap: int
    renaissance_cap: int

    def cap(self, collection: str) -> int | None:
        """Per-collection work cap (None = all); a group's cap is split evenly over its collections."""
        for group, cap in ((self.folk, self.folk_cap), (self.renaissance, self.renaissance_cap)):
            if collection in group:
                return math.ceil(cap / len(group))
        return None

    def collections(self) -> list[str]:
        return [*self.keyboard, *self.folk, *self.renaissance]


def source_files(collection: str, seed: int) -> list[Path]:
    """Score files of one collection in a seeded order, so a capped collection samples across sub-repertoires."""
    files = sorted(p for p in (CORPUS_ROOT / collection).rglob("*") if p.suffix in SCORE_SUFFIXES)
    order = np.random.default_rng([seed, zlib.crc32(collection.encode())]).permutation(len(files))
    return [files[i] for i in order]


def parse_works(path: Path) -> list[music21.stream.Score]:
    """Parse a file into its works: an ABC opus holds many tunes, other files hold one score."""
    parsed = music21.converter.parse(path)
    if isinstance(parsed, music21.stream.Opus):
        return list(parsed.scores)
    return [parsed]


def _fit_pitch(midi: int) -> int:
    """Move a pitch by octaves into the 88-key range (the tokenizer has no pitches outside it)."""
    while midi < PIANO_LOW:
        midi += 12
    while midi > PIANO_HIGH:
        midi -= 12
    return midi


def _ticks(quarters: float) -> int:
    return int(round(float(quarters) * TPQ))


def score_events(work: music21.stream.Score) -> tuple[np.ndarray, list[tuple[int, int, int]], list[tuple[int, float]]]:
    """Notes as an (n, 3) array of (onset tick, duration tick, pitch), plus time signatures and tempos.

    Grace notes (zero duration) and unpitched elements are dropped; duplicate meta events (one per part) are merged
    and repeated equal tempos dropped, so the token stream carries only real tempo changes.
    """
    flat = work.stripTies().flatten()
    notes = [
        (_ticks(el.offset), _ticks(el.quarterLength), _fit_pitch(p.midi))
        for el in flat.notes
        if el.quarterLength > 0
        for p in getattr(el, "pitches", ())
    ]
    time_sigs = {
        _ticks(ts.offset): (ts.numerator, ts.denominator) for ts in flat.getElementsByClass(music21.meter.TimeSignature)
    }
    tempos = {}
    for mark in flat.getElementsByClass(music21.tempo.MetronomeMark):
        qpm = mark.getQuarterBPM()
        if qpm:
            tempos[_ticks(mark.offset)] = float(qpm)
    ordered = sorted(tempos.items())
    changes = [(t, qpm) for i, (t, qpm) in enumerate(ordered) if i == 0 or qpm != ordered[i - 1][1]]
    note_array = np.array(sorted(set(notes)), dtype=np.int64).reshape(-1, 3)
    return note_array, [(t, n, d) for t, (n, d) in sorted(time_sigs.items())], changes


def synthetic_velocities(notes: np.ndarray, bar_ticks: int, rng: np.random.Generator) -> np.ndarray:
    """Plausible dynamics for constant-velocity scores.

    A piece-level base loudness, a smooth phrase curve (a few low-frequency sinusoids over 2-16 bars), accents on
    bar downbeats and on the highest note of each onset (the melody in chorale/quartet textures), and per-note
    jitter, so the model sees the whole Velocity vocabulary used in prompts with musical structure behind it.
    """
    onsets, pitches = notes[:, 0], notes[:, 2]
    beats = onsets / TPQ
    base = rng.uniform(40, 80)
    curve = np.zeros(len(notes))
    for _ in range(3):
        period_beats = rng.uniform(2, 16) * bar_ticks / TPQ
        curve += rng.uniform(4, 10) * np.sin(2 * np.pi * beats / period_beats + rng.uniform(0, 2 * np.pi))
    downbeat = (onsets % bar_ticks == 0) * rng.uniform(3, 8)
    top_of_onset = np.zeros(len(notes), dtype=bool)
    order = np.lexsort((-pitches, onsets))
    first_at_onset = np.r_[True, onsets[order][1:] != onsets[order][:-1]]
    top_of_onset[order[first_at_onset]] = True
    melody = top_of_onset * rng.uniform(2, 8)
    jitter = rng.normal(0, 4, len(notes))
    return np.clip(np.round(base + curve + downbeat + melody + jitter), 1, 127).astype(np.int64)


def build_score(
    notes: np.ndarray, time_sigs: list[tuple[int, int, int]], tempos: list[tuple[int, float]], rng: np.random.Generator
) -> symusic.Score:
    """One program-0 piano track with the work's meter and tempo (4/4 and 120 qpm when the score gives none)."""
    score = symusic.Score(TPQ)
    time_sigs = time_sigs or [(0, 4, 4)]
    if time_sigs[0][0] != 0:
        time_sigs = [(0, *time_sigs[0][1:]), *time_sigs]
    tempos = tempos if tempos and tempos[0][0] == 0 else [(0, DEFAULT_QPM), *tempos]
    for tick, num, den in time_sigs:
        score.time_signatures.append(symusic.TimeSignature(tick, num, den))
    for tick, qpm in tempos:
        score.tempos.append(symusic.Tempo(tick, qpm))
    first_num, first_den = time_sigs[0][1:]
    velocities = synthetic_velocities(notes, TPQ * 4 * first_num // first_den, rng)
    track = symusic.Track("Piano", program=0, is_drum=False)
    for (onset, duration, pitch), velocity in zip(notes.tolist(), velocities.tolist()):
        track.notes.append(symusic.Note(onset, max(duration, 1), pitch, velocity))
    score.tracks.append(track)
    return score


def work_seed(seed: int, work_id: str) -> np.random.Generator:
    """A per-work generator: the same work gets the same dynamics whatever else is converted."""
    return np.random.default_rng([seed, zlib.crc32(work_id.encode())])


def read_manifest(path: Path) -> tuple[dict[str, dict], set[str]]:
    """Work records by id, and the source files already finished (skipped wholesale on resume)."""
    works, done_files = {}, set()
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "file":
                done_files.add(record["file"])
            else:
                works[record["id"]] = record
    return works, done_files


class Converter:
    """Converts works into ``out/midi`` and appends their records to ``out/manifest.jsonl``."""

    def __init__(self, out: Path, seed: int):
        self.out, self.seed = out, seed
        self.manifest_path = out / "manifest.jsonl"
        self.works, self.done_files = read_manifest(self.manifest_path)
        self.converted = Counter(r["collection"] for r in self.works.values() if r["status"] == "ok")
        (out / "midi").mkdir(parents=True, exist_ok=True)

    def _append(self, record: dict) -> None:
        with self.manifest_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _record_work(self, record: dict) -> None:
        """Keep a work's outcome in memory (caps, summary) and in the manifest (resuming)."""
        self.works[record["id"]] = record
        self.converted[record["collection"]] += record["status"] == "ok"
        self._append(record)

    def convert_work(self, work: music21.stream.Score, work_id: str, collection: str) -> None:
        """Convert one work to ``midi/<id>.mid`` and record the outcome."""
        record = {"kind": "work", "id": work_id, "collection": collection}
        try:
            notes, time_sigs, tempos = score_events(work)
        except Exception as error:  # music21 raises many types on malformed encodings; record and move on
            record.update(status="skipped", reason=f"{type(error).__name__}: {error}"[:200])
        else:
            if len(notes) == 0:
                record.update(status="skipped", reason="no pitched notes")
            else:
                rel = Path("midi") / (work_id.replace("/", "__").replace("#", "_") + ".mid")
                build_score(notes, time_sigs, tempos, work_seed(self.seed, work_id)).dump_midi(self.out / rel)
                end = notes[:, 0] + notes[:, 1]
                record.update(status="ok", path=str(rel), notes=len(notes), quarters=float(end.max() / TPQ))
        self._record_work(record)

    def convert_file(self, path: Path, collection: str, cap: int | None) -> None:
        """Convert the works of one source file, stopping at the collection's cap."""
        rel = str(path.relative_to(CORPUS_ROOT))
        try:
            works = parse_works(path)
        except Exception as error:  # unparsable file (e.g. unsupported encoding): one skipped record
            self._record_work({"kind": "work", "id": rel, "collection": collection, "status": "skipped",
                               "reason": f"parse failed: {type(error).__name__}: {error}"[:200]})
            works = []
        for index, work in enumerate(works):
            if cap is not None and self.converted[collection] >= cap:
                return  # file left unfinished on purpose: a larger cap on a later run continues it
            work_id = f"{rel}#{index}"
            if work_id not in self.works:
                self.convert_work(work, work_id, collection)
        self.done_files.add(rel)
        self._append({"kind": "file", "file": rel, "collection": collection, "works": len(works)})

    def run(self, selection: Selection) -> None:
        plan = [(c, p) for c in selection.collections() for p in source_files(c, self.seed)]
        for collection, path in tqdm(plan, desc="music21 files", unit="file"):
            cap = selection.cap(collection)
            if str(path.relative_to(CORPUS_ROOT)) in self.done_files:
                continue
            if cap is not None and self.converted[collection] >= cap:
                continue
            self.convert_file(path, collection, cap)


def summarize(works: dict[str, dict], selection: Selection) -> dict:
    """Totals over the manifest (this run and earlier ones), restricted to the selected collections."""
    selected = set(selection.collections())
    ok = [r for r in works.values() if r["status"] == "ok" and r["collection"] in selected]
    skipped = [r for r in works.values() if r["status"] == "skipped" and r["collection"] in selected]
    per_collection = Counter(r["collection"] for r in ok)
    notes_per_collection = Counter()
    for r in ok:
        notes_per_collection[r["collection"]] += r["notes"]
    keyboard_notes = sum(notes_per_collection[c] for c in selection.keyboard)
    total_notes = sum(notes_per_collection.values())
    return {
        "pieces": len(ok),
        "notes": total_notes,
        "skipped": len(skipped),
        "skip_reasons": Counter(r["reason"].split(":")[0] for r in skipped).most_common(5),
        "keyboard_note_share": round(keyboard_notes / max(total_notes, 1), 3),
        "collections": {
            c: {"pieces": per_collection[c], "notes": notes_per_collection[c],
                "licence": LICENCE_NOTES.get(c, DEFAULT_LICENCE)}
            for c in selection.collections() if per_collection[c]
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/corpus"), help="output folder (midi/ + manifest)")
    parser.add_argument("--keyboard", nargs="*", default=KEYBOARD, help="collections taken whole")
    parser.add_argument("--folk", nargs="*", default=FOLK, help="monophonic folk collections (capped)")
    parser.add_argument("--renaissance", nargs="*", default=RENAISSANCE, help="vocal polyphony collections (capped)")
    parser.add_argument("--folk-cap", type=int, default=1200, help="most folk works in total")
    parser.add_argument("--renaissance-cap", type=int, default=250, help="most Renaissance works in total")
    parser.add_argument("--seed", type=int, default=0, help="seeds file order and velocity curves")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    selection = Selection(tuple(args.keyboard), tuple(args.folk), tuple(args.renaissance),
                          args.folk_cap, args.renaissance_cap)
    start = time.time()
    converter = Converter(args.out, args.seed)
    converter.run(selection)
    summary = summarize(converter.works, selection)
    summary["seconds_this_run"] = round(time.time() - start, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
