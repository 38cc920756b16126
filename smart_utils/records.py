"""The record a completion travels in through the reward chain, and what every stage does to one.

A record is a typed dict: each processor (processors.py) adds keys and none removes any, so a record's keys say
how far it got. ``add_error`` notes why a record got a fallback value; the manager logs it.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import symusic

from smart_utils.features import score_seconds


class Record(TypedDict, total=False):
    """One completion on its way through the chain. Each stage adds keys and none removes any, so a record's
    keys say how far it got; a user's processor may add keys of its own."""

    # completion_record (RewardManager): the completion
    idx: int  # its position in the batch
    prompt: str
    completion: list[int]  # the completion's token ids
    prompt_and_completion: list[int]  # the prompt's token ids, then the completion's
    reward_step: int
    normalized_rewards: dict[str, float]  # reward name -> value in [0, 1], written by the reward processors
    errors: list[str]  # why the record got fallback values (add_error)
    # MidiTokToSymusicProcessor (score_record starts here, from a score)
    prompt_and_completion_tokens: list[str]
    sm: symusic.Score  # cropped to max_beats
    sm_duration: float  # seconds (score_seconds)
    # TinySoundfontSynthProcessor
    audio: np.ndarray  # float32, shape (2, samples)
    sample_rate: int
    audio_duration: float  # seconds
    # AudioBoxAesRewardProcessor, ScaleConsistencyReward
    aes_scores: dict[str, float]  # AES_AXES -> score on the 1-10 scale
    scale_consistency: float
    # CLAPPromptRewardProcessor, CLAPZeroShotClassificationRewardProcessor (None: the clip could not be scored)
    clap_score_raw: float | None  # cosine of the audio and target prompt embeddings
    clap_clf_probs: list[float] | None  # softmax over [target] + reference prompts
    # RewardManager, after the chain
    reward: float  # the weighted mean TRL optimises
    reward_weights: dict[str, float]


def completion_record(idx: int, prompt: str, prompt_ids: list[int], completion_ids: list[int], reward_step: int = 0
                      ) -> Record:
    """A new record for one sampled completion, as the chain's first processor (the decoder) expects it."""
    completion = [int(t) for t in completion_ids]
    return Record(idx=idx, prompt=prompt, completion=completion,
                  prompt_and_completion=[int(t) for t in prompt_ids] + completion, reward_step=reward_step,
                  normalized_rewards={}, errors=[])


def score_record(idx: int, score: symusic.Score) -> Record:
    """A new record for a score that enters the chain after decoding (evaluation, benchmarks, tests)."""
    return Record(idx=idx, sm=score, sm_duration=score_seconds(score), normalized_rewards={}, errors=[])


def add_error(record: Record, message: str) -> None:
    """Note why a record got a fallback value; the manager logs these in the step's parquet."""
    record.setdefault("errors", []).append(message)


def crop_score(score: symusic.Score, max_beats: int) -> symusic.Score:
    """Keep the first ``max_beats`` quarter notes, cutting notes that sound past the end (as the original)."""
    return score.clip(0, max_beats * score.ticks_per_quarter, clip_end=True)
