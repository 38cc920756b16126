"""Text-audio rewards from a CLAP model: the original's CLAPPromptRewardProcessor,
CLAPZeroShotClassificationRewardProcessor and PamRewardProcessor, same class names and constructor arguments.

All three embed the rendered clips with a CLAP model (transformers' ``ClapModel``; its audio and text embeddings
are L2-normalised) and compare them with the embeddings of fixed text prompts:

- ``clap``: (cosine(audio, target prompt) + 1) / 2; the cosine is logged as ``clap_score_raw``.
- ``clap_clf``: softmax over [target] + reference prompts of cosine / temperature: the target's share.
- PAM: for each positive/negative prompt pair, softmax over the pair of (audio . text) / temperature: the
  positive's share, as the reward named by the pair's shorthand; ``pam_avg`` is their mean.

What this module changes against the original (the README's differences table): the model runs on the run's
device (``RewardSettings.device``) instead of ``.to(0)``; the hub id is a constructor argument (a local folder
works offline); clips at another rate than the feature extractor's (48 kHz) are resampled instead of refused;
a clip the model cannot score meaningfully gets ``UNSCORABLE_REWARD`` and a logged reason instead of a score
of noise or a crash; a step's clips go through one forward (chunks of ``batch_size`` if set).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from devices import compute_device, exact_fp32
from pam_prompts import PAM_AVERAGE, PromptPair
from processor_base import Processor, Record, RewardSettings, add_error

CLAP_MUSIC_HUB_ID = "laion/larger_clap_music"  # the original's model for the prompt reward
CLAP_GENERAL_HUB_ID = "laion/larger_clap_general"  # the original's model for zero-shot classification and PAM
UNSCORABLE_REWARD = 0.0  # the lowest reward: a policy must not gain by producing audio CLAP cannot score


class ClapReward(Processor):
    """What the three CLAP rewards share: the model, prompt embeddings, batched clip embeddings, fallbacks.

    A subclass sets ``reward_names`` and ``raw_field`` and implements ``score``. ``sample_rate`` is the rate of
    clips whose record has none (records from the synth carry theirs). ``model_id`` is a hub id or a local
    folder holding what ``ClapModel.save_pretrained`` and ``ClapProcessor.save_pretrained`` write.
    """

    reward_names: tuple[str, ...] = ()
    raw_field: str | None = None  # record key for ``score``'s raw values (a float when there is one per clip)

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

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (clips, len(reward_names)) in [0, 1] and raw values (clips, k) of (clips, dim) embeddings."""
        raise NotImplementedError

    def fallback(self, record: Record, reason: str) -> None:
        add_error(record, f"{type(self).__name__}: {reason} (rewards {UNSCORABLE_REWARD})")
        record["normalized_rewards"].update(dict.fromkeys(self.reward_names, UNSCORABLE_REWARD))
        if self.raw_field:
            record[self.raw_field] = None  # so every row of the log has it

    def __call__(self, records: list[Record]) -> list[Record]:
        scorable, clips = [], []
        for record in records:
            mono, reason = self.mono_clip(record)
            if reason is None:
                scorable.append(record)
                clips.append(mono)
            else:
                self.fallback(record, reason)
        if not clips:
            return records
        rewards, raw = (values.cpu() for values in self.score(self.audio_embeddings(clips)))
        for record, reward_row, raw_row in zip(scorable, rewards, raw):
            if not (torch.isfinite(reward_row).all() and torch.isfinite(raw_row).all()):
                self.fallback(record, "the model's output is not finite")
                continue
            record["normalized_rewards"].update(zip(self.reward_names, reward_row.tolist()))
            if self.raw_field:
                record[self.raw_field] = raw_row.item() if raw_row.numel() == 1 else raw_row.tolist()
        return records


class CLAPPromptRewardProcessor(ClapReward):
    """Reward ``clap``: how well the clip matches ``target_prompt``, (cosine + 1) / 2 of the CLAP audio and text
    embeddings (laion/larger_clap_music); the cosine is logged as ``clap_score_raw``.

    ``k`` is the original's argument, which its code stores and never uses (its callers passed
    NUM_GENERATIONS; a comment hints at a top-k scheme that was never written): kept for compatibility, no effect.
    """

    reward_names = ("clap",)
    raw_field = "clap_score_raw"

    def __init__(
        self, sample_rate: int, target_prompt: str, k: int, model_id: str = CLAP_MUSIC_HUB_ID,
        device: torch.device | None = None, batch_size: int | None = None,
    ):
        super().__init__(sample_rate, model_id, device, batch_size)
        self.target_prompt = target_prompt
        self.k = k
        self.text_embeds = self.text_embeddings([target_prompt])

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> CLAPPromptRewardProcessor:
        return cls(settings.sample_rate, settings.clap_prompt, settings.clap_k, settings.clap_model,
                   settings.device, settings.clap_batch_size)

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = torch.nn.functional.cosine_similarity(audio, self.text_embeds)
        return ((cosine + 1) / 2)[:, None], cosine[:, None]


class CLAPZeroShotClassificationRewardProcessor(ClapReward):
    """Reward ``clap_clf``: CLAP zero-shot classification of the clip among [target_prompt] + reference_prompts,
    softmax of cosine / temperature (laion/larger_clap_general); the reward is the target's probability, all of
    them are logged as ``clap_clf_probs`` (the original logged them as ``clap_score_raw``, which ``clap`` uses)."""

    reward_names = ("clap_clf",)
    raw_field = "clap_clf_probs"

    def __init__(
        self, sample_rate: int, target_prompt: str, reference_prompts: Sequence[str], temperature: float,
        model_id: str = CLAP_GENERAL_HUB_ID, device: torch.device | None = None, batch_size: int | None = None,
    ):
        super().__init__(sample_rate, model_id, device, batch_size)
        self.prompts = [target_prompt, *reference_prompts]
        self.temperature = temperature
        self.text_embeds = self.text_embeddings(self.prompts)

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> CLAPZeroShotClassificationRewardProcessor:
        return cls(settings.sample_rate, settings.clap_clf_prompt, settings.clap_reference_prompts,
                   settings.clap_temperature, settings.clap_clf_model, settings.device, settings.clap_batch_size)

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = torch.nn.functional.cosine_similarity(audio[:, None, :], self.text_embeds[None, :, :], dim=-1)
        probs = torch.softmax(cosine / self.temperature, dim=1)
        return probs[:, :1], probs


class PamRewardProcessor(ClapReward):
    """PAM rewards (laion/larger_clap_general): for each prompt pair, softmax over (positive, negative) of the
    dot products audio . text / temperature (cosines: the embeddings are normalised), the positive's share,
    as the reward named by the pair's ``shorthand``; ``pam_avg`` is their mean. Nothing else is logged."""

    def __init__(
        self, sample_rate: int, prompt_configs: Sequence[PromptPair], temperature: float,
        model_id: str = CLAP_GENERAL_HUB_ID, device: torch.device | None = None, batch_size: int | None = None,
    ):
        super().__init__(sample_rate, model_id, device, batch_size)
        self.prompt_configs = list(prompt_configs)
        self.temperature = temperature
        self.reward_names = (*(pair["shorthand"] for pair in self.prompt_configs), PAM_AVERAGE)
        # all positives, then all negatives, as the original stacked them
        self.text_embeds = self.text_embeddings([pair["positive"] for pair in self.prompt_configs]
                                                + [pair["negative"] for pair in self.prompt_configs])

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> PamRewardProcessor:
        return cls(settings.sample_rate, settings.pam_prompts, settings.pam_temperature, settings.pam_model,
                   settings.device, settings.clap_batch_size)

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = len(self.prompt_configs)
        similarity = audio @ self.text_embeds.T
        paired = torch.stack([similarity[:, :pairs], similarity[:, pairs:]], dim=-1)
        positive = torch.softmax(paired / self.temperature, dim=-1)[..., 0]
        return torch.cat([positive, positive.mean(dim=1, keepdim=True)], dim=1), positive[:, :0]


def pam_reward_names(prompt_configs: Sequence[PromptPair]) -> set[str]:
    """The reward names a PamRewardProcessor with these pairs writes."""
    return {pair["shorthand"] for pair in prompt_configs} | {PAM_AVERAGE}


def clap_model_ids(reward_classes: set[type | None], settings: RewardSettings) -> set[str]:
    """The CLAP models (hub ids or folders) the given reward classes load under ``settings``."""
    models = {CLAPPromptRewardProcessor: settings.clap_model,
              CLAPZeroShotClassificationRewardProcessor: settings.clap_clf_model,
              PamRewardProcessor: settings.pam_model}
    return {model for cls, model in models.items() if cls in reward_classes}
