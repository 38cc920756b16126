"""Sampling pieces from a model directory, a training checkpoint or a SMART run (generate.py, evaluation.py, the
listening study).

The prompts come from the project's prompt sources (smart_utils/prompts.py) and depend only on (source, n, seed), and
sampling is seeded, so two models given the same arguments answer the same prompts: that is what evaluation.py
compares. Completions are decoded exactly as the reward does during training (MidiTokToSymusicProcessor: cut at EOS,
cropped to ``max_beats``). A sample folder holds ``0000.mid, 0001.mid, ...``, optional ``0000.wav, ...`` and
``samples.csv`` (sample, prompt, seed, model), which evaluation.py reads to know each file's prompt.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import symusic
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from processors import MidiTokToSymusicProcessor, TinySoundfontSynthProcessor
from smart_utils.devices import compute_device
from smart_utils.features import score_seconds
from smart_utils.files import write_wav
from smart_utils.model_paths import resolve_model_dir
from smart_utils.prompts import PROMPT_SOURCES, build_prompts
from smart_utils.rendering import RenderSettings
from smart_utils.tokenizer import load_tokenizers, writes_tracks_in_one_stream

SAMPLES_FILE = "samples.csv"


@dataclass(frozen=True)
class GenerationSettings:
    """How pieces are sampled; the defaults are smart.py's training settings (docs/paper.md)."""

    n: int = 100
    prompt_source: str = "procedural-no-starting-note"  # the paper's main setting
    prompt_midi_dir: str | None = None  # folder of MIDI files for prompt_source="dataset"
    seed: int = 0
    max_new_tokens: int = 256  # the paper's eval used max_length=256 *including* the prompt: 252 new tokens
    temperature: float = 1.0
    top_k: int = 50  # transformers' default, which the paper's eval and training inherited; 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_beats: int | None = 100  # crop as the training reward does
    batch_size: int = 16


def sample_completions(
    model: torch.nn.Module, bridge, prompts: list[str], settings: GenerationSettings, device: str
) -> list[list[int]]:
    """Prompt + completion ids for every prompt: sampled in batches, cut after the first EOS, padding removed."""
    torch.manual_seed(settings.seed)
    sequences = []
    batches = range(0, len(prompts), settings.batch_size)
    for start in tqdm(batches, desc="sampling", unit="batch", leave=False):
        batch = bridge(prompts[start : start + settings.batch_size], return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            output = model.generate(
                **batch,
                do_sample=True,
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                pad_token_id=bridge.pad_token_id,
                eos_token_id=bridge.eos_token_id,
            )
        prompt_length = batch["input_ids"].shape[1]
        for prompt_ids, mask, completion in zip(batch["input_ids"], batch["attention_mask"], output[:, prompt_length:]):
            ids = completion.tolist()
            if bridge.eos_token_id in ids:
                ids = ids[: ids.index(bridge.eos_token_id) + 1]
            sequences.append(prompt_ids[mask.bool()].tolist() + ids)
    return sequences


def render_wavs(scores: list[symusic.Score], paths: list[Path], render: RenderSettings) -> None:
    """Render scores with the training renderer (peak-normalised, at most ``render.max_audio_seconds``) into WAVs."""
    synth = TinySoundfontSynthProcessor(render.soundfont_path, render.sample_rate, render.max_audio_seconds)
    for score, path in tqdm(list(zip(scores, paths)), desc="rendering", unit="piece", leave=False):
        write_wav(path, synth.render(score, score_seconds(score)), render.sample_rate)


def generate_pieces(
    model_path: str | Path,
    out_dir: str | Path,
    settings: GenerationSettings = GenerationSettings(),
    render: RenderSettings | None = None,
    device: str | None = None,
) -> list[Path]:
    """Sample ``settings.n`` pieces from a model, checkpoint or run folder; return the MIDI paths written.

    The MIDI files are ``out_dir/0000.mid ...``; with ``render`` each also gets a WAV beside it, rendered so. The
    prompts and settings go to ``out_dir/samples.csv``.
    """
    model_dir = resolve_model_dir(model_path)
    device = str(compute_device(device))
    remi, bridge = load_tokenizers(str(model_dir))
    prompts = build_prompts(settings.prompt_source, remi, settings.n, settings.seed, settings.prompt_midi_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False).to(device).eval()
    sequences = sample_completions(model, bridge, prompts, settings, device)

    decoder = MidiTokToSymusicProcessor(remi, writes_tracks_in_one_stream(remi), max_beats=settings.max_beats)
    records = decoder([{"prompt_and_completion": ids} for ids in sequences])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:04d}.mid" for i in range(len(records))]
    for record, path in zip(records, paths):
        record["sm"].dump_midi(str(path))
    if render is not None:
        render_wavs([r["sm"] for r in records], [p.with_suffix(".wav") for p in paths], render)
    write_samples_csv(out, paths, prompts, model_dir, settings)
    return paths


def write_samples_csv(
    out: Path, paths: list[Path], prompts: list[str], model_dir: Path | str, settings: GenerationSettings
) -> None:
    """Which prompt each file answers, and the settings that made it (so evaluation.py can pair and report)."""
    with open(out / SAMPLES_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "prompt", "model", *asdict(settings)])
        for path, prompt in zip(paths, prompts):
            writer.writerow([path.name, prompt, str(model_dir), *asdict(settings).values()])


def read_samples_csv(folder: Path) -> dict[str, str]:
    """File name -> prompt from a folder written by ``generate_pieces``; empty if the folder has no samples.csv."""
    table = folder / SAMPLES_FILE
    if not table.is_file():
        return {}
    with open(table, newline="") as handle:
        return {row["sample"]: row["prompt"] for row in csv.DictReader(handle)}


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling options, shared with evaluation.py's command line."""
    defaults = GenerationSettings()
    parser.add_argument("--n", type=int, default=defaults.n, help="pieces per model (default %(default)s)")
    parser.add_argument("--prompt-source", default=defaults.prompt_source, choices=PROMPT_SOURCES,
                        help="prompt generator from smart_utils/prompts.py (default: %(default)s, the paper's)")
    parser.add_argument("--prompt-midi-dir", default=None, help="MIDI folder for --prompt-source dataset")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for prompts and sampling")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="tokens sampled after the prompt (default %(default)s; the paper's eval used 252)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="0 = off (default %(default)s, as training)")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="1.0 = off (default)")
    parser.add_argument("--max-beats", type=int, default=defaults.max_beats,
                        help="crop decoded pieces to this many beats, as the training reward does")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="prompts sampled at once")


def settings_from_arguments(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(
        n=args.n, prompt_source=args.prompt_source, prompt_midi_dir=args.prompt_midi_dir, seed=args.seed,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        max_beats=args.max_beats, batch_size=args.batch_size,
    )
