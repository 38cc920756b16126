"""bench/fuzz_rewards.py and what it checks, garbage in, finite reward out: any token sequence a model can emit
goes through the real reward chain (processors.py, reward_manager.py) without raising, gets a reward in [0, 1], and
has its reason logged in the step's parquet ``errors`` column; here with hypothesis on 1,024 sequences and
pathological scores, then the bench itself, with and without the CLAP rewards."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import symusic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smart
from bench import fuzz_rewards
from processors import (
    AudioActivityRewardProcessor,
    FilledBeatsRewardProcessor,
    MidiTokToSymusicProcessor,
    NoteDensityRewardProcessor,
    ScaleConsistencyReward,
    TinySoundfontSynthProcessor,
)
from reward_manager import RewardManager
from scores import make_score
from smart_utils.records import score_record
from smart_utils.tokenizer import default_remi

SAMPLE_RATE, MAX_AUDIO_DURATION = smart.SAMPLE_RATE, smart.MAX_AUDIO_DURATION  # the real settings: 48 kHz, 10 s

REMI = default_remi()
VOCAB = len(REMI)
PROMPT_IDS = [REMI.vocab[t] for t in fuzz_rewards.PROMPT]
BATCH = 16
EXAMPLES = 64  # 64 batches x 16 = 1024 sequences


def ids_of(kind: str) -> list[int]:
    return [i for token, i in REMI.vocab.items() if token.startswith(kind + "_")]


PITCHES, LOUDEST, LONGEST = ids_of("Pitch"), ids_of("Velocity")[-1], ids_of("Duration")[-1]


def chord(size: int, pitch: int, spread_pitches: bool) -> list[int]:
    ids = [REMI.vocab["Position_0"]]
    for k in range(size):
        ids += [PITCHES[(pitch + k * spread_pitches) % len(PITCHES)], LOUDEST, LONGEST]
    return ids


def held_note_then_silence(bars: int, second_note: bool) -> list[int]:
    note = [REMI.vocab["Position_0"], PITCHES[40], LOUDEST, LONGEST]
    return note + [REMI.vocab["Bar_None"]] * bars + (note if second_note else [])


SPECIALS = [i for token, i in REMI.vocab.items() if token.endswith("_None") and token != "Bar_None"]
EVENT = st.one_of(
    st.just([REMI.vocab["Bar_None"]]),
    *(st.sampled_from(ids_of(kind)).map(lambda i: [i]) for kind in ("Position", "Tempo", "TimeSig")),
    st.tuples(*(st.sampled_from(ids_of(kind)) for kind in ("Pitch", "Velocity", "Duration"))).map(list),
    st.sampled_from(SPECIALS).map(lambda i: [i]),  # PAD, BOS, EOS, ... in the middle
)
SEQUENCE = st.one_of(
    st.just([]),
    st.lists(st.integers(min_value=-5, max_value=VOCAB + 50), max_size=400),  # uniform, out-of-vocab included
    st.lists(EVENT, max_size=150).map(lambda events: [i for event in events for i in event]),  # REMI-shaped
    st.builds(chord, st.integers(1, 10_000), st.integers(0, 87), st.booleans()),  # up to 10,000 notes at once
    st.builds(held_note_then_silence, st.integers(0, 250), st.booleans()),  # up to 1000 silent beats
)


def weight_free_chain(output_dir, soundfont, sample_rate, seconds):
    return RewardManager(
        processors=[
            MidiTokToSymusicProcessor(REMI, is_multitrack=False, max_beats=100),
            TinySoundfontSynthProcessor(soundfont, sample_rate, seconds),
            ScaleConsistencyReward(), NoteDensityRewardProcessor(), FilledBeatsRewardProcessor(),
            AudioActivityRewardProcessor(seconds),
        ],
        reward_weights=fuzz_rewards.WEIGHTS,
        output_dir=output_dir,
        audio_save_interval=1_000_000,
    )


def test_any_token_sequence_gets_a_finite_reward_with_its_reason_logged(tmp_path, soundfont):
    manager = weight_free_chain(tmp_path, soundfont, 16000, 1.0)
    seen: list[int] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.booleans(), SEQUENCE), min_size=BATCH, max_size=BATCH))
    def check(batch):
        step = manager.global_reward_step
        prompt_ids = [PROMPT_IDS if with_prompt else [] for with_prompt, _ in batch]
        completions = [ids for _, ids in batch]
        rewards = manager(prompts=[""] * len(batch), completion_ids=completions, prompt_ids=prompt_ids,
                          log_metric=lambda name, value: None)

        assert len(rewards) == len(batch)
        assert all(isinstance(r, float) and math.isfinite(r) and 0.0 <= r <= 1.0 for r in rewards), rewards
        rows = pq.read_table(tmp_path / "rl_logs" / str(step) / "logs.parquet").to_pylist()
        assert [row["reward"] for row in rows] == rewards
        assert {row["reward_step"] for row in rows} == {step}
        for row, prompt, completion in zip(rows, prompt_ids, completions):
            ids = prompt + completion
            if any(not 0 <= i < VOCAB for i in ids):
                assert "ids outside the vocabulary" in row["errors"]
            [midi] = (tmp_path / "midi" / str(step)).glob(f"reward=*_{row['idx']}.mid")
            if symusic.Score(midi).note_num() == 0:
                assert "decode: no notes" in row["errors"]
        seen.append(len(batch))

    check()
    assert sum(seen) >= 1000


def test_a_10000_note_chord_is_decoded_rendered_and_scored_without_a_fallback(tmp_path, soundfont):
    """At the real settings (48 kHz, 10 s), on one pitch and spread over the keyboard. What such a chord costs a
    reward step is a figure of bench/fuzz_rewards.py (its huge_chord generator), not a test."""
    manager = weight_free_chain(tmp_path, soundfont, SAMPLE_RATE, MAX_AUDIO_DURATION)
    completions = [chord(10_000, 39, spread_pitches=False), chord(10_000, 0, spread_pitches=True)]
    manager(prompts=[""] * 2, completion_ids=completions, prompt_ids=[PROMPT_IDS] * 2)
    rows = pq.read_table(tmp_path / "rl_logs" / "0" / "logs.parquet").to_pylist()
    assert [row["errors"] for row in rows] == ["", ""]  # no processor failed on it, no reward fell back
    assert all(row["normalized_rewards"]["audio_activity"] > 0 for row in rows)  # and the chord sounds


@pytest.mark.parametrize(
    "notes",
    [
        [(0, 1000, 60, 90)],  # one note lasting 1000 beats
        [(0, 1000, 21 + k % 88, 127) for k in range(10_000)],  # 10,000 notes held for 1000 beats
        [(b, 0.001, 108, 1) for b in range(0, 1000, 10)],  # inaudible clicks spread over 1000 beats
        [],
    ],
    ids=["1000-beat note", "10000-note chord of 1000 beats", "clicks", "empty"],
)
def test_pathological_scores_render_at_most_10_s_and_score_in_bounds(soundfont, notes):
    """Scores no token sequence of this vocabulary can express (its longest note is 4 beats), but another
    tokenizer's could: the renderer stops at 10 s and the rewards still give finite values."""
    score = make_score(notes)
    records = [score_record(0, score)]
    processors = (TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, MAX_AUDIO_DURATION), ScaleConsistencyReward(),
                  NoteDensityRewardProcessor(), FilledBeatsRewardProcessor(),
                  AudioActivityRewardProcessor(MAX_AUDIO_DURATION))
    for processor in processors:
        processor(records)
    audio = records[0]["audio"]
    assert audio.shape[1] <= MAX_AUDIO_DURATION * SAMPLE_RATE and np.isfinite(audio).all()
    assert all(0.0 <= v <= 1.0 for v in records[0]["normalized_rewards"].values())


def test_the_fuzz_bench_runs_and_reports_zero_failures(capsys):
    assert fuzz_rewards.main(["--n", "48", "--batch", "24", "--seconds", "1", "--sample-rate", "16000"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("failures: 0") and "decode: no notes" in out


def test_the_fuzz_bench_with_the_clap_rewards_reports_zero_failures(capsys):
    """The CLAP rewards on a random stand-in CLAP: silent clips (empty scores) get their logged fallback."""
    assert fuzz_rewards.main(["--n", "24", "--batch", "24", "--seconds", "1", "--sample-rate", "16000",
                              "--clap", "standin"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("failures: 0") and "CLAPPromptRewardProcessor: silent clip" in out
