"""smart_utils/devices.py: the device each process trains on, the dtype its models load in, exact fp32 where the
scores must not depend on TF32 or autocast, and the process group's collective timeout.

Each GPU condition is simulated on a CPU: torch.cuda's answers, a CPU autocast, a gloo process group of one.
"""

import datetime

import pytest
import torch

from conftest import ROOT, free_port
from smart_utils import devices


# --- the rank's device and the weights' dtype -------------------------------------------------------------------------
def test_the_rank_device_is_named_by_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # what PartialState set for local rank 3
    assert devices.compute_device() == torch.device("cuda", 3)


@pytest.mark.parametrize("name, capability, native", [("NVIDIA A100", (8, 0), True), ("Tesla T4", (7, 5), False)])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, name, capability, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    ok, reason = devices.bf16_native()
    assert ok is native
    assert native or reason == "Tesla T4 (compute capability 7.5) has no native bf16 (needs 8.0, Ampere, or later)"


@pytest.mark.parametrize("device, distributed, fp32_weights, expected", [
    (torch.device("cuda", 0), False, False, {"dtype": "auto", "device_map": {"": 0}}),
    (torch.device("cuda"), False, True, {"dtype": "float32", "device_map": {"": 0}}),
    (torch.device("cuda", 1), True, False, {"dtype": "auto", "device_map": None}),
    (torch.device("cpu"), False, False, {"dtype": "float32", "device_map": None}),
])
def test_policy_dtype_and_device_map_follow_the_device_and_the_launch(device, distributed, fp32_weights, expected):
    kwargs = devices.policy_init_kwargs(device, distributed, fp32_weights, trust_remote_code=False)
    assert kwargs == {**expected, "trust_remote_code": False}


def test_trl_loads_policy_and_reference_with_the_single_device_map(monkeypatch, tiny_policy, tmp_path):
    """A GRPOTrainer built as smart.py builds it (one process) hands both models our device_map unchanged."""
    import trl.trainer.grpo_trainer as grpo
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from smart_utils.tokenizer import load_tokenizers

    received = []
    real_create = grpo.create_model_from_path

    def create(model_id, **kwargs):
        received.append(dict(kwargs))
        return real_create(model_id, **{**kwargs, "device_map": None})  # there is no GPU 0 here

    monkeypatch.setattr(grpo, "create_model_from_path", create)
    kwargs = devices.policy_init_kwargs(torch.device("cuda", 0), False, True, trust_remote_code=False)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, beta=0.04, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, report_to="none", model_init_kwargs=kwargs)
    _, bridge = load_tokenizers(str(tiny_policy))
    GRPOTrainer(model=str(tiny_policy), reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                train_dataset=Dataset.from_dict({"prompt": ["Bar_None"] * 2}), processing_class=bridge)
    assert [(k["device_map"], k["dtype"]) for k in received] == [({"": 0}, "float32")] * 2  # policy, reference


@pytest.mark.parametrize("visible, launched, count, expected", [
    (None, False, 4, "0"),
    ("3,1", False, 2, "3"),
    (None, True, 4, None),  # torchrun / accelerate launch: every rank picks its own GPU
    (None, False, 1, None),
])
def test_several_gpus_without_a_launcher_train_on_the_first(monkeypatch, visible, launched, count, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    if launched:
        environ.update(WORLD_SIZE="4", LOCAL_RANK="0")
    note = devices.one_gpu_unless_launched(environ)
    assert environ.get("CUDA_VISIBLE_DEVICES") == (expected if expected is not None else visible)
    assert (note is None) == (expected is None)
    assert note is None or f"--num_processes {count}" in note


# --- exact fp32 -------------------------------------------------------------------------------------------------------
def test_exact_fp32_turns_tf32_off_and_restores_it_even_after_an_error(tf32_on):
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    with pytest.raises(KeyError), devices.exact_fp32():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        raise KeyError("inside")
    assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")


def test_exact_fp32_leaves_autocast_as_it_was_even_after_an_error():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(KeyError), devices.exact_fp32():
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
            raise KeyError("inside")
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# --- the process group's collective timeout ---------------------------------------------------------------------------
@pytest.fixture
def fresh_partial_state(monkeypatch):
    """accelerate's PartialState as a new process finds it (it is a singleton): set aside, and put back after;
    the launcher's variables of a one-process group (accelerate writes some of them itself)."""
    from accelerate import PartialState

    if torch.distributed.is_initialized():
        pytest.skip("a process group already exists in this process")
    saved = dict(PartialState._shared_state)
    PartialState._shared_state.clear()
    for name, value in dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port()), OMP_NUM_THREADS=str(torch.get_num_threads())).items():
        monkeypatch.setenv(name, value)
    calls = []
    real_init = torch.distributed.init_process_group

    def spy(*args, **kwargs):
        calls.append(kwargs)
        if kwargs.get("backend") == "nccl":  # no NCCL here: what accelerate asked for is all this test needs
            raise StopAtInit
        return real_init(*args, **kwargs)

    monkeypatch.setattr(torch.distributed, "init_process_group", spy)
    yield calls
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    PartialState._shared_state.clear()
    PartialState._shared_state.update(saved)


class StopAtInit(Exception):
    pass


def intended_timeout() -> datetime.timedelta:
    from transformers import TrainingArguments

    return datetime.timedelta(seconds=TrainingArguments.__dataclass_fields__["ddp_timeout"].default)


def test_the_process_group_gets_transformers_ddp_timeout_not_torchs_default(fresh_partial_state):
    """gloo (a CPU launch): the group accelerate creates for smart.py waits 30 minutes in a collective."""
    state = devices.process_state(cpu=True)
    assert state.num_processes == 1 and torch.distributed.is_initialized()
    [call] = fresh_partial_state
    assert call["timeout"] == intended_timeout() == datetime.timedelta(minutes=30)
    group = torch.distributed.group.WORLD._get_backend(torch.device("cpu"))
    assert group.options._timeout == intended_timeout()


def test_on_a_gpu_launch_nccl_is_asked_for_the_same_timeout(fresh_partial_state, monkeypatch):
    """The GPU path (torchrun / accelerate launch on CUDA): accelerate's NCCL group, where torch's default is 10
    minutes; the NCCL call itself is stopped, no GPU being here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(StopAtInit):
        devices.process_state(cpu=False)
    [call] = fresh_partial_state
    assert call["backend"] == "nccl" and call["timeout"] == intended_timeout()
    assert torch.distributed.distributed_c10d.default_pg_nccl_timeout < intended_timeout()  # what it replaces


def test_smart_py_gives_group_and_trainer_the_one_timeout(tmp_path):
    import smart

    args = smart.grpo_config(tmp_path / "run", on_gpu=False, bf16_native=False, model_init_kwargs={})
    assert args.ddp_timeout == devices.ddp_timeout() == intended_timeout().total_seconds()
    source = (ROOT / "smart.py").read_text()
    assert "process_state(cpu=not on_gpu)" in source and "PartialState(" not in source
