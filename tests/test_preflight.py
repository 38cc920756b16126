"""smart_utils/preflight.py: what smart.py checks before anything slow, and how it stops.

The config checks (check_config, then the rewards' reward_problems) on bad values, each through smart.py in this
process and in a process of its own; then the machine checks on a GPU box, simulated on a CPU: torch.cuda's answers,
nvidia-smi's output, a GPU outside the build's architectures, Triton's build tools, and Triton finding libcuda.so.1
(ldconfig's output and the driver's folder).
"""

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_smart, run_smart_in_process
from processors import reward_problems
from smart_utils import preflight
from smart_utils.preflight import check_config


# --- the config checks ------------------------------------------------------------------------------------------------
@pytest.fixture
def good_config(tiny_policy, audiobox_checkpoint):
    import smart

    config = {key: getattr(smart, key) for key in dir(smart) if key.isupper()}
    config.update(BASE_MODEL_PATH=str(tiny_policy), SOUNDFONT="timgm6mb", AUDIOBOX_CHECKPOINT=str(audiobox_checkpoint))
    return config


# The cases test_each_bad_config_exits_with_one_message_naming_constant_value_and_fix runs through smart.py itself
# (the same constant and value) are not repeated here.
@pytest.mark.parametrize(
    "change, expected",
    [
        ({"REWARD_WEIGHTS": {"CE": 0.0}}, "sum to more than 0"),
        ({"BATCH_SIZE": 60}, "not divisible by NUM_GENERATIONS=8"),
        ({"SAMPLE_RATE": -1}, "SAMPLE_RATE=-1 must be > 0"),
        ({"PROMPT_SOURCE": "dataset"}, "PROMPT_MIDI_DIR=None"),
        ({"PROMPT_SOURCE": "random"}, "PROMPT_SOURCE='random' is not one of"),
    ],
)
def test_the_config_checks_name_the_constant_and_value(good_config, change, expected):
    """What smart.py checks before anything slow: preflight's check_config, then the rewards' reward_problems."""

    def problems_of(config):
        return check_config(config) + reward_problems(config["REWARD_WEIGHTS"], config)

    assert problems_of(good_config) == []
    problems = problems_of({**good_config, **change})
    assert len(problems) == 1 and expected in problems[0]


# Each bad value -> the pieces its single message must contain: the constant and value, and the fix.
PREFLIGHT_CASES = {
    "reward nobody produces": (["--REWARD_WEIGHTS={'CEE': 1.0}"],
                               ["REWARD_WEIGHTS has ['CEE']", "known rewards:",
                                "a Processor subclass", "REWARDS = ('NAME',)"]),
    "weights sum to 0": (["--REWARD_WEIGHTS={'note_density': 0.0}"],
                         ["REWARD_WEIGHTS={'note_density': 0.0}", "sum to more than 0"]),
    "soundfont not found": (["--SOUNDFONT=nonexistent"], ["SOUNDFONT", "'nonexistent' not found", "To get it"]),
    "model dir missing": (["--BASE_MODEL_PATH=/no/such/dir"],
                          ["BASE_MODEL_PATH='/no/such/dir'", "neither an existing local directory nor a hub id"]),
    "model hub id unreachable": (["--BASE_MODEL_PATH=nobody/no-such-model"],
                                 ["BASE_MODEL_PATH='nobody/no-such-model'", "could not fetch",
                                  "python smart.py config/local.py"]),
    "audiobox checkpoint missing": (["--REWARD_WEIGHTS={'CE': 1.0}", "--AUDIOBOX_CHECKPOINT=/no/ckpt.pt"],
                                    ["AUDIOBOX_CHECKPOINT='/no/ckpt.pt' does not exist", "give a checkpoint.pt"]),
    "batch not divisible": (["--BATCH_SIZE=5"], ["BATCH_SIZE=5", "not divisible by NUM_GENERATIONS=2", "e.g. 4"]),
    "max beats 0": (["--MAX_BEATS=0"], ["MAX_BEATS=0 must be > 0"]),
    "max beats negative": (["--MAX_BEATS=-8"], ["MAX_BEATS=-8 must be > 0"]),
    "sample rate 0": (["--SAMPLE_RATE=0"], ["SAMPLE_RATE=0 must be > 0"]),
    "sample rate negative": (["--SAMPLE_RATE=-48000"], ["SAMPLE_RATE=-48000 must be > 0"]),
}


@pytest.mark.parametrize("case", PREFLIGHT_CASES)
def test_each_bad_config_exits_with_one_message_naming_constant_value_and_fix(monkeypatch, good_args, case, tmp_path):
    change, expected = PREFLIGHT_CASES[case]
    code = run_smart_in_process(monkeypatch, good_args + change)
    assert isinstance(code, str), f"expected an exit message, got exit code {code!r}"
    header, *problems = code.split("\n- ")
    assert header == "smart.py: the config cannot run:" and len(problems) == 1, code
    assert all(piece in problems[0] for piece in expected), problems[0]
    assert not (tmp_path / "run").exists()  # stopped before the run began: no run folder


def test_bad_config_exits_nonzero_naming_the_constant(tiny_policy):
    result = run_smart(f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--BATCH_SIZE=7", timeout=60)
    assert result.returncode != 0 and "BATCH_SIZE=7" in result.stderr and "Traceback" not in result.stderr


# --- a GPU that torch cannot use, or that the build does not support --------------------------------------------------
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


# --- Triton finds libcuda.so.1 ----------------------------------------------------------------------------------------
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
