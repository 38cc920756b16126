"""The processor chain: decode, render (equal to the original method), Audiobox scores, weight-free rewards."""

import numpy as np
import pytest
import torch

import smart
from bench.original import OriginalTinySoundfontRenderer
from configurator import smart_constants
from processors import (
    AudioActivityRewardProcessor,
    AudioBoxAesRewardProcessor,
    FilledBeatsRewardProcessor,
    MidiTokToSymusicProcessor,
    NoteDensityRewardProcessor,
    ScaleConsistencyReward,
    TinySoundfontSynthProcessor,
    build_reward_processors,
    reward_class,
)
from scores import make_score, random_scores
from smart_utils.features import score_seconds
from smart_utils.records import crop_score, score_record
from smart_utils.tokenizer import default_remi

SAMPLE_RATE, MAX_AUDIO_DURATION = smart.SAMPLE_RATE, smart.MAX_AUDIO_DURATION


def records_of(scores):
    return [score_record(i, s) for i, s in enumerate(scores)]


def test_decode_crops_to_max_beats_and_reports_bad_ids():
    remi = default_remi()
    notes = []
    for _ in range(40):  # 40 bars of 4/4 = 160 beats, longer than max_beats
        notes += ["Bar_None", "Position_0", "Pitch_60", "Velocity_63", "Duration_4.0.12"]
    ids = [remi.vocab[t] for t in ["Bar_None", "TimeSig_4/4", "Position_0", "Tempo_120.0"] + notes[1:]]
    records = [{"prompt_and_completion": ids}, {"prompt_and_completion": ids[:10] + [10_000, -1]}]
    MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=100)(records)
    assert records[0]["sm"].end() == 100 * records[0]["sm"].ticks_per_quarter
    assert records[0]["sm_duration"] == pytest.approx(50.0)  # 100 beats at 120 qpm
    assert records[0].get("errors", []) == []
    assert "2 ids outside the vocabulary" in records[1]["errors"][0]
    assert records[1]["prompt_and_completion_tokens"][0] == "Bar_None"


def test_render_equals_the_original_method_over_many_scores_in_sequence(soundfont):
    """A reused synth carries state between renders, so equality must hold for a sequence of scores."""
    scores = [crop_score(s, 100) for s in random_scores(14, seed=1)]
    ours = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, max_duration_seconds=10)
    original = OriginalTinySoundfontRenderer(soundfont, SAMPLE_RATE, max_duration_seconds=10)
    records = ours(records_of(scores))
    for record, score in zip(records, scores):
        expected = original.render(score, score_seconds(score))
        assert record["audio"].dtype == np.float32
        assert record["audio"].shape == expected.shape
        assert np.abs(record["audio"] - expected).max() <= 1e-5
        assert record["audio_duration"] == expected.shape[1] / SAMPLE_RATE
    assert any(np.abs(r["audio"]).max() > 0.99 for r in records)  # real audio, peak-normalised


def test_render_of_an_empty_score_is_one_second_of_silence(soundfont):
    records = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, 10)(records_of([make_score([])]))
    assert records[0]["audio"].shape == (2, SAMPLE_RATE) and not records[0]["audio"].any()


def test_audiobox_processor_equals_the_reference_predictor(audiobox_checkpoint, soundfont):
    from audiobox_aesthetics.infer import initialize_predictor

    scores = [make_score([(b, 1, 60 + b, 90) for b in range(12)]), make_score([(0, 4, 40, 50)], qpm=60)]
    records = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, 10)(records_of(scores))
    AudioBoxAesRewardProcessor(str(audiobox_checkpoint))(records)
    reference = initialize_predictor(ckpt=str(audiobox_checkpoint))
    expected = reference.forward([{"path": torch.tensor(r["audio"]), "sample_rate": SAMPLE_RATE} for r in records])
    for record, scores_ref in zip(records, expected):
        for axis in ("CE", "CU", "PC", "PQ"):
            assert record["aes_scores"][axis] == pytest.approx(scores_ref[axis], abs=1e-4)
            assert record["normalized_rewards"][axis] == pytest.approx(scores_ref[axis] / 10, abs=1e-5)
    assert records[0]["aes_scores"]["CE"] != pytest.approx(records[1]["aes_scores"]["CE"], abs=1e-3)


def test_scale_consistency_reward_follows_the_original():
    c_major = make_score([(i, 1, p, 80) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])])
    chromatic = make_score([(i, 1, 60 + i, 80) for i in range(12)])
    records = ScaleConsistencyReward()(records_of([c_major, chromatic, make_score([])]))
    assert [r["normalized_rewards"]["scale_consistency"] for r in records] == pytest.approx([1.0, 7 / 12, 1.0])


def test_note_density_reward():
    two_per_beat = make_score([(i / 2, 0.5, 60, 80) for i in range(32)])  # 32 notes in 16 beats
    one_per_beat = make_score([(i, 1, 60, 80) for i in range(16)])
    late = make_score([(20 + i, 1, 60, 80) for i in range(16)])  # all after the 16-beat window
    reward = NoteDensityRewardProcessor(beats=16, target_notes_per_beat=2.0)
    records = reward(records_of([two_per_beat, one_per_beat, late]))
    assert [r["normalized_rewards"]["note_density"] for r in records] == pytest.approx([1.0, 0.5, 0.0])


def test_filled_beats_reward():
    three_of_four = make_score([(0, 0.5, 60, 80), (1, 0.5, 62, 80), (3, 0.5, 64, 80)])  # beat 2 is silent
    full = make_score([(0, 4, 60, 80)])
    records = FilledBeatsRewardProcessor()(records_of([three_of_four, full, make_score([])]))
    assert [r["normalized_rewards"]["filled_beats"] for r in records] == pytest.approx([0.75, 1.0, 0.0])


def test_audio_activity_reward_on_synthetic_audio():
    sr = 1000
    def record(audio):
        return {"audio": audio.astype(np.float32), "sample_rate": sr, "normalized_rewards": {}}
    tone = np.sin(np.arange(10 * sr) * 0.3)
    half = tone.copy()
    half[5 * sr:] = 0
    short = tone[: sr]
    records = AudioActivityRewardProcessor(max_audio_duration=10)(
        [record(np.stack([tone, tone])), record(np.stack([half, half])), record(np.stack([short, short])),
         record(np.zeros((2, sr)))]
    )
    values = [r["normalized_rewards"]["audio_activity"] for r in records]
    assert values == pytest.approx([1.0, 0.5, 0.1, 0.0])


def test_the_original_readme_custom_processor_example_runs(tmp_path, soundfont):
    """The 'Adding New Rewards' example from erl-j/SMART's README, as written there but for the maximum duration
    its TinySoundfontSynthProcessor call left out (README.md passes MAX_AUDIO_DURATION)."""
    from processors import Processor
    from reward_manager import RewardManager

    class MyRewardProcessor(Processor):
        def compute_rewards(self, record):
            return min(record["sm"].note_num() / 10, 1.0)

        def __call__(self, records):
            for record in records:
                score = self.compute_rewards(record)
                record["normalized_rewards"]["MY_REWARD"] = score
            return records

    tokenizer = default_remi()
    SF_PATH, SAMPLE_RATE_, MAX_AUDIO_DURATION_, OUTPUT_DIR = soundfont, 48000, 10, tmp_path
    reward_manager = RewardManager(
        processors=[
            MidiTokToSymusicProcessor(tokenizer, is_multitrack=False, max_beats=100),
            TinySoundfontSynthProcessor(SF_PATH, SAMPLE_RATE_, MAX_AUDIO_DURATION_),
            MyRewardProcessor(),
        ],
        reward_weights={"MY_REWARD": 0.5},
        output_dir=OUTPUT_DIR,
    )
    prompt = "Bar_None TimeSig_4/4 Position_0 Tempo_120.0"
    prompt_ids = [tokenizer.vocab[t] for t in prompt.split()]
    note = [tokenizer.vocab[t] for t in ("Pitch_60", "Velocity_63", "Duration_1.0.12")]
    rewards = reward_manager(prompts=[prompt, prompt], completion_ids=[note * 3, []], prompt_ids=[prompt_ids] * 2)
    assert rewards == pytest.approx([0.3, 0.0])


def test_a_processor_subclass_naming_its_reward_is_found_and_built_with_no_registration():
    """What replaced the original README's ``REWARD_PROCESSORS["MY_REWARD"] = MyRewardProcessor``: a ``Processor``
    subclass with ``REWARDS = ("MY_REWARD",)``, defined anywhere (here, in a test), is found by that name and built
    beside the project's own rewards, in definition order."""
    from processors import Processor, known_rewards

    class MyRewardProcessor(Processor):  # a no-argument constructor: nothing to fill from the constants
        REWARDS = ("MY_FOUND_REWARD",)  # a name no other test's class writes: classes outlive their test

        def __call__(self, records):
            return records

    constants = smart_constants()
    assert reward_class("MY_FOUND_REWARD", constants) is MyRewardProcessor
    assert "MY_FOUND_REWARD" in known_rewards(constants)
    built = build_reward_processors(["MY_FOUND_REWARD", "note_density"], constants)
    assert [type(p) for p in built] == [NoteDensityRewardProcessor, MyRewardProcessor]


def test_each_reward_is_built_from_the_run_constants(audiobox_checkpoint):
    constants = {**smart_constants(), "AUDIOBOX_CHECKPOINT": str(audiobox_checkpoint), "AUDIOBOX_BATCH_SIZE": 3,
                 "MAX_AUDIO_DURATION": 4}
    audiobox, activity = build_reward_processors(["audio_activity", "CE", "PQ"], constants, torch.device("cpu"))
    assert isinstance(audiobox, AudioBoxAesRewardProcessor) and audiobox.scorer.batch_size == 3  # one for all axes
    assert audiobox.scorer.predictor.device == torch.device("cpu")
    assert isinstance(activity, AudioActivityRewardProcessor) and activity.max_audio_duration == 4


def test_record_documents_every_key_the_chain_adds(soundfont):
    from reward_manager import RewardManager
    from smart_utils.records import Record, completion_record

    tokenizer = default_remi()
    prompt_ids = [tokenizer.vocab[t] for t in ["Bar_None", "TimeSig_4/4", "Position_0", "Tempo_120.0"]]
    note = [tokenizer.vocab[t] for t in ("Pitch_60", "Velocity_63", "Duration_1.0.12")]
    records = [completion_record(0, "p", prompt_ids, note * 3)]
    for processor in (MidiTokToSymusicProcessor(tokenizer, is_multitrack=False, max_beats=100),
                      TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, MAX_AUDIO_DURATION),
                      ScaleConsistencyReward()):
        records = processor(records)
    records[0]["reward"] = RewardManager([], {"scale_consistency": 1.0}, ".").total_reward(records[0])
    assert set(records[0]) - set(Record.__annotations__) == set()
    assert set(score_record(0, make_score([]))) <= set(Record.__annotations__)
