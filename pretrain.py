"""Pretrain a small Phi-3 piano model on a folder of MIDI files, the way SMART's base model was trained.

``python pretrain.py config/pretrain_tiny.py --DATA_DIR=/data/maestro --MAX_STEPS=20000``

The recipe follows the paper's pretraining script (docs/paper.md): every file becomes one piano track (non-drum
tracks merged, drums dropped), tokenized with the project's REMI; the split into train and validation is by
piece; batches are random crops of at most ``CROP_TOKENS`` tokens of ``BOS + piece + EOS``; AdamW with weight
decay 0.01, cosine schedule with warmup down to a minimum lr; the best-validation checkpoint is kept and training
stops when validation loss has not improved for ``PATIENCE`` evaluations.

The output directory is a drop-in base model: ``AutoModelForCausalLM.from_pretrained(out)`` and
``smart_utils.tokenizer.load_tokenizers(out)`` load it, and ``train_config.json`` / ``metrics.json`` record the run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic
import torch
from tqdm import tqdm
from transformers import Phi3Config, Phi3ForCausalLM
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from smart_utils import tokenizer
from smart_utils.devices import compute_device
from smart_utils.files import list_midi_files, write_json_atomically

# --- data ---
DATA_DIR = "data/corpus/midi"  # folder searched recursively for .mid/.midi files
OUT_DIR = "models/piano-pretrained"  # model + tokenizer + train_config.json + metrics.json
CACHE_DIR = "artefacts/cache/pretrain"  # token arrays of tokenized folders (re-used across runs)
VAL_FRACTION = 0.05  # share of pieces held out for validation (split by piece, never by crop)
CROP_TOKENS = 500  # longest training crop, BOS/EOS included (paper: 500)
TRANSPOSE = 0  # random transposition of each crop by up to +-TRANSPOSE semitones (0 = none)
# --- model (Phi-3) ---
N_LAYER = 4  # transformer blocks (paper's SMART base: 4)
N_HEAD = 4  # attention heads
N_EMBD = 128  # hidden size
INTERMEDIATE = 512  # MLP width
MAX_POSITIONS = 1024  # max_position_embeddings; must cover prompt + generated tokens
DROPOUT = 0.1  # residual, embedding and attention dropout
# --- optimisation ---
BATCH_SIZE = 32  # crops per step
LEARNING_RATE = 5e-4  # peak AdamW lr (paper: 5e-4)
MIN_LR = 5e-6  # floor of the cosine schedule (paper: 5e-6)
WARMUP_STEPS = 500  # linear warmup steps (paper: 500)
WEIGHT_DECAY = 0.01  # AdamW weight decay (paper: 0.01)
GRAD_CLIP = 1.0  # max gradient norm
MAX_STEPS = 5000  # optimizer steps; the cosine schedule spans exactly these
MAX_MINUTES = 0.0  # wall-time budget; stop (keeping the best checkpoint) when exceeded; 0 = no budget
EVAL_INTERVAL = 250  # steps between validation passes (each may save the best checkpoint)
EVAL_CROPS = 128  # most validation crops per pass (fixed crops, so passes are comparable)
PATIENCE = 3  # stop after this many validation passes without improvement
# --- system ---
DEVICE = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
THREADS = 0  # torch CPU threads; 0 = torch's default
SEED = 0  # data split, crops and initialisation

config_keys = [key for key in list(globals()) if key.isupper() and not key.startswith("_")]


def default_config() -> dict:
    """The module defaults as a dict (what tests and callers override)."""
    return {key: globals()[key] for key in config_keys}


# ---------------------------------------------------------------------------------------------------------------
# Data


def piano_only(score: symusic.Score) -> symusic.Score:
    """Merge all non-drum tracks into one program-0 track and drop drums: the model is a solo-piano model."""
    piano = symusic.Track("Piano", program=0, is_drum=False)
    for track in score.tracks:
        if not track.is_drum:
            piano.notes.extend(track.notes)
    piano.notes.sort()
    merged = score.copy()
    merged.tracks = [piano]
    return merged


def tokenize_file(remi, path: Path) -> np.ndarray | None:
    """REMI ids of one file as a piano piece; None when it is unreadable or has no note in the piano range."""
    try:
        score = piano_only(symusic.Score(path))
    except Exception:  # corrupt or non-standard MIDI: the folder is user data, so skip instead of failing
        return None
    if score.note_num() == 0:
        return None
    sequences = remi(score)
    ids = (sequences[0] if isinstance(sequences, list) else sequences).ids
    return np.asarray(ids, dtype=np.int16) if any(remi[i].startswith("Pitch") for i in ids) else None


def _cache_key(files: list[Path], remi) -> str:
    """Hash of file names, sizes and mtimes plus the vocabulary: a changed folder or tokenizer re-tokenizes."""
    digest = hashlib.sha1(json.dumps(sorted(remi.vocab.items())).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_pieces(folder: str | Path, remi, cache_dir: str | Path | None) -> dict[str, np.ndarray]:
    """Token ids per piece (keyed by path relative to ``folder``), tokenizing once and caching as ``.npz``."""
    files = list_midi_files(folder)  # sorted: splits and caches do not depend on the file system
    if not files:
        raise FileNotFoundError(f"no .mid/.midi files under {folder}")
    cache = Path(cache_dir) / f"{_cache_key(files, remi)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return {key: stored[key] for key in stored.files}
    pieces = {}
    for path in tqdm(files, desc="tokenizing", unit="file"):
        ids = tokenize_file(remi, path)
        if ids is not None:
            pieces[str(path.relative_to(folder))] = ids
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **pieces)
    return pieces


def split_by_piece(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic piece-level split (hash of name and seed): crops of one piece never cross the split."""
    scored = sorted(names, key=lambda name: zlib.crc32(f"{seed}:{name}".encode()))
    n_val = max(1, round(len(names) * val_fraction)) if len(names) > 1 else 0
    return sorted(scored[n_val:]), sorted(scored[:n_val])


@dataclass
class Special:
    """Ids the crops need: padding, piece boundaries, bar starts and the pitch block used for transposition."""

    pad: int
    bos: int
    eos: int
    bar: int
    pitch_ids: np.ndarray  # ids of Pitch_lo .. Pitch_hi, in pitch order

    @classmethod
    def from_remi(cls, remi) -> Special:
        pitch_tokens = sorted((int(t.split("_")[1]), i) for t, i in remi.vocab.items() if t.startswith("Pitch_"))
        return cls(remi["PAD_None"], remi["BOS_None"], remi["EOS_None"], remi["Bar_None"],
                   np.array([i for _, i in pitch_tokens]))


class CropSampler:
    """Random crops of ``BOS + piece + EOS`` starting at the piece start or at a bar line.

    Pieces are drawn in proportion to their length, so every token is about equally likely to be trained on;
    starting at bar lines matches how SMART prompts begin (``Bar_None TimeSig_... Position_0 Tempo_...``).
    """

    def __init__(self, pieces: list[np.ndarray], special: Special, crop: int, transpose: int, seed: int):
        self.sequences = [np.concatenate([[special.bos], p, [special.eos]]).astype(np.int64) for p in pieces]
        self.starts = [np.flatnonzero((s == special.bar) | (np.arange(len(s)) == 0)) for s in self.sequences]
        lengths = np.array([len(s) for s in self.sequences], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.special, self.crop, self.transpose = special, crop, transpose
        self.rng = np.random.default_rng(seed)

    def _transpose(self, crop: np.ndarray) -> np.ndarray:
        """Shift every Pitch token by one random interval that keeps the whole crop inside the pitch range."""
        pitch_ids = self.special.pitch_ids
        index = np.searchsorted(pitch_ids, crop)
        is_pitch = (index < len(pitch_ids)) & (pitch_ids[np.minimum(index, len(pitch_ids) - 1)] == crop)
        if not is_pitch.any():
            return crop
        low, high = index[is_pitch].min(), index[is_pitch].max()
        shift = self.rng.integers(max(-self.transpose, -low), min(self.transpose, len(pitch_ids) - 1 - high) + 1)
        out = crop.copy()
        out[is_pitch] = pitch_ids[index[is_pitch] + shift]
        return out

    def sample(self) -> np.ndarray:
        piece = self.rng.choice(len(self.sequences), p=self.weights)
        sequence, starts = self.sequences[piece], self.starts[piece]
        start = starts[self.rng.integers(len(starts))]
        crop = sequence[start:start + self.crop]
        return self._transpose(crop) if self.transpose else crop

    def batch(self, size: int) -> list[np.ndarray]:
        return [self.sample() for _ in range(size)]


def validation_crops(pieces: list[np.ndarray], special: Special, crop: int, limit: int, seed: int) -> list[np.ndarray]:
    """Fixed validation crops: consecutive windows over each held-out piece, subsampled to ``limit``."""
    windows = []
    for piece in pieces:
        sequence = np.concatenate([[special.bos], piece, [special.eos]]).astype(np.int64)
        windows += [sequence[i:i + crop] for i in range(0, len(sequence) - 1, crop)]
    if len(windows) > limit:
        keep = np.random.default_rng(seed).choice(len(windows), size=limit, replace=False)
        windows = [windows[i] for i in sorted(keep)]
    return windows


def collate(crops: list[np.ndarray], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad crops into a batch; padding is masked out of attention and of the loss."""
    length = max(len(c) for c in crops)
    ids = torch.full((len(crops), length), pad, dtype=torch.long)
    mask = torch.zeros((len(crops), length), dtype=torch.long)
    for row, crop in enumerate(crops):
        ids[row, :len(crop)] = torch.from_numpy(crop)
        mask[row, :len(crop)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# ---------------------------------------------------------------------------------------------------------------
# Model and training


def build_model(cfg: dict, vocab_size: int, special: Special) -> Phi3ForCausalLM:
    """A Phi-3 causal LM (the architecture family of SMART's base model) sized by the config."""
    config = Phi3Config(
        vocab_size=vocab_size,
        hidden_size=cfg["N_EMBD"],
        intermediate_size=cfg["INTERMEDIATE"],
        num_hidden_layers=cfg["N_LAYER"],
        num_attention_heads=cfg["N_HEAD"],
        num_key_value_heads=cfg["N_HEAD"],
        max_position_embeddings=cfg["MAX_POSITIONS"],
        resid_pdrop=cfg["DROPOUT"],
        embd_pdrop=cfg["DROPOUT"],
        attention_dropout=cfg["DROPOUT"],
        pad_token_id=special.pad,
        bos_token_id=special.bos,
        eos_token_id=special.eos,
        tie_word_embeddings=False,
    )
    model = Phi3ForCausalLM(config)
    model.generation_config.pad_token_id = special.pad
    model.generation_config.bos_token_id = special.bos
    model.generation_config.eos_token_id = special.eos
    return model


@torch.no_grad()
def validation_loss(
    model: Phi3ForCausalLM, crops: list[np.ndarray], batch_size: int, pad: int, device: torch.device
) -> float:
    """Token-weighted mean validation loss over the fixed crops."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(crops), batch_size):
        batch = collate(crops[i:i + batch_size], pad, device)
        with _autocast(device):
            loss = model(**batch).loss
        predicted = int((batch["labels"][:, 1:] != -100).sum())
        total += float(loss) * predicted
        count += predicted
    model.train()
    return total / max(count, 1)


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (as the paper trained); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def save_checkpoint(model: Phi3ForCausalLM, bridge, out: Path) -> None:
    """Model weights/config plus miditok's tokenizer.json: the layout every project script loads.

    The saved config has dropout 0 (the training value stays in ``train_config.json``): fine-tuning scripts such
    as GRPO run the policy in train mode, and dropout there would make its log-probabilities noisy and differ from
    the frozen reference model's.
    """
    model.save_pretrained(out)
    without_dropout(model.config).save_pretrained(out)
    bridge.save_pretrained(out)


def without_dropout(config: Phi3Config) -> Phi3Config:
    """A copy of a model config with every dropout probability set to 0."""
    inference = copy.deepcopy(config)
    inference.resid_pdrop = inference.embd_pdrop = inference.attention_dropout = 0.0
    return inference


def train(cfg: dict) -> dict:
    """Run one pretraining job from a resolved config; returns the metrics written to ``metrics.json``."""
    start_time = time.time()
    torch.manual_seed(cfg["SEED"])
    if cfg["THREADS"] > 0:
        torch.set_num_threads(cfg["THREADS"])
    device = compute_device(cfg["DEVICE"])
    out = Path(cfg["OUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / "train_config.json", cfg)

    remi = tokenizer.default_remi()
    bridge = tokenizer.bridge_tokenizer(remi)
    special = Special.from_remi(remi)
    pieces = load_pieces(cfg["DATA_DIR"], remi, cfg["CACHE_DIR"])
    train_names, val_names = split_by_piece(list(pieces), cfg["VAL_FRACTION"], cfg["SEED"])
    if not val_names:
        raise ValueError("need at least two pieces: one for training and one for validation")
    sampler = CropSampler([pieces[n] for n in train_names], special, cfg["CROP_TOKENS"], cfg["TRANSPOSE"], cfg["SEED"])
    val_crops = validation_crops([pieces[n] for n in val_names], special, cfg["CROP_TOKENS"], cfg["EVAL_CROPS"],
                                 cfg["SEED"])

    model = build_model(cfg, len(remi), special).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["LEARNING_RATE"], weight_decay=cfg["WEIGHT_DECAY"])
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=cfg["WARMUP_STEPS"], num_training_steps=cfg["MAX_STEPS"], min_lr=cfg["MIN_LR"])
    metrics = {
        "params": model.num_parameters(),
        "train_pieces": len(train_names),
        "val_pieces": len(val_names),
        "train_tokens": int(sum(len(pieces[n]) for n in train_names)),
        "val_tokens": int(sum(len(pieces[n]) for n in val_names)),
        "device": str(device),
        "curve": [],
        "best_val_loss": math.inf,
        "best_step": None,
        "tokens_seen": 0,
        "stopped": "max_steps",
    }
    tqdm.write(f"{metrics['params']:,} params; {len(train_names)} train / {len(val_names)} val pieces, "
               f"{metrics['train_tokens']:,} train tokens, device {device}")

    model.train()
    window_loss, window_steps, bad_evals = 0.0, 0, 0
    progress = tqdm(range(1, cfg["MAX_STEPS"] + 1), desc="pretraining", unit="step")
    for step in progress:
        batch = collate(sampler.batch(cfg["BATCH_SIZE"]), special.pad, device)
        with _autocast(device):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["GRAD_CLIP"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        metrics["tokens_seen"] += int(batch["attention_mask"].sum())
        loss_value = loss.item()
        window_loss, window_steps = window_loss + loss_value, window_steps + 1
        progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")

        out_of_time = cfg["MAX_MINUTES"] > 0 and time.time() - start_time > 60 * cfg["MAX_MINUTES"]
        if step % cfg["EVAL_INTERVAL"] and step != cfg["MAX_STEPS"] and not out_of_time:
            continue
        val_loss = validation_loss(model, val_crops, cfg["BATCH_SIZE"], special.pad, device)
        point = {"step": step, "train_loss": window_loss / window_steps, "val_loss": val_loss,
                 "tokens_seen": metrics["tokens_seen"], "minutes": (time.time() - start_time) / 60}
        metrics["curve"].append(point)
        window_loss, window_steps = 0.0, 0
        improved = val_loss < metrics["best_val_loss"]
        if improved:
            metrics.update(best_val_loss=val_loss, best_step=step)
            save_checkpoint(model, bridge, out)
        bad_evals = 0 if improved else bad_evals + 1
        tqdm.write(f"step {step}: train {point['train_loss']:.4f}  val {val_loss:.4f}"
                   f"{'  (best, saved)' if improved else f'  (no improvement x{bad_evals})'}")
        metrics["wall_minutes"] = (time.time() - start_time) / 60
        write_json_atomically(out / "metrics.json", metrics)
        if bad_evals >= cfg["PATIENCE"]:
            metrics["stopped"] = f"early stop: validation loss did not improve for {bad_evals} evaluations"
            break
        if out_of_time:
            metrics["stopped"] = f"time budget of {cfg['MAX_MINUTES']} minutes reached"
            break
    progress.close()
    metrics["wall_minutes"] = (time.time() - start_time) / 60
    write_json_atomically(out / "metrics.json", metrics)
    tqdm.write(f"best val loss {metrics['best_val_loss']:.4f} at step {metrics['best_step']}; {metrics['stopped']}")
    return metrics


if __name__ == "__main__":
    from configurator import apply_overrides

    apply_overrides(globals(), sys.argv[1:])
    train(default_config())
