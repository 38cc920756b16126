"""bench/wheelhouse.py: the wheels an offline GPU box needs, and their install next to the box's own torch.

Two tests reach the package registry: one collects the wheelhouse for Python 3.12 (the box's), one collects the full
wheelhouse for this Python and runs every project module and the GPU check from it, with nothing else on the path but
this environment's torch and what torch needs.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment

from bench.wheelhouse import (
    FROM_THE_BOX,
    IN_TORCH_IMAGES,
    MANIFEST,
    NOT_AT_RUN_TIME,
    canonical,
    closure,
    plan,
    read_pins,
    target_environment,
)
from conftest import ROOT

SCRIPT = ROOT / "bench" / "wheelhouse.py"


def wheelhouse(*args: str, python: str = sys.executable, **options) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, **options)


def test_the_closure_follows_the_box_markers_and_extras_and_stops_at_the_box_packages():
    metadata = {
        "app": {"requires_dist": ["lib[fast]>=1", 'backport; python_version < "3.12"', 'shim; python_version >= "3.12"',
                                  "torch>=2.0"]},
        "lib": {"requires_dist": ['speedup; extra == "fast"', 'docs; extra == "docs"']},
        "backport": {}, "shim": {}, "speedup": {}, "docs": {},
        "torch": {"requires_dist": ["nvidia-cublas"]},
    }
    for python, expected, absent in (("3.12", "shim", "backport"), ("3.11", "backport", "shim")):
        needed = closure(metadata, ["app"], {"torch"}, target_environment(python, ("manylinux_2_28_x86_64",)))
        assert expected in needed and absent not in needed
        assert {"app", "lib", "speedup", "torch"} <= set(needed)
        assert "docs" not in needed and "nvidia-cublas" not in needed
        assert needed["lib"] == {"app": ">=1"} and needed["torch"] == {"app": ">=2.0"}
    assert target_environment("3.12", ("manylinux2014_aarch64",))["platform_machine"] == "aarch64"
    assert target_environment("3.12", ("manylinux_2_17_x86_64",))["platform_machine"] == "x86_64"


def test_install_takes_the_box_package_at_the_pin_and_the_wheel_otherwise_and_names_what_is_missing():
    numpy = importlib.metadata.version("numpy")
    packages = {
        "numpy": {"version": "0.0.1", "file": None, "required_by": {"app": ">=1.0"}},  # the box's, any version
        "tqdm": {"version": importlib.metadata.version("tqdm"), "file": "tqdm.whl", "required_by": {}},
        "pyyaml": {"version": "0.0.1", "file": "pyyaml.whl", "required_by": {}},
        "no-such-package": {"version": "1.0", "file": None, "required_by": {}},
    }
    rows, wheels, problems = plan({"packages": packages})
    assert wheels == ["pyyaml.whl"]
    sources = {name: (version, source) for name, version, source, _ in rows}
    assert sources["numpy"] == (numpy, "box") and sources["tqdm"][1] == "box"
    assert sources["pyyaml"][0] == "0.0.1" and sources["pyyaml"][1].startswith("wheelhouse")
    assert problems == ["no-such-package (pinned 1.0) is neither installed here nor in the wheelhouse"]
    packages["numpy"]["required_by"] = {"app": ">=999"}
    assert f"numpy {numpy} is installed here but app needs numpy>=999" in plan({"packages": packages})[2]


def test_the_box_wheelhouse_is_all_wheels_and_small(tmp_path: Path):
    """The default wheelhouse for the box's Python 3.12: every pin but the box's resolves to a wheel for it."""
    out = tmp_path / "wheelhouse"
    result = wheelhouse("collect", "--python", "3.12", "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["python"] == "3.12" and not manifest["full"]
    files = sorted(path.name for path in out.iterdir() if path.name != MANIFEST)
    assert files and all(name.endswith(".whl") for name in files)
    tags = [name.removesuffix(".whl").split("-")[-3:] for name in files]
    assert all(python in ("py3", "py2.py3", "py312", "cp312") or abi == "abi3" for python, abi, _ in tags), tags
    pins = read_pins(ROOT / "requirements.txt") | read_pins(ROOT / "requirements-nodeps.txt")
    box = set(FROM_THE_BOX) | set(IN_TORCH_IMAGES)
    for name, version in pins.items():
        if name in NOT_AT_RUN_TIME:
            assert name not in manifest["packages"]
            continue
        entry = manifest["packages"][name]
        assert entry["version"] == version
        assert (entry["file"] is None) == (name in box), name
    assert not {"torch", "triton"} & {canonical(name.split("-")[0]) for name in files}
    assert not any(name.startswith("nvidia") for name in files)
    total = sum((out / name).stat().st_size for name in files)
    assert f"{total / 1e6:.1f} MB" in result.stdout
    assert total < 50e6


def link_the_box_packages(folder: Path) -> None:
    """Links in ``folder`` to this environment's torch and torchaudio, every distribution they need, and pip: what
    the box's Python has."""
    installed = {canonical(dist.metadata["Name"]): dist for dist in importlib.metadata.distributions()}
    metadata = {name: {"requires_dist": dist.requires or []} for name, dist in installed.items()}
    for name in closure(metadata, [*FROM_THE_BOX, "pip"], set(), default_environment()):
        dist = installed.get(name)
        if dist is None:
            continue
        site = Path(dist.locate_file(""))
        for top in {file.parts[0] for file in dist.files or []} - {"..", "__pycache__"}:
            if not (folder / top).exists():
                (folder / top).symlink_to(site / top)


MODULES_DRIVER = r"""
import importlib, json, pathlib, pkgutil, sys
root = pathlib.Path.cwd()
names = [path.stem for path in root.glob("*.py")]
for package in sorted(path.parent for path in root.glob("*/__init__.py")):
    if package.name != "tests":
        names += [package.name] + [f"{package.name}.{m.name}" for m in pkgutil.iter_modules([str(package)])]
errors = {}
for name in sorted(names):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        errors[name] = error.name
print(json.dumps({"imported": sorted(set(names) - set(errors)), "missing": errors}))
"""


def test_the_full_wheelhouse_alone_with_torch_runs_every_module_and_the_gpu_check(tmp_path: Path):
    """FULL for this Python, installed with --no-index into an empty folder; then a Python whose path holds only
    that folder and links to this environment's torch (and what torch needs) imports every project module and runs
    bench/gpu_check.py --tiny."""
    out = tmp_path / "wheelhouse"
    result = wheelhouse("collect", "--full", "--out", str(out), timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The box: a venv of the base interpreter whose site-packages holds links to torch, what it needs, and pip.
    venv = tmp_path / "box"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    link_the_box_packages(Path(site))
    target = tmp_path / "target" / "site-packages"
    result = wheelhouse("install", str(out), "--target", str(target), python=python, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("  ")}
    assert table["torch"][1] == importlib.metadata.version("torch") and table["torch"][2] == "box"
    assert table["transformers"][2] == "wheelhouse" and table["numpy"][2] == "wheelhouse"

    env["PYTHONPATH"] = str(target)
    path = subprocess.run([python, "-c", "import sys, json; print(json.dumps(sys.path))"], env=env,
                          capture_output=True, text=True, check=True)
    assert [entry for entry in json.loads(path.stdout) if "-packages" in entry] == [str(target), site]
    modules = subprocess.run([python, "-c", MODULES_DRIVER], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
    assert modules.returncode == 0, modules.stderr[-3000:]
    found = json.loads(modules.stdout.splitlines()[-1])
    expected = {"smart", "processors", "smart_utils.devices", "listening.study", "bench.gpu_check", "bench.standins"}
    assert expected <= set(found["imported"])
    # Only what no run needs is absent: the tests', the study's and the pretraining corpus' packages.
    assert {missing.split(".")[0] for missing in found["missing"].values()} <= set(NOT_AT_RUN_TIME)

    check = subprocess.run([python, "bench/gpu_check.py", "--tiny", "--steps", "2", "--soundfont", "timgm6mb",
                            "--json", str(tmp_path / "figures.json")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert check.stdout.rstrip().endswith("gpu-check: ok")
    assert str(target) in json.loads((tmp_path / "figures.json").read_text())["soundfont"]["path"]


@pytest.mark.parametrize("wrong", ["python", "full target", "target name"])
def test_install_refuses_a_wheelhouse_for_another_python_or_a_wrong_target(tmp_path: Path, wrong: str):
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python": "2.7" if wrong == "python" else here, "platforms": [], "full": False, "packages": {}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    target = tmp_path / ("packages" if wrong == "target name" else "site-packages")
    target.mkdir()
    if wrong == "full target":
        (target / "old").write_text("")
    result = wheelhouse("install", str(tmp_path), "--target", str(target))
    assert result.returncode == 2
    expected = {"python": f"make wheelhouse PY={here}", "full target": "is not empty",
                "target name": "name the folder site-packages"}[wrong]
    assert expected in result.stderr
