"""Where SMART's tensors run and in what precision, chosen so that a GPU box gives what the CPU path gives.

Each function here answers one question the libraries answer differently on a GPU than on a CPU:

- ``one_gpu_unless_launched``: a plain ``python smart.py`` sees every GPU of the box; TRL would then spread the
  model over all of them (``device_map="auto"``). It uses the first one instead, chosen before CUDA starts.
- ``policy_init_kwargs``: what TRL's ``GRPOTrainer`` passes to ``from_pretrained`` for the policy and the
  reference model (device placement, weights dtype).
- ``bf16_native``: bf16 mixed precision only on GPUs that compute in bf16 (compute capability 8.0, Ampere, and
  later); torch and transformers accept emulated bf16 on older GPUs, which is slower than fp32.
- ``exact_fp32``: TF32 and autocast off for the scoring code whose numbers are compared with the CPU reference.
- ``compute_device``: this rank's device, named explicitly.
- ``process_state``: accelerate's ``PartialState``, whose process group gets transformers' collective timeout
  (``ddp_timeout``, 30 min) instead of torch's NCCL default (10 min).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, MutableMapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import PartialState

LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK")  # set by torchrun and accelerate launch for every rank


def launched_distributed(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of its ranks."""
    return any(name in environ for name in LAUNCHER_VARIABLES)


def one_gpu_unless_launched(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """With several GPUs visible to a process that no launcher started, make only the first one visible.

    Returns a line saying so, or None when nothing changed. Without a launcher, TRL loads the policy and the
    reference model with ``device_map="auto"``, which splits even a 4-layer model over every visible GPU (each
    layer then waits for the previous GPU); with the model on one GPU instead, transformers' Trainer would wrap
    it in ``nn.DataParallel``, which TRL refuses. So one process trains on one GPU, and ``accelerate launch`` or
    ``torchrun`` use them all. CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when it starts, so this runs before
    anything uses the GPU; ``torch.cuda.device_count()`` counts through NVML without starting CUDA.
    """
    if launched_distributed(environ):
        return None
    count = torch.cuda.device_count()
    if count < 2:
        return None
    first = environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    environ["CUDA_VISIBLE_DEVICES"] = first
    return (
        f"{count} GPUs visible to one process: training on the first (CUDA_VISIBLE_DEVICES={first}); to use all, "
        f"run accelerate launch --multi_gpu --num_processes {count} smart.py ... (docs/gpu.md)"
    )


def policy_init_kwargs(
    device: torch.device, distributed: bool, fp32_weights: bool, trust_remote_code: bool
) -> dict[str, Any]:
    """``GRPOConfig.model_init_kwargs``: how TRL loads the policy and the reference model onto ``device``.

    dtype: on a GPU ``"auto"`` (the hub config's dtype), as the original did, unless ``fp32_weights``; on a CPU
    float32. device_map: the whole model on this process's GPU when it is the only process; ``None`` on a CPU
    (TRL's own choice there) and for distributed runs, where TRL sets ``None`` itself and every rank holds a
    full copy on its own GPU. TRL's default, ``"auto"``, would split the model over the visible GPUs, or offload
    layers to the CPU when it does not fit; an explicit device fails loudly instead.
    """
    on_gpu = device.type == "cuda"
    dtype = "float32" if fp32_weights or not on_gpu else "auto"
    device_map = {"": device.index or 0} if on_gpu and not distributed else None
    return {"dtype": dtype, "device_map": device_map, "trust_remote_code": trust_remote_code}


def bf16_native() -> tuple[bool, str]:
    """Whether this process's GPU computes in bf16 natively (compute capability >= 8.0), and why not if not.

    ``torch.cuda.is_bf16_supported()`` (what transformers checks) also counts emulation, which is how a T4
    (7.5) runs bf16: slower than fp32. ``including_emulation=False`` asks for the hardware.
    """
    if not torch.cuda.is_available():
        return False, "no GPU"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, ""
    major, minor = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    return False, f"{name} (compute capability {major}.{minor}) has no native bf16 (needs 8.0, Ampere, or later)"


AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # where an outer torch.autocast may be on


@contextmanager
def exact_fp32() -> Iterator[None]:
    """Inside: fp32 convolutions (cuDNN) and matrix products (cuBLAS) in full fp32, no TF32, and no autocast;
    restored after.

    cuDNN convolutions default to TF32 on Ampere and later GPUs, which changes Audiobox's on-device resampling
    by about 2e-4 relative RMS against the reference predictor's CPU resample, and so its scores. torch's
    per-operation ``fp32_precision`` settings are used, not the legacy ``allow_tf32`` flags: mixing the two
    makes torch raise when either is read, and transformers may use the new ones.

    An outer ``torch.autocast`` (bf16 mixed precision around the code that calls a reward) would run the
    matrix products and convolutions inside in bf16 and return bf16 embeddings; it is switched off here for
    every device type where it is on. A model that enables autocast itself (Audiobox's opt-in ``bf16``) still can.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        with ExitStack() as no_autocast:
            for device_type in AUTOCAST_DEVICE_TYPES:
                if torch.is_autocast_enabled(device_type):
                    no_autocast.enter_context(torch.autocast(device_type=device_type, enabled=False))
            yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def ddp_timeout() -> int:
    """Seconds a collective may wait for the other ranks: transformers' ``TrainingArguments.ddp_timeout``
    default (1800), the one number smart.py gives both the process group and GRPOConfig."""
    import dataclasses

    from transformers import TrainingArguments  # slow to import: only once the config is checked

    return next(field.default for field in dataclasses.fields(TrainingArguments) if field.name == "ddp_timeout")


def process_state(cpu: bool) -> PartialState:
    """accelerate's ``PartialState`` (which starts the process group under a launcher), with ``ddp_timeout``.

    transformers passes ``ddp_timeout`` to the group it creates, but smart.py creates it first (to name one run
    folder for all ranks), and a group is created once: without the timeout here, NCCL would run with torch's
    10-minute default instead of the 30 minutes transformers intends, and a rank that scores a slow reward step
    or writes a checkpoint alone could make the others time out. ``cpu=True`` is needed for a CPU-only launch of
    several processes to be seen as distributed (gloo).
    """
    from accelerate import PartialState

    return PartialState(cpu=cpu, timeout=datetime.timedelta(seconds=ddp_timeout()))


def compute_device(requested: str | torch.device | None = None) -> torch.device:
    """The one answer to "which device": ``requested`` when given (a name like "cpu" or "cuda:1"; "auto" and None
    choose), else this process's current GPU by index (the one PartialState selected for its rank), else Apple's
    MPS, else the CPU (the order audiobox_aesthetics' predictor uses).

    ``torch.device("cuda")`` without an index means whichever GPU is current when a tensor is made, which is the
    rank's own only if something set it before; an index fixes it when the model is loaded.
    """
    if requested is not None and requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
