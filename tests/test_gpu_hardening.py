"""What only a GPU box, several GPUs or many cores would show, reproduced on a CPU (issue 14).

Each GPU condition is simulated: torch.cuda's answers, nvidia-smi's output, a cgroup quota file, an out-of-memory
error raised by a processor, two gloo processes standing in for two GPUs.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from processors import AudioBoxAesRewardProcessor, Processor
from reward_manager import ProcessorFailed, RewardManager
from scores import make_score
from smart_utils import audiobox as audiobox_module
from smart_utils import devices, preflight, render_pool
from smart_utils.audiobox import AUDIOBOX_BYTES_PER_CLIP, check_weight_names, load_aes_predictor
from smart_utils.render_pool import RenderPool, cgroup_cpu_limit, default_render_workers
from smart_utils.rendering import RenderSettings

SAMPLE_RATE = 48000


# --- 1, 2: preflight on a GPU box ---------------------------------------------------------------------------------
class NvidiaSmi:
    """Stands in for subprocess.run of nvidia-smi on a box with one V100 and a CUDA 12.4 driver."""

    def __call__(self, command, **kwargs):
        if command == ["nvidia-smi", "-L"]:
            return subprocess.CompletedProcess(command, 0, "GPU 0: Tesla V100-SXM2-16GB (UUID: GPU-1234)\n", "")
        header = "| NVIDIA-SMI 550.54  Driver Version: 550.54  CUDA Version: 12.4 |"
        return subprocess.CompletedProcess(command, 0, header, "")


def on_path(*names):
    return lambda name: f"/usr/bin/{name}" if name in names else None


def cuda_unavailable():
    warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).",
                  stacklevel=2)
    return False


def test_a_gpu_that_torch_cannot_use_stops_the_run_naming_the_build_to_install(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", cuda_unavailable)
    [problem] = preflight.gpu_problems(which=on_path("nvidia-smi", "gcc"), run=NvidiaSmi())
    for part in ("nvidia-smi sees Tesla V100-SXM2-16GB", f"torch {torch.__version__}",
                 "driver on your system is too old", "would run on the CPU", "The driver supports CUDA 12.4",
                 "make setup CUDA=cu126", "CUDA_VISIBLE_DEVICES= python smart.py"):
        assert part in problem, problem


def test_no_gpu_or_no_gpu_on_purpose_is_no_problem(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", cuda_unavailable)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert preflight.gpu_problems(which=on_path("gcc"), run=NvidiaSmi()) == []  # a CPU box: no nvidia-smi
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert preflight.gpu_problems(which=on_path("nvidia-smi", "gcc"), run=NvidiaSmi()) == []


@pytest.fixture
def cuda_box(monkeypatch):
    """torch sees one GPU of compute capability ``box.capability``; the CUDA 13 build's architectures."""
    box = types.SimpleNamespace(capability=(9, 0), arch_list=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: box.arch_list)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: box.capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Test GPU")
    return box


@pytest.mark.parametrize("capability, arch_list, supported", [
    ((9, 0), None, True),
    ((8, 9), None, True),  # sm_86 code runs on 8.9 (same major, newer minor)
    ((7, 0), None, False),  # a V100 with the CUDA 13 build
    ((6, 0), ["sm_75", "sm_80"], False),
    ((9, 0), ["sm_75", "compute_80"], True),  # PTX for 8.0 compiles for any newer GPU
])
def test_a_gpu_outside_the_builds_architectures_is_refused(cuda_box, capability, arch_list, supported):
    cuda_box.capability = capability
    cuda_box.arch_list = arch_list or cuda_box.arch_list
    problems = preflight.gpu_problems(which=on_path("gcc"), run=NvidiaSmi())
    if supported:
        assert problems == []
    else:
        [problem] = problems
        assert f"compute capability {capability[0]}.{capability[1]}" in problem and "make setup CUDA=cu126" in problem


def test_with_cuda_the_triton_build_tools_are_checked(cuda_box, monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "python_header", lambda: tmp_path / "include" / "Python.h")
    [problem] = preflight.gpu_problems(which=on_path(), run=NvidiaSmi())
    for part in ("Triton", "a C compiler (gcc or clang, or set CC)", f"Python's headers ({tmp_path}",
                 "apt-get install build-essential python3-dev"):
        assert part in problem, problem
    monkeypatch.setenv("CC", "/opt/cc")  # Triton uses $CC first
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "Python.h").write_text("")
    assert preflight.gpu_problems(which=on_path(), run=NvidiaSmi()) == []


def test_smart_stops_before_loading_anything_when_torch_cannot_use_the_gpu(tiny_policy, tmp_path):
    """smart.py in a real process whose torch is made to miss the GPU that a fake nvidia-smi lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1)'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp_path / "sitecustomize.py").write_text("import torch\ntorch.cuda.is_available = lambda: False\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run([sys.executable, "smart.py", f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb",
                             "--REWARD_WEIGHTS={'note_density': 1.0}", f"--OUTPUT_DIR={tmp_path / 'run'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot train on its GPU" in result.stderr and "NVIDIA A100-SXM4-40GB" in result.stderr
    assert not (tmp_path / "run").exists()


# --- 3: every rank stops after the same step ----------------------------------------------------------------------
def worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the smart.py processes started (at any depth) by the launcher."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    ranks, todo = {}, list(children.get(launcher_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "smart.py" in cmdline and "RANK" in environ and "--fork-server" not in cmdline:
            ranks[int(environ["RANK"])] = pid
    return ranks


def test_sigterm_to_one_rank_stops_both_ranks_after_the_same_step_with_a_checkpoint(tmp_path, tiny_policy):
    steps = 40  # far more than run before the signal lands
    run_dir = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), "smart.py"]
    args = [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            f"--NUM_TRAIN_STEPS={steps}", f"--SAVE_STEPS={steps}", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2",
            "--MAX_COMPLETION_LENGTH=32", "--AUDIO_SAVE_INTERVAL=100", "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1",
            f"--OUTPUT_DIR={run_dir}"]
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen([*launch, *args], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "rl_logs" / "1" / "logs.rank1.parquet").exists():
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "step 1 never finished"
            time.sleep(0.05)
        ranks = worker_pids(launcher.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGTERM)  # one rank only, as when a scheduler or a user signals one process
        launcher.wait(timeout=300)  # without agreement rank 0 would wait in a gather for the collective timeout
    finally:
        if launcher.poll() is None:
            launcher.kill()
    output = log.read_text()
    assert launcher.returncode == 0, output[-3000:]
    assert "SIGTERM: saving a checkpoint after this step" in output
    assert "another process was asked to stop" in output
    stopped = [int(step) for step in re.findall(r"stopped at step (\d+); continue with", output)]
    assert len(stopped) == 2 and stopped[0] == stopped[1] < steps, output[-3000:]
    state = json.loads((run_dir / f"checkpoint-{stopped[0]}" / "trainer_state.json").read_text())
    assert state["global_step"] == stopped[0]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- 4: a processor that fails on most records stops the run ------------------------------------------------------
class FailsOn(Processor):
    """Raises ``error`` for the records whose index is in ``failing``; gives the others reward 0.5."""

    def __init__(self, failing, error):
        self.failing, self.error = set(failing), error

    def __call__(self, records):
        for record in records:
            if record["idx"] in self.failing:
                raise self.error
            record["normalized_rewards"]["r"] = 0.5
        return records


def call(manager, n):
    return manager(prompts=["p"] * n, completion_ids=[[5, 6]] * n, prompt_ids=[[1]] * n)


@pytest.mark.parametrize("failing, n", [(range(8), 8), (range(5), 8), (range(2), 2)])
def test_a_processor_failing_on_most_records_stops_the_run(tmp_path, failing, n):
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
    manager = RewardManager([FailsOn(failing, error)], {"r": 1.0}, tmp_path)
    with pytest.raises(ProcessorFailed) as raised:
        call(manager, n)
    message = str(raised.value)
    assert f"FailsOn failed on {len(failing)} of {n} records of reward step 0" in message
    assert "OutOfMemoryError: CUDA out of memory" in message and "--RESUME" in message
    assert raised.value.__cause__ is error


@pytest.mark.parametrize("failing, n", [(range(4), 8), ([3], 8), ([1], 2), ([0], 3)])
def test_a_few_failing_records_keep_the_per_record_fallback(tmp_path, failing, n):
    manager = RewardManager([FailsOn(failing, RuntimeError("CUDA error: an illegal memory access"))], {"r": 1.0},
                            tmp_path)
    assert call(manager, n) == [0.0 if i in failing else 0.5 for i in range(n)]


# --- 5, 8: Audiobox in chunks, in full fp32, on an explicit device, with checked weights --------------------------
@pytest.fixture(scope="module")
def audiobox(audiobox_checkpoint):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield AudioBoxAesRewardProcessor(str(audiobox_checkpoint), device=torch.device("cpu"))
    torch.set_num_threads(threads)


@pytest.fixture
def tf32_on():
    """TF32 allowed for convolutions and matrix products, as cuDNN's default and a user's setting would."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32"
    yield
    conv.fp32_precision, matmul.fp32_precision = saved


def test_chunked_scores_equal_unchunked_and_run_without_tf32(audiobox, monkeypatch, tf32_on):
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal((2, int(SAMPLE_RATE * s))) * 0.3).astype(np.float32) for s in (1.0, 0.5, 2.0)]
    forwards = []

    def record(module, args):
        forwards.append((args[0]["wav"].shape[0], torch.backends.cudnn.conv.fp32_precision,
                         torch.backends.cuda.matmul.fp32_precision))

    scorer = audiobox.scorer
    hook = scorer.predictor.model.register_forward_pre_hook(record)
    try:
        monkeypatch.setattr(scorer, "batch_size", None)
        whole = scorer.batched_scores(clips, SAMPLE_RATE)
        monkeypatch.setattr(scorer, "batch_size", 2)
        chunked = scorer.batched_scores(clips, SAMPLE_RATE)
    finally:
        hook.remove()
    assert [size for size, _, _ in forwards] == [3, 2, 1]
    assert {tuple(flags) for _, *flags in forwards} == {("ieee", "ieee")}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # restored after scoring
    assert np.abs(chunked - whole).max() <= 1e-5 and len({round(float(v), 3) for v in whole[:, 0]}) == 3


def test_clips_per_forward_comes_from_the_constant_or_the_free_gpu_memory(audiobox, monkeypatch):
    scorer = audiobox.scorer
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * AUDIOBOX_BYTES_PER_CLIP, 80 * 2**30))
    monkeypatch.setattr(scorer, "batch_size", None)
    assert scorer.clips_per_forward(gpu) == 5  # half the free memory
    assert scorer.clips_per_forward(torch.device("cpu")) is None  # all at once, as before
    monkeypatch.setattr(scorer, "batch_size", 16)
    assert scorer.clips_per_forward(gpu) == 16
    with pytest.raises(ValueError, match="batch_size=0"):
        AudioBoxAesRewardProcessor(audiobox_batch_size=0)


def test_exact_fp32_turns_tf32_off_and_restores_it_even_after_an_error(tf32_on):
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    with pytest.raises(KeyError), devices.exact_fp32():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        raise KeyError("inside")
    assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")


def test_hub_weights_whose_names_do_not_fit_the_model_are_refused(monkeypatch, audiobox_checkpoint):
    from audiobox_aesthetics.model.aes import AesMultiOutput

    from bench.standins import AUDIOBOX_CONFIG

    layer = torch.nn.Linear(2, 2)
    check_weight_names(layer, {"weight", "bias"}, "a file")
    with pytest.raises(ValueError, match=r"1 model weights missing from the file \['bias'\], 1 weights in the file "
                                         r"unused \['bias_renamed'\]"):
        check_weight_names(layer, {"weight", "bias_renamed"}, "a file")

    saved = torch.load(audiobox_checkpoint, weights_only=True)
    model = AesMultiOutput(**AUDIOBOX_CONFIG, target_transform=saved["target_transform"])
    names = set(model.state_dict())
    monkeypatch.setattr(AesMultiOutput, "from_pretrained", classmethod(lambda cls, repo_id: model))
    monkeypatch.setattr(audiobox_module, "hub_weight_names", lambda repo_id: names - {"proj_layer.CE.0.weight"} | {"x"})
    with pytest.raises(ValueError, match="the hub \\(facebook/audiobox-aesthetics\\) do not fit"):
        load_aes_predictor(None, torch.device("cpu"))
    monkeypatch.setattr(audiobox_module, "hub_weight_names", lambda repo_id: names)
    assert load_aes_predictor(None, torch.device("cpu")).model is model


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


# --- 6: one process, one GPU --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, distributed, fp32_weights, expected", [
    (torch.device("cuda", 0), False, False, {"dtype": "auto", "device_map": {"": 0}}),
    (torch.device("cuda"), False, True, {"dtype": "float32", "device_map": {"": 0}}),
    (torch.device("cuda", 1), True, False, {"dtype": "auto", "device_map": None}),
    (torch.device("cpu"), False, False, {"dtype": "float32", "device_map": None}),
])
def test_policy_init_kwargs(device, distributed, fp32_weights, expected):
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


# --- 7: render workers on big nodes, balanced hand-out ------------------------------------------------------------
@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "800000 100000\n"}, 8.0),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == quota


def test_default_workers_mind_quota_batch_ranks_and_open_files(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("800000 100000\n")  # a pod limited to 8 CPUs
    monkeypatch.setattr(render_pool, "available_cores", lambda: 128)  # on a 128-core host
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_render_workers(cgroup_root=tmp_path) == 8
    assert default_render_workers(batch_size=4, cgroup_root=tmp_path) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_render_workers(batch_size=64, cgroup_root=tmp_path) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(render_pool, "available_cores", lambda: 1000)  # no quota, and more cores than descriptors
    monkeypatch.setattr(render_pool.resource, "getrlimit", lambda which: (1024, 4096))
    assert default_render_workers(cgroup_root=tmp_path / "none") == (1024 - render_pool.FDS_RESERVED) // 3


class RecordingOutbox:
    """A worker's job pipe that notes which worker each job went to."""

    def __init__(self, outbox, worker, sent):
        self.outbox, self.worker, self.sent = outbox, worker, sent

    def send(self, message):
        if message is not None:
            self.sent[message[0]] = self.worker
        self.outbox.send(message)

    def close(self):
        self.outbox.close()


@pytest.mark.parametrize("workers, costs, loads", [
    (8, [3.0, 9.0, 1.0, 8.0, 2.0, 5.0, 4.0, 7.0], [9.0, 8.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.0]),  # one job each
    (4, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [9.0] * 4),  # both slots queued at once: 8+1, 7+2, 6+3, 5+4
])
def test_the_hand_out_uses_every_worker_and_balances_the_queued_work(soundfont, workers, costs, loads):
    score = make_score([(0, 0.5, 60, 80)])
    jobs = [(score.dumps_midi(), 0.5)] * len(costs)
    sent: dict[int, int] = {}
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=workers) as pool:
        pool.worker_pids()
        for index, worker in enumerate(pool._workers):
            worker.outbox = RecordingOutbox(worker.outbox, index, sent)
        results = pool.render_many(jobs, costs)
    assert all(isinstance(result, np.ndarray) for result in results)
    load = [sum(costs[job] for job, worker in sent.items() if worker == w) for w in range(workers)]
    largest, second = sorted(range(len(costs)), key=lambda job: -costs[job])[:2]
    assert sent[largest] != sent[second]
    assert sorted(load, reverse=True) == loads  # every worker got work, the largest jobs first


# --- 9: the weights' dtype is recorded ----------------------------------------------------------------------------
def test_bf16_training_of_non_fp32_weights_is_warned(capsys):
    import smart

    smart.warn_about_weights_dtype("bfloat16", bf16=True)
    warning = capsys.readouterr().out
    assert "weights are bfloat16" in warning and "without an fp32 master copy" in warning
    assert "--FP32_WEIGHTS=True" in warning
    smart.warn_about_weights_dtype("float32", bf16=True)
    smart.warn_about_weights_dtype("bfloat16", bf16=False)
    assert "master copy" not in capsys.readouterr().out
