"""Which model a path stands for: a hub id, a saved model folder, or a run whose latest complete checkpoint it is.

One rule for each question, used by smart.py's checks, sampling, evaluation, the listening study and the run
record: ``is_hub_id`` (``owner/name`` that is no local path), ``weights_file`` (the weights a folder holds) and
``resolve_model_dir`` (a run folder's tuned model, else its newest checkpoint the Trainer finished writing).
"""

from __future__ import annotations

import re
from pathlib import Path

from smart_utils.run_folder import last_complete_checkpoint

# What save_pretrained writes as weights, preferred first (sharded models write the index beside the shards).
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(text: str) -> bool:
    """``owner/name`` that is not a local path: a model to fetch from the Hugging Face hub."""
    return HUB_ID.fullmatch(text) is not None and not text.startswith(".") and not Path(text).exists()


def weights_file(folder: Path) -> Path | None:
    """The weights file a saved model folder holds, or None when it holds none."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def resolve_model_dir(path: str | Path) -> Path | str:
    """The model a path stands for: the path itself if it holds weights (or is a hub id), else a run's latest
    complete checkpoint. A finished SMART run saves its tuned model in the run folder itself, so that wins."""
    folder = Path(path)
    if weights_file(folder) is not None or is_hub_id(str(path)):
        return path
    last, _ = last_complete_checkpoint(folder) if folder.is_dir() else (None, [])
    if last is None:
        raise FileNotFoundError(
            f"{path}: no model weights ({', '.join(WEIGHT_FILES)}) and no complete checkpoint-<step>/ inside"
        )
    return last
