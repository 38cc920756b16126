"""Prompt-adherence rewards for multi-track models: does the output use the instruments the prompt asked for?

A multi-track prompt names its instruments as ``Program_*`` tokens in its head, before the first ``Bar_None``
(prompts.py writes them so; ``Program_-1`` is miditok's drums). Two rewards from erl-j/SMART compare them with the
output, both in [0, 1]:

- ``ProgramPromptAdherenceRewardProcessor`` (reward ``programs_iou``): intersection over union of the *sets* of
  Program tokens in the head and in the body (every token after the first ``Bar_None``).
- ``TrackPromptAdherenceRewardProcessor``: a frequency-weighted IoU of the head's Program tokens (with their
  counts) against the decoded score's non-empty tracks (counted per program): sum of minima / sum of maxima.

The original wrote both under the one name ``programs_iou``. Here ``programs_iou`` is the token-set IoU, and the
track IoU is ``programs_iou_tracks`` (``TrackIoUReward``, a subclass that only renames it), so both can be weighted
in one run. Differences from the original, each a slip there that made the reward silently missing (0 in the
weighted sum) or wrong on the miditok tokenizers this project runs:

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

from midi_tokenizer import is_multitrack
from processor_base import Processor, Record, add_error

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


class ProgramPromptAdherenceRewardProcessor(Processor):
    """Reward ``programs_iou``: |head ∩ body| / |head ∪ body| over the Program token sets before and after the
    first ``Bar_None``. Needs ``prompt_and_completion_tokens`` (the decoder writes them)."""

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            tokens = record["prompt_and_completion_tokens"]
            value = 0.0
            if BAR not in tokens:
                add_error(record, f"programs_iou: no {BAR} token to split the prompt's programs from the body's")
            else:
                split = tokens.index(BAR)
                head, body = set(programs(tokens[:split])), set(programs(tokens[split + 1 :]))
                record["head_programs"], record["body_programs"] = sorted(head), sorted(body)
                if head | body:
                    value = iou(Counter(head), Counter(body))
                else:
                    add_error(record, "programs_iou: no Program token before or after the first bar")
            record["intersection_over_union_programs"] = value
            record["normalized_rewards"]["programs_iou"] = value
        return records


class TrackPromptAdherenceRewardProcessor(Processor):
    """Frequency-weighted IoU of the head's Program tokens (with counts) and the decoded score's non-empty tracks
    (counted per program), written as ``reward_name``; also the plain set IoU of the two, logged for comparison.

    The head ends at the first ``Track_None`` when there is one (the original's tokenizer), else at the first
    ``Bar_None`` (miditok REMI). Needs ``prompt_and_completion_tokens`` and ``sm`` (the decoder writes them).
    """

    reward_name = "programs_iou"  # the original's name; TrackIoUReward writes programs_iou_tracks

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            tokens = record["prompt_and_completion_tokens"]
            end = TRACK if TRACK in tokens else BAR
            if end not in tokens:
                add_error(record, f"{self.reward_name}: no {BAR} or {TRACK} token to end the prompt's programs")
            prompt = Counter(programs(tokens[: tokens.index(end)])) if end in tokens else Counter()
            output = Counter(track_program(track) for track in record["sm"].tracks if track.note_num() > 0)
            record["head_tracks"], record["body_tracks"] = sorted(prompt), sorted(output)
            if prompt or output:
                record["freq_weighted_iou_tracks"] = iou(prompt, output)
                record["set_iou_tracks"] = iou(Counter(set(prompt)), Counter(set(output)))
            else:
                add_error(record, f"{self.reward_name}: no prompt programs and no non-empty tracks")
                record["freq_weighted_iou_tracks"] = record["set_iou_tracks"] = 0.0
            record["normalized_rewards"][self.reward_name] = record["freq_weighted_iou_tracks"]
        return records


class TrackIoUReward(TrackPromptAdherenceRewardProcessor):
    """``TrackPromptAdherenceRewardProcessor`` writing ``programs_iou_tracks``, so that it can be chosen (or weighted
    beside the token-set ``programs_iou``) from REWARD_WEIGHTS."""

    reward_name = "programs_iou_tracks"


PROGRAM_REWARDS = ("programs_iou", "programs_iou_tracks")


def resolve_is_multitrack(setting: bool | None, tokenizer: miditok.MusicTokenizer, reward_names: Iterable[str]) -> bool:
    """smart.py's IS_MULTITRACK checked against the model: ``None`` takes it from the tokenizer
    (``midi_tokenizer.is_multitrack``); a value that contradicts the tokenizer, or a program reward for a model
    that writes no Program tokens, raises ``ValueError``. Either would otherwise decode every completion to an
    empty score, or give every completion the same reward, without stopping the run."""
    derived = is_multitrack(tokenizer)
    if setting is not None and setting != derived:
        kind = "several tracks in one stream" if derived else "one track (no Program tokens in one stream)"
        raise ValueError(f"IS_MULTITRACK={setting} but the model's tokenizer writes {kind}; use "
                         f"IS_MULTITRACK={derived} or None (taken from the tokenizer)")
    weighted = sorted(set(reward_names) & set(PROGRAM_REWARDS))
    if weighted and not derived:
        raise ValueError(f"REWARD_WEIGHTS has {weighted}, which compare the prompt's Program tokens with the output's, "
                         "but the model's tokenizer has no Program tokens: every completion would score the same")
    return derived
