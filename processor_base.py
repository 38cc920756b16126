"""What every reward processor builds on: the record a completion travels in, and the ``Processor`` base class.

Kept apart from processors.py so that reward modules of their own (clap_rewards.py, multitrack.py) can build on
it while processors.py registers them all in ``REWARD_PROCESSORS``; processors.py re-exports every name here,
so ``from processors import Processor`` (the original's README example) keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import symusic
import torch

from features import score_seconds
from pam_prompts import PROMPT_PAIRS, PromptPair

AUDIOBOX_WINDOW_SECONDS = 10  # the predictor scores 10 s windows (a property of the model, not a setting)
DEFAULT_SAMPLE_RATE = 48000  # the original's render rate (Hz); smart.py's SAMPLE_RATE
DEFAULT_MAX_AUDIO_SECONDS = AUDIOBOX_WINDOW_SECONDS  # the original's render length: one Audiobox window
DEFAULT_NUM_GENERATIONS = 8  # completions per prompt, consecutive in TRL's batch (smart.py's NUM_GENERATIONS)


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


@dataclass(frozen=True)
class RewardSettings:
    """The run's settings a reward processor may need to be built (smart.py passes its constants)."""

    audiobox_checkpoint: str | None = None  # None: the hub checkpoint (AUDIOBOX_CHECKPOINT)
    audiobox_batch_size: int | None = None  # clips per Audiobox forward; None: from free GPU memory
    device: torch.device | None = None  # where models run; None: devices.compute_device()
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS  # the rendered clips' cap (MAX_AUDIO_DURATION)
    sample_rate: int = DEFAULT_SAMPLE_RATE  # the render rate (SAMPLE_RATE)
    num_generations: int = DEFAULT_NUM_GENERATIONS  # GRPO group size (NUM_GENERATIONS), for group-level rewards
    clap_prompt: str = "jazz"  # CLAP_PROMPT
    clap_k: int = 8  # CLAP_K (kept, unused, as in the original)
    clap_model: str = "laion/larger_clap_music"  # CLAP_MODEL
    clap_clf_prompt: str = "beautiful, high quality, amazing music, natural, calming"  # CLAP_CLF_PROMPT
    clap_reference_prompts: tuple[str, ...] = ("dissonant, low quality, caucophonous music, glitch, midi",)
    clap_clf_model: str = "laion/larger_clap_general"  # CLAP_CLF_MODEL
    clap_temperature: float = 0.25  # CLAP_TEMPERATURE
    pam_prompts: tuple[PromptPair, ...] = PROMPT_PAIRS  # PAM_PROMPTS
    pam_temperature: float = 0.25  # PAM_TEMPERATURE
    pam_model: str = "laion/larger_clap_general"  # PAM_MODEL
    clap_batch_size: int | None = None  # CLAP_BATCH_SIZE: clips per CLAP forward; None: all at once

    @classmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device | None = None) -> RewardSettings:
        """The settings of a resolved smart.py config (its UPPERCASE constants); a key the config lacks (a run
        saved before the key existed) keeps the default."""
        values = {field: config[key] for field, key in SETTINGS_KEYS.items() if key in config}
        for field in ("clap_reference_prompts", "pam_prompts"):
            if field in values:
                values[field] = tuple(values[field])
        return cls(device=device, **values)


SETTINGS_KEYS = {  # RewardSettings field -> the smart.py constant it comes from
    "audiobox_checkpoint": "AUDIOBOX_CHECKPOINT", "audiobox_batch_size": "AUDIOBOX_BATCH_SIZE",
    "max_audio_seconds": "MAX_AUDIO_DURATION", "sample_rate": "SAMPLE_RATE", "num_generations": "NUM_GENERATIONS",
    "clap_prompt": "CLAP_PROMPT", "clap_k": "CLAP_K", "clap_model": "CLAP_MODEL", "clap_clf_prompt": "CLAP_CLF_PROMPT",
    "clap_reference_prompts": "CLAP_REFERENCE_PROMPTS", "clap_clf_model": "CLAP_CLF_MODEL",
    "clap_temperature": "CLAP_TEMPERATURE", "pam_prompts": "PAM_PROMPTS", "pam_temperature": "PAM_TEMPERATURE",
    "pam_model": "PAM_MODEL", "clap_batch_size": "CLAP_BATCH_SIZE",
}


class Processor:
    """Base class: ``__call__(records) -> records`` with new fields added to every record, same order."""

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> Processor:
        """Build this processor for a run (``reward_processors_for``). A processor whose knobs depend on the run
        overrides this; the default is the no-argument constructor."""
        return cls()

    def __call__(self, records: list[Record]) -> list[Record]:
        raise NotImplementedError
