"""Resolve a soundfont name (``"musescore"``, ``"timgm6mb"``, the paper's ``"yamaha"``...) or path to a file.

``"musescore"`` (smart.py's default) means the file the original SMART used: symusic's
``BuiltInSF3.MuseScoreGeneral()``, ``MuseScore_General.sf3`` with a published SHA-384. It is taken, in order:
1. from symusic's own data folder (where the original downloaded it), when the file passes the SHA-384 check;
2. downloaded there as the original did (pySmartDL, symusic's downloader), hash-verified, with a progress bar and
   a bounded wait, when the network is reachable (a 3 s probe; never when ``HF_HUB_OFFLINE`` is set);
3. from the local and system copies below, with a printed warning that they are not byte-identical to it.

Every other name is looked for, in this order (the first existing file wins):
1. the project's ``soundfonts/`` folder (drop any .sf2/.sf3 there);
2. the system soundfont folders that Debian's packages install into (``/usr/share/sounds/sf2``, ``sf3``,
   ``/usr/share/soundfonts``);
3. soundfonts shipped inside installed pip packages (``pretty_midi`` carries TimGM6mb.sf2, which is how the
   project's requirements always provide one soundfont).

A name that resolves nowhere raises ``SoundfontNotFound`` with every place it looked and how to get the file,
so a run fails before training instead of after the model has loaded; a download that fails or does not match
its hash raises ``SoundfontDownloadError`` and leaves no partial file behind.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from symusic import BuiltInSF3
from symusic.soundfont import Soundfont

from smart_utils.files import file_digest

PROJECT_SOUNDFONTS = Path(__file__).resolve().parent.parent / "soundfonts"
SYSTEM_SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/sounds/sf3"), Path("/usr/share/soundfonts"))
ORIGINAL_NAME = "musescore"  # the name that means the original's exact file
ORIGINAL_SOUNDFONT: Soundfont = BuiltInSF3.MuseScoreGeneral()  # name, url and SHA-384 of the original's file
PROBE_SECONDS = 3.0  # how long the network probe may take (DNS included) before we call the machine offline
DOWNLOAD_SECONDS = 900  # the most a download may take (~40 MB) before it is abandoned


@dataclass(frozen=True)
class SoundfontSpec:
    """A named soundfont: the file names it may have and how a user gets it."""

    files: tuple[str, ...]
    how_to_get: str
    pip_package: str | None = None  # an installed package that ships one of ``files``


KNOWN_SOUNDFONTS: dict[str, SoundfontSpec] = {
    "musescore": SoundfontSpec(
        ("MuseScore_General.sf3", "MuseScore_General_Full.sf3", "MuseScore_General_Lite.sf3", "MuseScore_General.sf2"),
        "run once with a network (symusic's MuseScore_General.sf3 is downloaded and verified), copy that file "
        "into soundfonts/, or apt-get install musescore-general-soundfont (or -small / -lossless; not "
        "byte-identical to the original's)",
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


class SoundfontDownloadError(SoundfontNotFound):
    """The original's soundfont could not be downloaded or failed its hash check; nothing was kept."""


def is_original(path: str | Path) -> bool:
    """Whether a file is byte for byte the soundfont the original SMART used (its SHA-384 matches)."""
    return file_digest(path, "sha384") == ORIGINAL_SOUNDFONT.hash_


def network_reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` seconds (DNS lookup included).

    The lookup runs in a daemon thread, because ``getaddrinfo`` ignores socket timeouts and can hang for a minute
    on a machine without DNS. ``HF_HUB_OFFLINE=1`` (the offline switch users of the hub already set) means no.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    opened: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def download_original(soundfont: Soundfont, timeout: float = DOWNLOAD_SECONDS) -> Path:
    """Download the original's soundfont into symusic's data folder, as ``Soundfont.path(download=True)`` does.

    The bytes go to a ``.part`` file that replaces the destination only after its SHA-384 matched, so a broken or
    tampered download never leaves a file that a later run would pick up; the wait is bounded by ``timeout``.
    """
    from pySmartDL import SmartDL  # symusic's downloader; only needed here

    destination = Path(soundfont.path(download=False))
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(f"{destination.name}.part{os.getpid()}")
    print(f"[soundfonts] downloading {soundfont.name} (the original SMART's soundfont) from {soundfont.url} "
          f"to {destination}", flush=True)
    try:
        try:
            download = SmartDL(soundfont.url, str(part), progress_bar=True, threads=8, timeout=int(PROBE_SECONDS) + 7)
            download.start(blocking=False)
        except OSError as error:  # HTTP errors, refused connections, timeouts (urllib's errors are OSErrors)
            raise SoundfontDownloadError(f"downloading {soundfont.url} failed: {error}") from error
        deadline = time.monotonic() + timeout
        while not download.isFinished():
            if time.monotonic() > deadline:
                download.stop()
                raise SoundfontDownloadError(
                    f"downloading {soundfont.url} took more than {timeout:.0f} s; download it yourself into "
                    f"{destination}, or copy it into {PROJECT_SOUNDFONTS}")
            time.sleep(0.2)
        if not download.isSuccessful() or not part.is_file():
            errors = "; ".join(str(error) for error in download.get_errors()) or "no file"
            raise SoundfontDownloadError(f"downloading {soundfont.url} failed: {errors}")
        got = file_digest(part, "sha384")
        if got != soundfont.hash_:
            raise SoundfontDownloadError(
                f"the file downloaded from {soundfont.url} does not match its SHA-384 (expected {soundfont.hash_}, "
                f"got {got}); it was deleted. Try again later, or download it yourself into {destination}")
        os.replace(part, destination)
    finally:
        for leftover in destination.parent.glob(part.name + "*"):  # the .part file and pySmartDL's chunk files
            leftover.unlink(missing_ok=True)
    print(f"[soundfonts] {destination}: SHA-384 verified", flush=True)
    return destination


def original_soundfont(download: bool = True) -> tuple[Path | None, str]:
    """symusic's verified copy of the original's soundfont (downloaded now if allowed and possible), or None and
    why there is none."""
    copy = Path(ORIGINAL_SOUNDFONT.path(download=False))
    if copy.is_file():
        if is_original(copy):
            return copy, ""
        print(f"[soundfonts] warning: {copy} fails its SHA-384 check (an interrupted download?); not using it")
    if not download:
        return None, f"{copy} is missing and downloads are off"
    if not network_reachable(ORIGINAL_SOUNDFONT.url):
        return None, f"{copy} is missing and {ORIGINAL_SOUNDFONT.url} is unreachable (offline)"
    return download_original(ORIGINAL_SOUNDFONT), ""


_warned: set[str] = set()


def warn_not_original(path: str) -> None:
    """Say once per file that a stand-in for the original's soundfont is used: it sounds slightly different."""
    if path not in _warned and not is_original(path):
        _warned.add(path)
        print(f"[soundfonts] warning: '{ORIGINAL_NAME}' resolved to {path}, which is not byte-identical to the "
              f"original SMART's {ORIGINAL_SOUNDFONT.name} (SHA-384 {ORIGINAL_SOUNDFONT.hash_[:16]}...), so audio "
              f"and rewards differ slightly from the original's. Run once with a network to download it into "
              f"{Path(ORIGINAL_SOUNDFONT.path(download=False)).parent}", flush=True)


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


def soundfont_names(setting: str | list[str]) -> list[str]:
    """SOUNDFONT's soundfonts: one name or path, or several (each audio reward is then combined across them)."""
    return [setting] if isinstance(setting, str) else list(setting)


def soundfont_label(name_or_path: str) -> str:
    """A soundfont's short name in logs and tables: its known name, else its file name without the suffix."""
    return name_or_path if name_or_path.lower() in KNOWN_SOUNDFONTS else Path(name_or_path).stem


def resolve_soundfont(name_or_path: str, download: bool = True) -> str:
    """Return an existing soundfont file for a known name, a file name in a search folder, or a path.

    ``download=False`` never fetches the original's soundfont (for scans of what is installed).
    """
    as_path = Path(name_or_path).expanduser()
    if as_path.suffix.lower() in (".sf2", ".sf3") and as_path.is_file():
        return str(as_path)
    spec = KNOWN_SOUNDFONTS.get(name_or_path.lower())
    why_not_original = ""
    if name_or_path.lower() == ORIGINAL_NAME:
        original, why_not_original = original_soundfont(download)
        if original is not None:
            return str(original)
    candidates = spec.files if spec is not None else (name_or_path,)
    dirs = search_dirs(spec)
    for folder in dirs:
        for file_name in candidates:
            if (folder / file_name).is_file():
                if why_not_original:
                    warn_not_original(str(folder / file_name))
                return str(folder / file_name)
    looked = f"{', '.join(candidates)} in: {', '.join(str(folder) for folder in dirs)}"
    if why_not_original:
        looked += f" ({why_not_original})"
    hint = spec.how_to_get if spec is not None else (
        f"pass an existing .sf2/.sf3 path or one of the names {', '.join(KNOWN_SOUNDFONTS)}"
    )
    raise SoundfontNotFound(f"soundfont {name_or_path!r} not found. Looked for {looked}. To get it: {hint}")
