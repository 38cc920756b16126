"""smart.py end to end: defaults, fail-fast errors, and real GRPO steps through the whole reward chain."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import soundfonts
from conftest import ROOT
from preflight import check_config
from soundfonts import SoundfontNotFound, resolve_soundfont

PAPER_DEFAULTS = dict(
    SEED=1, TRAINER_SEED=42, NUM_GENERATIONS=8, TEMPERATURE=1.0, NUM_ITERATIONS=1, SCALE_REWARDS=True,
    NUM_TRAIN_STEPS=200,
    LEARNING_RATE=1e-4, SCHEDULE_TYPE="linear", BETA=0.04, USE_BF16=True, GRADIENT_ACCUMULATION_STEPS=1,
    BATCH_SIZE=64, SAVE_STEPS=20, PROMPT_SOURCE="procedural", SAMPLE_RATE=48000, SOUNDFONT="musescore",
    REWARD_WEIGHTS={"CE": 1.0}, MAX_COMPLETION_LENGTH=256, MAX_BEATS=100, MAX_AUDIO_DURATION=10,
    AUDIO_SAVE_INTERVAL=10, BASE_MODEL_PATH="lucacasini/metamidipianophi3_4L", LOSS_TYPE="bnpo", TOP_K=50,
    TOP_P=1.0, REPORT_TO="none", TRUST_REMOTE_CODE=False, AUDIOBOX_CHECKPOINT=None, FP32_WEIGHTS=False,
    AUDIOBOX_BATCH_SIZE=None,
)


def run_smart(*args, timeout=600):
    return subprocess.run([sys.executable, "smart.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def smart_defaults():
    import smart

    return {key: getattr(smart, key) for key in PAPER_DEFAULTS}


def test_defaults_are_the_public_smart_values():
    assert smart_defaults() == PAPER_DEFAULTS


def test_default_run_offline_fails_fast_naming_what_it_could_not_fetch():
    result = run_smart("--SOUNDFONT=timgm6mb", timeout=60)
    assert result.returncode != 0
    assert "lucacasini/metamidipianophi3_4L" in result.stderr and "config.json" in result.stderr
    assert "python smart.py config/local.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_plain_python_smart_py_offline_fails_fast_with_the_soundfont_and_hub_ids(tmp_path):
    """Nothing cached, no network: the defaults (musescore included) stop within seconds, no hanging on DNS."""
    if soundfonts.network_reachable(soundfonts.ORIGINAL_SOUNDFONT.url):
        pytest.skip("this machine reaches the soundfont server: the offline path cannot be seen here")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "smart.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "lucacasini/metamidipianophi3_4L" in result.stderr and "facebook/audiobox-aesthetics" in result.stderr
    try:
        local = resolve_soundfont("musescore", download=False)  # a Debian copy on this machine: used, with a warning
        assert f"'musescore' resolved to {local}, which is not byte-identical" in result.stdout
    except SoundfontNotFound:
        assert "SOUNDFONT: soundfont 'musescore' not found" in result.stderr
        assert "MuseScore_General.sf3 is missing and https://ftp.osuosl.org" in result.stderr


@pytest.fixture
def good_config(tiny_policy, audiobox_checkpoint):
    import smart

    config = {key: getattr(smart, key) for key in dir(smart) if key.isupper()}
    config.update(BASE_MODEL_PATH=str(tiny_policy), SOUNDFONT="timgm6mb", AUDIOBOX_CHECKPOINT=str(audiobox_checkpoint))
    return config


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"REWARD_WEIGHTS": {"CEE": 1.0}}, "REWARD_WEIGHTS has ['CEE']"),
        ({"REWARD_WEIGHTS": {"CE": 0.0}}, "sum to more than 0"),
        ({"SOUNDFONT": "nonexistent"}, "SOUNDFONT: soundfont 'nonexistent' not found"),
        ({"BASE_MODEL_PATH": "/no/such/dir"}, "BASE_MODEL_PATH='/no/such/dir' is neither"),
        ({"AUDIOBOX_CHECKPOINT": "/no/ckpt.pt"}, "AUDIOBOX_CHECKPOINT='/no/ckpt.pt' does not exist"),
        ({"BATCH_SIZE": 60}, "not divisible by NUM_GENERATIONS=8"),
        ({"MAX_BEATS": 0}, "MAX_BEATS=0 must be > 0"),
        ({"SAMPLE_RATE": -1}, "SAMPLE_RATE=-1 must be > 0"),
        ({"PROMPT_SOURCE": "dataset"}, "PROMPT_MIDI_DIR=None"),
        ({"PROMPT_SOURCE": "random"}, "PROMPT_SOURCE='random' is not one of"),
    ],
)
def test_preflight_names_the_constant_and_value(good_config, change, expected):
    assert check_config(good_config) == []
    problems = check_config({**good_config, **change})
    assert len(problems) == 1 and expected in problems[0]


def test_bad_config_exits_nonzero_naming_the_constant(tiny_policy):
    result = run_smart(f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--BATCH_SIZE=7", timeout=60)
    assert result.returncode != 0 and "BATCH_SIZE=7" in result.stderr and "Traceback" not in result.stderr


def test_two_grpo_steps_through_the_whole_chain(tmp_path, tiny_policy, audiobox_checkpoint):
    run_dir = tmp_path / "run"
    result = run_smart(
        f"--BASE_MODEL_PATH={tiny_policy}", f"--AUDIOBOX_CHECKPOINT={audiobox_checkpoint}", "--SOUNDFONT=timgm6mb",
        "--NUM_TRAIN_STEPS=2", "--BATCH_SIZE=4", "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=48",
        "--SAVE_STEPS=1", "--AUDIO_SAVE_INTERVAL=1", "--EVAL_SAMPLES=2", f"--OUTPUT_DIR={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU found" in result.stdout

    compute = json.loads((run_dir / "run_record.json").read_text())["compute"]
    assert compute["policy_dtype"] == "float32" and compute["reference_dtype"] == "float32"
    saved = json.loads((run_dir / "smart_config.json").read_text())["config"]
    assert saved["NUM_TRAIN_STEPS"] == 2 and saved["AUDIOBOX_CHECKPOINT"] == str(audiobox_checkpoint)
    for step in (0, 1):
        rows = pq.read_table(run_dir / "rl_logs" / str(step) / "logs.parquet").to_pylist()
        assert len(rows) == 4 and all(0 < row["normalized_rewards"]["CE"] < 1 for row in rows)
        assert all(row["reward"] == pytest.approx(row["normalized_rewards"]["CE"]) for row in rows)
        assert len(list((run_dir / "midi" / str(step)).glob("*.mid"))) == 4
        assert len(list((run_dir / "audio" / str(step)).glob("*.wav"))) == 4
    log = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert {"normalized_rewards/CE", "seconds/AudioBoxAesRewardProcessor", "kl"} <= set(log[0])

    before = load_file(tiny_policy / "model.safetensors")
    after = load_file(run_dir / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert (run_dir / "tokenizer.json").is_file()
    assert (run_dir / "reward_curve.png").stat().st_size > 0
    features = (run_dir / "eval" / "features.csv").read_text().splitlines()
    assert len(features) == 1 + 2 * 2 and "CE" in features[0].split(",")  # base and tuned, 2 pieces each
    assert (run_dir / "eval" / "report.html").is_file()
