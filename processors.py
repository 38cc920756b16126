"""Reward processors: each takes the batch's records (``Record``: typed dicts) and returns them with fields added.

The chain SMART runs per reward step is decode -> render -> score:

    MidiTokToSymusicProcessor   adds sm, sm_duration, prompt_and_completion_tokens
    TinySoundfontSynthProcessor adds audio (float32, shape (2, N)), sample_rate, audio_duration
    AudioBoxAesRewardProcessor  adds aes_scores {CE, CU, PC, PQ} and normalized_rewards[axis] = score / 10

A reward is any processor that writes ``record["normalized_rewards"][NAME]`` (a number in [0, 1]);
``RewardManager`` combines them with ``REWARD_WEIGHTS``. Processors never raise on a bad record: a record
they cannot handle gets a neutral value and a reason appended to ``record["errors"]``, which the manager
logs, so one garbage completion cannot end a long run. ``reward_processors_for`` builds the reward processors
of a run from ``REWARD_PROCESSORS`` and the run's ``RewardSettings``.

Class names and constructor arguments are the original erl-j/SMART ones, so its README example still works. The
original's other stages are here too (CustomTokenizerToSymusicProcessor, SymusicSynthProcessor), and its
multi-track prompt-adherence rewards are defined in multitrack.py, its CLAP rewards in clap_rewards.py;
both are registered below and re-exported here (``from processors import CLAPPromptRewardProcessor`` works).
"""

from __future__ import annotations

import math
import re
from typing import Any

import miditok
import numpy as np
import symusic
import torch

import features
from clap_rewards import (
    CLAPPromptRewardProcessor,
    CLAPZeroShotClassificationRewardProcessor,
    PamRewardProcessor,
    pam_reward_names,
)
from devices import compute_device, exact_fp32
from features import AES_AXES, score_seconds
from multitrack import ProgramPromptAdherenceRewardProcessor, TrackIoUReward
from multitrack import TrackPromptAdherenceRewardProcessor as TrackPromptAdherenceRewardProcessor  # re-exported
from processor_base import (
    AUDIOBOX_WINDOW_SECONDS,
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_NUM_GENERATIONS,
    Processor,
    Record,
    RewardSettings,
    add_error,
    crop_score,
)
from processor_base import DEFAULT_SAMPLE_RATE as DEFAULT_SAMPLE_RATE  # re-exported: the original's names stay here
from processor_base import completion_record as completion_record
from processor_base import score_record as score_record
from render_pool import RenderPool
from renderer import RenderSettings, SoundfontRenderer

AUDIOBOX_HUB_ID = "facebook/audiobox-aesthetics"  # the checkpoint the package loads when given none
# GPU memory per 10 s clip in one Audiobox forward (fp32): WavLM's first conv block makes 65 MB tensors per clip,
# ~8.5 GB at the peak for 64 clips, ~133 MiB per clip (estimated from the model's shapes, not measured on a GPU).
AUDIOBOX_BYTES_PER_CLIP = 160 * 2**20
AUDIOBOX_MEMORY_SHARE = 0.5  # share of the free GPU memory a forward may take; the trainer needs the rest


class MidiTokToSymusicProcessor(Processor):
    """Decode ``prompt_and_completion`` token ids with a miditok tokenizer into a cropped ``symusic`` Score.

    Ids outside the vocabulary are dropped (miditok raises ``KeyError`` on them) and any decode failure gives an
    empty score. These, and a score without notes (whose rewards are fallbacks), are noted in ``record["errors"]``.
    """

    def __init__(self, tokenizer: miditok.MusicTokenizer, is_multitrack: bool, max_beats: int | None):
        self.tokenizer = tokenizer
        self.is_multitrack = is_multitrack
        self.max_beats = max_beats

    def decode(self, ids: list[int], record: Record) -> symusic.Score:
        vocab_size = len(self.tokenizer)
        valid = [i for i in ids if 0 <= i < vocab_size]
        if len(valid) < len(ids):
            add_error(record, f"decode: dropped {len(ids) - len(valid)} ids outside the vocabulary")
        record["prompt_and_completion_tokens"] = self.tokenizer._ids_to_tokens(valid)
        try:
            tensor = torch.tensor(valid, dtype=torch.long)
            return self.tokenizer(tensor if self.is_multitrack else tensor[None, ...])
        except Exception as error:  # miditok raises assorted errors on ungrammatical streams
            add_error(record, f"decode: {type(error).__name__}: {error}")
            return symusic.Score(self.tokenizer.time_division)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            set_score(record, self.decode([int(i) for i in record["prompt_and_completion"]], record), self.max_beats)
        return records


def set_score(record: Record, score: symusic.Score, max_beats: int | None) -> None:
    """A decoder's last step: crop the score to ``max_beats``, note a score without notes, store it and its length.
    (The original set ``sm_duration`` only when cropping; every later stage needs it, so it is always set.)"""
    if max_beats is not None:
        score = crop_score(score, max_beats)
    if score.note_num() == 0:
        add_error(record, "decode: no notes")
    record["sm"] = score
    record["sm_duration"] = score_seconds(score)


class CustomTokenizerToSymusicProcessor(Processor):
    """Decode with a tokenizer of one's own (the original's multi-track loop models had one): anything with
    ``ids_to_tokens(ids) -> tokens`` and ``tokens_to_midi(tokens) -> symusic.Score``.

    A stream it cannot decode gives an empty 4/4 score at 120 qpm and 24 ticks per quarter, as in the original,
    with the reason logged. (The original put that time signature at tick 120, ``TimeSignature(120, 4, 4)``,
    where tick 0 was meant; here it is at 0.)
    """

    FALLBACK_TPQ = 24

    def __init__(self, tokenizer: Any, max_beats: int | None):
        self.tokenizer = tokenizer
        self.max_beats = max_beats

    def decode(self, ids: list[int], record: Record) -> symusic.Score:
        try:
            record["prompt_and_completion_tokens"] = list(self.tokenizer.ids_to_tokens(ids))
            return self.tokenizer.tokens_to_midi(record["prompt_and_completion_tokens"])
        except Exception as error:  # a user's tokenizer may raise anything on an ungrammatical stream
            add_error(record, f"decode: {type(error).__name__}: {error}")
            record.setdefault("prompt_and_completion_tokens", [])
            score = symusic.Score(self.FALLBACK_TPQ)
            score.tempos.append(symusic.Tempo(0, 120))
            score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
            return score

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            set_score(record, self.decode([int(i) for i in record["prompt_and_completion"]], record), self.max_beats)
        return records


class TinySoundfontSynthProcessor(Processor):
    """Render each record's score with TinySoundFont: stereo, at most ``max_duration_seconds``, peak-normalised.

    Same audio as the original method, with less work: see renderer.py, the one place rendering is defined.
    An empty score renders as 1 s of silence, as in the original.

    ``num_workers=1`` renders in this process; more start a ``render_pool.RenderPool`` of that many processes
    (forked from one process that loads the soundfont once, in the background, so they share it) that renders
    a batch's records in parallel, in order.
    """

    def __init__(
        self, soundfont_path: str, sample_rate: int, max_duration_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        num_workers: int = 1,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers={num_workers!r}: give 1 (render in-process) or more worker processes")
        self.settings = RenderSettings(soundfont_path, sample_rate, max_duration_seconds)
        self.num_workers = num_workers
        self.pool = RenderPool(self.settings, num_workers) if num_workers > 1 else None
        self.renderer = SoundfontRenderer(self.settings) if self.pool is None else self.pool

    def close(self) -> None:
        """Stop the worker processes, if any (they also stop at interpreter exit)."""
        if self.pool is not None:
            self.pool.close()

    def render(self, score: symusic.Score, duration_seconds: float) -> np.ndarray:
        """Audio of ``score`` as float32 of shape (2, samples), peak-normalised as x / (max|x| + 1e-6)."""
        result = self.renderer.render_many([(score.dumps_midi(), duration_seconds)])[0]
        if isinstance(result, str):
            raise RuntimeError(f"render failed: {result}")
        return result

    def __call__(self, records: list[Record]) -> list[Record]:
        rate, max_seconds = self.settings.sample_rate, self.settings.max_audio_seconds
        jobs, costs, rendered = [], [], []
        for record in records:
            try:
                jobs.append((record["sm"].dumps_midi(), float(record["sm_duration"])))
            except Exception as error:  # a score symusic cannot write as MIDI
                add_error(record, f"render: {type(error).__name__}: {error}")
                record["audio"] = np.zeros((2, rate), dtype=np.float32)
                continue
            seconds = min(record["sm_duration"], max_seconds)
            costs.append(seconds * (1 + record["sm"].note_num() * seconds / max(record["sm_duration"], 1e-9)))
            rendered.append(record)
        for record, result in zip(rendered, self.renderer.render_many(jobs, costs)):
            if isinstance(result, str):  # a score the synth cannot play must not stop the run
                add_error(record, f"render: {result}")
                result = np.zeros((2, rate), dtype=np.float32)
            record["audio"] = result
        for record in records:
            record["sample_rate"] = rate
            record["audio_duration"] = record["audio"].shape[1] / rate
        return records


def probe_score() -> symusic.Score:
    """One short middle C: the smallest score a synthesizer renders (symusic's refuses a score without tracks)."""
    score = symusic.Score(480)
    track = symusic.Track(program=0)
    track.notes.append(symusic.Note(0, 240, 60, 100))
    score.tracks.append(track)
    return score


class SymusicSynthUnavailable(RuntimeError):
    """symusic's own synthesizer cannot render with the installed symusic."""


class SymusicSynthProcessor(Processor):
    """Render each record's score with symusic's ``Synthesizer`` (stereo, at most ``max_duration_seconds``),
    the original's alternative to TinySoundFont, peak-normalised as x / (max|x| + 1e-6).

    symusic 0.6.0's ``Synthesizer.render`` cannot hand its audio to Python (``TypeError: Unable to convert function
    return value``; 0.5.x works). So the constructor renders one note once and, if that fails, raises
    ``SymusicSynthUnavailable`` saying what to use instead: a chain is built before training, so a broken synth
    stops a run at its start, never in the middle. The original normalised as ``audio / max|audio| + 1e-6``,
    which adds 1e-6 to every sample (operator precedence) and divides by zero on silence; here the 1e-6 guards
    the division, as in TinySoundfontSynthProcessor. An empty score gives 1 s of silence, as there.
    """

    def __init__(self, soundfont_path: str, sample_rate: int, max_duration_seconds: float):
        self.sample_rate = sample_rate
        self.max_duration_seconds = max_duration_seconds
        self.synth = symusic.Synthesizer(sf_path=soundfont_path, sample_rate=sample_rate)
        try:
            self.render(probe_score(), 1.0)
        except Exception as error:
            raise SymusicSynthUnavailable(
                f"symusic {symusic.__version__}'s Synthesizer cannot render here ({type(error).__name__}: "
                f"{str(error).splitlines()[0]}); use TinySoundfontSynthProcessor(soundfont_path, sample_rate, "
                "max_duration_seconds), which takes the same arguments (or install symusic 0.5.9, whose "
                "Synthesizer works)"
            ) from error

    def render(self, score: symusic.Score, duration_seconds: float) -> np.ndarray:
        """Audio of ``score`` as float32 of shape (2, samples), cut to min(duration, max_duration_seconds)."""
        samples = int(self.sample_rate * min(duration_seconds, self.max_duration_seconds))
        audio = np.asarray(self.synth.render(score, stereo=True), dtype=np.float32)[:, : max(samples, 0)]
        if audio.shape[1] == 0:
            return np.zeros((2, self.sample_rate), dtype=np.float32)
        return audio / (np.abs(audio).max() + np.float32(1e-6))

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            try:
                record["audio"] = self.render(record["sm"], record["sm_duration"])
            except Exception as error:  # a score the synth cannot play must not stop the run
                add_error(record, f"render: {type(error).__name__}: {error}")
                record["audio"] = np.zeros((2, self.sample_rate), dtype=np.float32)
            record["sample_rate"] = self.sample_rate
            record["audio_duration"] = record["audio"].shape[1] / self.sample_rate
        return records


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


class AudioBoxAesRewardProcessor(Processor):
    """Meta Audiobox Aesthetics scores of the rendered audio: CE, CU, PC, PQ on a 1-10 scale, rewards = score/10.

    ``checkpoint=None`` loads the hub checkpoint (needs a network or the HF cache); a local ``checkpoint.pt`` in
    the format ``audiobox_aesthetics`` saves works offline. The model runs on the predictor's device (the GPU
    when there is one).

    A step's clips are scored together (``batched_scores``): stacked zero-padded on the device, resampled to
    16 kHz there, made mono, masked past each clip's end and put through one model forward, which is what
    ``audiobox_aesthetics``' predictor computes for clips of up to 10 s (one window each), without its per-clip
    CPU resampling and per-clip result loop. Longer clips (several windows) go through the predictor itself.

    ``batch_size`` caps the 10 s windows per forward (64 clips peak at ~8.5 GB of GPU memory); None derives it
    from the free GPU memory, or scores all at once on a CPU. ``device`` (None: ``devices.compute_device()``)
    is where the model runs: the rank's own GPU.

    ``bf16=True`` (opt-in) runs the model under bf16 autocast, the mode the upstream model defines but never
    enables; bench/reward_pipeline.py measures how far its scores move from fp32's.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        bf16: bool = False,
        batch_size: int | None = None,
        device: torch.device | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give the clips per model forward (>= 1), or None")
        self.batch_size = batch_size
        self.aes_predictor = load_aes_predictor(checkpoint, device)
        if bf16:  # upstream maps precision to a dtype and then tests the string, so autocast is never enabled
            self.aes_predictor.model.precision = torch.bfloat16
            self.aes_predictor.model.enable_autocast = True

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> AudioBoxAesRewardProcessor:
        return cls(settings.audiobox_checkpoint, batch_size=settings.audiobox_batch_size, device=settings.device)

    def clips_per_forward(self, device: torch.device) -> int | None:
        """10 s windows per model forward: ``batch_size``; if None, on a GPU as many as AUDIOBOX_MEMORY_SHARE of
        its free memory holds (64 clips peak at ~8.5 GB), elsewhere None: all of them at once."""
        if self.batch_size is not None:
            return self.batch_size
        if device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * AUDIOBOX_MEMORY_SHARE) // AUDIOBOX_BYTES_PER_CLIP)

    def batched_scores(self, audios: list[np.ndarray], sample_rate: int) -> np.ndarray:
        """Scores of (channels, samples) clips at one sample rate, as an array of shape (clips, 4) in AES_AXES order.

        At most ``clips_per_forward`` windows go through the model at once (the scores do not depend on the
        grouping), in full fp32 (``devices.exact_fp32``: no TF32) so that they match the CPU reference.
        """
        predictor = self.aes_predictor
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

        predictor = self.aes_predictor
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

    def __call__(self, records: list[Record]) -> list[Record]:
        if not records:
            return records
        rates = {r["sample_rate"] for r in records}
        if len(rates) == 1 and len({np.shape(r["audio"])[0] for r in records}) == 1:
            scores = self.batched_scores([r["audio"] for r in records], rates.pop())
        else:  # mixed sample rates or channel counts: the reference predictor handles each clip on its own
            inputs = [
                {"path": torch.from_numpy(np.ascontiguousarray(r["audio"])).float(), "sample_rate": r["sample_rate"]}
                for r in records
            ]
            with torch.inference_mode(), exact_fp32():
                rows = self.aes_predictor.forward(inputs)
            scores = np.array([[row[axis] for axis in AES_AXES] for row in rows], dtype=np.float32)
        for record, row in zip(records, scores.tolist()):
            record["aes_scores"] = dict(zip(AES_AXES, row))
            for axis in AES_AXES:
                record["normalized_rewards"][axis] = record["aes_scores"][axis] / 10
        return records


class ScaleConsistencyReward(Processor):
    """The original's symbolic reward: muspy's scale consistency (best in-scale note share over the 24 major
    and minor scales). As in the original, a score with no pitched notes scores 1.0."""

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            value = features.scale_consistency(record["sm"])
            record["scale_consistency"] = 1.0 if math.isnan(value) else value
            record["normalized_rewards"]["scale_consistency"] = record["scale_consistency"]
        return records


class NoteDensityReward(Processor):
    """Symbolic reward ``note_density``: notes per beat over the cropped score's first ``beats`` beats, divided
    by ``target_notes_per_beat`` and capped at 1. No notes gives 0. It measures how busy the music is; the
    paper observed tuned models write more notes, and this reward asks for that directly, without audio."""

    def __init__(self, beats: int = 16, target_notes_per_beat: float = 2.0):
        self.beats = beats
        self.target_notes_per_beat = target_notes_per_beat

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            window = crop_score(record["sm"], self.beats)
            density = features.note_count(window) / self.beats
            record["normalized_rewards"]["note_density"] = min(density / self.target_notes_per_beat, 1.0)
        return records


class FilledBeatsReward(Processor):
    """Symbolic reward ``filled_beats``: 1 - empty-beat rate (share of beats in which some note sounds).
    A score with no notes gives 0. The paper saw SMART drive the empty-beat rate to zero."""

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            rate = features.empty_beat_rate(record["sm"])
            record["normalized_rewards"]["filled_beats"] = 0.0 if math.isnan(rate) else 1.0 - rate
        return records


class AudioActivityReward(Processor):
    """Audio reward ``audio_activity``: the share of the ``max_audio_seconds`` a clip may last (the run's
    MAX_AUDIO_DURATION) in which the rendered clip is audible, i.e. the fraction of 50 ms frames whose RMS is
    within ``threshold_db`` of the clip's loudest frame. Frames past the clip's end count as silent, so a 1 s
    clip scores at most 1/10 of 10 s. Silence gives 0; sound that never stops gives 1."""

    def __init__(
        self, max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS, frame_seconds: float = 0.05,
        threshold_db: float = -30.0,
    ):
        self.max_audio_seconds = max_audio_seconds
        self.frame_seconds = frame_seconds
        self.threshold_db = threshold_db

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> AudioActivityReward:
        return cls(max_audio_seconds=settings.max_audio_seconds)

    def activity(self, audio: np.ndarray, sample_rate: int) -> float:
        """Audible share of the window for one (channels, samples) clip."""
        frame = max(1, int(self.frame_seconds * sample_rate))
        window_frames = max(1, int(self.max_audio_seconds * sample_rate) // frame)
        mono = audio.mean(axis=0)[: window_frames * frame]
        frames = mono[: len(mono) // frame * frame].reshape(-1, frame)
        if frames.size == 0:
            return 0.0
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
        peak = rms.max()
        if not np.isfinite(peak) or peak <= 0:
            return 0.0
        audible = rms >= peak * 10 ** (self.threshold_db / 20)
        return float(audible.sum() / window_frames)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            record["normalized_rewards"]["audio_activity"] = self.activity(record["audio"], record["sample_rate"])
        return records


def prompt_key(record: Record) -> tuple[str | None, tuple[int, ...] | None]:
    """What identifies a record's prompt: its text and its token ids (``prompt_and_completion`` without the
    completion). A record that entered the chain without a prompt (``score_record``) has ``(None, None)``."""
    ids, completion = record.get("prompt_and_completion"), record.get("completion")
    prefix = None if ids is None or completion is None else tuple(ids[: len(ids) - len(completion)])
    return record.get("prompt"), prefix


def grpo_groups(records: list[Record], size: int) -> tuple[list[list[int]], str | None]:
    """The batch's GRPO groups as lists of record positions, and why they are not TRL's own (None when they are).

    TRL's sampler puts each prompt's ``size`` completions next to each other, so the groups are the consecutive
    blocks of ``size`` records, provided every block holds one prompt. When the batch does not split that way
    (its length is not a multiple of ``size``, or a block mixes prompts: a group split across ranks), the
    records are grouped by identical prompt instead, which merges two groups that drew the same prompt.
    """
    keys = [prompt_key(record) for record in records]
    blocks = [list(range(start, min(start + size, len(records)))) for start in range(0, len(records), size)]
    if len(records) % size == 0 and all(len({keys[i] for i in block}) == 1 for block in blocks):
        return blocks, None
    by_prompt: dict[tuple[str | None, tuple[int, ...] | None], list[int]] = {}
    for position, key in enumerate(keys):
        by_prompt.setdefault(key, []).append(position)
    reason = (f"the batch of {len(records)} does not split into blocks of {size} completions of one prompt; "
              f"grouped by identical prompt instead ({len(by_prompt)} groups)")
    return list(by_prompt.values()), reason


def mean_distance_to_others(descriptors: list[np.ndarray | None]) -> list[float]:
    """Each descriptor's mean ``features.descriptor_distance`` to the OTHER descriptors of its group, in [0, 1].

    None (a note-less piece) gets 0, and as another's partner it counts as distance 0: a pair with an empty piece
    adds no diversity. The denominator is always the group size - 1, so emptying a partner never raises anyone's
    reward (counting it as distance 1 would: when a group's pieces are alike, a few empty ones would raise its
    mean). A group of one has no other to differ from: 0.
    """
    values = [0.0] * len(descriptors)
    with_notes = [i for i, descriptor in enumerate(descriptors) if descriptor is not None]
    if len(descriptors) < 2 or not with_notes:
        return values
    sums = features.summed_distances([descriptors[i] for i in with_notes])
    for i, total in zip(with_notes, sums):
        values[i] = float(total / (len(descriptors) - 1))
    return values


class GroupDiversityReward(Processor):
    """Batch-level reward ``group_diversity``: each completion's mean style distance to the other completions of
    its GRPO group, in [0, 1] (new; not in the original). The paper saw that optimising Audiobox CE collapses
    diversity (every piece alike); this rewards a completion for differing from its siblings, as a counterweight.

    The distance is evaluation's diversity measure, ``features.descriptor_distance`` between ``style_descriptor``s
    (pitch-class and onset-in-beat histograms), so the group mean of this reward is the group's
    ``mean_pairwise_distance`` when every piece has notes. Groups are found by ``grpo_groups``; when they are not
    TRL's consecutive blocks, every record says so in ``errors`` (and the first time, on the console). Note-less
    pieces score 0 and add nothing to their siblings' rewards (``mean_distance_to_others``). Records without a
    prompt (evaluation's score records) share one "no prompt" key: the chunk scored at once is their group.

    On its own it can be met by sparse pieces with random pitch classes (a one-note piece is far from everything),
    so it is meant beside a quality reward, as a regulariser.
    """

    def __init__(self, num_generations: int = DEFAULT_NUM_GENERATIONS):
        if num_generations < 1:
            raise ValueError(f"num_generations={num_generations!r}: give the completions per prompt (>= 1)")
        self.num_generations = num_generations
        self.warned = False

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> GroupDiversityReward:
        return cls(settings.num_generations)

    def __call__(self, records: list[Record]) -> list[Record]:
        groups, reason = grpo_groups(records, self.num_generations)
        if reason is not None:
            for record in records:
                add_error(record, f"group_diversity: {reason}")
            if not self.warned:
                print(f"[group_diversity] warning: {reason} (noted in each record's errors)", flush=True)
                self.warned = True
        for group in groups:
            descriptors = [features.style_descriptor(records[i]["sm"]) for i in group]
            for i, value in zip(group, mean_distance_to_others(descriptors)):
                records[i]["normalized_rewards"]["group_diversity"] = value
        return records


# Reward name -> the processor class that writes it. smart.py builds its chain from REWARD_WEIGHTS through this
# table (``reward_processors_for``); register a new reward here to make it usable from a config. A class is built
# with ``from_settings(RewardSettings)``: a plain class with a no-argument constructor works as it is.
REWARD_PROCESSORS: dict[str, type[Processor]] = {
    **{axis: AudioBoxAesRewardProcessor for axis in AES_AXES},
    "scale_consistency": ScaleConsistencyReward,
    "note_density": NoteDensityReward,
    "filled_beats": FilledBeatsReward,
    "audio_activity": AudioActivityReward,
    # multi-track prompt adherence (multitrack.py): the original wrote both under programs_iou, so one of them
    # needs a second name; programs_iou is the token-set IoU, programs_iou_tracks the track-count IoU
    "programs_iou": ProgramPromptAdherenceRewardProcessor,
    "programs_iou_tracks": TrackIoUReward,
    "clap": CLAPPromptRewardProcessor,
    "clap_clf": CLAPZeroShotClassificationRewardProcessor,
    # PAM writes one reward per prompt pair, named by the pair's shorthand (PAM_PROMPTS), plus pam_avg: the
    # default pairs' names are registered here, and reward_class also knows the shorthands of the run's pairs.
    **dict.fromkeys(sorted(pam_reward_names(RewardSettings().pam_prompts)), PamRewardProcessor),
    "group_diversity": GroupDiversityReward,
}


# The rewards that need no model weights and score each clip on its own (no multi-track prompt, no GRPO group):
# what a tool that scores single pieces can always compute (listen.py's manifest).
STANDALONE_REWARDS = ("scale_consistency", "note_density", "filled_beats", "audio_activity")


def reward_class(name: str, settings: RewardSettings = RewardSettings()) -> type[Processor] | None:
    """The processor class that writes reward ``name`` in a run with ``settings``, or None if none does.

    A PAM name is PAM's only when the run's prompt pairs (``settings.pam_prompts``) have it: a default pair's
    shorthand is registered, but a run with other pairs does not produce it.
    """
    pam_names = pam_reward_names(settings.pam_prompts)
    if name in pam_names:
        return PamRewardProcessor
    cls = REWARD_PROCESSORS.get(name)
    return None if cls is PamRewardProcessor else cls


def reward_processors_for(reward_weights: dict[str, float], settings: RewardSettings = RewardSettings()
                          ) -> list[Processor]:
    """One processor per class that produces a weighted reward, in REWARD_PROCESSORS order, built for ``settings``.

    A registered class that does not derive from ``Processor`` (no ``from_settings``) is built with no arguments.
    Raises ``KeyError`` for a name no processor writes (preflight reports those first).
    """
    wanted = set()
    for name in reward_weights:
        cls = reward_class(name, settings)
        if cls is None:
            raise KeyError(f"no reward processor writes {name!r}")
        wanted.add(cls)
    classes = [cls for cls in dict.fromkeys(REWARD_PROCESSORS.values()) if cls in wanted]
    return [cls.from_settings(settings) if hasattr(cls, "from_settings") else cls() for cls in classes]
