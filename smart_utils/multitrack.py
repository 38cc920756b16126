"""What the multi-track prompt-adherence rewards read (their processors are in processors.py): does the output use
the instruments the prompt asked for?

A multi-track prompt names its instruments as ``Program_*`` tokens in its head, before the first ``Bar_None``
(smart_utils/prompts.py writes them so; ``Program_-1`` is miditok's drums). Two rewards from erl-j/SMART compare them
with the output, both in [0, 1]:

- ``ProgramPromptAdherenceRewardProcessor`` (reward ``programs_iou``): intersection over union of the *sets* of
  Program tokens in the head and in the body (every token after the first ``Bar_None``).
- ``TrackPromptAdherenceRewardProcessor``: a frequency-weighted IoU of the head's Program tokens (with their
  counts) against the decoded score's non-empty tracks (counted per program): sum of minima / sum of maxima.

The original wrote both under the one name ``programs_iou``. Here ``programs_iou`` is the token-set IoU, and the
track IoU is ``programs_iou_tracks`` (``TrackIoURewardProcessor``, a subclass that only renames it), so both can
be weighted in one run. Differences from the original, each a slip there that made the reward silently missing (0
in the weighted sum) or wrong on the miditok tokenizers this project runs:

- no ``Bar_None``, or no Program token on either side: the original raised (IndexError/ZeroDivisionError), caught
  it and wrote nothing; here the reward is 0.0 and the reason is logged in ``errors``;
- the track reward's head ended at the first ``Track_None``, a token of the original's own multi-track tokenizer
  that miditok's REMI has not; here the head ends there when the stream has one, else at the first ``Bar_None``;
- the track reward named drum tracks ``Program_Drums``; miditok's drums token is ``Program_-1``, so a drum track
  never matched a drum prompt; here both spellings mean drums.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import miditok
import symusic

from smart_utils.tokenizer import writes_tracks_in_one_stream

BAR = "Bar_None"
TRACK = "Track_None"  # the original's own tokenizer's track separator
PROGRAM = "Program_"
DRUMS = "Program_Drums"  # the original's name for drum tracks
MIDITOK_DRUMS = "Program_-1"  # miditok's drum program token


def program_key(token: str) -> str:
    """One name per instrument: miditok's drums token and the original's drum-track name are the same thing."""
    return DRUMS if token == MIDITOK_DRUMS else token


def track_program(track: symusic.Track) -> str:
    """The Program token name of a decoded track (drums: ``Program_Drums``), as the original names tracks."""
    return DRUMS if track.is_drum else f"{PROGRAM}{track.program}"


def programs(tokens: list[str]) -> list[str]:
    """The Program tokens of a token list, in order, with drums spelt one way."""
    return [program_key(token) for token in tokens if token.startswith(PROGRAM)]


def iou(counts_a: Counter[str], counts_b: Counter[str]) -> float:
    """Frequency-weighted intersection over union: sum of per-key minima / sum of maxima (sets: counts of 1)."""
    union = sum((counts_a | counts_b).values())
    return sum((counts_a & counts_b).values()) / union


PROGRAM_REWARDS = ("programs_iou", "programs_iou_tracks")


def checked_multitrack_setting(setting: bool | None, tokenizer: miditok.MusicTokenizer,
                               reward_names: Iterable[str]) -> bool:
    """smart.py's IS_MULTITRACK checked against the model: ``None`` takes it from the tokenizer
    (``smart_utils.tokenizer.writes_tracks_in_one_stream``); a value that contradicts the tokenizer, or a program
    reward for a model that writes no Program tokens, raises ``ValueError``. Either would otherwise decode every
    completion to an empty score, or give every completion the same reward, without stopping the run."""
    derived = writes_tracks_in_one_stream(tokenizer)
    if setting is not None and setting != derived:
        kind = "several tracks in one stream" if derived else "one track (no Program tokens in one stream)"
        raise ValueError(f"IS_MULTITRACK={setting} but the model's tokenizer writes {kind}; use "
                         f"IS_MULTITRACK={derived} or None (taken from the tokenizer)")
    weighted = sorted(set(reward_names) & set(PROGRAM_REWARDS))
    if weighted and not derived:
        raise ValueError(f"REWARD_WEIGHTS has {weighted}, which compare the prompt's Program tokens with the output's, "
                         "but the model's tokenizer has no Program tokens: every completion would score the same")
    return derived
