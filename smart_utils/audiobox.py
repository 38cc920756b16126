"""Meta Audiobox Aesthetics: loading the predictor safely and scoring a batch of clips on the run's device.

The four axes (CE Content Enjoyment, CU Content Usefulness, PC Production Complexity, PQ Production Quality) are
predicted on a 1-10 scale from 10 s windows at 16 kHz. ``AudioboxScorer.scores`` computes what the package's own
predictor computes, batched: a step's clips stacked zero-padded on the device, resampled there, made mono, masked
past each clip's end and put through one model forward per chunk, in full fp32.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from smart_utils.devices import compute_device, exact_fp32
from smart_utils.features import AES_AXES

AUDIOBOX_WINDOW_SECONDS = 10  # the predictor scores 10 s windows (a property of the model, not a setting)

AUDIOBOX_HUB_ID = "facebook/audiobox-aesthetics"  # the checkpoint the package loads when given none
# GPU memory per 10 s clip in one Audiobox forward (fp32): WavLM's first conv block makes 65 MB tensors per clip,
# ~8.5 GB at the peak for 64 clips, ~133 MiB per clip (estimated from the model's shapes, not measured on a GPU).
AUDIOBOX_BYTES_PER_CLIP = 160 * 2**20
AUDIOBOX_MEMORY_SHARE = 0.5  # share of the free GPU memory a forward may take; the trainer needs the rest


AES_MODEL_CONFIG_KEYS = (
    "proj_num_layer", "proj_ln", "proj_act_fn", "proj_dropout", "nth_layer", "use_weighted_layer_sum", "precision",
    "normalize_embed", "output_dim",
)


def hub_weight_names(repo_id: str) -> set[str]:
    """The tensor names in a hub repo's ``model.safetensors`` (read from the HF cache; no tensor is loaded)."""
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    with safe_open(hf_hub_download(repo_id, "model.safetensors"), framework="pt") as weights:
        return set(weights.keys())


def check_weight_names(model: torch.nn.Module, names: set[str], source: str) -> None:
    """Raise ``ValueError`` unless ``names`` (a weights file's tensors) are exactly ``model``'s state dict keys.

    The package loads the hub checkpoint with huggingface_hub's default ``strict=False``: weights the file lacks
    or names differently would stay random, silently, and every score would be noise.
    """
    expected = set(model.state_dict())
    missing, unused = sorted(expected - names), sorted(names - expected)
    if missing or unused:
        raise ValueError(
            f"the Audiobox weights from {source} do not fit the model of the installed audiobox_aesthetics: "
            f"{len(missing)} model weights missing from the file {missing[:3]}, {len(unused)} weights in the file "
            f"unused {unused[:3]}; those weights would stay random and every score would be noise. Install "
            "audiobox_aesthetics as pinned in requirements.txt, or delete the cached download (under "
            "~/.cache/huggingface/hub) so that it is fetched again"
        )


def load_aes_predictor(checkpoint: str | None, device: torch.device | None = None) -> Any:
    """``audiobox_aesthetics.infer.initialize_predictor(ckpt=checkpoint)`` on ``device``, with weights checked.

    audiobox_aesthetics 0.0.4 reads ``checkpoint.pt`` with a bare ``torch.load``, which unpickles arbitrary objects
    (running their code) wherever torch's default is not weights-only: torch < 2.6, or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
    set. This builds the same predictor from ``torch.load(..., weights_only=True)`` instead, so a tampered checkpoint
    is refused. The hub checkpoint (``None``) is ``model.safetensors`` and loads through the package's
    ``from_pretrained`` as before; its tensor names are then checked against the model (``check_weight_names``).
    ``device=None`` is ``devices.compute_device()``: this rank's GPU by index, where the package would use
    ``torch.device("cuda")``.
    """
    from audiobox_aesthetics.infer import AXES_NAME, AesPredictor  # imports torchaudio; only when used
    from audiobox_aesthetics.model.aes import AesMultiOutput, Normalize

    class WeightsOnlyAesPredictor(AesPredictor):
        def setup_model(self) -> None:  # AesPredictor.setup_model, weights-only, checked, on the given device
            self.device = compute_device() if device is None else device
            if self.checkpoint_pth is None:
                model = AesMultiOutput.from_pretrained(AUDIOBOX_HUB_ID)
                check_weight_names(model, hub_weight_names(AUDIOBOX_HUB_ID), f"the hub ({AUDIOBOX_HUB_ID})")
            else:
                saved = torch.load(self.checkpoint_pth, map_location=self.device, weights_only=True)
                model = AesMultiOutput(
                    **{key: saved["model_cfg"][key] for key in AES_MODEL_CONFIG_KEYS},
                    target_transform=saved["target_transform"],
                )
                model.load_state_dict({re.sub("^model.", "", key): value for key, value in saved["state_dict"].items()})
            self.model = model.to(self.device).eval()
            self.target_transform = {
                axis: Normalize(mean=model.target_transform[axis]["mean"], std=model.target_transform[axis]["std"])
                for axis in AXES_NAME
            }

    return WeightsOnlyAesPredictor(checkpoint_pth=checkpoint, data_col="path")


def free_gpu_memory(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can take: what the driver reports free plus what PyTorch's caching
    allocator holds reserved but unallocated (``mem_get_info`` counts that as used, though PyTorch hands it out
    first), so the chunk size does not shrink after the first step has filled the cache."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class AudioboxScorer:
    """The predictor of ``checkpoint`` (None: the hub's) on ``device``, scoring clips in chunks of ``batch_size``
    10 s windows (None: what AUDIOBOX_MEMORY_SHARE of the free GPU memory holds; all at once on a CPU).

    ``bf16=True`` (opt-in) runs the model under bf16 autocast, the mode the upstream model defines but never
    enables; bench/reward_pipeline.py measures how far its scores move from fp32's.
    """

    def __init__(self, checkpoint: str | None = None, batch_size: int | None = None,
                 device: torch.device | None = None, bf16: bool = False):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give the clips per model forward (>= 1), or None")
        self.batch_size = batch_size
        self.predictor = load_aes_predictor(checkpoint, device)
        if bf16:  # upstream maps precision to a dtype and then tests the string, so autocast is never enabled
            self.predictor.model.precision = torch.bfloat16
            self.predictor.model.enable_autocast = True

    def scores(self, audios: list[np.ndarray], sample_rates: list[int]) -> np.ndarray:
        """Scores of (channels, samples) clips as an array of shape (clips, 4) in AES_AXES order. Clips that share
        one sample rate and channel count are batched; mixed ones go through the package's predictor, chunked."""
        if not audios:
            return np.empty((0, len(AES_AXES)), dtype=np.float32)
        if len(set(sample_rates)) == 1 and len({np.shape(a)[0] for a in audios}) == 1:
            return self.batched_scores(audios, sample_rates[0])
        size = self.clips_per_forward(self.predictor.device) or len(audios)
        scores = np.empty((len(audios), len(AES_AXES)), dtype=np.float32)
        with torch.inference_mode(), exact_fp32():
            for start in range(0, len(audios), size):
                rows = self.predictor.forward([
                    {"path": torch.from_numpy(np.ascontiguousarray(audio)).float(), "sample_rate": rate}
                    for audio, rate in zip(audios[start : start + size], sample_rates[start : start + size])
                ])
                scores[start : start + len(rows)] = [[row[axis] for axis in AES_AXES] for row in rows]
        return scores

    def clips_per_forward(self, device: torch.device) -> int | None:
        """10 s windows per model forward: ``batch_size``; if None, on a GPU as many as AUDIOBOX_MEMORY_SHARE of
        its free memory holds (64 clips peak at ~8.5 GB), elsewhere None: all of them at once."""
        if self.batch_size is not None:
            return self.batch_size
        if device.type != "cuda":
            return None
        free = free_gpu_memory(device)
        return max(1, int(free * AUDIOBOX_MEMORY_SHARE) // AUDIOBOX_BYTES_PER_CLIP)

    def batched_scores(self, audios: list[np.ndarray], sample_rate: int) -> np.ndarray:
        """Scores of (channels, samples) clips at one sample rate, as an array of shape (clips, 4) in AES_AXES order.

        At most ``clips_per_forward`` windows go through the model at once (the scores do not depend on the
        grouping), in full fp32 (``devices.exact_fp32``: no TF32) so that they match the CPU reference.
        """
        predictor = self.predictor
        window = AUDIOBOX_WINDOW_SECONDS * predictor.sample_rate
        gcd = math.gcd(int(sample_rate), predictor.sample_rate)
        # The resampled length of each clip, computed as torchaudio.functional.resample computes it.
        lengths = [
            int(torch.ceil(torch.as_tensor(predictor.sample_rate // gcd * a.shape[-1] / (int(sample_rate) // gcd))))
            for a in audios
        ]
        scores = np.empty((len(audios), len(AES_AXES)), dtype=np.float32)
        fits = [0 < n <= window for n in lengths]
        long = [i for i, fit in enumerate(fits) if not fit]
        short = [i for i, fit in enumerate(fits) if fit]
        size = self.clips_per_forward(predictor.device)
        with exact_fp32():
            if long:  # several 10 s windows per clip: the reference predictor weights them
                windows = max(1, *(math.ceil(lengths[i] / window) for i in long))
                step = len(long) if size is None else max(1, size // windows)
                for group in [long[k : k + step] for k in range(0, len(long), step)]:
                    rows = predictor.forward(
                        [{"path": torch.from_numpy(np.ascontiguousarray(audios[i])).float(), "sample_rate": sample_rate}
                         for i in group]
                    )
                    scores[group] = [[row[axis] for axis in AES_AXES] for row in rows]
            step = size or len(short)
            for group in [short[k : k + step] for k in range(0, len(short), step)]:
                scores[group] = self._one_window_scores([audios[i] for i in group], [lengths[i] for i in group],
                                                        sample_rate)
        return scores

    def _one_window_scores(self, audios: list[np.ndarray], lengths: list[int], sample_rate: int) -> np.ndarray:
        """Scores of clips that fit one window (``lengths``: their resampled lengths) in one model forward."""
        import torchaudio  # audiobox_aesthetics needs it anyway

        predictor = self.predictor
        device = predictor.device
        window = AUDIOBOX_WINDOW_SECONDS * predictor.sample_rate
        with torch.inference_mode():
            clips = [torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).T for audio in audios]
            batch = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)  # (clips, samples, channels)
            batch = batch.to(device, non_blocking=True).transpose(1, 2).contiguous()
            wav = torchaudio.functional.resample(batch, orig_freq=int(sample_rate), new_freq=predictor.sample_rate)
            wav = wav.mean(dim=1)  # mono, after resampling as upstream does
            wav = torch.nn.functional.pad(wav, (0, window - wav.shape[-1]))
            ends = torch.tensor(lengths, device=device)
            mask = torch.arange(window, device=device)[None, :] < ends[:, None]
            wav = wav.masked_fill(~mask, 0.0)
            preds = predictor.model({"wav": wav[:, None, :], "mask": mask[:, None, :]})
            mean = torch.tensor([predictor.target_transform[axis].mean for axis in AES_AXES], device=device)
            std = torch.tensor([predictor.target_transform[axis].std for axis in AES_AXES], device=device)
            batched = torch.stack([preds[axis].float() for axis in AES_AXES], dim=1) * std + mean
            return batched.cpu().numpy()
