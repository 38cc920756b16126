"""Soundfont names and paths resolve in the documented order, or fail with where we looked and how to get one."""

import shutil
from pathlib import Path

import pytest

from smart_utils import soundfont_sources as soundfonts
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont


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
