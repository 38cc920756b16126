"""The CLAP model behind the text-audio rewards (processors.py: CLAPPromptRewardProcessor,
CLAPZeroShotClassificationRewardProcessor, PamRewardProcessor).

All three embed the rendered clips with a CLAP model (transformers' ``ClapModel``; its audio and text embeddings
are L2-normalised) and compare them with the embeddings of fixed text prompts:

- ``clap``: (cosine(audio, target prompt) + 1) / 2; the cosine is logged as ``clap_score_raw``.
- ``clap_clf``: softmax over [target] + reference prompts of cosine / temperature: the target's share.
- PAM: for each positive/negative prompt pair, softmax over the pair of (audio . text) / temperature: the
  positive's share, as the reward named by the pair's shorthand; ``pam_avg`` is their mean.

What this module changes against the original (docs/differences.md): the model runs on the run's
device instead of ``.to(0)``; the hub id is a constructor argument (a local folder
works offline); clips at another rate than the feature extractor's (48 kHz) are resampled instead of refused;
a clip the model cannot score meaningfully gets ``UNSCORABLE_REWARD`` and a logged reason instead of a score
of noise or a crash; a step's clips go through one forward (chunks of ``batch_size`` if set).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from smart_utils.devices import compute_device, exact_fp32
from smart_utils.pam_prompts import PAM_AVERAGE, PromptPair
from smart_utils.records import Record

CLAP_MUSIC_HUB_ID = "laion/larger_clap_music"  # the original's model for the prompt reward
CLAP_GENERAL_HUB_ID = "laion/larger_clap_general"  # the original's model for zero-shot classification and PAM
UNSCORABLE_REWARD = 0.0  # the lowest reward: a policy must not gain by producing audio CLAP cannot score


class ClapEmbedder:
    """A CLAP model on the run's device: normalised embeddings of text prompts and of rendered clips.

    ``sample_rate`` is the rate of clips whose record has none (records from the synth carry theirs).
    ``model_id`` is a hub id or a local folder holding what ``ClapModel.save_pretrained`` and
    ``ClapProcessor.save_pretrained`` write. Both embeddings are computed in full fp32 (``devices.exact_fp32``:
    no TF32, and no outer autocast, so a bf16 training's mixed precision does not reach the rewards).
    """

    def __init__(self, sample_rate: int, model_id: str, device: torch.device | None, batch_size: int | None):
        from transformers import ClapModel, ClapProcessor  # slow to import: only when a CLAP reward is used

        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give the clips per model forward (>= 1), or None")
        self.sample_rate = sample_rate
        self.model_id = model_id
        self.batch_size = batch_size
        self.device = compute_device() if device is None else device
        self.model = ClapModel.from_pretrained(model_id, dtype=torch.float32).to(self.device).eval()
        self.processor = ClapProcessor.from_pretrained(model_id)
        extractor = self.processor.feature_extractor
        self.model_rate = int(extractor.sampling_rate)
        self.min_samples = int(extractor.fft_window_size)  # shorter clips have not one full analysis window

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(prompts, dim) normalised embeddings, each prompt tokenised on its own as the original did (no
        padding); computed once, at construction, since the prompts never change."""
        rows = []
        with torch.inference_mode(), exact_fp32():
            for prompt in prompts:
                inputs = self.processor(text=prompt, return_tensors="pt").to(self.device)
                rows.append(self.model.get_text_features(**inputs).pooler_output[0])
        return torch.stack(rows)

    def mono_clip(self, record: Record) -> tuple[np.ndarray, str | None]:
        """The record's audio as mono at the model's rate, and why CLAP cannot score it (None if it can)."""
        audio = np.asarray(record["audio"], dtype=np.float32)
        mono = audio.mean(axis=0) if audio.ndim == 2 else audio.reshape(-1)  # the original averaged the channels
        rate = int(record.get("sample_rate", self.sample_rate))
        if not np.isfinite(mono).all():
            return mono, "audio has NaN or infinite samples"
        if mono.size * self.model_rate < self.min_samples * rate:
            return mono, f"clip of {mono.size} samples at {rate} Hz is shorter than one CLAP window"
        if not mono.any():
            return mono, "silent clip"
        if rate != self.model_rate:
            import torchaudio

            mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, self.model_rate).numpy()
        return mono, None

    def audio_embeddings(self, clips: list[np.ndarray]) -> torch.Tensor:
        """(clips, dim) normalised embeddings: the feature extractor, then one model forward per ``batch_size``
        clips (all in one when None)."""
        step = self.batch_size or len(clips)
        parts = []
        with torch.inference_mode(), exact_fp32():
            for start in range(0, len(clips), step):
                inputs = self.processor(audio=clips[start : start + step], sampling_rate=self.model_rate,
                                        return_tensors="pt").to(self.device)
                parts.append(self.model.get_audio_features(**inputs).pooler_output)
        return torch.cat(parts)


def pam_reward_names(prompt_configs: Sequence[PromptPair]) -> tuple[str, ...]:
    """The reward names a PamRewardProcessor with these pairs writes, in its order: one per pair, then the mean."""
    return (*(pair["shorthand"] for pair in prompt_configs), PAM_AVERAGE)
