"""Overrides of a script's constants: config files, --KEY=value, type checks and errors."""

import pytest

from configurator import ConfigError, apply_overrides


def namespace():
    return {
        "__annotations__": {"CHECKPOINT": str | None},
        "STEPS": 200, "BETA": 0.04, "NAME": "musescore", "WEIGHTS": {"CE": 1.0}, "BF16": True,
        "CHECKPOINT": None, "helper": 3,
    }


def test_flags_are_parsed_as_the_constants_type():
    ns = namespace()
    config = apply_overrides(ns, ["--STEPS=50", "--BETA=0", "--NAME=123", "--WEIGHTS={'CE': 0.5}", "--BF16=False",
                                  "--CHECKPOINT=/tmp/x.pt"])
    assert config == {"STEPS": 50, "BETA": 0, "NAME": "123", "WEIGHTS": {"CE": 0.5}, "BF16": False,
                      "CHECKPOINT": "/tmp/x.pt"}
    assert ns["STEPS"] == 50 and "helper" not in config


def test_config_file_then_flags_apply_left_to_right(tmp_path):
    preset = tmp_path / "preset.py"
    preset.write_text("STEPS = 10\nBETA = 0.0\nlocal_helper = 1\n")
    config = apply_overrides(namespace(), [str(preset), "--STEPS=20"])
    assert (config["STEPS"], config["BETA"]) == (20, 0.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--STPES=1"], "unknown setting .STPES.; did you mean STEPS"),
        (["--STEPS=1.5"], "STEPS expects int"),
        (["--BF16=1"], "BF16 expects bool"),
        (["--WEIGHTS=[1]"], "WEIGHTS expects dict"),
        (["--STEPS"], "--KEY=value"),
        (["missing_preset.py"], "does not exist"),
    ],
)
def test_bad_overrides_name_the_key_and_the_problem(argv, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(namespace(), argv)


def test_config_file_with_unknown_key_is_an_error(tmp_path):
    preset = tmp_path / "preset.py"
    preset.write_text("STEP = 10\n")
    with pytest.raises(ConfigError, match="unknown setting 'STEP'"):
        apply_overrides(namespace(), [str(preset)])
