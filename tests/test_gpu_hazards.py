"""Hazards that only a GPU box shows, reproduced on a CPU: Triton not finding libcuda.so.1, NCCL's 10-minute
collective timeout, bf16 autocast reaching the CLAP rewards, Ctrl-C swallowed after training, and evaluation's
--device not reaching every model.

Each condition is simulated: ldconfig's output and the driver's folder, torch.cuda's answers, a gloo process
group of one, a CPU autocast, a signal sent to this process.
"""

import datetime
import os
import signal
import socket
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from scores import make_score
from smart_utils import devices, preflight

# --- 1: Triton finds libcuda.so.1 ------------------------------------------------------------------------------


def cache_line(path: Path) -> str:
    return f"\tlibcuda.so.1 (libc6,x86-64) => {path}\n"


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """A folder holding libcuda.so.1 (where a container's driver was mounted), and the triton/LD variables unset."""
    folder = tmp_path / "driver"
    folder.mkdir()
    (folder / "libcuda.so.1").write_text("")
    monkeypatch.delenv("TRITON_LIBCUDA_PATH", raising=False)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    return folder


HEADER = "602 libs found in cache `/etc/ld.so.cache'\n\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n"

# name -> (ldconfig -p output, with {driver} and {gone}; LD_LIBRARY_PATH; TRITON_LIBCUDA_PATH; what the problem says)
LIBCUDA_CASES = {
    "stale cache": (HEADER + "\tlibcuda.so.1 (libc6,x86-64) => {gone}/libcuda.so.1\n", "{driver}", None,
                    ["is not there (a stale cache", "ignores LD_LIBRARY_PATH", "ldconfig"]),
    "not in the cache": (HEADER, None, None, ["neither the linker cache", "ldconfig"]),
    "no ldconfig": (None, None, None, ["/sbin/ldconfig -p", "could not run", "ldconfig"]),
    "wrong TRITON_LIBCUDA_PATH": (HEADER, None, "{gone}", ["TRITON_LIBCUDA_PATH={gone} holds no libcuda.so.1"]),
    "in the cache": (HEADER + "\tlibcuda.so.1 (libc6,x86-64) => {driver}/libcuda.so.1\n", None, None, None),
    "in LD_LIBRARY_PATH": (HEADER, "/nowhere:{driver}", None, None),
    "TRITON_LIBCUDA_PATH": (HEADER, None, "{driver}", None),
}


def triton_finds_libcuda(listing, monkeypatch) -> bool:
    """What Triton itself does (its libcuda_dirs, then -l:libcuda.so.1 from those folders), with ``listing`` as
    /sbin/ldconfig -p's output (None: the command is missing)."""
    driver_module = pytest.importorskip("triton.backends.nvidia.driver")

    def check_output(command, **kwargs):
        assert command == ["/sbin/ldconfig", "-p"]
        if listing is None:
            raise FileNotFoundError(command[0])
        return listing.encode()

    monkeypatch.setattr(driver_module, "subprocess", types.SimpleNamespace(check_output=check_output))
    driver_module.libcuda_dirs.cache_clear()
    try:
        folders = driver_module.libcuda_dirs()
    except (AssertionError, FileNotFoundError):
        return False
    finally:
        driver_module.libcuda_dirs.cache_clear()
    return any((Path(folder) / "libcuda.so.1").exists() for folder in folders)


@pytest.mark.parametrize("case", LIBCUDA_CASES)
def test_a_libcuda_triton_cannot_find_is_reported_with_the_folder_to_export(case, driver, tmp_path, monkeypatch):
    listing, ld_path, triton_path, expected = LIBCUDA_CASES[case]
    fill = dict(driver=driver, gone=tmp_path / "gone")
    listing = None if listing is None else listing.format(**fill)
    if ld_path:
        monkeypatch.setenv("LD_LIBRARY_PATH", ld_path.format(**fill))
    if triton_path:
        monkeypatch.setenv("TRITON_LIBCUDA_PATH", triton_path.format(**fill))
    problem = preflight.libcuda_problem(listing, os.environ, places=["/nowhere", str(driver)])
    assert (problem is None) == triton_finds_libcuda(listing, monkeypatch), problem  # Triton's own verdict
    if expected is None:
        assert problem is None
    else:
        for part in ["Triton", "first CUDA step", f"export TRITON_LIBCUDA_PATH={driver} (it holds libcuda.so.1)",
                     *(p.format(**fill) for p in expected)]:
            assert part in problem, problem


def test_without_a_driver_folder_to_point_at_nothing_is_said(driver, monkeypatch):
    """Fake CUDA answers on a machine with no driver (the other preflight tests): no libcuda problem invented."""
    assert preflight.libcuda_problem(HEADER, os.environ, places=["/nowhere"]) is None
    monkeypatch.setenv("TRITON_LIBCUDA_PATH", "/nowhere")  # but a wrong setting is always worth a line
    assert "export TRITON_LIBCUDA_PATH=<the folder holding libcuda.so.1>" in preflight.libcuda_problem(
        HEADER, os.environ, places=["/nowhere"])


def test_the_driver_this_process_loaded_is_found_in_its_memory_map(driver, tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0-7f1 r--p 00000000 08:01 1 /usr/lib/libc.so.6\n"
                    f"7f2-7f3 r-xp 00000000 08:01 2 {driver}/libcuda.so.550.54.15\n")
    assert preflight.loaded_libcuda_dir(maps) == str(driver)
    assert preflight.loaded_libcuda_dir(tmp_path / "no-maps") is None


def test_gpu_problems_reports_a_stale_linker_cache_when_cuda_is_present(driver, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CC", "/opt/cc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    header = tmp_path / "Python.h"
    header.write_text("")
    monkeypatch.setattr(preflight, "python_header", lambda: header)
    monkeypatch.setattr(preflight, "loaded_libcuda_dir", lambda: None)
    monkeypatch.setattr(preflight, "LIBCUDA_PLACES", ("/nowhere", str(driver)))
    stale = HEADER + cache_line(tmp_path / "gone" / "libcuda.so.1")
    [problem] = preflight.gpu_problems(which=lambda name: None, run=None, ldconfig=lambda: stale)
    assert f"export TRITON_LIBCUDA_PATH={driver}" in problem and "stale cache" in problem
    fresh = HEADER + cache_line(driver / "libcuda.so.1")
    assert preflight.gpu_problems(which=lambda name: None, run=None, ldconfig=lambda: fresh) == []


# --- 2: the process group's collective timeout -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# --- 3: the CLAP rewards compute in fp32 under an outer autocast ------------------------------------------------


@pytest.fixture(scope="module")
def clap_embedder(tmp_path_factory):
    from bench.standins import make_tiny_clap
    from smart_utils.clap import ClapEmbedder

    folder = make_tiny_clap(tmp_path_factory.mktemp("clap") / "clap")
    return ClapEmbedder(48000, str(folder), torch.device("cpu"), batch_size=None)


def test_clap_embeddings_stay_fp32_under_bf16_autocast(clap_embedder):
    rng = np.random.default_rng(0)
    clips = [clap_embedder.mono_clip({"audio": rng.standard_normal((2, 48000)).astype(np.float32) * 0.1})[0]
             for _ in range(2)]
    prompts = ["jazz", "a calm piano piece"]
    text, audio = clap_embedder.text_embeddings(prompts), clap_embedder.audio_embeddings(clips)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        text_bf16, audio_bf16 = clap_embedder.text_embeddings(prompts), clap_embedder.audio_embeddings(clips)
        assert torch.is_autocast_enabled("cpu")  # the outer autocast is back after the embeddings
    for inside, outside in ((text_bf16, text), (audio_bf16, audio)):
        assert inside.dtype == torch.float32
        torch.testing.assert_close(inside, outside, rtol=0, atol=1e-6)


def test_exact_fp32_leaves_autocast_as_it_was_even_after_an_error():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(KeyError), devices.exact_fp32():
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
            raise KeyError("inside")
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# --- 4: Ctrl-C once training is over ---------------------------------------------------------------------------


@pytest.fixture
def python_signal_handlers():
    """Python's own handlers (Ctrl-C raises KeyboardInterrupt), and whatever was there put back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_after_training_ctrl_c_interrupts_instead_of_asking_for_a_checkpoint(python_signal_handlers):
    from transformers import TrainerControl

    from smart_utils.stop_on_signal import StopOnSignal

    sigterm = signal.getsignal(signal.SIGTERM)
    callback = StopOnSignal()  # as smart.py installs it, for the whole training
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # (the handler runs here: no KeyboardInterrupt, a request)
    assert callback.on_step_end(None, None, TrainerControl()).should_training_stop
    callback.uninstall()  # what smart.py does once the tuned model is saved
    assert signal.getsignal(signal.SIGTERM) == sigterm
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    source = (ROOT / "smart.py").read_text()  # smart.py uninstalls it after saving, before the report
    assert source.index("trainer.save_state()") < source.index("stop_on_signal.uninstall()") < source.index(
        "evaluate_run(run_dir")


def test_an_interrupted_end_of_run_report_says_the_tuned_model_is_saved(monkeypatch, tmp_path, capsys):
    from configurator import smart_constants
    from smart_utils import evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_systems", interrupted)
    config = {**smart_constants(), "REWARD_WEIGHTS": {"note_density": 1.0}, "SOUNDFONT": "timgm6mb"}
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_run(run, config, n=2)
    said = capsys.readouterr().out
    assert f"the tuned model is saved in {run}" in said and f"python evaluation.py {run}" in said


# --- 5: evaluation.py --device reaches sampling, Audiobox and the rewards ---------------------------------------


def test_evaluate_systems_builds_every_model_on_the_device_it_was_given(monkeypatch, tmp_path):
    from configurator import smart_constants
    from processors import Processor
    from smart_utils import evaluation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the default would be cuda:0: it must not be used
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    got = {}

    def generate(model, out_dir, settings, device=None):
        got["sampling"] = device
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        make_score([(0, 1, 60, 80), (1, 1, 64, 80)]).dump_midi(str(Path(out_dir) / "0000.mid"))

    class Audiobox(Processor):
        def __init__(self, checkpoint=None, device=None, **kwargs):
            got["audiobox"] = device

        def __call__(self, records):
            return records

    def build(names, constants, device=None):
        got["rewards"] = device
        return []

    monkeypatch.setattr(evaluation, "generate_pieces", generate)
    monkeypatch.setattr(evaluation, "AudioBoxAesRewardProcessor", Audiobox)
    monkeypatch.setattr(evaluation, "build_reward_processors", build)
    monkeypatch.setattr(evaluation, "write_report", lambda result, out, permutations: out / "report.html")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_text("")  # a model system: its pieces are sampled
    constants = {**smart_constants(), "MAX_AUDIO_DURATION": 1}
    evaluation.evaluate_systems({"m": model}, tmp_path / "eval", constants=constants,
                                generation=evaluation.GenerationSettings(n=1), audiobox="hub",
                                reward_names=["note_density"], robustness_soundfonts=(), listen=0, device="cpu")
    assert got == {"sampling": "cpu", "audiobox": torch.device("cpu"), "rewards": torch.device("cpu")}
