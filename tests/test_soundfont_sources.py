"""smart_utils/soundfont_sources.py: soundfont names and paths resolve in the documented order, or fail with where
we looked and how to get one; SOUNDFONT="musescore" is the original's file: symusic's verified copy, else a
hash-checked download (tested against an HTTP server on 127.0.0.1 only), else a local stand-in with a warning, else
a fast, clear error."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from symusic.soundfont import Soundfont

from smart_utils import soundfont_sources as soundfonts
from smart_utils.soundfont_sources import SoundfontDownloadError, SoundfontNotFound, resolve_soundfont


# --- names and paths --------------------------------------------------------------------------------------------------
def test_timgm6mb_always_resolves_from_the_pretty_midi_wheel():
    path = Path(resolve_soundfont("timgm6mb"))
    assert path.name == "TimGM6mb.sf2" and path.is_file()
    assert resolve_soundfont("TimGM6mb") == str(path)  # names are case-insensitive


def test_a_path_is_used_as_it_is(tmp_path):
    copy = tmp_path / "mine.sf2"
    shutil.copy(resolve_soundfont("timgm6mb"), copy)
    assert resolve_soundfont(str(copy)) == str(copy)


def test_the_project_folder_comes_before_system_and_package_files(tmp_path, monkeypatch):
    monkeypatch.setattr(soundfonts, "PROJECT_SOUNDFONTS", tmp_path)
    shutil.copy(resolve_soundfont("timgm6mb"), tmp_path / "TimGM6mb.sf2")
    assert resolve_soundfont("timgm6mb") == str(tmp_path / "TimGM6mb.sf2")
    (tmp_path / "Yamaha-C5-Salamander-JNv5.1.sf2").write_bytes(b"sf2")
    assert resolve_soundfont("yamaha") == str(tmp_path / "Yamaha-C5-Salamander-JNv5.1.sf2")


def test_a_known_name_that_is_missing_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(soundfonts, "PROJECT_SOUNDFONTS", tmp_path)
    monkeypatch.setattr(soundfonts, "SYSTEM_SOUNDFONT_DIRS", (tmp_path / "none",))
    with pytest.raises(SoundfontNotFound) as error:
        resolve_soundfont("fluidr3")
    message = str(error.value)
    assert "FluidR3_GM.sf2" in message and str(tmp_path) in message
    assert "apt-get install fluid-soundfont-gm" in message


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(SoundfontNotFound, match="musescore, fluidr3, timgm6mb"):
        resolve_soundfont("no-such-font")


# --- the original's MuseScore_General.sf3 -----------------------------------------------------------------------------
PAYLOAD = bytes(range(256)) * 4096  # 1 MB standing in for MuseScore_General.sf3


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """symusic's data folder, the project and system soundfont folders all in tmp_path; returns symusic's folder."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # platformdirs' user_data_path on Linux
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(soundfonts, "PROJECT_SOUNDFONTS", tmp_path / "project")
    monkeypatch.setattr(soundfonts, "SYSTEM_SOUNDFONT_DIRS", (tmp_path / "system",))
    (tmp_path / "project").mkdir()
    monkeypatch.setattr(soundfonts, "_warned", set())
    return tmp_path / "data" / "soundfont"


def original(monkeypatch, url: str, payload: bytes = PAYLOAD) -> Soundfont:
    descriptor = Soundfont(name="MuseScore_General.sf3", url=url, hash_=hashlib.sha384(payload).hexdigest())
    monkeypatch.setattr(soundfonts, "ORIGINAL_SOUNDFONT", descriptor)
    return descriptor


def closed_port_url() -> str:
    with socket.socket() as sock:  # bind and release: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/MuseScore_General.sf3"


def test_the_real_descriptor_is_symusics_musescore_general():
    from symusic import BuiltInSF3

    assert BuiltInSF3.MuseScoreGeneral() == soundfonts.ORIGINAL_SOUNDFONT


def test_symusics_verified_copy_wins_over_local_copies(isolated, monkeypatch, capsys):
    original(monkeypatch, closed_port_url())
    isolated.mkdir(parents=True)
    (isolated / "MuseScore_General.sf3").write_bytes(PAYLOAD)
    (soundfonts.PROJECT_SOUNDFONTS / "MuseScore_General_Lite.sf3").write_bytes(b"debian copy")
    assert resolve_soundfont("musescore") == str(isolated / "MuseScore_General.sf3")
    assert "warning" not in capsys.readouterr().out


def test_download_from_a_local_server_is_verified_and_kept_where_symusic_keeps_it(isolated, server, monkeypatch,
                                                                                   capsys):
    served, base = server
    (served / "MuseScore_General.sf3").write_bytes(PAYLOAD)
    original(monkeypatch, f"{base}/MuseScore_General.sf3")
    path = Path(resolve_soundfont("musescore"))
    assert path == isolated / "MuseScore_General.sf3"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in isolated.iterdir()) == ["MuseScore_General.sf3"]  # no .part or chunk files
    out = capsys.readouterr().out
    assert "downloading MuseScore_General.sf3" in out and "SHA-384 verified" in out


def test_a_corrupt_download_is_a_clear_error_and_leaves_no_file(isolated, server, monkeypatch):
    served, base = server
    (served / "MuseScore_General.sf3").write_bytes(PAYLOAD[:-1] + b"X")  # one byte off
    original(monkeypatch, f"{base}/MuseScore_General.sf3")
    with pytest.raises(SoundfontDownloadError, match="does not match its SHA-384") as error:
        resolve_soundfont("musescore")
    assert "it was deleted" in str(error.value)
    assert list(isolated.iterdir()) == []


def test_a_failed_download_is_a_clear_error_and_leaves_no_file(isolated, server, monkeypatch):
    _, base = server  # the server answers 404
    original(monkeypatch, f"{base}/MuseScore_General.sf3")
    with pytest.raises(SoundfontDownloadError, match="failed"):
        resolve_soundfont("musescore")
    assert list(isolated.iterdir()) == []


def test_a_copy_failing_its_hash_is_replaced_by_a_fresh_download(isolated, server, monkeypatch, capsys):
    served, base = server
    (served / "MuseScore_General.sf3").write_bytes(PAYLOAD)
    original(monkeypatch, f"{base}/MuseScore_General.sf3")
    isolated.mkdir(parents=True)
    (isolated / "MuseScore_General.sf3").write_bytes(PAYLOAD[: len(PAYLOAD) // 2])  # an interrupted download
    assert Path(resolve_soundfont("musescore")).read_bytes() == PAYLOAD
    assert "fails its SHA-384 check" in capsys.readouterr().out


def test_offline_a_local_copy_is_used_with_a_warning_once(isolated, monkeypatch, capsys):
    original(monkeypatch, closed_port_url())
    debian = soundfonts.PROJECT_SOUNDFONTS / "MuseScore_General_Lite.sf3"
    debian.write_bytes(b"debian copy")
    assert resolve_soundfont("musescore") == str(debian)
    assert resolve_soundfont("musescore") == str(debian)
    out = capsys.readouterr().out
    assert out.count("not byte-identical to the original SMART's MuseScore_General.sf3") == 1


def test_hf_hub_offline_means_no_download_attempt(isolated, server, monkeypatch):
    served, base = server
    (served / "MuseScore_General.sf3").write_bytes(PAYLOAD)
    original(monkeypatch, f"{base}/MuseScore_General.sf3")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SoundfontNotFound, match="unreachable"):
        resolve_soundfont("musescore")
    assert not isolated.exists()


def test_download_false_never_fetches(isolated, server, monkeypatch):
    served, base = server
    (served / "MuseScore_General.sf3").write_bytes(PAYLOAD)
    original(monkeypatch, f"{base}/MuseScore_General.sf3")
    with pytest.raises(SoundfontNotFound, match="downloads are off"):
        resolve_soundfont("musescore", download=False)
    assert not isolated.exists()


def test_the_network_probe_gives_up_on_a_hanging_lookup(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("never answered")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        assert soundfonts.network_reachable("https://ftp.example.invalid/x.sf3", timeout=0.5) is False
        assert time.monotonic() - start < 5  # 0.5 s timeout or the 30 s hang: no speed target
    finally:
        release.set()
