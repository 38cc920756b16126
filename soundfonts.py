"""Resolve a soundfont name (``"musescore"``, ``"timgm6mb"``, the paper's ``"yamaha"``...) or path to a file.

Where a name is looked for, in this order (the first existing file wins):
1. the project's ``soundfonts/`` folder (drop any .sf2/.sf3 there);
2. the system soundfont folders that Debian's packages install into (``/usr/share/sounds/sf2``, ``sf3``,
   ``/usr/share/soundfonts``);
3. soundfonts shipped inside installed pip packages (``pretty_midi`` carries TimGM6mb.sf2, which is how the
   project's requirements always provide one soundfont).

A name that resolves nowhere raises ``SoundfontNotFound`` with every place it looked and how to get the file,
so a run fails before training instead of after the model has loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

PROJECT_SOUNDFONTS = Path(__file__).resolve().parent / "soundfonts"
SYSTEM_SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/sounds/sf3"), Path("/usr/share/soundfonts"))


@dataclass(frozen=True)
class SoundfontSpec:
    """A named soundfont: the file names it may have and how a user gets it."""

    files: tuple[str, ...]
    how_to_get: str
    pip_package: str | None = None  # an installed package that ships one of ``files``


KNOWN_SOUNDFONTS: dict[str, SoundfontSpec] = {
    "musescore": SoundfontSpec(
        ("MuseScore_General.sf3", "MuseScore_General_Full.sf3", "MuseScore_General_Lite.sf3", "MuseScore_General.sf2"),
        "apt-get install musescore-general-soundfont (or -small / -lossless), or copy MuseScore_General.sf3 "
        "into soundfonts/",
    ),
    "fluidr3": SoundfontSpec(
        ("FluidR3_GM.sf2", "FluidR3Mono_GM.sf3"),
        "apt-get install fluid-soundfont-gm (or fluidr3mono-gm-soundfont)",
    ),
    "timgm6mb": SoundfontSpec(
        ("TimGM6mb.sf2",),
        "pip install pretty_midi (ships TimGM6mb.sf2), or apt-get install timgm6mb-soundfont",
        pip_package="pretty_midi",
    ),
    "yamaha": SoundfontSpec(
        ("Yamaha-C5-Salamander-JNv5.1.sf2", "Yamaha-C5-Salamander-JNv5.1.sf3"),
        "download Yamaha-C5-Salamander-JNv5.1 (the paper's soundfont; not in any package registry) "
        "and copy the .sf2 into soundfonts/",
    ),
    "grandeur": SoundfontSpec(
        ("[GD] The Grandeur D.sf2", "The Grandeur D.sf2"),
        "download '[GD] The Grandeur D' and copy the .sf2 into soundfonts/",
    ),
    "sgm": SoundfontSpec(("SGM-V2.01.sf2",), "download SGM-V2.01 and copy the .sf2 into soundfonts/"),
    "matrix": SoundfontSpec(
        ("MatrixSF_v2.1.5.sf2", "Matrix SF v2.1.5.sf2"),
        "download MatrixSF v2.1.5 and copy the .sf2 into soundfonts/",
    ),
}


class SoundfontNotFound(FileNotFoundError):
    """No file for a soundfont name or path; the message lists where we looked and how to get one."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def search_dirs(spec: SoundfontSpec | None = None) -> list[Path]:
    """The folders searched for a name, in resolution order."""
    dirs = [PROJECT_SOUNDFONTS, *SYSTEM_SOUNDFONT_DIRS]
    if spec is not None and spec.pip_package is not None:
        package_dir = _package_dir(spec.pip_package)
        if package_dir is not None:
            dirs.append(package_dir)
    return dirs


def resolve_soundfont(name_or_path: str) -> str:
    """Return an existing soundfont file for a known name, a file name in a search folder, or a path."""
    as_path = Path(name_or_path).expanduser()
    if as_path.suffix.lower() in (".sf2", ".sf3") and as_path.is_file():
        return str(as_path)
    spec = KNOWN_SOUNDFONTS.get(name_or_path.lower())
    candidates = spec.files if spec is not None else (name_or_path,)
    dirs = search_dirs(spec)
    for folder in dirs:
        for file_name in candidates:
            if (folder / file_name).is_file():
                return str(folder / file_name)
    looked = f"{', '.join(candidates)} in: {', '.join(str(folder) for folder in dirs)}"
    hint = spec.how_to_get if spec is not None else (
        f"pass an existing .sf2/.sf3 path or one of the names {', '.join(KNOWN_SOUNDFONTS)}"
    )
    raise SoundfontNotFound(f"soundfont {name_or_path!r} not found. Looked for {looked}. To get it: {hint}")
