"""configurator.py, the overrides of a script's constants: config files, --KEY=value, type checks and errors, and
resuming a run; and the same errors from a real smart.py process: one line, no traceback, exit status not 0."""

import gc
import subprocess
import sys

import pytest

from configurator import ConfigError, apply_overrides
from conftest import ROOT


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


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--BTEA=0.0"], ["--BTEA=0.0: unknown setting 'BTEA'", "did you mean BETA?"]),
        (["--NUM_TRAIN_STEPS=ten"], ["NUM_TRAIN_STEPS='ten' has type str", "expects int (default 200)"]),
        (["--REWARD_WEIGHTS=CE"], ["REWARD_WEIGHTS='CE' has type str", "expects dict (default {'CE': 1.0})"]),
        (["--RESUME=/no/such/run"], ["RESUME='/no/such/run' has no smart_config.json", "give a run directory"]),
        (["--RESUME=/no/such/run", "--BETA=0.0"], ["--RESUME continues a run with its saved config"]),
    ],
    ids=["unknown constant", "mistyped value", "mistyped dict", "resume nothing", "resume with overrides"],
)
def test_bad_flags_exit_nonzero_at_once_in_a_real_process(args, expected):
    result = subprocess.run([sys.executable, "smart.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(piece in result.stderr for piece in expected), result.stderr


def test_an_unknown_constant_in_a_config_file_is_named_with_the_file(tmp_path):
    preset = tmp_path / "preset.py"
    preset.write_text("NUM_TRAIN_STEP = 10\n")
    result = subprocess.run([sys.executable, "smart.py", str(preset)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and f"{preset}: unknown setting 'NUM_TRAIN_STEP'" in result.stderr
    assert "NUM_TRAIN_STEPS" in result.stderr  # the close match is listed


CONFIG_REWARD = '''
from processors import Processor


class ResumedConfigReward(Processor):
    REWARDS = ("resumed_config_reward",)

    def __call__(self, records):
        return records


REWARD_WEIGHTS = {"resumed_config_reward": 1.0}
BETA = 0.5
'''


def test_resume_reruns_the_runs_copy_of_its_config_files_then_applies_the_saved_constants(tmp_path, monkeypatch):
    """A run started with a config file that defines a reward keeps a copy of the file; --RESUME runs the copy
    (so the reward's class exists again, even with the original file gone) and then the saved constants, so an
    edit of the copy's constants changes nothing."""
    import configurator
    import processors
    import smart
    from smart_utils.run_folder import save_config, saved_config_files

    monkeypatch.setattr(configurator, "CONFIG_NAMESPACES", [])  # this test's config namespaces end with it
    plugin = tmp_path / "my_reward.py"
    plugin.write_text(CONFIG_REWARD)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = {key: value for key, value in vars(smart).items() if key.isupper() or key == "__annotations__"}
    config = apply_overrides(started, [str(plugin), "--BETA=0.25"])
    save_config(run_dir, config, configurator.config_files([str(plugin), "--BETA=0.25"]))
    [copy] = saved_config_files(run_dir)
    assert copy == run_dir / "config_files" / "00-my_reward.py" and copy.read_text() == CONFIG_REWARD
    plugin.unlink()  # the copy is what a resumed run reads
    copy.write_text(CONFIG_REWARD.replace("BETA = 0.5", "BETA = 0.75"))
    configurator.CONFIG_NAMESPACES.clear()  # as in the new process of a resumed run: the class is not defined
    gc.collect()
    assert processors.reward_class("resumed_config_reward", config) is None

    fresh = {key: value for key, value in vars(smart).items() if key.isupper() or key == "__annotations__"}
    resumed = configurator.resumed_config(fresh, [f"--RESUME={run_dir}"], str(run_dir))
    assert resumed["REWARD_WEIGHTS"] == {"resumed_config_reward": 1.0} and resumed["BETA"] == fresh["BETA"] == 0.25
    assert resumed["OUTPUT_DIR"] == fresh["OUTPUT_DIR"] == str(run_dir) and resumed["RESUME"] == str(run_dir)
    cls = processors.reward_class("resumed_config_reward", resumed)
    assert cls is not None and cls.__name__ == "ResumedConfigReward"
    assert processors.reward_problems(resumed["REWARD_WEIGHTS"], resumed) == []
