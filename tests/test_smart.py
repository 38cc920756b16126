"""smart.py: its defaults and the GRPO config they make, the offline default run failing fast, the weights' dtype
warning, remote code off unless asked for, and real GRPO steps through the whole reward chain, with a reward defined
in a config file too.

The config checks that stop a run are test_preflight.py's; resuming, two processes, the hub path and the trackers
are test_smart_resume.py's, test_smart_processes.py's, test_smart_hub_path.py's and test_smart_trackers.py's.
"""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_smart, run_smart_in_process
from smart_utils import soundfont_sources as soundfonts
from smart_utils.pam_prompts import PROMPT_PAIRS
from smart_utils.soundfont_sources import SoundfontNotFound, resolve_soundfont

PAPER_DEFAULTS = dict(
    SEED=1, TRAINER_SEED=42, NUM_GENERATIONS=8, TEMPERATURE=1.0, NUM_ITERATIONS=1, SCALE_REWARDS=True,
    NUM_TRAIN_STEPS=200,
    LEARNING_RATE=1e-4, SCHEDULE_TYPE="linear", BETA=0.04, USE_BF16=True, GRADIENT_ACCUMULATION_STEPS=1,
    BATCH_SIZE=64, SAVE_STEPS=20, PROMPT_SOURCE="procedural", SAMPLE_RATE=48000, SOUNDFONT="musescore",
    REWARD_WEIGHTS={"CE": 1.0}, MAX_COMPLETION_LENGTH=256, MAX_BEATS=100, MAX_AUDIO_DURATION=10,
    AUDIO_SAVE_INTERVAL=10, BASE_MODEL_PATH="lucacasini/metamidipianophi3_4L", LOSS_TYPE="bnpo", TOP_K=50,
    TOP_P=1.0, REPORT_TO="none", TRUST_REMOTE_CODE=False, AUDIOBOX_CHECKPOINT=None, FP32_WEIGHTS=False,
    AUDIOBOX_BATCH_SIZE=None, IS_MULTITRACK=None,
    # the original's CLAP rewards (its processors.py and the calls in its training scripts)
    CLAP_PROMPT="jazz", CLAP_K=8, CLAP_MODEL="laion/larger_clap_music",
    CLAP_CLF_PROMPT="beautiful, high quality, amazing music, natural, calming",
    CLAP_REFERENCE_PROMPTS=["dissonant, low quality, caucophonous music, glitch, midi"], CLAP_TEMPERATURE=0.25,
    CLAP_CLF_MODEL="laion/larger_clap_general", PAM_PROMPTS=[dict(p) for p in PROMPT_PAIRS], PAM_TEMPERATURE=0.25,
    PAM_MODEL="laion/larger_clap_general", CLAP_BATCH_SIZE=None,
)


def smart_defaults():
    import smart

    return {key: getattr(smart, key) for key in PAPER_DEFAULTS}


def test_defaults_are_the_public_smart_values():
    assert smart_defaults() == PAPER_DEFAULTS


# The README's table "TRL 1.16 settings that reproduce the paper's algorithm", and the GRPO defaults it runs with.
TRL_016_SETTINGS = dict(
    loss_type="bnpo", use_bias_correction_kl=False, beta=0.04, top_k=50, top_p=1.0, scale_rewards="group",
    gradient_checkpointing=False, logging_steps=1, learning_rate=1e-4, lr_scheduler_type="linear", seed=42,
    num_generations=8, per_device_train_batch_size=64, max_completion_length=256, temperature=1.0,
    num_iterations=1, max_steps=200,
)


def test_the_defaults_reach_grpo_config_as_trl_016_ran_the_paper(tmp_path):
    import smart

    args = smart.grpo_config(tmp_path / "run", on_gpu=False, bf16_native=False, model_init_kwargs={})
    assert {key: getattr(args, key) for key in TRL_016_SETTINGS} == TRL_016_SETTINGS
    assert args.seed == smart.TRAINER_SEED and args.output_dir == str(tmp_path / "run")


def test_grpo_config_follows_the_constants(monkeypatch, tmp_path):
    """Overrides reach TRL: each setting is read from its constant, not written down twice."""
    import smart

    for constant, value in dict(BETA=0.0, LOSS_TYPE="grpo", SCALE_REWARDS=False, TOP_K=0, TRAINER_SEED=7).items():
        monkeypatch.setattr(smart, constant, value)
    args = smart.grpo_config(tmp_path / "run", on_gpu=False, bf16_native=False, model_init_kwargs={})
    assert (args.beta, args.loss_type, args.scale_rewards, args.top_k, args.seed) == (0.0, "grpo", "none", 0, 7)


def test_bf16_training_of_non_fp32_weights_is_warned(capsys):
    import smart

    smart.warn_about_weights_dtype("bfloat16", bf16=True)
    warning = capsys.readouterr().out
    assert "weights are bfloat16" in warning and "without an fp32 master copy" in warning
    assert "--FP32_WEIGHTS=True" in warning
    smart.warn_about_weights_dtype("float32", bf16=True)
    smart.warn_about_weights_dtype("bfloat16", bf16=False)
    assert "master copy" not in capsys.readouterr().out


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


# A reward added without editing the project: a config file is Python, run before smart.py builds its chain, and
# a Processor subclass it defines is found by the reward it names in REWARDS (no registry).
REWARD_PLUGIN = '''
from processors import Processor
from smart_utils.tokenizer import default_remi

pitches = {token_id for token, token_id in default_remi().vocab.items() if token.startswith("Pitch_")}


class PitchShareReward(Processor):
    """my_reward: the share of the completion's tokens that are note pitches."""

    REWARDS = ("my_reward",)

    def __call__(self, records):
        for record in records:
            share = sum(token in pitches for token in record["completion"]) / max(1, len(record["completion"]))
            record["normalized_rewards"]["my_reward"] = share
        return records


REWARD_WEIGHTS = {"my_reward": 1.0}
'''


def test_a_reward_defined_in_a_config_file_trains_through_smart_py(tmp_path, tiny_policy):
    from smart_utils.tokenizer import default_remi

    plugin = tmp_path / "my_reward.py"
    plugin.write_text(REWARD_PLUGIN)
    run_dir = tmp_path / "run"
    result = run_smart(
        str(plugin), f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--NUM_TRAIN_STEPS=2",
        "--BATCH_SIZE=4", "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=32", "--SAVE_STEPS=2",
        "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1", f"--OUTPUT_DIR={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run_dir / "smart_config.json").read_text())
    assert saved["config"]["REWARD_WEIGHTS"] == {"my_reward": 1.0}
    # the run keeps a copy of the config file, which --RESUME runs again to define the reward's class
    assert saved["config_files"] == ["config_files/00-my_reward.py"]
    assert (run_dir / "config_files" / "00-my_reward.py").read_text() == REWARD_PLUGIN

    pitches = {token_id for token, token_id in default_remi().vocab.items() if token.startswith("Pitch_")}
    for step in (0, 1):
        rows = pq.read_table(run_dir / "rl_logs" / str(step) / "logs.parquet").to_pylist()
        assert len(rows) == 4
        for row in rows:
            share = sum(token in pitches for token in row["completion"]) / len(row["completion"])
            assert row["normalized_rewards"] == {"my_reward": pytest.approx(share)}
            assert row["reward"] == pytest.approx(share) and not row["errors"]
    log = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in log if "normalized_rewards/my_reward" in entry] == [1, 2]
    assert all("seconds/PitchShareReward" in entry for entry in log if "reward" in entry)
    assert (run_dir / "model.safetensors").is_file()


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
