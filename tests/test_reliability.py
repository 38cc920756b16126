"""Fail fast and clearly on every bad config; load weights without running code from checkpoint files."""

import pickle
import runpy
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from processors import AudioBoxAesRewardProcessor


def run_smart_in_process(monkeypatch, args: list[str]) -> int | str | None:
    """smart.py's ``__main__`` in this process (its heavy imports are paid once): its exit code or message."""
    monkeypatch.setattr(sys, "argv", ["smart.py", *args])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runpy.run_path(str(ROOT / "smart.py"), run_name="__main__")
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        for sig, handler in handlers.items():  # StopOnSignal replaces them when training starts
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def warm_smart_imports():
    import smart  # noqa: F401  (trl, transformers, datasets: the seconds every real run pays before preflight)


@pytest.fixture
def good_args(tiny_policy, tmp_path, warm_smart_imports):
    return [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            f"--OUTPUT_DIR={tmp_path / 'run'}", "--NUM_TRAIN_STEPS=1", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2"]


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


# --- safe loading ------------------------------------------------------------------------------------------------


class CodeOnLoad:
    """Unpickling this creates ``path``: what a tampered checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_audiobox_checkpoint_is_read_weights_only_whatever_torchs_default(monkeypatch, audiobox_checkpoint):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's weights-only default no longer protects
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    processor = AudioBoxAesRewardProcessor(str(audiobox_checkpoint))
    assert calls == [True]
    assert not processor.scorer.predictor.model.training


def test_a_tampered_audiobox_checkpoint_is_refused_without_running_its_code(monkeypatch, tmp_path):
    from audiobox_aesthetics.infer import initialize_predictor

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {}, "model_cfg": CodeOnLoad(marker), "target_transform": {}}, checkpoint)

    with pytest.raises(pickle.UnpicklingError):
        AudioBoxAesRewardProcessor(str(checkpoint))
    assert not marker.exists()

    with pytest.raises(TypeError):  # the package's own loader runs the payload, then fails on what it returned
        initialize_predictor(ckpt=str(checkpoint))
    assert marker.exists()


def test_remote_code_is_off_unless_asked_for_policy_and_reference_and_no_pickle_is_loaded(monkeypatch, good_args):
    """TRUST_REMOTE_CODE reaches both models TRL builds; the safetensors weights load without any torch.load."""
    import trl.trainer.grpo_trainer as grpo

    calls = []
    real_create = grpo.create_model_from_path

    def create(model_id, **kwargs):
        calls.append(kwargs["trust_remote_code"])
        return real_create(model_id, **kwargs)

    def no_pickles(*args, **kwargs):
        raise AssertionError(f"torch.load{args} while building the trainer")

    monkeypatch.setattr(grpo, "create_model_from_path", create)
    monkeypatch.setattr(grpo.GRPOTrainer, "train", lambda self, **kwargs: None)
    monkeypatch.setattr(torch, "load", no_pickles)
    for flag in (False, True):
        output_dir = good_args[3] + str(flag)  # a fresh run directory per run
        args = good_args + [output_dir, "--BETA=0.04", f"--TRUST_REMOTE_CODE={flag}"]
        code = run_smart_in_process(monkeypatch, args)
        assert code == 0  # "stopped at step 0": train() was skipped
    assert calls == [False, False, True, True]  # policy and reference model, per run
