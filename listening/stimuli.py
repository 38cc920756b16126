"""Stimuli for a blind listening study: the paper's clip rule, loudness matching, a manifest (listen.py build).

The paper's stimuli (docs/paper.md; the original's deleted ``sample_examples.py``): every system answers the same
prompts; a piece is sampled with up to 512 tokens at temperature 1.0 and re-sampled until it has no empty beat and
lasts at least 8 s; it is rendered for 10 s at 48 kHz. Here the re-sampling is bounded (``max_tries`` rounds, and a
prompt that never passes falls back to its best try, reported), every round uses the same seed for every system,
clips are loudness-matched (ITU-R BS.1770 with pyloudnorm) so that loudness does not decide ratings, and file names
are random ids, so a listener (or a researcher playing files from a folder) cannot tell the systems apart.

The study folder::

    manifest.json            settings, soundfont (and its SHA-256), and one entry per clip: its system, prompt,
                             seed, try, rule values, loudness and every score the project can compute for it
    stimuli/<id>.wav         the clips (16-bit, 48 kHz), the only files the study page serves
    midi/<id>.mid            the pieces behind the clips
    gorilla_spreadsheet.csv  the original's hosted-survey layout: display="Trial", Stimulus=<file name>
"""

from __future__ import annotations

import csv
import math
import random
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyloudnorm
import symusic
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from listening.study import GORILLA_CSV, MANIFEST, MIDI_DIR, STIMULI_DIR
from processors import STANDALONE_REWARDS, MidiTokToSymusicProcessor, TinySoundfontSynthProcessor
from smart_utils import features
from smart_utils.devices import compute_device
from smart_utils.evaluation import audio_scores, is_model, load_audiobox, named_reward_processors
from smart_utils.features import score_seconds
from smart_utils.files import file_digest, list_midi_files, write_json_atomically, write_wav
from smart_utils.generation import GenerationSettings, read_samples_csv, sample_completions
from smart_utils.model_paths import resolve_model_dir
from smart_utils.prompts import build_prompts
from smart_utils.records import crop_score
from smart_utils.run_folder import read_run_config
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont
from smart_utils.tokenizer import load_tokenizers

MIN_SECONDS = 8.0  # the paper's rule: a piece lasts at least 8 s ...
MAX_EMPTY_BEAT_RATE = 0.0  # ... and has no empty beat
PEAK_CEILING_DB = -1.0  # no clip is amplified above this sample peak (dBFS): a louder target is lowered for all
FALLBACK_SOUNDFONT = "timgm6mb"  # always installed (pretty_midi's wheel)
# The original sampled with max_length=512 *including* the paper's 4-token prompt.
STUDY_GENERATION = GenerationSettings(n=15, seed=42, max_new_tokens=508, max_beats=None)


@dataclass
class Piece:
    """One system's answer to one prompt, and how it was found."""

    system: str
    prompt_index: int
    prompt: str
    seed: int | None  # the sampling round's seed (None for a MIDI file)
    tries: int  # rounds sampled for this prompt (1 for a MIDI file)
    accepted_try: int  # the round whose piece was kept (0-based)
    passed_rule: bool
    score: symusic.Score = field(repr=False)
    source: str = ""  # the model it was sampled from, or its MIDI file

    @property
    def rule_values(self) -> dict[str, float]:
        return {"duration_s": score_seconds(self.score), "empty_beat_rate": features.empty_beat_rate(self.score)}


def passes_rule(score: symusic.Score) -> bool:
    """The paper's stimulus rule: no empty beat and at least 8 s long (a score without notes never passes)."""
    rate = features.empty_beat_rate(score)
    return not math.isnan(rate) and rate <= MAX_EMPTY_BEAT_RATE and score_seconds(score) >= MIN_SECONDS


def closeness(score: symusic.Score) -> tuple[float, float]:
    """How near a failed piece is to the rule (larger is nearer): fewer empty beats first, then longer."""
    rate = features.empty_beat_rate(score)
    return (-1.0 if math.isnan(rate) else -rate, min(score_seconds(score), MIN_SECONDS))


def round_seed(seed: int, attempt: int) -> int:
    """The seed of sampling round ``attempt``: the same for every system, so their pieces are comparable."""
    return seed + 1000 * attempt


# ---------------------------------------------------------------------------------------------------------------
# Pieces


def sample_model_pieces(
    name: str, source: str, prompts: list[str], settings: GenerationSettings, max_tries: int, device: str,
) -> list[Piece]:
    """Sample every prompt in rounds until its piece passes the rule or ``max_tries`` rounds are spent.

    Each round samples *all* prompts with that round's seed (``round_seed``), so the batch a round sees, and hence
    every piece, depends only on (model, prompts, seed, round): two systems get the same randomness, and the round
    a piece came from is enough to reproduce it. A prompt keeps its first passing piece; one that never passes
    falls back to its try nearest the rule.
    """
    model_dir = resolve_model_dir(source)
    remi, bridge = load_tokenizers(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False).to(device).eval()
    decoder = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=settings.max_beats)
    best: dict[int, tuple[tuple[float, float], int, symusic.Score]] = {}
    accepted: dict[int, tuple[int, symusic.Score]] = {}
    progress = tqdm(total=len(prompts), desc=f"{name}: pieces passing the rule", unit="prompt")
    attempt = 0
    while attempt < max_tries and len(accepted) < len(prompts):
        round_settings = replace(settings, seed=round_seed(settings.seed, attempt))
        sequences = sample_completions(model, bridge, prompts, round_settings, device)
        records = decoder([{"prompt_and_completion": ids} for ids in sequences])
        for index, record in enumerate(records):
            if index in accepted:
                continue
            score = record["sm"]
            if passes_rule(score):
                accepted[index] = (attempt, score)
                progress.update()
            elif index not in best or closeness(score) > best[index][0]:
                best[index] = (closeness(score), attempt, score)
        attempt += 1
    progress.close()
    pieces = []
    for index, prompt in enumerate(prompts):
        passed = index in accepted
        kept, score = accepted[index] if passed else best[index][1:]
        pieces.append(Piece(name, index, prompt, round_seed(settings.seed, kept),
                            kept + 1 if passed else attempt, kept, passed, score, source=str(model_dir)))
    return pieces


def folder_pieces(name: str, folder: Path, prompts: list[str], max_beats: int | None) -> list[Piece]:
    """The first ``len(prompts)`` MIDI files of a folder (sorted), file k answering prompt k.

    A folder written by generate.py with the same prompt source and seed answers the same prompts in the same
    order; its own samples.csv prompt is recorded. A MIDI file cannot be re-sampled: one that fails the rule is
    kept and reported as a fallback.
    """
    files = list_midi_files(folder)
    if len(files) < len(prompts):
        raise ValueError(f"system {name}: {folder} holds {len(files)} MIDI files but the study needs {len(prompts)} "
                         f"(one per prompt); lower --prompts or add files")
    own_prompts = read_samples_csv(folder)
    pieces = []
    for index, path in enumerate(files[: len(prompts)]):
        score = symusic.Score(str(path))
        if max_beats is not None:
            score = crop_score(score, max_beats)
        prompt = own_prompts.get(str(path.relative_to(folder)), prompts[index])
        pieces.append(Piece(name, index, prompt, None, 1, 0, passes_rule(score), score, source=str(path)))
    return pieces


def study_prompts(systems: Mapping[str, str], settings: GenerationSettings) -> list[str]:
    """The prompts every system answers, built with the first model system's tokenizer (one vocabulary for all);
    with MIDI folders only, the placeholder ``file <k>`` (the folders' own samples.csv prompts are recorded)."""
    for source in systems.values():
        if is_model(source):
            remi, _ = load_tokenizers(str(resolve_model_dir(source)))
            return build_prompts(settings.prompt_source, remi, settings.n, settings.seed, settings.prompt_midi_dir)
    return [f"file {k}" for k in range(settings.n)]


# ---------------------------------------------------------------------------------------------------------------
# Soundfont


def run_config_of(source: str) -> dict[str, Any] | None:
    """smart.py's saved constants for a run folder, or for a checkpoint inside one; None for anything else."""
    folder = Path(source)
    return read_run_config(folder) or read_run_config(folder.parent)


def choose_soundfont(requested: str | None, systems: Mapping[str, str]) -> tuple[str, str, str]:
    """(name or path, resolved file, why it was chosen): the one asked for, else the first run's SOUNDFONT, else
    MuseScore General, else the always-installed TimGM6mb (said loudly: it is a small GM font)."""
    if requested is not None:
        return requested, resolve_soundfont(requested), "given with --soundfont"
    for source in systems.values():
        config = run_config_of(source)
        if config and config.get("SOUNDFONT"):
            return config["SOUNDFONT"], resolve_soundfont(config["SOUNDFONT"]), f"the SOUNDFONT of run {source}"
    try:
        return "musescore", resolve_soundfont("musescore"), "no run among the systems; MuseScore General (smart.py's)"
    except SoundfontNotFound as error:
        print(f"[listen] {error}\n[listen] FALLING BACK to {FALLBACK_SOUNDFONT}: pass --soundfont to choose")
        return FALLBACK_SOUNDFONT, resolve_soundfont(FALLBACK_SOUNDFONT), "MuseScore General not found: fallback"


# ---------------------------------------------------------------------------------------------------------------
# Loudness


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness (LUFS) of a (channels, samples) clip; NaN when it is silent or shorter
    than one 400 ms gating block (such a clip has no defined loudness and is left as it is)."""
    meter = pyloudnorm.Meter(sample_rate)
    if audio.shape[-1] < int(meter.block_size * sample_rate) or not np.any(audio):
        return math.nan
    loudness = meter.integrated_loudness(np.asarray(audio, dtype=np.float64).T)
    return float(loudness) if np.isfinite(loudness) else math.nan


def loudness_target(loudness: Sequence[float], peaks: Sequence[float], target: float) -> float:
    """The common loudness every clip is set to: ``target`` unless a clip would then peak above PEAK_CEILING_DB,
    in which case the target is lowered for *all* clips (clipping, or a limiter, would change the sound)."""
    headroom = [PEAK_CEILING_DB - 20 * math.log10(p) + lufs for lufs, p in zip(loudness, peaks)
                if math.isfinite(lufs) and p > 0]
    return min([target, *headroom])


# ---------------------------------------------------------------------------------------------------------------
# The build


@dataclass
class BuildReport:
    """What the build did, for the console and the manifest."""

    tries: dict[str, dict[int, int]]  # system -> {tries needed: number of prompts}
    fell_back: dict[str, list[int]]  # system -> prompt indices whose piece fails the rule
    target_lufs: float
    effective_lufs: float
    unmeasurable: list[str]  # clip ids without a defined loudness (left unscaled)
    seconds: float

    def lines(self) -> list[str]:
        out = []
        for system, counts in self.tries.items():
            spread = ", ".join(f"{n} prompt(s) in {t} tr{'y' if t == 1 else 'ies'}" for t, n in sorted(counts.items()))
            fell = self.fell_back[system]
            out.append(f"{system}: {spread}; "
                       + (f"fell back (rule not met) for prompt(s) {fell}" if fell else "every piece meets the rule"))
        lowered = self.effective_lufs < self.target_lufs - 1e-9
        out.append(f"loudness: every clip at {self.effective_lufs:.2f} LUFS"
                   + (f" (target {self.target_lufs} lowered so that no clip peaks above {PEAK_CEILING_DB} dBFS)"
                      if lowered else ""))
        if self.unmeasurable:
            out.append(f"no defined loudness (silent or < 0.4 s), left unscaled: {self.unmeasurable}")
        out.append(f"built in {self.seconds:.1f} s")
        return out


def new_clip_id(taken: set[str]) -> str:
    """A random id that says nothing about the system (nor the order of creation)."""
    while (clip_id := secrets.token_hex(6)) in taken:
        continue
    taken.add(clip_id)
    return clip_id


def build_study(
    systems: Mapping[str, str],
    out_dir: str | Path,
    *,
    constants: Mapping[str, Any],
    generation: GenerationSettings = STUDY_GENERATION,
    max_tries: int = 10,
    soundfont: str | None = None,
    audiobox: str | None = None,
    target_lufs: float = -23.0,
    device: str | None = None,
) -> BuildReport:
    """Write a study folder (see the module docstring) for ``systems`` (name -> model, checkpoint, run or MIDI
    folder); every system answers ``generation.n`` prompts. Clips are rendered as ``constants`` (smart.py's, or a
    run's) render for the reward: sample_rate, MAX_AUDIO_DURATION. The study is written to ``<out>.partial`` and renamed
    when complete, so Ctrl-C never leaves a half-built study; a non-empty ``out`` is refused, so that a collected
    study's clips are never replaced under its responses. The rendered clips stay in memory until every loudness
    is known (3.8 MB per 10 s clip: 115 MB for the paper's 30)."""
    final = Path(out_dir)
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty: choose a new --out (a study's clips are never "
                              f"replaced under its responses)")
    out = final.with_name(final.name + ".partial")  # renamed at the end: an interrupted build leaves no study
    if out.exists():
        shutil.rmtree(out)
    if max_tries < 1:
        raise ValueError(f"max_tries={max_tries}: give at least 1")
    started = time.perf_counter()
    device = str(compute_device(device))
    sf_name, sf_path, sf_why = choose_soundfont(soundfont, systems)
    print(f"[listen] soundfont {sf_name} ({sf_path}): {sf_why}")
    sample_rate, clip_seconds = constants["SAMPLE_RATE"], constants["MAX_AUDIO_DURATION"]
    aes, why_not = load_audiobox(audiobox, device)  # before sampling: a bad checkpoint fails fast
    if audiobox is not None and aes is None:
        raise ValueError(f"--audiobox {audiobox}: {why_not}; fix the path or leave --audiobox out")
    prompts = study_prompts(systems, generation)

    pieces: list[Piece] = []
    for name, source in systems.items():
        if is_model(source):
            pieces += sample_model_pieces(name, source, prompts, generation, max_tries, device)
        else:
            pieces += folder_pieces(name, Path(source), prompts, generation.max_beats)

    scorers = ([aes] if aes else []) + named_reward_processors(STANDALONE_REWARDS, constants, device)
    synth = TinySoundfontSynthProcessor(sf_path, sample_rate, clip_seconds)
    audio: dict[int, np.ndarray] = {}
    values = audio_scores([p.score for p in pieces], synth, scorers, "rendering and scoring clips",
                          on_clip=lambda k, clip: audio.__setitem__(k, np.array(clip)))

    loudness = [integrated_loudness(audio[k], sample_rate) for k in range(len(pieces))]
    peaks = [float(np.abs(audio[k]).max()) for k in range(len(pieces))]
    effective = loudness_target(loudness, peaks, target_lufs)

    (out / STIMULI_DIR).mkdir(parents=True, exist_ok=True)
    (out / MIDI_DIR).mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    clips = []
    for k in random.sample(range(len(pieces)), len(pieces)):  # written in random order: no hint in file times
        piece = pieces[k]
        clip_id = new_clip_id(taken)
        gain_db = effective - loudness[k] if math.isfinite(loudness[k]) else 0.0
        scaled = audio[k] * np.float32(10 ** (gain_db / 20))
        file = f"{STIMULI_DIR}/{clip_id}.wav"
        write_wav(out / file, scaled, sample_rate)
        piece.score.dump_midi(str(out / MIDI_DIR / f"{clip_id}.mid"))
        clips.append({
            "id": clip_id, "file": file, "midi": f"{MIDI_DIR}/{clip_id}.mid", "system": piece.system,
            "prompt_index": piece.prompt_index, "prompt": piece.prompt, "seed": piece.seed, "tries": piece.tries,
            "accepted_try": piece.accepted_try, "passed_rule": piece.passed_rule, "source": piece.source,
            **piece.rule_values, "audio_seconds": audio[k].shape[1] / sample_rate,
            "loudness_lufs_rendered": loudness[k], "gain_db": gain_db,
            "peak_dbfs": 20 * math.log10(peaks[k] * 10 ** (gain_db / 20)) if peaks[k] > 0 else -math.inf,
            "soundfont_sha256": None,  # filled below: one hash for the whole study
            "scores": values[k],
        })
    digest = file_digest(sf_path)
    for clip in clips:
        clip["soundfont_sha256"] = digest
    clips.sort(key=lambda c: c["id"])

    report = BuildReport(
        tries={name: count_tries([p for p in pieces if p.system == name]) for name in systems},
        fell_back={name: [p.prompt_index for p in pieces if p.system == name and not p.passed_rule]
                   for name in systems},
        target_lufs=target_lufs, effective_lufs=effective,
        unmeasurable=[c["id"] for c in clips if not math.isfinite(c["loudness_lufs_rendered"])],
        seconds=time.perf_counter() - started,
    )
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "systems": dict(systems),
        "generation": asdict(generation), "max_tries": max_tries,
        "rule": {"max_empty_beat_rate": MAX_EMPTY_BEAT_RATE, "min_seconds": MIN_SECONDS},
        "render": {"sample_rate": sample_rate, "clip_seconds": clip_seconds},
        "soundfont": {"name": sf_name, "path": sf_path, "sha256": digest, "why": sf_why},
        "loudness": {"standard": "ITU-R BS.1770-4 (pyloudnorm)", "target_lufs": target_lufs,
                     "effective_lufs": effective, "peak_ceiling_dbfs": PEAK_CEILING_DB},
        "scores": {"computed_on": "the rendered clip before loudness matching, as the reward sees it in training",
                   "audiobox_skipped": why_not},
        "report": report.lines(),
        "clips": clips,
    }
    write_json_atomically(out / MANIFEST, manifest)
    write_gorilla_csv(out / GORILLA_CSV, [c["file"] for c in clips])
    if final.exists():
        final.rmdir()  # empty (checked above)
    out.rename(final)
    return report


def count_tries(pieces: Sequence[Piece]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for piece in pieces:
        counts[piece.tries] = counts.get(piece.tries, 0) + 1
    return counts


def write_gorilla_csv(path: Path, files: Sequence[str]) -> None:
    """The original's hosted-survey spreadsheet: one row per clip, display="Trial", Stimulus=the file name
    (upload stimuli/*.wav to the service's stimuli store; the service randomises the trials)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["display", "Stimulus"])
        writer.writerows(["Trial", Path(file).name] for file in sorted(files, key=lambda f: Path(f).name))
