"""Sample pieces from a model directory, a training checkpoint or a SMART run, and write them as MIDI (and WAV).

    python generate.py models/piano-tiny --n 16 --out samples/base
    python generate.py artefacts/runs/<run> --n 16 --out samples/tuned --soundfont timgm6mb
    python generate.py artefacts/runs/<run>/checkpoint-100 --prompt-source dataset --prompt-midi-dir data/test

The prompts come from the project's prompt sources (prompts.py) and depend only on (source, n, seed), and sampling
is seeded, so two models given the same arguments answer the same prompts: that is what evaluation.py compares.
Completions are decoded exactly as the reward does during training (MidiTokToSymusicProcessor: cut at EOS,
cropped to ``max_beats``). The output folder holds ``0000.mid, 0001.mid, ...``, optional ``0000.wav, ...`` and
``samples.csv`` (sample, prompt, seed, model), which evaluation.py reads to know each file's prompt.
"""

from __future__ import annotations

import argparse
import csv
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import symusic
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM
from transformers.trainer_utils import get_last_checkpoint

from midi_tokenizer import is_multitrack, load_tokenizers
from processors import (
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_SAMPLE_RATE,
    MidiTokToSymusicProcessor,
    TinySoundfontSynthProcessor,
    score_seconds,
)
from prompts import PROMPT_SOURCES, build_prompts
from reward_manager import write_wav
from soundfonts import resolve_soundfont

SAMPLES_FILE = "samples.csv"
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


@dataclass(frozen=True)
class GenerationSettings:
    """How pieces are sampled; the defaults are smart.py's training settings (paper.md §1.5)."""

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


def has_weights(folder: Path) -> bool:
    """Whether a folder is a saved HF model (a run folder's final model, a checkpoint, a model directory)."""
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def is_hub_id(text: str) -> bool:
    """``owner/name`` that is not a local path: a model to fetch from the Hugging Face hub."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not Path(text).exists()


def resolve_model_dir(path: str | Path) -> Path | str:
    """The model a path stands for: the path itself if it holds weights (or is a hub id), else a run's latest
    checkpoint. A finished SMART run saves its tuned model in the run folder itself, so that wins over checkpoints.
    """
    folder = Path(path)
    if has_weights(folder) or is_hub_id(str(path)):
        return path
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is None:
        raise FileNotFoundError(
            f"{path}: no model weights ({', '.join(WEIGHT_FILES)}) and no checkpoint-<step>/ inside"
        )
    return Path(last)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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


def render_wavs(scores: list[symusic.Score], paths: list[Path], soundfont: str) -> None:
    """Render scores with the training renderer (48 kHz, at most 10 s, peak-normalised) into WAV files."""
    synth = TinySoundfontSynthProcessor(resolve_soundfont(soundfont), DEFAULT_SAMPLE_RATE, DEFAULT_MAX_AUDIO_SECONDS)
    for score, path in tqdm(list(zip(scores, paths)), desc="rendering", unit="piece", leave=False):
        write_wav(path, synth.render(score, score_seconds(score)), DEFAULT_SAMPLE_RATE)


def generate_pieces(
    model_path: str | Path,
    out_dir: str | Path,
    settings: GenerationSettings = GenerationSettings(),
    soundfont: str | None = None,
    device: str | None = None,
) -> list[Path]:
    """Sample ``settings.n`` pieces from a model, checkpoint or run folder; return the MIDI paths written.

    The MIDI files are ``out_dir/0000.mid ...``; with a ``soundfont`` each also gets a WAV beside it. The prompts
    and settings go to ``out_dir/samples.csv``.
    """
    model_dir = resolve_model_dir(model_path)
    device = device or default_device()
    remi, bridge = load_tokenizers(str(model_dir))
    prompts = build_prompts(settings.prompt_source, remi, settings.n, settings.seed, settings.prompt_midi_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False).to(device).eval()
    sequences = sample_completions(model, bridge, prompts, settings, device)

    decoder = MidiTokToSymusicProcessor(remi, is_multitrack(remi), max_beats=settings.max_beats)
    records = decoder([{"prompt_and_completion": ids} for ids in sequences])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:04d}.mid" for i in range(len(records))]
    for record, path in zip(records, paths):
        record["sm"].dump_midi(str(path))
    if soundfont is not None:
        render_wavs([r["sm"] for r in records], [p.with_suffix(".wav") for p in paths], soundfont)
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
                        help="prompt generator from prompts.py (default: %(default)s, the paper's)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory, checkpoint-<step> folder, or SMART run folder")
    parser.add_argument("--out", required=True, help="folder for the MIDI files (created)")
    parser.add_argument("--soundfont", default=None, help="also write WAVs rendered with this soundfont name or path")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_generation_arguments(parser)
    args = parser.parse_args()
    paths = generate_pieces(args.model, args.out, settings_from_arguments(args), args.soundfont, args.device)
    print(f"wrote {len(paths)} pieces to {args.out}")


if __name__ == "__main__":
    main()
