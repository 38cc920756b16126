"""generate.py: seeded sampling from a tiny random model, the files it writes, and which model a path stands for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile
import symusic
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from generate import GenerationSettings, generate_pieces, read_samples_csv, resolve_model_dir
from midi_tokenizer import bridge_tokenizer, default_remi
from processors import DEFAULT_SAMPLE_RATE
from prompts import build_prompts

SETTINGS = GenerationSettings(n=3, max_new_tokens=48, batch_size=2, seed=5)


def save_tiny_model(directory: Path) -> Path:
    """A random 1-layer Phi-3 over the project's vocabulary, saved with miditok's tokenizer.json."""
    torch.manual_seed(0)
    remi = default_remi()
    config = Phi3Config(
        vocab_size=len(remi), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    Phi3ForCausalLM(config).save_pretrained(directory)
    bridge_tokenizer(remi).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def test_writes_midi_and_the_prompts_it_answered(tiny_model: Path, tmp_path: Path):
    paths = generate_pieces(tiny_model, tmp_path, SETTINGS)
    assert [p.name for p in paths] == ["0000.mid", "0001.mid", "0002.mid"]
    assert all(symusic.Score(str(p)).ticks_per_quarter == default_remi().time_division for p in paths)
    expected = build_prompts(SETTINGS.prompt_source, default_remi(), 3, SETTINGS.seed)
    assert read_samples_csv(tmp_path) == dict(zip(["0000.mid", "0001.mid", "0002.mid"], expected))


def test_same_seed_same_pieces_other_seed_other_pieces(tiny_model: Path, tmp_path: Path):
    first = generate_pieces(tiny_model, tmp_path / "a", SETTINGS)
    again = generate_pieces(tiny_model, tmp_path / "b", SETTINGS)
    other = generate_pieces(tiny_model, tmp_path / "c", GenerationSettings(**{**SETTINGS.__dict__, "seed": 6}))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]


def test_soundfont_adds_a_wav_per_piece(tiny_model: Path, tmp_path: Path):
    paths = generate_pieces(tiny_model, tmp_path, GenerationSettings(n=2, max_new_tokens=48), soundfont="timgm6mb")
    for path in paths:
        audio, rate = soundfile.read(path.with_suffix(".wav"))
        assert rate == DEFAULT_SAMPLE_RATE and audio.shape[1] == 2 and len(audio) <= 10 * DEFAULT_SAMPLE_RATE


def test_a_run_folder_stands_for_its_final_model_or_latest_checkpoint(tiny_model: Path, tmp_path: Path):
    run = tmp_path / "run"
    for step in (2, 10):
        shutil.copytree(tiny_model, run / f"checkpoint-{step}")
    assert resolve_model_dir(run) == run / "checkpoint-10"
    shutil.copy(tiny_model / "model.safetensors", run / "model.safetensors")
    assert resolve_model_dir(run) == run
    with pytest.raises(FileNotFoundError):
        resolve_model_dir(tmp_path / "empty")
