"""pretrain.py, pretraining on a folder of MIDI: piano-only tokenization, piece split, crops, learning, best
checkpoint."""

import json

import numpy as np
import pytest
import symusic
import torch
from transformers import AutoModelForCausalLM

import pretrain
from smart_utils.tokenizer import default_remi, load_tokenizers


def _write_midi(path, seed: int, drums: bool = False) -> None:
    """A short 4/4 piece: a scale-wise melody over repeated triads, with an optional drum track."""
    rng = np.random.default_rng(seed)
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.tempos.append(symusic.Tempo(0, 120))
    melody, chords = symusic.Track("melody", program=0), symusic.Track("strings", program=48)
    pitch = 60 + int(rng.integers(-5, 6))
    for beat in range(64):
        pitch = int(np.clip(pitch + rng.choice([-2, -1, 1, 2]), 48, 84))
        melody.notes.append(symusic.Note(beat * 480, 480, pitch, int(rng.integers(50, 100))))
        if beat % 4 == 0:
            for offset in (0, 4, 7):
                chords.notes.append(symusic.Note(beat * 480, 1920, 48 + offset, 60))
    score.tracks.extend([melody, chords])
    if drums:
        kit = symusic.Track("drums", program=0, is_drum=True)
        kit.notes.append(symusic.Note(0, 240, 36, 100))
        score.tracks.append(kit)
    score.dump_midi(path)


@pytest.fixture
def pretrain_midi_dir(tmp_path):
    folder = tmp_path / "midi"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        _write_midi(folder / ("sub" if i % 2 else "") / f"piece{i}.mid", seed=i, drums=i == 0)
    return folder


def _tiny_config(data_dir, out_dir, **overrides) -> dict:
    return pretrain.default_config() | {
        "DATA_DIR": str(data_dir), "OUT_DIR": str(out_dir), "CACHE_DIR": "", "VAL_FRACTION": 0.2,
        "N_LAYER": 2, "N_HEAD": 2, "N_EMBD": 32, "INTERMEDIATE": 64, "MAX_POSITIONS": 128, "DROPOUT": 0.1,
        "CROP_TOKENS": 96, "TRANSPOSE": 2, "BATCH_SIZE": 8, "LEARNING_RATE": 3e-3, "MIN_LR": 3e-4,
        "WARMUP_STEPS": 5, "MAX_STEPS": 60, "EVAL_INTERVAL": 20, "EVAL_CROPS": 16, "PATIENCE": 3,
        "DEVICE": "cpu", "THREADS": 1,
    } | overrides


def test_piano_only_merges_pitched_tracks_and_drops_drums(pretrain_midi_dir):
    score = symusic.Score(pretrain_midi_dir / "piece0.mid")
    piano = pretrain.piano_only(score)
    pitched = sum(len(t.notes) for t in score.tracks if not t.is_drum)
    assert len(piano.tracks) == 1 and piano.tracks[0].program == 0 and not piano.tracks[0].is_drum
    assert len(piano.tracks[0].notes) == pitched < score.note_num()
    assert piano.tracks[0].notes.is_sorted()


def test_split_is_by_piece_and_deterministic():
    names = [f"p{i}.mid" for i in range(40)]
    train, val = pretrain.split_by_piece(names, 0.1, seed=0)
    assert len(val) == 4 and not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert pretrain.split_by_piece(names, 0.1, seed=0) == (train, val)
    assert pretrain.split_by_piece(names, 0.1, seed=1)[1] != val


def test_crops_start_at_a_piece_or_bar_and_transpose_inside_the_pitch_range():
    remi = default_remi()
    special = pretrain.Special.from_remi(remi)
    bar = [remi[t] for t in ("Bar_None", "Position_0", "Pitch_107", "Velocity_63", "Duration_1.0.12")]
    piece = np.array(bar * 20)
    sampler = pretrain.CropSampler([piece], special, crop=12, transpose=5, seed=0)
    shifts = set()
    for crop in sampler.batch(50):
        assert len(crop) <= 12 and crop[0] in (special.bos, special.bar)
        pitches = crop[np.isin(crop, special.pitch_ids)]
        assert pitches.max() <= special.pitch_ids[-1]
        shifts |= {int(np.searchsorted(special.pitch_ids, pitches[0])) - (107 - 21)}
    assert shifts <= {-5, -4, -3, -2, -1, 0, 1} and len(shifts) > 3  # up to +1 only: Pitch_108 is the top


def test_training_lowers_loss_and_saves_a_loadable_best_model(pretrain_midi_dir, tmp_path):
    out = tmp_path / "model"
    metrics = pretrain.train(_tiny_config(pretrain_midi_dir, out))

    curve = metrics["curve"]
    assert [p["step"] for p in curve] == [20, 40, 60]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] - 0.5
    assert curve[-1]["val_loss"] < curve[0]["val_loss"]
    assert metrics["best_val_loss"] == min(p["val_loss"] for p in curve)
    assert metrics["train_pieces"] + metrics["val_pieces"] == 6 and metrics["tokens_seen"] > 0
    assert json.loads((out / "metrics.json").read_text())["best_step"] == metrics["best_step"]
    assert json.loads((out / "train_config.json").read_text())["N_EMBD"] == 32

    model = AutoModelForCausalLM.from_pretrained(out)
    remi, bridge = load_tokenizers(str(out))
    assert model.config.pad_token_id == remi["PAD_None"] and model.config.eos_token_id == remi["EOS_None"]
    assert model.config.resid_pdrop == model.config.attention_dropout == 0.0  # saved for fine-tuning
    prompt = bridge("Bar_None TimeSig_4/4 Position_0 Tempo_120.0", return_tensors="pt").input_ids
    with torch.no_grad():
        ids = model.generate(prompt, max_new_tokens=40, do_sample=True, top_k=0, pad_token_id=remi["PAD_None"])
    assert ids.shape[1] > prompt.shape[1]
    assert isinstance(remi(ids), symusic.Score)

    # the saved weights are the best evaluation's: re-evaluating them reproduces the best validation loss
    cfg = _tiny_config(pretrain_midi_dir, out)
    pieces = pretrain.load_pieces(pretrain_midi_dir, remi, None)
    _, val_names = pretrain.split_by_piece(list(pieces), cfg["VAL_FRACTION"], cfg["SEED"])
    special = pretrain.Special.from_remi(remi)
    crops = pretrain.validation_crops([pieces[n] for n in val_names], special, cfg["CROP_TOKENS"],
                                      cfg["EVAL_CROPS"], cfg["SEED"])
    reloaded = pretrain.validation_loss(model, crops, 8, special.pad, torch.device("cpu"))
    assert reloaded == pytest.approx(metrics["best_val_loss"], abs=1e-4)


def test_best_checkpoint_is_kept_and_training_stops_after_patience(pretrain_midi_dir, tmp_path, monkeypatch):
    scripted = iter([3.0, 2.0, 2.5, 2.1, 2.2, 1.0])
    saved_at = []
    monkeypatch.setattr(pretrain, "validation_loss", lambda *args, **kwargs: next(scripted))
    monkeypatch.setattr(pretrain, "save_checkpoint", lambda *args: saved_at.append(len(saved_at)))
    cfg = _tiny_config(pretrain_midi_dir, tmp_path / "model", MAX_STEPS=12, EVAL_INTERVAL=2, PATIENCE=3)
    metrics = pretrain.train(cfg)
    assert [p["val_loss"] for p in metrics["curve"]] == [3.0, 2.0, 2.5, 2.1, 2.2]
    assert metrics["best_val_loss"] == 2.0 and metrics["best_step"] == 4
    assert len(saved_at) == 2  # saved at the 1st and 2nd evaluations only
    assert metrics["stopped"].startswith("early stop")
