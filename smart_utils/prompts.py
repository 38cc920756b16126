"""The four prompt sources of the original SMART, as prompt strings of REMI token names.

Prompts are strings (``"Bar_None TimeSig_6/8 Position_0 Tempo_100.0"``) because TRL 1.16 tokenizes prompt text
with the processing class; ``smart_utils.tokenizer.MidiTokBridge`` maps each name to its miditok id.

- ``procedural``: Bar, random TimeSig, Position_0, random Tempo, then a random starting note (Pitch, Velocity,
  Duration): 7 tokens, the public smart.py default.
- ``procedural-no-starting-note``: the first 4 of those, the paper's main setting.
- ``no prompt``: BOS alone.
- ``dataset``: Bar, the first TimeSig and Tempo of a piece from a folder of MIDI files, Position_0: one prompt per
  piece for the first ``n`` pieces of a seeded shuffle, as the original's ``shuffle().select(range(n))``.

For a multi-track tokenizer (``smart_utils.tokenizer.writes_tracks_in_one_stream``) every prompt but BOS starts with a
head of distinct ``Program_*`` tokens (the instruments asked for, ``Program_-1`` = drums) before its first Bar: 1 to
MAX_PROMPT_PROGRAMS random programs for the procedural sources, the piece's own (in order of first note) for dataset
prompts, and the procedural starting note is played by the head's first program. The original's public smart.py only
had piano prompts; its multi-track rewards (multitrack.py) read the prompt's programs from the tokens before the first
Bar, which is the layout used here.
"""

from __future__ import annotations

import random
from pathlib import Path

import miditok
import symusic

from smart_utils.files import list_midi_files
from smart_utils.tokenizer import writes_tracks_in_one_stream

PROMPT_SOURCES = ("procedural", "procedural-no-starting-note", "no prompt", "dataset")
MAX_PROMPT_PROGRAMS = 4  # instruments a procedural multi-track prompt asks for, at most


def tokens_of_kind(remi: miditok.MusicTokenizer, kind: str) -> list[str]:
    """All vocabulary entries of one REMI token type, e.g. every ``Tempo_*``."""
    return [token for token in remi.vocab if token.startswith(kind + "_")]


def _procedural(remi: miditok.MusicTokenizer, rng: random.Random, with_note: bool) -> list[str]:
    head = []  # no random draw for a piano tokenizer, so piano prompts stay what they were
    if writes_tracks_in_one_stream(remi):
        head = rng.sample(tokens_of_kind(remi, "Program"), rng.randint(1, MAX_PROMPT_PROGRAMS))
    time_signature, tempo = rng.choice(tokens_of_kind(remi, "TimeSig")), rng.choice(tokens_of_kind(remi, "Tempo"))
    tokens = head + ["Bar_None", time_signature, "Position_0", tempo]
    if with_note:
        tokens += head[:1] + [rng.choice(tokens_of_kind(remi, kind)) for kind in ("Pitch", "Velocity", "Duration")]
    return tokens


def dataset_prompt_tokens(remi: miditok.MusicTokenizer, midi_path: Path) -> list[str]:
    """Bar, first TimeSig, Position_0, first Tempo of a MIDI file, as the original's dataset prompts; for a
    multi-track tokenizer preceded by the piece's programs, each once, in the order they first play.

    A piece with no time signature or tempo event gets REMI's defaults (4/4, 120 qpm), because miditok adds them
    when it tokenizes such a file; a file miditok cannot read raises ``ValueError`` naming it.
    """
    try:
        score = symusic.Score(str(midi_path))
        tokens = remi.encode(score)
    except Exception as error:  # miditok and symusic raise many types on corrupt files
        raise ValueError(f"dataset prompt: cannot read MIDI file {midi_path}: {error}") from error
    sequence = tokens[0].tokens if isinstance(tokens, list) else tokens.tokens
    first = {kind: next((t for t in sequence if t.startswith(kind + "_")), None) for kind in ("TimeSig", "Tempo")}
    if first["TimeSig"] is None or first["Tempo"] is None:
        raise ValueError(f"dataset prompt: {midi_path} has no notes to take a time signature and tempo from")
    programs = dict.fromkeys(t for t in sequence if t.startswith("Program_"))
    head = list(programs) if writes_tracks_in_one_stream(remi) else []
    return head + ["Bar_None", first["TimeSig"], "Position_0", first["Tempo"]]


def dataset_prompts(remi: miditok.MusicTokenizer, files: list[Path], n: int, rng: random.Random) -> list[list[str]]:
    """Prompts of the first ``n`` distinct pieces of a seeded shuffle of ``files`` (unreadable files are skipped).

    The original shuffled its training split and took the first n pieces, so each prompt comes from a different
    piece. A folder with fewer usable pieces than ``n`` (where the original stops with an IndexError) gives every
    piece's prompt in turn, again and again, and says so.
    """
    order = list(files)
    rng.shuffle(order)
    chosen: list[list[str]] = []
    for path in order:
        if len(chosen) == n:
            break
        try:
            chosen.append(dataset_prompt_tokens(remi, path))
        except ValueError as error:
            print(f"[prompts] skipped: {error}")
    if not chosen:
        raise ValueError(f"no file of the {len(files)} MIDI files gave a prompt (see the skipped files above)")
    if len(chosen) < n:
        print(f"[prompts] only {len(chosen)} pieces give a prompt for {n} prompts: each piece's prompt is used "
              f"{n // len(chosen)}-{-(-n // len(chosen))} times")
    return [chosen[i % len(chosen)] for i in range(n)]


def build_prompts(
    source: str, remi: miditok.MusicTokenizer, n: int, seed: int, midi_dir: str | None = None
) -> list[str]:
    """Make ``n`` prompt strings from one source, reproducibly for a given seed."""
    rng = random.Random(seed)
    if source == "procedural":
        return [" ".join(_procedural(remi, rng, with_note=True)) for _ in range(n)]
    if source == "procedural-no-starting-note":
        return [" ".join(_procedural(remi, rng, with_note=False)) for _ in range(n)]
    if source == "no prompt":
        return ["BOS_None"] * n
    if source == "dataset":
        if not midi_dir:
            raise ValueError("PROMPT_SOURCE='dataset' needs PROMPT_MIDI_DIR: a folder of MIDI files")
        files = list_midi_files(midi_dir)
        if not files:
            raise ValueError(f"PROMPT_MIDI_DIR={midi_dir!r} holds no .mid/.midi files")
        return [" ".join(tokens) for tokens in dataset_prompts(remi, files, n, rng)]
    raise ValueError(f"PROMPT_SOURCE={source!r} is not one of {PROMPT_SOURCES}")
