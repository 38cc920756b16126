"""The reward chain's processors: each takes the batch's records (``Record``: typed dicts) and returns them with
fields added. Add a reward here (or in a config file) as one ``Processor`` subclass; nothing else to edit.

The chain SMART runs per reward step is decode -> render -> score:

    MidiTokToSymusicProcessor   adds sm, sm_duration, prompt_and_completion_tokens
    TinySoundfontSynthProcessor adds audio (float32, shape (2, N)), sample_rate, audio_duration
    AudioBoxAesRewardProcessor  adds aes_scores {CE, CU, PC, PQ} and normalized_rewards[axis] = score / 10

A reward is a processor that writes ``record["normalized_rewards"][NAME]`` (a number in [0, 1]) and names NAME in
its ``REWARDS``; ``REWARD_WEIGHTS`` finds it by that name (``reward_class``) and ``RewardManager`` combines the
rewards with the weights. Its constructor's parameters are filled from the run's constants by name
(``build_processor``: ``clap_prompt`` <- ``CLAP_PROMPT``), so every default lives once, in smart.py. Processors
never raise on a bad record: a record they cannot handle gets a neutral value and a reason appended to
``record["errors"]``, which the manager logs, so one garbage completion cannot end a long run.

Class names and constructor arguments follow the original erl-j/SMART, so its README example still works, and
the original's other stages and rewards are here too (CustomTokenizerToSymusicProcessor, SymusicSynthProcessor,
the multi-track prompt-adherence rewards, the CLAP rewards).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import miditok
import numpy as np
import symusic
import torch

from smart_utils import features
from smart_utils.audiobox import AUDIOBOX_HUB_ID, AudioboxScorer
from smart_utils.clap import UNSCORABLE_REWARD, ClapEmbedder, pam_reward_names
from smart_utils.features import AES_AXES, score_seconds
from smart_utils.multitrack import BAR, TRACK, iou, programs, track_program
from smart_utils.pam_prompts import PromptPair
from smart_utils.preflight import OFFLINE_HINT, hub_problem
from smart_utils.ranks import gather_in_rank_order
from smart_utils.records import Record, add_error, crop_score
from smart_utils.render_pool import RenderPool
from smart_utils.rendering import RenderSettings, SoundfontRenderer

RUN_CONTEXT = ("device",)  # constructor parameters that come from the run itself, not from a constant


class Processor:
    """Base class of every stage: ``__call__(records) -> records``, the same records in the same order with fields
    added; the manager carries on with what ``__call__`` returns.

    A reward processor names the rewards it writes in ``REWARDS`` (or overrides ``reward_names`` when they depend
    on the run's constants, as PAM's do): that is how REWARD_WEIGHTS finds it. ``models`` says which weights it
    loads (checked before a run starts, recorded in run_record.json), ``problems`` what stops it from running.
    """

    REWARDS: tuple[str, ...] = ()
    READS_AUDIO = False  # its rewards are computed from record["audio"]: re-scored for each soundfont of a run

    @classmethod
    def reward_names(cls, constants: Mapping[str, Any]) -> tuple[str, ...]:
        """The rewards this class writes in a run with ``constants``."""
        return cls.REWARDS

    @classmethod
    def models(cls, constants: Mapping[str, Any]) -> dict[str, str]:
        """The model weights it loads under ``constants``, by kind ("audiobox", "clap"): hub ids or paths."""
        return {}

    @classmethod
    def problems(cls, constants: Mapping[str, Any]) -> list[str]:
        """What would stop it from running under ``constants``, as messages that say what to do."""
        return []

    def __call__(self, records: list[Record]) -> list[Record]:
        raise NotImplementedError


def processor_classes() -> list[type[Processor]]:
    """Every ``Processor`` subclass defined so far, in definition order: this module's, and those of config files
    (configurator keeps their namespaces alive, so their classes stay listed)."""
    found: list[type[Processor]] = []
    pending = list(Processor.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if cls not in found:
            found.append(cls)
            pending[:0] = cls.__subclasses__()
    return found


def reward_owners(name: str, constants: Mapping[str, Any]) -> list[type[Processor]]:
    """The classes that write reward ``name``; a class defined again under the same name (a config file run twice)
    counts once, as its latest definition."""
    latest: dict[str, type[Processor]] = {}
    for cls in processor_classes():
        if name in cls.reward_names(constants):
            latest[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(latest.values())


def reward_class(name: str, constants: Mapping[str, Any]) -> type[Processor] | None:
    """The processor class that writes reward ``name`` under ``constants``, or None; ``ValueError`` when two do."""
    owners = reward_owners(name, constants)
    if len(owners) > 1:
        raise ValueError(f"reward {name!r} is written by {', '.join(cls.__qualname__ for cls in owners)}; rename one")
    return owners[0] if owners else None


def known_rewards(constants: Mapping[str, Any]) -> list[str]:
    """Every reward name some processor writes under ``constants``."""
    return sorted({name for cls in processor_classes() for name in cls.reward_names(constants)})


def reward_classes(reward_names: Sequence[str], constants: Mapping[str, Any]) -> list[type[Processor]]:
    """The classes that write ``reward_names``, each once, in definition order; ``KeyError`` for a name none
    writes (``reward_problems`` reports those first)."""
    wanted = set()
    for name in reward_names:
        cls = reward_class(name, constants)
        if cls is None:
            raise KeyError(f"no reward processor writes {name!r}")
        wanted.add(cls)
    return [cls for cls in processor_classes() if cls in wanted]


def missing_constants(cls: type[Processor], constants: Mapping[str, Any]) -> list[str]:
    """The constructor parameters of ``cls`` that no constant, run value or default supplies."""
    return [
        name for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in RUN_CONTEXT and name.upper() not in constants and parameter.default is parameter.empty
    ]


def missing_constants_problem(cls: type[Processor], missing: Sequence[str]) -> str:
    """What to do about constructor parameters that no constant supplies."""
    return (f"{cls.__qualname__}'s parameters {list(missing)} match no constant: add "
            f"{', '.join(name.upper() for name in missing)} to smart.py, or give them defaults")


def build_processor(cls: type[Processor], constants: Mapping[str, Any], device: torch.device | None = None
                    ) -> Processor:
    """``cls`` built for a run: each constructor parameter from the constant of its name in upper case
    (``max_audio_duration`` <- ``MAX_AUDIO_DURATION``), ``device`` from the run, the rest left to its default."""
    missing = missing_constants(cls, constants)
    if missing:
        raise TypeError(missing_constants_problem(cls, missing))
    run = {"device": device}
    kwargs = {
        name: run[name] if name in RUN_CONTEXT else constants[name.upper()]
        for name, parameter in inspect.signature(cls).parameters.items()
        if name in RUN_CONTEXT or name.upper() in constants
    }
    return cls(**kwargs)


def build_reward_processors(reward_names: Sequence[str], constants: Mapping[str, Any],
                            device: torch.device | None = None) -> list[Processor]:
    """One processor per class that writes one of ``reward_names``, built from ``constants``."""
    return [build_processor(cls, constants, device) for cls in reward_classes(reward_names, constants)]


def weight_models(reward_names: Sequence[str], constants: Mapping[str, Any]) -> dict[str, str]:
    """Which model weights the rewards ``reward_names`` load, by kind: the one answer to "does this run need
    Audiobox (or CLAP)?" for preflight, run_record.json and evaluation."""
    models: dict[str, str] = {}
    for cls in reward_classes(reward_names, constants):
        models.update(cls.models(constants))
    return models


def reward_problems(reward_weights: Mapping[str, float], constants: Mapping[str, Any],
                    setting: str = "REWARD_WEIGHTS") -> list[str]:
    """Everything that stops ``reward_weights`` (the constant ``setting``) from running under ``constants``."""
    problems = []
    unknown, classes = [], []
    for name in reward_weights:
        try:
            cls = reward_class(name, constants)
        except ValueError as error:
            problems.append(f"{setting}: {error}")
            continue
        if cls is None:
            unknown.append(name)
        elif cls not in classes:
            classes.append(cls)
    if unknown:
        problems.append(
            f"{setting} has {sorted(unknown)}, which no processor writes; known rewards: "
            f"{known_rewards(constants)}. A new reward is a Processor subclass in processors.py or a config file "
            "with REWARDS = ('NAME',)"
        )
    for cls in classes:
        missing = missing_constants(cls, constants)
        if missing:
            problems.append(missing_constants_problem(cls, missing))
        problems += cls.problems(constants)
    if any(w < 0 for w in reward_weights.values()) or sum(reward_weights.values()) <= 0:
        problems.append(f"{setting}={dict(reward_weights)!r}: weights must be >= 0 and sum to more than 0")
    return problems


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

    Same audio as the original method, with less work: see smart_utils/rendering.py, the one place
    rendering is defined.
    An empty score renders as 1 s of silence, as in the original.

    ``num_workers=1`` renders in this process; more start a ``render_pool.RenderPool`` of that many processes
    (forked from one process that loads the soundfont once, in the background, so they share it) that renders
    a batch's records in parallel, in order.
    """

    def __init__(
        self, soundfont_path: str, sample_rate: int, max_duration_seconds: float, num_workers: int = 1,
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


class SoundfontEnsembleProcessor(Processor):
    """Audio rewards that do not hang on one soundfont: every record is rendered with each of ``synths`` (label ->
    synth, or None for the rendering the record already carries, whose audio it keeps), each of ``audio_rewards``
    scores every rendering, and each reward is combined across soundfonts (``combine``: "mean" or "min"). The
    per-soundfont values are logged beside it as ``<reward>@<label>`` (e.g. ``CE@fluidr3``). The record gains the
    first rendering's other fields (``aes_scores``, ...).

    The paper found the soundfont alone moves Audiobox's score by about 1.3 points of 10 on the same MIDI; a
    reward averaged (or, more strictly, minimised) over several soundfonts rewards the music rather than its
    rendering. The cost is one render and one scoring per extra soundfont.
    """

    COMBINE = {"mean": np.mean, "min": np.min}

    def __init__(self, synths: Mapping[str, Processor | None], audio_rewards: Sequence[Processor],
                 combine: str = "mean"):
        if combine not in self.COMBINE:
            raise ValueError(f"combine={combine!r}: give one of {sorted(self.COMBINE)}")
        self.synths, self.audio_rewards, self.combine = dict(synths), list(audio_rewards), combine

    def __call__(self, records: list[Record]) -> list[Record]:
        scored = {label: rendering_rewards(records, self.audio_rewards, synth) for label, synth in self.synths.items()}
        first = next(iter(scored.values()))
        for k, record in enumerate(records):
            record.update({key: value for key, value in first[k].items()
                           if key not in ("audio", "normalized_rewards", "errors") and key not in record})
            names = sorted({name for copies in scored.values() for name in copies[k]["normalized_rewards"]})
            for name in names:
                values = {label: copies[k]["normalized_rewards"].get(name, 0.0) for label, copies in scored.items()}
                record["normalized_rewards"][name] = float(self.COMBINE[self.combine](list(values.values())))
                record["normalized_rewards"].update({f"{name}@{label}": value for label, value in values.items()})
            for label, copies in scored.items():
                record["errors"].extend(f"@{label}: {error}" for error in copies[k]["errors"])
        return records


def rendering_rewards(records: list[Record], rewards: Sequence[Processor], synth: Processor | None
                      ) -> list[Record]:
    """Copies of ``records`` (re-rendered by ``synth`` unless None) scored by ``rewards`` alone: fresh
    ``normalized_rewards`` and ``errors``, the records themselves untouched."""
    copies = [Record(**{**record, "normalized_rewards": {}, "errors": []}) for record in records]
    if synth is not None:
        copies = synth(copies)
    for reward in rewards:
        copies = reward(copies)
    return copies


class AudioBoxAesRewardProcessor(Processor):
    """Meta Audiobox Aesthetics scores of the rendered audio: CE, CU, PC, PQ on a 1-10 scale, rewards = score/10.

    ``audiobox_checkpoint=None`` loads the hub checkpoint (needs a network or the HF cache); a local
    ``checkpoint.pt`` in the format ``audiobox_aesthetics`` saves works offline. A step's clips are scored
    together on ``device`` (None: ``devices.compute_device()``, the rank's own GPU) in chunks of
    ``audiobox_batch_size`` clips (None: what the free GPU memory holds; all at once on a CPU): see
    smart_utils/audiobox.py. ``bf16=True`` (opt-in) scores under bf16 autocast.
    """

    REWARDS = AES_AXES
    READS_AUDIO = True

    def __init__(self, audiobox_checkpoint: str | None = None, audiobox_batch_size: int | None = None,
                 device: torch.device | None = None, bf16: bool = False):
        self.scorer = AudioboxScorer(audiobox_checkpoint, audiobox_batch_size, device, bf16)

    @classmethod
    def models(cls, constants: Mapping[str, Any]) -> dict[str, str]:
        return {"audiobox": constants.get("AUDIOBOX_CHECKPOINT") or AUDIOBOX_HUB_ID}

    @classmethod
    def problems(cls, constants: Mapping[str, Any]) -> list[str]:
        checkpoint = constants.get("AUDIOBOX_CHECKPOINT")
        if checkpoint is not None:
            if Path(checkpoint).is_file():
                return []
            return [f"AUDIOBOX_CHECKPOINT={checkpoint!r} does not exist; give a checkpoint.pt path or None (hub)"]
        problem = hub_problem(AUDIOBOX_HUB_ID, "model.safetensors")
        return [] if problem is None else [
            f"AUDIOBOX_CHECKPOINT=None (the hub checkpoint): {problem}. Give a local checkpoint.pt, or use "
            f"weight-free rewards. {OFFLINE_HINT}"
        ]

    def __call__(self, records: list[Record]) -> list[Record]:
        scores = self.scorer.scores([r["audio"] for r in records], [int(r["sample_rate"]) for r in records])
        for record, row in zip(records, scores.tolist()):
            record["aes_scores"] = dict(zip(AES_AXES, row))
            for axis in AES_AXES:
                record["normalized_rewards"][axis] = record["aes_scores"][axis] / 10
        return records


class ScaleConsistencyReward(Processor):
    """The original's symbolic reward: muspy's scale consistency (best in-scale note share over the 24 major
    and minor scales). As in the original, a score with no pitched notes scores 1.0."""

    REWARDS = ("scale_consistency",)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            value = features.scale_consistency(record["sm"])
            record["scale_consistency"] = 1.0 if math.isnan(value) else value
            record["normalized_rewards"]["scale_consistency"] = record["scale_consistency"]
        return records


class NoteDensityRewardProcessor(Processor):
    """Symbolic reward ``note_density``: notes per beat over the cropped score's first ``beats`` beats, divided
    by ``target_notes_per_beat`` and capped at 1. No notes gives 0. It measures how busy the music is; the
    paper observed tuned models write more notes, and this reward asks for that directly, without audio."""

    REWARDS = ("note_density",)

    def __init__(self, beats: int = 16, target_notes_per_beat: float = 2.0):
        self.beats = beats
        self.target_notes_per_beat = target_notes_per_beat

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            window = crop_score(record["sm"], self.beats)
            density = features.note_count(window) / self.beats
            record["normalized_rewards"]["note_density"] = min(density / self.target_notes_per_beat, 1.0)
        return records


class FilledBeatsRewardProcessor(Processor):
    """Symbolic reward ``filled_beats``: 1 - empty-beat rate (share of beats in which some note sounds).
    A score with no notes gives 0. The paper saw SMART drive the empty-beat rate to zero."""

    REWARDS = ("filled_beats",)

    def __call__(self, records: list[Record]) -> list[Record]:
        for record in records:
            rate = features.empty_beat_rate(record["sm"])
            record["normalized_rewards"]["filled_beats"] = 0.0 if math.isnan(rate) else 1.0 - rate
        return records


class AudioActivityRewardProcessor(Processor):
    """Audio reward ``audio_activity``: the share of the ``max_audio_duration`` seconds a clip may last (the run's
    MAX_AUDIO_DURATION) in which the rendered clip is audible, i.e. the fraction of 50 ms frames whose RMS is
    within ``threshold_db`` of the clip's loudest frame. Frames past the clip's end count as silent, so a 1 s
    clip scores at most 1/10 of 10 s. Silence gives 0; sound that never stops gives 1."""

    REWARDS = ("audio_activity",)
    READS_AUDIO = True

    def __init__(self, max_audio_duration: float, frame_seconds: float = 0.05, threshold_db: float = -30.0):
        self.max_audio_duration = max_audio_duration
        self.frame_seconds = frame_seconds
        self.threshold_db = threshold_db

    def activity(self, audio: np.ndarray, sample_rate: int) -> float:
        """Audible share of the window for one (channels, samples) clip."""
        frame = max(1, int(self.frame_seconds * sample_rate))
        window_frames = max(1, int(self.max_audio_duration * sample_rate) // frame)
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


def grpo_groups(keys: Sequence[Hashable], size: int) -> tuple[list[list[int]], str | None]:
    """The batch's GRPO groups as lists of positions, from each completion's prompt key (``prompt_key``), and why
    they are not TRL's own (None when they are).

    TRL's sampler puts each prompt's ``size`` completions next to each other, so the groups are the consecutive
    blocks of ``size`` completions, provided every block holds one prompt. When the batch does not split that way
    (its length is not a multiple of ``size``, or a block mixes prompts), the completions are grouped by identical
    prompt instead, which merges two groups that drew the same prompt.
    """
    blocks = [list(range(start, min(start + size, len(keys)))) for start in range(0, len(keys), size)]
    if len(keys) % size == 0 and all(len({keys[i] for i in block}) == 1 for block in blocks):
        return blocks, None
    by_prompt: dict[Hashable, list[int]] = {}
    for position, key in enumerate(keys):
        by_prompt.setdefault(key, []).append(position)
    reason = (f"the batch of {len(keys)} does not split into blocks of {size} completions of one prompt; "
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


class GroupDiversityRewardProcessor(Processor):
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

    REWARDS = ("group_diversity",)

    def __init__(self, num_generations: int):
        if num_generations < 1:
            raise ValueError(f"num_generations={num_generations!r}: give the completions per prompt (>= 1)")
        self.num_generations = num_generations
        self.warned = False

    def __call__(self, records: list[Record]) -> list[Record]:
        # A group may span ranks (TRL concatenates the ranks' completions in rank order): the descriptors and
        # prompt keys of the whole batch are gathered, so every group is measured whole.
        local = [(prompt_key(r), features.style_descriptor(r["sm"])) for r in records]
        batch, mine = gather_in_rank_order(local)
        groups, reason = grpo_groups([key for key, _ in batch], self.num_generations)
        if reason is not None:
            for record in records:
                add_error(record, f"group_diversity: {reason}")
            if not self.warned:
                print(f"[group_diversity] warning: {reason} (noted in each record's errors)", flush=True)
                self.warned = True
        values = [0.0] * len(batch)
        for group in groups:
            for i, value in zip(group, mean_distance_to_others([batch[i][1] for i in group])):
                values[i] = value
        for record, value in zip(records, values[mine]):
            record["normalized_rewards"]["group_diversity"] = value
        return records


class ClapRewardProcessor(Processor):
    """What the three CLAP rewards share: a ``ClapEmbedder`` (smart_utils/clap.py), batched clip embeddings and
    fallbacks. A subclass sets ``raw_field``, embeds its prompts and implements ``score``; a clip CLAP cannot score
    meaningfully gets ``UNSCORABLE_REWARD`` and a logged reason."""

    raw_field: str | None = None  # record key for ``score``'s raw values (a float when there is one per clip)
    READS_AUDIO = True
    model_constant = ""  # the constant naming this reward's CLAP model

    def __init__(self, sample_rate: int, model_id: str, device: torch.device | None, batch_size: int | None):
        self.clap = ClapEmbedder(sample_rate, model_id, device, batch_size)
        self.reward_names_written = self.REWARDS

    @classmethod
    def models(cls, constants: Mapping[str, Any]) -> dict[str, str]:
        return {f"clap:{cls.model_constant}": constants[cls.model_constant]}

    @classmethod
    def problems(cls, constants: Mapping[str, Any]) -> list[str]:
        model = constants.get(cls.model_constant)
        problem = None if model is None or Path(model).is_dir() else hub_problem(model, "config.json")
        return [] if problem is None else [
            f"{cls.model_constant}={model!r}: {problem}. Give a local folder saved by ClapModel and "
            f"ClapProcessor.save_pretrained. {OFFLINE_HINT}"
        ]

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (clips, len(reward_names)) in [0, 1] and raw values (clips, k) of (clips, dim) embeddings."""
        raise NotImplementedError

    def fallback(self, record: Record, reason: str) -> None:
        add_error(record, f"{type(self).__name__}: {reason} (rewards {UNSCORABLE_REWARD})")
        record["normalized_rewards"].update(dict.fromkeys(self.reward_names_written, UNSCORABLE_REWARD))
        if self.raw_field:
            record[self.raw_field] = None  # so every row of the log has it

    def __call__(self, records: list[Record]) -> list[Record]:
        scorable, clips = [], []
        for record in records:
            mono, reason = self.clap.mono_clip(record)
            if reason is None:
                scorable.append(record)
                clips.append(mono)
            else:
                self.fallback(record, reason)
        if not clips:
            return records
        rewards, raw = (values.cpu() for values in self.score(self.clap.audio_embeddings(clips)))
        for record, reward_row, raw_row in zip(scorable, rewards, raw):
            if not (torch.isfinite(reward_row).all() and torch.isfinite(raw_row).all()):
                self.fallback(record, "the model's output is not finite")
                continue
            record["normalized_rewards"].update(zip(self.reward_names_written, reward_row.tolist()))
            if self.raw_field:
                record[self.raw_field] = raw_row.item() if raw_row.numel() == 1 else raw_row.tolist()
        return records


class CLAPPromptRewardProcessor(ClapRewardProcessor):
    """Reward ``clap``: how well the clip matches ``target_prompt``, (cosine + 1) / 2 of the CLAP audio and text
    embeddings (laion/larger_clap_music); the cosine is logged as ``clap_score_raw``.

    ``k`` is the original's argument, which its code stores and never uses (its callers passed
    NUM_GENERATIONS; a comment hints at a top-k scheme that was never written): kept for compatibility, no effect.
    """

    REWARDS = ("clap",)
    raw_field = "clap_score_raw"
    model_constant = "CLAP_MODEL"

    def __init__(self, sample_rate: int, clap_prompt: str, clap_k: int, clap_model: str,
                 device: torch.device | None = None, clap_batch_size: int | None = None):
        super().__init__(sample_rate, clap_model, device, clap_batch_size)
        self.target_prompt = clap_prompt
        self.k = clap_k
        self.text_embeds = self.clap.text_embeddings([clap_prompt])

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = torch.nn.functional.cosine_similarity(audio, self.text_embeds)
        return ((cosine + 1) / 2)[:, None], cosine[:, None]


class CLAPZeroShotClassificationRewardProcessor(ClapRewardProcessor):
    """Reward ``clap_clf``: CLAP zero-shot classification of the clip among [target_prompt] + reference_prompts,
    softmax of cosine / temperature (laion/larger_clap_general); the reward is the target's probability, all of
    them are logged as ``clap_clf_probs`` (the original logged them as ``clap_score_raw``, which ``clap`` uses)."""

    REWARDS = ("clap_clf",)
    raw_field = "clap_clf_probs"
    model_constant = "CLAP_CLF_MODEL"

    def __init__(self, sample_rate: int, clap_clf_prompt: str, clap_reference_prompts: Sequence[str],
                 clap_temperature: float, clap_clf_model: str, device: torch.device | None = None,
                 clap_batch_size: int | None = None):
        super().__init__(sample_rate, clap_clf_model, device, clap_batch_size)
        self.prompts = [clap_clf_prompt, *clap_reference_prompts]
        self.temperature = clap_temperature
        self.text_embeds = self.clap.text_embeddings(self.prompts)

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = torch.nn.functional.cosine_similarity(audio[:, None, :], self.text_embeds[None, :, :], dim=-1)
        probs = torch.softmax(cosine / self.temperature, dim=1)
        return probs[:, :1], probs


class PamRewardProcessor(ClapRewardProcessor):
    """PAM rewards (laion/larger_clap_general): for each prompt pair, softmax over (positive, negative) of the
    dot products audio . text / temperature (cosines: the embeddings are normalised), the positive's share,
    as the reward named by the pair's ``shorthand``; ``pam_avg`` is their mean. Nothing else is logged."""

    @classmethod
    def reward_names(cls, constants: Mapping[str, Any]) -> tuple[str, ...]:
        pairs = constants.get("PAM_PROMPTS")
        readable = isinstance(pairs, list | tuple) and all(isinstance(p, dict) and "shorthand" in p for p in pairs)
        return pam_reward_names(pairs) if readable else ()

    @classmethod
    def problems(cls, constants: Mapping[str, Any]) -> list[str]:
        empty = [] if constants.get("PAM_PROMPTS") else ["PAM_PROMPTS is empty, so the PAM rewards have no pair"]
        others = {name for other in processor_classes() if other is not cls for name in other.reward_names(constants)}
        taken = [f"PAM_PROMPTS: shorthand {name!r} is another reward's name; rename it"
                 for name in sorted(set(cls.reward_names(constants)) & others)]
        return empty + taken + super().problems(constants)

    model_constant = "PAM_MODEL"

    def __init__(self, sample_rate: int, pam_prompts: Sequence[PromptPair], pam_temperature: float, pam_model: str,
                 device: torch.device | None = None, clap_batch_size: int | None = None):
        super().__init__(sample_rate, pam_model, device, clap_batch_size)
        self.prompt_configs = list(pam_prompts)
        self.temperature = pam_temperature
        self.reward_names_written = pam_reward_names(self.prompt_configs)
        # all positives, then all negatives, as the original stacked them
        self.text_embeds = self.clap.text_embeddings([pair["positive"] for pair in self.prompt_configs]
                                                + [pair["negative"] for pair in self.prompt_configs])

    def score(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = len(self.prompt_configs)
        similarity = audio @ self.text_embeds.T
        paired = torch.stack([similarity[:, :pairs], similarity[:, pairs:]], dim=-1)
        positive = torch.softmax(paired / self.temperature, dim=-1)[..., 0]
        return torch.cat([positive, positive.mean(dim=1, keepdim=True)], dim=1), positive[:, :0]


class ProgramPromptAdherenceRewardProcessor(Processor):
    """Reward ``programs_iou``: |head ∩ body| / |head ∪ body| over the Program token sets before and after the
    first ``Bar_None``. Needs ``prompt_and_completion_tokens`` (the decoder writes them)."""

    REWARDS = ("programs_iou",)

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

    # The original's name; REWARD_WEIGHTS' programs_iou means ProgramPromptAdherenceRewardProcessor's, so this
    # class is not found by name (empty REWARDS) and TrackIoURewardProcessor writes programs_iou_tracks.
    reward_name = "programs_iou"

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


class TrackIoURewardProcessor(TrackPromptAdherenceRewardProcessor):
    """``TrackPromptAdherenceRewardProcessor`` writing ``programs_iou_tracks``, so that it can be chosen (or weighted
    beside the token-set ``programs_iou``) from REWARD_WEIGHTS."""

    REWARDS = ("programs_iou_tracks",)
    reward_name = "programs_iou_tracks"


class ListenersRewardProcessor(Processor):
    """Reward ``listeners``: the rating a model fitted on a listening study predicts for the clip (listen.py fit),
    mapped to [0, 1] by the study's 1-10 scale. ``listeners_model`` is the folder it was saved in.

    The features it needs are computed as the fit computed them (listening.fit.clip_features): the paper's MIDI
    features of the decoded score, the weight-free rewards of the clip, and Audiobox's axes when the model uses
    them (scored with the run's AUDIOBOX_CHECKPOINT). A model that needs features this run cannot compute, or one
    marked unreliable, stops the run at its start (``problems``), never in the middle.
    """

    REWARDS = ("listeners",)
    READS_AUDIO = True

    def __init__(self, listeners_model: str | None, max_audio_duration: float, audiobox_checkpoint: str | None = None,
                 device: torch.device | None = None):
        from listening.fit import load_model

        if listeners_model is None:
            raise ValueError("LISTENERS_MODEL is None: fit a model with python listen.py fit STUDY --out DIR")
        self.model = load_model(listeners_model)
        needed = set(self.model.required_features)
        rewards = [ScaleConsistencyReward(), NoteDensityRewardProcessor(), FilledBeatsRewardProcessor(),
                   AudioActivityRewardProcessor(max_audio_duration)]
        self.rewards = [r for r in rewards if {f"reward_{name}" for name in r.REWARDS} & needed]
        self.audiobox = AudioboxScorer(audiobox_checkpoint, None, device) if needed & set(AES_AXES) else None

    @classmethod
    def models(cls, constants: Mapping[str, Any]) -> dict[str, str]:
        needs_audiobox = set(AES_AXES) & set(cls.needed_features(constants))
        return AudioBoxAesRewardProcessor.models(constants) if needs_audiobox else {}

    @staticmethod
    def needed_features(constants: Mapping[str, Any]) -> tuple[str, ...]:
        """The features of the run's model (empty when it cannot be read; ``problems`` says why)."""
        from listening.fit import FitError, load_model

        try:
            return load_model(constants["LISTENERS_MODEL"]).required_features
        except (FitError, KeyError, TypeError):
            return ()

    @classmethod
    def problems(cls, constants: Mapping[str, Any]) -> list[str]:
        from listening.fit import FitError, load_model

        folder = constants.get("LISTENERS_MODEL")
        if folder is None:
            return ["LISTENERS_MODEL is None: fit a reward model with python listen.py fit STUDY --out DIR and "
                    "give its folder"]
        try:
            model = load_model(folder)
        except FitError as error:
            return [f"LISTENERS_MODEL={folder!r}: {error}"]
        if not model.reliable:
            return [f"LISTENERS_MODEL={folder!r} is marked unreliable ({'; '.join(model.reasons)}): it predicts the "
                    "ratings no better than their mean, so tuning toward it would be noise; collect more ratings"]
        computable = set(features.FEATURES) | set(features.EXTRA_FEATURES) | set(AES_AXES) | {
            f"reward_{name}" for name in STANDALONE_REWARDS}
        unknown = sorted(set(model.required_features) - computable)
        problems = [f"LISTENERS_MODEL={folder!r} needs features this project cannot compute: {unknown}; refit it "
                    "with this version (python listen.py fit)"] if unknown else []
        audiobox = sorted(set(model.required_features) & set(AES_AXES))
        if audiobox and AudioBoxAesRewardProcessor.problems(constants):
            problems.append(f"LISTENERS_MODEL={folder!r} needs the Audiobox features {audiobox}, which this run "
                            f"cannot compute: {AudioBoxAesRewardProcessor.problems(constants)[0]} Refit it without "
                            "them (python listen.py fit STUDY --features midi rewards)")
        return problems

    def __call__(self, records: list[Record]) -> list[Record]:
        from listening.fit import clip_features, normalised, predict

        probes = [{**record, "normalized_rewards": {}} for record in records]  # the inputs are not the run's rewards
        for reward in self.rewards:
            probes = reward(probes)
        aes = (self.audiobox.scores([r["audio"] for r in records], [int(r["sample_rate"]) for r in records])
               if self.audiobox is not None else None)
        for k, (record, probe) in enumerate(zip(records, probes)):
            scores = {f"reward_{name}": value for name, value in probe["normalized_rewards"].items()}
            if aes is not None:
                scores.update(zip(AES_AXES, aes[k].tolist()))
            rating = predict(self.model, clip_features(record["sm"], scores))
            record["listeners_rating"] = rating
            record["normalized_rewards"]["listeners"] = normalised(self.model, rating)
        return records


# The rewards that need no model weights and score each clip on its own (no multi-track prompt, no GRPO group):
# what a tool that scores single pieces can always compute (the listening study's manifest, the reward audit).
STANDALONE_REWARDS = ("scale_consistency", "note_density", "filled_beats", "audio_activity")
