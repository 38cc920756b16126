"""Wheels for an offline GPU box that brings its own Python, torch and CUDA: one folder to copy next to the repo.

    make wheelhouse [PY=3.12] [FULL=1] [OUT=wheelhouse]        # on a machine with a network
    make gpu-check WHEELHOUSE=wheelhouse PYTHON=python3         # on the box: install what it lacks, run the check

    python bench/wheelhouse.py collect --python 3.12 [--full] [--out wheelhouse] [--platform TAG ...]
    python bench/wheelhouse.py install wheelhouse --target DIR/site-packages  # then PYTHONPATH=DIR/site-packages

collect: pip resolves the pins of requirements.txt (less NOT_AT_RUN_TIME) for the box's Python and platforms, wheels
only, with torch and torchaudio as dependency-free placeholders (FROM_THE_BOX: the box has them and their CUDA and
Triton libraries). The dependency closure, its markers evaluated for the box, is downloaded, together with the
requirements-nodeps.txt pins (--no-deps, as make setup installs them). The packages every PyTorch image ships
(IN_TORCH_IMAGES) are left out unless --full: the box's copies are used. pretty_midi comes as its wheel (5.6 MB),
which is smaller than the TimGM6mb.sf2 inside it (6.0 MB) and lets the soundfont resolve as it does everywhere.
manifest.json records every needed package, its version and which file holds it (none: the box's).

install: every package of the manifest is the box's when the box has it at the wheelhouse's version, or, for
FROM_THE_BOX and the left-out packages, at any version that meets what the other packages require; all others are
installed from their wheels with pip --no-index --no-deps into DIR, a folder named site-packages (datasets hashes
with dill, which pickles the code of modules from anywhere else by value, and fails). It prints what will run, at
which version and from where, and stops naming what neither the box nor the wheelhouse has.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
except ImportError:  # a Python whose only third-party package is pip: pip's own copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
NO_DEPS_REQUIREMENTS = ROOT / "requirements-nodeps.txt"  # installed with --no-deps, here too
# Pinned in requirements.txt, imported neither by smart.py nor by the GPU check: left out, with why.
NOT_AT_RUN_TIME = {
    "pytest": "tests", "hypothesis": "tests", "selenium": "tests", "ruff": "lint",
    "flask": "listen.py's study server", "waitress": "listen.py's study server",
    "pyloudnorm": "listen.py's study clips", "music21": "pretrain.py's corpus (20 MB)",
    "tensorboard": "the tests' offline tracker (with REPORT_TO='tensorboard' a box uses its own)",
}
FROM_THE_BOX = ("torch", "torchaudio")  # with their CUDA and Triton libraries: never collected
# The box's copies are used unless --full (FULL=1): every PyTorch image ships them, and they are most of the size.
IN_TORCH_IMAGES = ("numpy", "pandas", "pyarrow", "matplotlib", "scipy")  # with their own dependencies (pillow...)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MANIFEST = "manifest.json"


class WheelhouseError(RuntimeError):
    """What went wrong and what to do, for the user; printed without a traceback."""


def canonical(name: str) -> str:
    """A distribution name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of a requirements file, by canonical name."""
    pins = {}
    for line in path.read_text().splitlines():
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if found:
            pins[canonical(found.group(1))] = found.group(2)
    return pins


def target_environment(python: str, platforms: tuple[str, ...]) -> dict[str, str]:
    """The marker values of a CPython ``python`` on Linux for ``platforms`` (pip evaluates markers for the Python
    that runs it, not for ``--python-version``, so the closure is taken again with these)."""
    machine = re.sub(r"^(?:many|musl)?linux(?:_\d+_\d+|\d+)?_", "", platforms[0])  # manylinux_2_28_x86_64: x86_64
    return {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": f"{python}.0", "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "platform_machine": machine}


def pip_target_options(python: str, platforms: tuple[str, ...]) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            *(f"--platform={platform}" for platform in platforms)]


def placeholder_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel holding only metadata, with no dependencies: what the resolver sees of a package the box brings."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}.dist-info/RECORD"])
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def pip_errors(result: subprocess.CompletedProcess) -> str:
    """What pip said went wrong, without its warnings."""
    return "\n".join(line for line in result.stderr.splitlines() if not line.startswith("WARNING:")).strip()


def resolve(requirements: list[str], options: list[str], workdir: Path) -> dict[str, dict]:
    """pip's resolution of ``requirements`` for the box (``options``): canonical name -> the wheel's metadata."""
    report = workdir / "resolution.json"
    # --target: pip before 23.3 takes --platform only with it, even for a dry run (which writes nothing there)
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "--target", str(workdir / "unused"), *options, *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise WheelhouseError(f"pip could not resolve the requirements to wheels for this box:\n{pip_errors(result)}")
    return {canonical(item["metadata"]["name"]): item["metadata"] for item in json.loads(report.read_text())["install"]}


def closure(
    metadata: dict[str, dict], roots: list[str], leaves: set[str], environment: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Every distribution needed from ``roots`` under the box's markers, each with who requires it and how
    (dependent -> specifier); the dependencies of ``leaves`` are not followed (the box's own)."""
    required_by: dict[str, dict[str, str]] = {root: {} for root in roots}
    extras: dict[str, set[str]] = {}
    queue = [(root, frozenset[str]()) for root in roots]
    while queue:
        name, wanted = queue.pop()
        if name in extras and wanted <= extras[name]:
            continue
        extras[name] = extras.get(name, set()) | wanted
        if name in leaves or name not in metadata:
            continue
        for line in metadata[name].get("requires_dist", []):
            requirement = Requirement(line)
            contexts = [{**environment, "extra": extra} for extra in ("", *sorted(extras[name]))]
            if requirement.marker and not any(requirement.marker.evaluate(context) for context in contexts):
                continue
            dependency = canonical(requirement.name)
            required_by.setdefault(dependency, {})[name] = str(requirement.specifier)
            queue.append((dependency, frozenset(requirement.extras)))
    return required_by


def wheel_name(path: Path) -> str:
    """The canonical distribution name in a wheel's file name."""
    return canonical(path.name.split("-", 1)[0])


def download(pins: dict[str, str], options: list[str], folder: Path) -> dict[str, Path]:
    """The wheels of ``pins``, without their dependencies, into ``folder``: canonical name -> file."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), *options,
               *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise WheelhouseError(f"pip could not download the wheels:\n{pip_errors(result)}")
    files = {wheel_name(path): path for path in folder.iterdir()}
    not_wheels = sorted(path.name for path in files.values() if path.suffix != ".whl")
    if not_wheels:
        raise WheelhouseError(f"not wheels: {', '.join(not_wheels)}")
    return files


def collect(python: str, platforms: tuple[str, ...], full: bool, out: Path) -> int:
    """Resolve, download and describe the wheelhouse for ``python`` on ``platforms`` in ``out``."""
    pins, no_deps = read_pins(REQUIREMENTS), read_pins(NO_DEPS_REQUIREMENTS)
    roots = [name for name in pins if name not in NOT_AT_RUN_TIME]
    from_the_box = set(FROM_THE_BOX) | (set() if full else set(IN_TORCH_IMAGES))
    options = pip_target_options(python, platforms)
    environment = target_environment(python, platforms)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise WheelhouseError(f"{out} holds files but no {MANIFEST}: not a wheelhouse; give another --out")
    print(f"[wheelhouse] Python {python} (CPython) on {', '.join(platforms)}; "
          f"{'FULL: with' if full else 'without'} {', '.join(IN_TORCH_IMAGES)} (every PyTorch image ships them); "
          f"never {', '.join(FROM_THE_BOX)} (the box's, with their CUDA and Triton libraries)", flush=True)
    print("[wheelhouse] not needed at run time, left out: "
          + ", ".join(f"{name} ({why})" for name, why in NOT_AT_RUN_TIME.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as temporary:
        workdir = Path(temporary)
        placeholders = {name: placeholder_wheel(workdir, name, pins[name]) for name in FROM_THE_BOX}
        requirements = [f"{name} @ {placeholders[name].as_uri()}" if name in placeholders else f"{name}=={pins[name]}"
                        for name in roots]
        extra: list[str] = []
        for _ in range(3):  # what the box's markers add to pip's resolution (the Python running pip decides those)
            metadata = resolve(requirements + extra, options, workdir)
            needed = closure(metadata, roots, from_the_box, environment)
            unresolved = sorted(set(needed) - set(metadata))
            if not unresolved:
                break
            extra += unresolved
        else:
            raise WheelhouseError(f"pip's resolution lacks {', '.join(unresolved)}, required on Python {python}")
        versions = {name: metadata[name]["version"] for name in needed}
        wanted = {name: version for name, version in versions.items() if name not in from_the_box}
        staging = workdir / "wheels"
        staging.mkdir()
        files = download(wanted, options, staging) | download(no_deps, options, staging)
        absent = sorted((set(wanted) | set(no_deps)) - set(files))
        if absent:
            raise WheelhouseError(f"pip downloaded no wheel for {', '.join(absent)}")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out)
    packages = {name: {"version": versions[name], "file": files[name].name if name in files else None,
                       "required_by": needed[name]} for name in sorted(needed)}
    packages |= {name: {"version": version, "file": files[name].name, "required_by": {}}
                 for name, version in no_deps.items()}
    manifest = {"python": python, "platforms": list(platforms), "full": full, "packages": packages}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = 0
    for entry in packages.values():
        if entry["file"] is not None:
            size = (out / entry["file"]).stat().st_size
            total += size
            print(f"  {size / 1e6:7.2f} MB  {entry['file']}")
    box = ", ".join(f"{name} {entry['version']}" for name, entry in packages.items() if entry["file"] is None)
    print(f"[wheelhouse] {out}: {sum(entry['file'] is not None for entry in packages.values())} wheels, "
          f"{total / 1e6:.1f} MB; the box's (pins shown): {box}")
    return 0


def box_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan(manifest: dict) -> tuple[list[tuple[str, str, str, str]], list[str], list[str]]:
    """For each needed package (name, version it runs at, where from, the wheelhouse's version); the wheel files
    to install; what is missing or at a version the others cannot use."""
    rows, wheels, problems = [], [], []
    for name, entry in sorted(manifest["packages"].items()):
        have = box_version(name)
        if entry["file"] is None:
            if have is None:
                problems.append(f"{name} (pinned {entry['version']}) is neither installed here nor in the wheelhouse")
                rows.append((name, "MISSING", "-", entry["version"]))
                continue
            problems += [f"{name} {have} is installed here but {dependent} needs {name}{specifier}"
                         for dependent, specifier in entry["required_by"].items()
                         if specifier and not SpecifierSet(specifier).contains(have, prereleases=True)]
            rows.append((name, have, "box", entry["version"]))
        elif have is not None and Version(have) == Version(entry["version"]):
            rows.append((name, have, "box", entry["version"]))
        else:
            wheels.append(entry["file"])
            rows.append((name, entry["version"], f"wheelhouse (box has {have or 'none'})", entry["version"]))
    return rows, wheels, problems


def install(wheelhouse: Path, target: Path) -> int:
    """Install into ``target`` what this Python lacks of ``wheelhouse``'s manifest; print what runs from where."""
    if not (wheelhouse / MANIFEST).is_file():
        raise WheelhouseError(f"{wheelhouse} has no {MANIFEST}: build one with make wheelhouse PY=<the box's Python>")
    manifest = json.loads((wheelhouse / MANIFEST).read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise WheelhouseError(f"{wheelhouse} holds wheels for Python {manifest['python']}, this is Python {here} "
                              f"({sys.executable}): build one with make wheelhouse PY={here}")
    if target.name != "site-packages":
        raise WheelhouseError(f"{target}: name the folder site-packages (e.g. --target /tmp/box/site-packages). "
                              f"datasets hashes its tables with dill, which pickles the code of modules by value, "
                              f"and fails, unless they come from sys.prefix or a folder of that name")
    if target.exists() and any(target.iterdir()):
        raise WheelhouseError(f"{target} is not empty: give a new or empty folder")
    rows, wheels, problems = plan(manifest)
    print(f"[wheelhouse] {sys.executable} (Python {here}) runs:")
    table = [("package", "version", "from", "pin"), *rows]
    widths = [max(len(row[column]) for row in table) + 2 for column in range(3)]
    for name, version, source, pin in table:
        print(f"  {name:<{widths[0]}}{version:<{widths[1]}}{source:<{widths[2]}}{pin}")
    if problems:
        print("[wheelhouse] cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        print(f"[wheelhouse] install these into this Python, or build a wheelhouse that holds them "
              f"(make wheelhouse PY={here} FULL=1 includes {', '.join(IN_TORCH_IMAGES)})", file=sys.stderr)
        return 2
    if wheels:
        if importlib.util.find_spec("pip") is None:
            raise WheelhouseError(f"{sys.executable} has no pip to install the wheels with: {sys.executable} -m "
                                  f"ensurepip, or copy a Python that has it")
        target.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
                   "--disable-pip-version-check", "--target", str(target), *(str(wheelhouse / w) for w in wheels)]
        if subprocess.run(command).returncode != 0:
            raise WheelhouseError(f"pip could not install the wheels into {target} (its output is above)")
    print(f"[wheelhouse] {len(wheels)} packages installed into {target}; run with PYTHONPATH={target}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    collecting = commands.add_parser("collect", help="download the wheels for a box (needs a network)")
    collecting.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                            help="the box's Python version (default: this one, %(default)s)")
    collecting.add_argument("--platform", action="append", dest="platforms",
                            help=f"a wheel platform tag the box accepts, repeated (default: {' '.join(PLATFORMS)})")
    collecting.add_argument("--full", action="store_true", help=f"include {', '.join(IN_TORCH_IMAGES)}")
    collecting.add_argument("--out", type=Path, default=ROOT / "wheelhouse", help="default: %(default)s")
    installing = commands.add_parser("install", help="install what this Python lacks into a folder (offline)")
    installing.add_argument("wheelhouse", type=Path)
    installing.add_argument("--target", type=Path, required=True,
                            help="a new or empty folder named site-packages, to put first on PYTHONPATH")
    arguments = parser.parse_args()
    try:
        if arguments.command == "collect":
            return collect(arguments.python, tuple(arguments.platforms or PLATFORMS), arguments.full, arguments.out)
        return install(arguments.wheelhouse, arguments.target)
    except WheelhouseError as error:
        print(f"[wheelhouse] {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
