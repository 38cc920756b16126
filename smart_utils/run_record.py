"""What a run really used, so two runs can be compared from their folders alone.

smart.py prints this record when training starts and saves it as ``<run>/run_record.json``:

- the soundfont file: path, size, SHA-256, and whether it is byte for byte the original SMART's;
- the base model: hub id and the commit that was loaded, or a local folder and its weights' SHA-256;
- the Audiobox checkpoint: hub id and commit, or a checkpoint file and its SHA-256 (None when unused);
- the CLAP models of the CLAP rewards, each as the base model is (an empty list when unused);
- device, the policy's weight dtype and the mixed precision used;
- the versions of python and every library that changes results.

The constants themselves are in ``smart_config.json`` beside it. ``python compare_runs.py RUN_A RUN_B`` prints
every field in which two runs differ.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from smart_utils.files import file_digest
from smart_utils.model_paths import weights_file
from smart_utils.run_folder import read_run_config
from smart_utils.soundfont_sources import is_original

RECORD_FILE = "run_record.json"
PACKAGES = (
    "torch", "transformers", "trl", "accelerate", "miditok", "symusic", "tinysoundfont", "audiobox_aesthetics",
    "numpy", "datasets",
)
def package_versions() -> dict[str, str | None]:
    """Installed version of each result-relevant package (None when not installed), and python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def hub_commit(repo_id: str, file_name: str) -> str | None:
    """The commit of a hub repo whose ``file_name`` is in the local HF cache (what ``from_pretrained`` loaded)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, file_name)
    if not isinstance(cached, str):
        return None
    parts = Path(cached).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def model_source(path_or_id: str) -> dict[str, Any]:
    """A model as it was loaded: a local folder (with its weights' SHA-256) or a hub id at a commit."""
    folder = Path(path_or_id)
    if folder.is_dir():
        weights = weights_file(folder)
        return {"source": "local", "path": str(folder.resolve()),
                "weights_sha256": file_digest(weights) if weights else None}
    return {"source": "hub", "id": path_or_id, "commit": hub_commit(path_or_id, "config.json")}


def audiobox_source(checkpoint_or_hub_id: str) -> dict[str, Any]:
    """The Audiobox checkpoint: a local file with its SHA-256, or the hub repo at the commit in the cache."""
    if Path(checkpoint_or_hub_id).is_file():
        path = checkpoint_or_hub_id
        return {"source": "local", "path": str(Path(path).resolve()), "sha256": file_digest(path)}
    hub_id = checkpoint_or_hub_id
    return {"source": "hub", "id": hub_id, "commit": hub_commit(hub_id, "model.safetensors")}


def soundfont_source(path: str) -> dict[str, Any]:
    file = Path(path)
    return {"path": str(file.resolve()), "bytes": file.stat().st_size, "sha256": file_digest(file),
            "original_smart_file": is_original(file)}


def dtype_name(dtype: Any) -> str | None:
    """``torch.bfloat16`` -> ``"bfloat16"``; None stays None (no reference model when BETA is 0)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def device_info(device: Any) -> dict[str, Any]:
    """The training device, and for a GPU its name, compute capability and the CUDA torch was built for."""
    import torch

    info: dict[str, Any] = {"device": str(device)}
    if torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        info.update(name=torch.cuda.get_device_name(index), capability=list(torch.cuda.get_device_capability(index)),
                    cuda=torch.version.cuda, gpus_visible=torch.cuda.device_count())
    return info


def build_record(
    *, soundfont_path: str, base_model: str, models: Mapping[str, str], device: Any, policy_dtype: Any,
    reference_dtype: Any, mixed_precision: str, num_processes: int,
) -> dict[str, Any]:
    """Everything a run used that its constants alone do not pin down (dtypes as torch dtypes or names).
    ``models`` is what the rewards load, by kind (processors.weight_models)."""
    clap_models = {model for kind, model in models.items() if kind.startswith("clap")}
    return {
        "soundfont": soundfont_source(soundfont_path),
        "base_model": model_source(base_model),
        "audiobox": audiobox_source(models["audiobox"]) if "audiobox" in models else None,
        "clap_models": [model_source(model) for model in sorted(clap_models)],
        "compute": {**device_info(device), "policy_dtype": dtype_name(policy_dtype),
                    "reference_dtype": dtype_name(reference_dtype), "mixed_precision": mixed_precision,
                    "processes": num_processes},
        "versions": package_versions(),
    }


def describe(record: dict[str, Any]) -> str:
    """The record as the few lines smart.py prints at start."""
    font, model, compute = record["soundfont"], record["base_model"], record["compute"]
    lines = [
        f"soundfont  {font['path']} ({font['bytes']:,} bytes, sha256 {font['sha256'][:16]}..."
        f"{', the original SMART file' if font['original_smart_file'] else ''})",
        "base model " + (f"{model['id']} @ {model['commit']}" if model["source"] == "hub"
                         else f"{model['path']} (weights sha256 {str(model['weights_sha256'])[:16]}...)"),
    ]
    audiobox = record["audiobox"]
    if audiobox is not None:
        lines.append("audiobox   " + (f"{audiobox['id']} @ {audiobox['commit']}" if audiobox["source"] == "hub"
                                      else f"{audiobox['path']} (sha256 {audiobox['sha256'][:16]}...)"))
    gpu = f" ({compute['name']}, CUDA {compute['cuda']})" if "name" in compute else ""
    lines.append(f"compute    {compute['device']}{gpu} x{compute['processes']}, weights {compute['policy_dtype']}, "
                 f"mixed precision {compute['mixed_precision']}")
    lines.append("versions   " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    return "\n".join("[run] " + line for line in lines)


def write_record(run_dir: Path, record: dict[str, Any], resumed: bool = False) -> Path:
    """Save the record as ``run_record.json``; a resumed run keeps the first one and adds
    ``run_record.resumed-<time>.json``, printing what changed since the run started (another machine, say)."""
    path = Path(run_dir) / RECORD_FILE
    if resumed and path.is_file():
        first = flatten(json.loads(path.read_text()))
        now = flatten(record)
        changed = sorted(key for key in set(first) | set(now) if first.get(key) != now.get(key))
        if changed:
            print(f"[run] warning: the resumed run differs from its start in: {', '.join(changed)}")
        path = path.with_name(f"run_record.resumed-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.write_text(json.dumps(record, indent=2))
    return path


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}, so two records can be compared field by field."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(run_a: Path, run_b: Path) -> list[tuple[str, Any, Any]]:
    """(field, value in a, value in b) for every recorded field or constant that differs between two runs."""
    flat = []
    for run in (run_a, run_b):
        record = json.loads((Path(run) / RECORD_FILE).read_text())
        config = read_run_config(run)
        if config is not None:
            record["config"] = config
        flat.append(flatten(record))
    keys = sorted(set(flat[0]) | set(flat[1]))
    return [(key, flat[0].get(key), flat[1].get(key)) for key in keys if flat[0].get(key) != flat[1].get(key)]
