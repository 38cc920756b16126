"""smart_utils/generation.py, the sampling behind generate.py: seeded pieces from a tiny random model, the MIDI,
WAV and prompt files it writes."""

from __future__ import annotations

from pathlib import Path

import soundfile
import symusic

import smart
from smart_utils.generation import GenerationSettings, generate_pieces, read_samples_csv
from smart_utils.prompts import build_prompts
from smart_utils.rendering import RenderSettings
from smart_utils.soundfont_sources import resolve_soundfont
from smart_utils.tokenizer import default_remi

SETTINGS = GenerationSettings(n=3, max_new_tokens=48, batch_size=2, seed=5)


def test_writes_midi_and_the_prompts_it_answered(tiny_policy: Path, tmp_path: Path):
    paths = generate_pieces(tiny_policy, tmp_path, SETTINGS)
    assert [p.name for p in paths] == ["0000.mid", "0001.mid", "0002.mid"]
    assert all(symusic.Score(str(p)).ticks_per_quarter == default_remi().time_division for p in paths)
    expected = build_prompts(SETTINGS.prompt_source, default_remi(), 3, SETTINGS.seed)
    assert read_samples_csv(tmp_path) == dict(zip(["0000.mid", "0001.mid", "0002.mid"], expected))


def test_same_seed_same_pieces_other_seed_other_pieces(tiny_policy: Path, tmp_path: Path):
    first = generate_pieces(tiny_policy, tmp_path / "a", SETTINGS)
    again = generate_pieces(tiny_policy, tmp_path / "b", SETTINGS)
    other = generate_pieces(tiny_policy, tmp_path / "c", GenerationSettings(**{**SETTINGS.__dict__, "seed": 6}))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]


def test_render_settings_add_a_wav_per_piece(tiny_policy: Path, tmp_path: Path):
    """Rendered as smart.py renders for its reward (generate.py --soundfont passes smart.py's constants)."""
    render = RenderSettings(resolve_soundfont("timgm6mb"), smart.SAMPLE_RATE, smart.MAX_AUDIO_DURATION)
    paths = generate_pieces(tiny_policy, tmp_path, GenerationSettings(n=2, max_new_tokens=48), render)
    for path in paths:
        audio, rate = soundfile.read(path.with_suffix(".wav"))
        assert rate == smart.SAMPLE_RATE and audio.shape[1] == 2
        assert len(audio) <= smart.MAX_AUDIO_DURATION * smart.SAMPLE_RATE
