"""smart_utils/clap.py and the CLAP text-audio rewards on it (processors.py), on a random-weight stand-in CLAP: each
reward equals the formula computed here directly with transformers, the embeddings stay fp32 under an outer bf16
autocast, bad audio gets the logged fallback, the run's constants reach the processors, reward discovery and the
config checks know the names, and smart.py trains with "clap" from an offline HF cache."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio
from transformers import ClapModel, ClapProcessor

import smart
from bench.standins import fill_clap_hub_cache, make_tiny_clap
from configurator import smart_constants
from conftest import ROOT
from processors import (
    CLAPPromptRewardProcessor,
    CLAPZeroShotClassificationRewardProcessor,
    PamRewardProcessor,
    build_processor,
    build_reward_processors,
    reward_class,
    reward_problems,
)
from smart_utils.clap import UNSCORABLE_REWARD, ClapEmbedder
from smart_utils.pam_prompts import PROMPT_PAIRS
from smart_utils.run_record import RECORD_FILE

RATE = 48000
CPU = torch.device("cpu")
PAIRS = [dict(p) for p in PROMPT_PAIRS[:3]]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clap(tmp_path_factory.mktemp("clap") / "clap")


@pytest.fixture(scope="module")
def reference(clap_dir: Path) -> tuple[ClapModel, ClapProcessor]:
    """The stand-in loaded directly with transformers, to compute the expected values."""
    return ClapModel.from_pretrained(clap_dir).eval(), ClapProcessor.from_pretrained(clap_dir)


def tone(seconds: float, freq: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([np.sin(2 * np.pi * freq * t), 0.5 * np.sin(2 * np.pi * freq * 1.5 * t)]).astype(np.float32)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((2, int(seconds * RATE))) * 0.3).astype(np.float32)


def clips() -> list[tuple[np.ndarray, int]]:
    """Distinct (audio, rate) clips: 10 s of noise, tones of 3 s and 1 s, and 2 s of noise rendered at 24 kHz."""
    return [(noise(10, 0), RATE), (tone(3, 220), RATE), (tone(1, 880), RATE), (noise(2, 1)[:, ::2].copy(), 24000)]


def records_of(audio_and_rates: list[tuple[np.ndarray, int]]) -> list[dict]:
    return [dict(idx=i, audio=a, sample_rate=r, normalized_rewards={}, errors=[])
            for i, (a, r) in enumerate(audio_and_rates)]


def expected_embeddings(reference, audio_and_rates, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio embeddings (mono, resampled to 48 kHz) in one batch, and each prompt's text embedding on its own."""
    model, processor = reference
    mono = []
    for audio, rate in audio_and_rates:
        wave = torch.from_numpy(audio.mean(axis=0))
        mono.append((wave if rate == RATE else torchaudio.functional.resample(wave, rate, RATE)).numpy())
    with torch.no_grad():
        audio_embeds = model.get_audio_features(**processor(audio=mono, sampling_rate=RATE, return_tensors="pt"))
        texts = [model.get_text_features(**processor(text=p, return_tensors="pt")).pooler_output[0] for p in prompts]
    return audio_embeds.pooler_output, torch.stack(texts)


def test_clap_is_the_rescaled_cosine_to_the_prompt(clap_dir, reference):
    processor = CLAPPromptRewardProcessor(RATE, "a calm piano piece", 8, clap_model=str(clap_dir), device=CPU)
    records = processor(records_of(clips()))
    audio, text = expected_embeddings(reference, clips(), ["a calm piano piece"])
    cosine = (audio @ text[0]) / (audio.norm(dim=1) * text[0].norm())
    rewards = [r["normalized_rewards"]["clap"] for r in records]
    np.testing.assert_allclose(rewards, ((cosine + 1) / 2).numpy(), atol=1e-5)
    np.testing.assert_allclose([r["clap_score_raw"] for r in records], cosine.numpy(), atol=1e-5)
    assert np.ptp(rewards) > 1e-4 and all(r["errors"] == [] for r in records)  # the clips are told apart
    assert processor.k == 8  # kept, as the original, without effect


def test_clap_clf_is_the_target_share_of_the_softmax_over_prompts(clap_dir, reference):
    prompts = ["a calm piano piece", "noise", "a glitch"]
    processor = CLAPZeroShotClassificationRewardProcessor(RATE, prompts[0], prompts[1:], 0.25,
                                                          clap_clf_model=str(clap_dir), device=CPU)
    records = processor(records_of(clips()))
    audio, texts = expected_embeddings(reference, clips(), prompts)
    cosine = torch.stack([torch.nn.functional.cosine_similarity(audio, t[None, :]) for t in texts], dim=1)
    probs = torch.exp(cosine / 0.25) / torch.exp(cosine / 0.25).sum(dim=1, keepdim=True)
    np.testing.assert_allclose([r["normalized_rewards"]["clap_clf"] for r in records], probs[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose([r["clap_clf_probs"] for r in records], probs.numpy(), atol=1e-5)


def test_pam_is_each_pairs_positive_share_and_their_mean(clap_dir, reference):
    processor = PamRewardProcessor(RATE, PAIRS, 0.5, pam_model=str(clap_dir), device=CPU)
    records = processor(records_of(clips()))
    texts = [p["positive"] for p in PAIRS] + [p["negative"] for p in PAIRS]
    audio, embeds = expected_embeddings(reference, clips(), texts)
    for i, pair in enumerate(PAIRS):  # softmax over two = sigmoid of the difference
        expected = torch.sigmoid((audio @ embeds[i] - audio @ embeds[i + len(PAIRS)]) / 0.5)
        np.testing.assert_allclose([r["normalized_rewards"][pair["shorthand"]] for r in records], expected.numpy(),
                                   atol=1e-5)
    for record in records:
        values = record["normalized_rewards"]
        assert values["pam_avg"] == pytest.approx(np.mean([values[p["shorthand"]] for p in PAIRS]), abs=1e-6)
        assert set(values) == {"pam_avg", *(p["shorthand"] for p in PAIRS)}


def test_a_batch_size_cap_scores_in_chunks_with_the_same_result(clap_dir):
    whole = CLAPPromptRewardProcessor(RATE, "jazz", 8, clap_model=str(clap_dir), device=CPU)
    chunked = CLAPPromptRewardProcessor(RATE, "jazz", 8, clap_model=str(clap_dir), device=CPU, clap_batch_size=3)
    calls = []
    model = chunked.clap.model
    forward = model.get_audio_features
    model.get_audio_features = lambda **inputs: calls.append(len(inputs["input_features"])) or forward(**inputs)
    expected = [r["normalized_rewards"]["clap"] for r in whole(records_of(clips()))]
    got = [r["normalized_rewards"]["clap"] for r in chunked(records_of(clips()))]
    assert calls == [3, 1]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.fixture(scope="module")
def clap_embedder(clap_dir):
    return ClapEmbedder(48000, str(clap_dir), torch.device("cpu"), batch_size=None)


def test_clap_embeddings_stay_fp32_under_bf16_autocast(clap_embedder):
    rng = np.random.default_rng(0)
    clips = [clap_embedder.mono_clip({"audio": rng.standard_normal((2, 48000)).astype(np.float32) * 0.1})[0]
             for _ in range(2)]
    prompts = ["jazz", "a calm piano piece"]
    text, audio = clap_embedder.text_embeddings(prompts), clap_embedder.audio_embeddings(clips)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        text_bf16, audio_bf16 = clap_embedder.text_embeddings(prompts), clap_embedder.audio_embeddings(clips)
        assert torch.is_autocast_enabled("cpu")  # the outer autocast is back after the embeddings
    for inside, outside in ((text_bf16, text), (audio_bf16, audio)):
        assert inside.dtype == torch.float32
        torch.testing.assert_close(inside, outside, rtol=0, atol=1e-6)


BAD_AUDIO = {
    "silent clip": np.zeros((2, RATE), np.float32),
    "shorter than one CLAP window": np.full((2, 1), 0.5, np.float32),
    "NaN or infinite": np.where(np.arange(RATE) == 7, np.nan, 0.1).astype(np.float32)[None].repeat(2, 0),
}


@pytest.mark.parametrize("cls", [CLAPPromptRewardProcessor, CLAPZeroShotClassificationRewardProcessor,
                                 PamRewardProcessor])
def test_audio_clap_cannot_score_gets_the_logged_fallback_and_the_rest_is_scored(clap_dir, cls):
    constants = {**smart_constants(), "CLAP_MODEL": str(clap_dir), "CLAP_CLF_MODEL": str(clap_dir),
                 "PAM_MODEL": str(clap_dir), "PAM_PROMPTS": PAIRS}
    processor = build_processor(cls, constants, CPU)
    good = clips()[:2]
    alone = processor(records_of(good))
    inf = noise(1, 2)
    inf[1, 3] = np.inf
    bad = [(audio, RATE) for audio in BAD_AUDIO.values()] + [(inf, RATE), (np.zeros((2, 0), np.float32), RATE)]
    records = processor(records_of([good[0], *bad, good[1]]))
    for record, reason in zip(records[1:-1], [*BAD_AUDIO, "NaN or infinite", "shorter than one CLAP window"]):
        assert set(record["normalized_rewards"].values()) == {UNSCORABLE_REWARD}
        assert set(record["normalized_rewards"]) == set(processor.reward_names_written)
        assert len(record["errors"]) == 1 and reason in record["errors"][0] and cls.__name__ in record["errors"][0]
        if processor.raw_field:
            assert record[processor.raw_field] is None
    for scored, reference_record in zip([records[0], records[-1]], alone):
        assert scored["errors"] == []
        for name, value in reference_record["normalized_rewards"].items():
            assert scored["normalized_rewards"][name] == pytest.approx(value, abs=1e-5)


def test_a_non_finite_embedding_gets_the_fallback(clap_dir):
    processor = CLAPPromptRewardProcessor(RATE, "jazz", 8, clap_model=str(clap_dir), device=CPU)
    embed = processor.clap.audio_embeddings
    processor.clap.audio_embeddings = lambda clips: embed(clips).index_fill(0, torch.tensor([1]), float("nan"))
    records = processor(records_of(clips()[:3]))
    assert records[1]["normalized_rewards"]["clap"] == UNSCORABLE_REWARD and "not finite" in records[1]["errors"][0]
    assert records[0]["errors"] == records[2]["errors"] == [] and 0 < records[0]["normalized_rewards"]["clap"] < 1


CLAP_CLASSES = (CLAPPromptRewardProcessor, CLAPZeroShotClassificationRewardProcessor, PamRewardProcessor)


def test_the_smart_constants_reach_each_processor_through_build_processor(clap_dir):
    config = {**smart_constants(), "CLAP_PROMPT": "a calm piano piece", "CLAP_K": 3, "CLAP_MODEL": str(clap_dir),
              "CLAP_CLF_PROMPT": "calm", "CLAP_REFERENCE_PROMPTS": ["busy", "loud"], "CLAP_TEMPERATURE": 0.5,
              "CLAP_CLF_MODEL": str(clap_dir), "PAM_PROMPTS": PAIRS, "PAM_TEMPERATURE": 2.0,
              "PAM_MODEL": str(clap_dir), "CLAP_BATCH_SIZE": 5, "SAMPLE_RATE": 44100}
    clap, clf, pam = build_reward_processors(["clap", "clap_clf", PAIRS[0]["shorthand"]], config, CPU)
    assert (clap.target_prompt, clap.k, clap.clap.model_id, clap.clap.batch_size, clap.clap.sample_rate) == (
        "a calm piano piece", 3, str(clap_dir), 5, 44100)
    assert (clf.prompts, clf.temperature, clf.clap.model_id) == (["calm", "busy", "loud"], 0.5, str(clap_dir))
    assert (pam.prompt_configs, pam.temperature, pam.clap.model_id) == (PAIRS, 2.0, str(clap_dir))
    assert all(p.clap.device == CPU for p in (clap, clf, pam))
    # every default lives once, in smart.py: a constructor parameter filled from a constant has no default of its
    # own that could disagree with smart.py's, and smart.py's are the original's values
    for cls in CLAP_CLASSES:
        for name, parameter in inspect.signature(cls).parameters.items():
            if name.upper() in config and parameter.default is not parameter.empty:
                assert parameter.default == getattr(smart, name.upper()), (cls.__name__, name)
    assert (smart.CLAP_MODEL, smart.CLAP_CLF_MODEL, smart.PAM_MODEL) == (
        "laion/larger_clap_music", "laion/larger_clap_general", "laion/larger_clap_general")


def test_reward_discovery_and_the_config_checks_know_the_clap_and_pam_rewards(clap_dir):
    from smart_utils.preflight import check_config

    defaults = smart_constants()
    assert reward_class("clap", defaults) is CLAPPromptRewardProcessor
    assert reward_class("clap_clf", defaults) is CLAPZeroShotClassificationRewardProcessor
    assert reward_class("pam_avg", defaults) is reward_class("glitchless", defaults) is PamRewardProcessor
    mine = [{"shorthand": "calmness", "positive": "calm", "negative": "restless"}]
    with_mine = {**defaults, "PAM_PROMPTS": mine}
    assert reward_class("calmness", with_mine) is PamRewardProcessor and reward_class("calmness", defaults) is None
    assert reward_class("glitchless", with_mine) is None  # a default pair this run does not have

    def problems_of(config: dict) -> list[str]:  # what smart.py checks before a run: the config, then its rewards
        return check_config(config) + reward_problems(config["REWARD_WEIGHTS"], config)

    base = {**defaults, "BASE_MODEL_PATH": str(ROOT / "models" / "piano-tiny"), "SOUNDFONT": "timgm6mb",
            "CLAP_MODEL": str(clap_dir), "CLAP_CLF_MODEL": str(clap_dir), "PAM_MODEL": str(clap_dir)}
    ok = {**base, "PAM_PROMPTS": mine, "REWARD_WEIGHTS": {"clap": 1.0, "clap_clf": 1.0, "calmness": 1.0,
                                                          "pam_avg": 1.0}}
    assert problems_of(ok) == []
    problems = problems_of({**ok, "REWARD_WEIGHTS": {"glitchless": 1.0}})
    assert len(problems) == 1 and "['glitchless'], which no processor writes" in problems[0]
    clash = [*mine, {"shorthand": "CE", "positive": "a", "negative": "b"}, mine[0]]
    assert check_config({**ok, "PAM_PROMPTS": clash}) == ["PAM_PROMPTS: shorthand 'calmness' is used twice; rename it"]
    # a shorthand that is another reward's name: two classes write it, and a run that weights it is refused
    ambiguous, taken = reward_problems({"CE": 1.0, "calmness": 1.0}, {**ok, "PAM_PROMPTS": clash})
    assert "'CE'" in ambiguous and "AudioBoxAesRewardProcessor" in ambiguous and "PamRewardProcessor" in ambiguous
    assert "shorthand 'CE' is another reward's name" in taken
    # weighting only PAM is refused too: its CE would overwrite the logged Audiobox CE of a run that scores both
    assert reward_problems({"calmness": 1.0}, {**ok, "PAM_PROMPTS": clash}) == [taken]
    problems = problems_of({**ok, "CLAP_TEMPERATURE": 0, "CLAP_BATCH_SIZE": 0, "PAM_PROMPTS": [{"positive": "a"}]})
    assert len(problems) == 4 and "CLAP_TEMPERATURE=0 must be > 0" in problems


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An offline environment whose HF cache holds the stand-in under both laion hub ids."""
    work = tmp_path_factory.mktemp("clap_hub")
    fill_clap_hub_cache(work / "hf" / "hub", work)
    return {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(work / "xdg"),
            "PYTHONUNBUFFERED": "1"}


def test_the_hub_ids_load_offline_from_the_hf_cache(hub_env, clap_dir):
    script = (
        "import numpy as np, torch\n"
        "from configurator import smart_constants\n"
        "from processors import CLAPPromptRewardProcessor, PamRewardProcessor, build_processor\n"
        "constants = {**smart_constants(), 'PAM_PROMPTS': [dict(shorthand='x', positive='a', negative='b')]}\n"
        "clap = build_processor(CLAPPromptRewardProcessor, constants, torch.device('cpu'))\n"
        "pam = build_processor(PamRewardProcessor, constants)\n"
        "audio = np.sin(np.arange(48000) / 10, dtype=np.float32)[None].repeat(2, 0)\n"
        "[record] = clap([dict(audio=audio, sample_rate=48000, normalized_rewards={}, errors=[])])\n"
        "print(clap.clap.model_id, pam.clap.model_id, repr(record['clap_score_raw']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=hub_env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    music, general, raw = result.stdout.split()[-3:]
    assert (music, general) == ("laion/larger_clap_music", "laion/larger_clap_general")
    local = CLAPPromptRewardProcessor(RATE, "jazz", 8, clap_model=str(clap_dir), device=CPU)
    audio = np.sin(np.arange(RATE) / 10, dtype=np.float32)[None].repeat(2, 0)
    [record] = local([dict(audio=audio, sample_rate=RATE, normalized_rewards={}, errors=[])])
    assert float(raw) == pytest.approx(record["clap_score_raw"], abs=1e-6)


def test_smart_trains_two_steps_on_the_clap_reward_from_the_hf_cache(hub_env, tmp_path):
    run_dir = tmp_path / "clap-run"
    result = subprocess.run(
        [sys.executable, "smart.py", "--BASE_MODEL_PATH=models/piano-tiny", "--SOUNDFONT=timgm6mb",
         "--REWARD_WEIGHTS={'clap': 1.0}", "--CLAP_PROMPT=a calm piano piece", "--NUM_TRAIN_STEPS=2",
         "--BATCH_SIZE=4", "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=24", "--SAVE_STEPS=100",
         "--EVAL_SAMPLES=2", "--RENDER_WORKERS=1", "--CPU_THREADS=1", f"--OUTPUT_DIR={run_dir}"],
        cwd=ROOT, env=hub_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((run_dir / "smart_config.json").read_text())["config"]["CLAP_PROMPT"] == "a calm piano piece"
    for step in (0, 1):
        rows = pq.read_table(run_dir / "rl_logs" / str(step) / "logs.parquet").to_pylist()
        assert len(rows) == 4
        for row in rows:
            if row["clap_score_raw"] is not None:  # a silent completion gets the logged fallback
                assert row["normalized_rewards"]["clap"] == pytest.approx((row["clap_score_raw"] + 1) / 2, abs=1e-6)
            assert row["reward"] == row["normalized_rewards"]["clap"]
    assert "reward_clap" in (run_dir / "eval" / "features.csv").read_text().splitlines()[0]
    [clap] = json.loads((run_dir / RECORD_FILE).read_text())["clap_models"]
    assert clap["source"] == "hub" and clap["id"] == "laion/larger_clap_music" and clap["commit"]
