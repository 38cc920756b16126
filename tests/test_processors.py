"""processors.py, the processor chain: decode, render (equal to the original method), Audiobox scores, the
weight-free rewards, group_diversity, the original's other decode and render stages (a custom tokenizer, symusic's
synthesizer), and how a reward is found by its name and built from the run's constants.

The multi-track processors are test_multitrack.py's, the CLAP rewards test_clap.py's, the listeners reward
test_listen.py's; the Audiobox scorer's batching and loading are test_audiobox.py's.
"""

import numpy as np
import pytest
import symusic
import torch

import processors
import smart
from bench.original import OriginalTinySoundfontRenderer
from configurator import smart_constants
from processors import (
    AudioActivityRewardProcessor,
    AudioBoxAesRewardProcessor,
    CustomTokenizerToSymusicProcessor,
    FilledBeatsRewardProcessor,
    GroupDiversityRewardProcessor,
    MidiTokToSymusicProcessor,
    NoteDensityRewardProcessor,
    Processor,
    ScaleConsistencyReward,
    SoundfontEnsembleProcessor,
    SymusicSynthProcessor,
    SymusicSynthUnavailable,
    TinySoundfontSynthProcessor,
    build_reward_processors,
    reward_class,
)
from scores import make_multitrack_score, make_score, random_scores
from smart_utils.features import score_seconds
from smart_utils.records import completion_record, crop_score, score_record
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


def test_note_density_is_notes_per_beat_in_the_first_beats_over_the_target():
    two_per_beat = make_score([(i / 2, 0.5, 60, 80) for i in range(32)])  # 32 notes in 16 beats
    one_per_beat = make_score([(i, 1, 60, 80) for i in range(16)])
    late = make_score([(20 + i, 1, 60, 80) for i in range(16)])  # all after the 16-beat window
    reward = NoteDensityRewardProcessor(beats=16, target_notes_per_beat=2.0)
    records = reward(records_of([two_per_beat, one_per_beat, late]))
    assert [r["normalized_rewards"]["note_density"] for r in records] == pytest.approx([1.0, 0.5, 0.0])


def test_filled_beats_is_the_share_of_beats_in_which_a_note_sounds():
    three_of_four = make_score([(0, 0.5, 60, 80), (1, 0.5, 62, 80), (3, 0.5, 64, 80)])  # beat 2 is silent
    full = make_score([(0, 4, 60, 80)])
    records = FilledBeatsRewardProcessor()(records_of([three_of_four, full, make_score([])]))
    assert [r["normalized_rewards"]["filled_beats"] for r in records] == pytest.approx([0.75, 1.0, 0.0])


def test_audio_activity_is_the_audible_share_of_the_max_duration():
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


# --- group_diversity: each completion's mean style distance to the other completions of its GRPO group ----------------
# One-note and two-note pieces whose descriptor distances are easy by hand: descriptor_distance is
# 0.25 * (L1 of the pitch-class shares + L1 of the onset-in-beat shares).
C_ON_BEAT = make_score([(0, 1, 60, 80)])
D_ON_BEAT = make_score([(0, 1, 62, 80)])  # other pitch class: 0.25 * 2 = 0.5 from C_ON_BEAT
C_OFF_BEAT = make_score([(0.5, 1, 60, 80)])  # other onset: 0.5 from C_ON_BEAT, 1.0 from D_ON_BEAT
C_AND_D = make_score([(0, 1, 60, 80), (0, 1, 62, 80)])  # half C, half D: 0.25 from both on-beat notes, 0.75 off
EMPTY = symusic.Score(12)
# Each piece's mean distance to the three others in the group (C_ON_BEAT, D_ON_BEAT, C_OFF_BEAT, C_AND_D).
HAND = [(0.5 + 0.5 + 0.25) / 3, (0.5 + 1.0 + 0.25) / 3, (0.5 + 1.0 + 0.75) / 3, (0.25 + 0.25 + 0.75) / 3]
FOUR = [C_ON_BEAT, D_ON_BEAT, C_OFF_BEAT, C_AND_D]


def batch_of(groups: list[tuple[int, list[symusic.Score]]]) -> list[dict]:
    """Records as RewardManager makes them, decoded: (prompt token, pieces) per group, groups in batch order."""
    records = []
    for prompt_token, pieces in groups:
        for score in pieces:
            record = completion_record(len(records), f"prompt {prompt_token}", [1, prompt_token], [7, 8, 9])
            record["sm"] = score
            records.append(record)
    return records


def diversities(records: list[dict], num_generations: int) -> list[float]:
    GroupDiversityRewardProcessor(num_generations)(records)
    return [record["normalized_rewards"]["group_diversity"] for record in records]


def test_group_diversity_of_identical_completions_is_zero():
    records = batch_of([(5, [C_AND_D] * 8)])
    assert diversities(records, 8) == [0.0] * 8
    assert all(record["errors"] == [] for record in records)


def test_group_diversity_is_the_hand_computed_distance_and_groups_do_not_leak():
    """Two groups of 4: the first has the hand-computed values, the second (all alike) zeros; had the batch been
    one group, the alike pieces would differ from the first group's."""
    records = batch_of([(5, FOUR), (6, [C_ON_BEAT] * 4)])
    assert diversities(records, 4) == pytest.approx(HAND + [0.0] * 4, abs=1e-12)
    assert all(record["errors"] == [] for record in records)

    changed = batch_of([(5, FOUR), (6, [C_AND_D, EMPTY, D_ON_BEAT, C_OFF_BEAT])])
    assert diversities(changed, 4)[:4] == pytest.approx(HAND, abs=1e-12)


def test_group_diversity_mean_is_evaluations_mean_pairwise_distance():
    from smart_utils.features import mean_pairwise_distance

    values = diversities(batch_of([(5, FOUR)]), 4)
    assert sum(values) / 4 == pytest.approx(mean_pairwise_distance(FOUR), abs=1e-12)


def test_group_diversity_of_note_less_completions_is_zero_and_they_add_none_to_others():
    """An empty piece gets 0 and, as a partner, distance 0: replacing two pieces by empty ones lowers the others'
    rewards (1.25/3 -> 0.5/3 for C_ON_BEAT), so a policy cannot raise its reward by writing nothing."""
    values = diversities(batch_of([(5, [C_ON_BEAT, D_ON_BEAT, EMPTY, EMPTY])]), 4)
    assert values == pytest.approx([0.5 / 3, 0.5 / 3, 0.0, 0.0], abs=1e-12)
    assert diversities(batch_of([(5, [EMPTY] * 4)]), 4) == [0.0] * 4


def test_group_diversity_groups_mixed_prompts_by_prompt_and_says_so(capsys):
    """Blocks of 4 that mix two prompts (a group split across ranks): grouped by prompt, noted in every record."""
    interleaved = [rec for pair in zip(batch_of([(5, FOUR)]), batch_of([(6, [C_ON_BEAT] * 4)])) for rec in pair]
    reward = GroupDiversityRewardProcessor(4)
    reward(interleaved)
    values = [record["normalized_rewards"]["group_diversity"] for record in interleaved]
    assert values[0::2] == pytest.approx(HAND, abs=1e-12) and values[1::2] == [0.0] * 4
    assert all(len(record["errors"]) == 1 and "grouped by identical prompt instead (2 groups)" in record["errors"][0]
               for record in interleaved)
    reward(batch_of([(5, FOUR[:3])]))  # the console warning comes once per processor
    assert capsys.readouterr().out.count("[group_diversity] warning") == 1


def test_group_diversity_falls_back_on_a_batch_that_is_no_multiple_of_the_group_size():
    """6 records for groups of 4: by prompt, a group of 5 and a group of one, which has no sibling to differ from."""
    records = batch_of([(5, FOUR + [C_ON_BEAT]), (6, [D_ON_BEAT])])
    values = diversities(records, 4)
    d_on_beat = (0.5 + 1.0 + 0.25 + 0.5) / 4  # its distances to C_ON_BEAT, C_OFF_BEAT, C_AND_D, C_ON_BEAT
    assert values[1] == pytest.approx(d_on_beat, abs=1e-12) and values[5] == 0.0
    assert all("does not split into blocks of 4" in record["errors"][0] for record in records)


def test_group_diversity_takes_the_same_text_with_other_prompt_ids_for_another_prompt():
    records = batch_of([(5, FOUR)])
    records[3]["prompt_and_completion"] = [1, 99, 7, 8, 9]
    diversities(records, 4)
    assert all(record["errors"] for record in records)


def test_group_diversity_is_built_from_smarts_constants_through_build_reward_processors():
    import smart

    config = smart_constants()
    assert reward_class("group_diversity", config) is GroupDiversityRewardProcessor
    (default,) = build_reward_processors(["group_diversity"], config)
    assert default.num_generations == smart.NUM_GENERATIONS == 8
    (processor,) = build_reward_processors(["group_diversity"], {**config, "NUM_GENERATIONS": 4}, torch.device("cpu"))
    assert isinstance(processor, GroupDiversityRewardProcessor) and processor.num_generations == 4
    records = processor(batch_of([(5, FOUR), (6, FOUR[::-1])]))
    values = [record["normalized_rewards"]["group_diversity"] for record in records]
    assert values == pytest.approx(HAND + HAND[::-1], abs=1e-12)


# --- the original's other decode and render stages --------------------------------------------------------------------
PIANO = 0  # GM program
BEAT_NOTES = [(beat, 0.5, 40 + beat, 100) for beat in range(4)]  # four short notes: pitches 40-43


class WordTokenizer:
    """The interface CustomTokenizerToSymusicProcessor expects: ids <-> words, words -> score."""

    words = ["note", "rest"]

    def ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def tokens_to_midi(self, tokens: list[str]) -> symusic.Score:
        return make_multitrack_score([(PIANO, False, [(b, 1, 60, 90) for b, t in enumerate(tokens) if t == "note"])])


def test_custom_tokenizer_decoder_crops_and_falls_back_to_an_empty_4_4_score():
    decoder = CustomTokenizerToSymusicProcessor(WordTokenizer(), max_beats=2)
    good, bad = decoder([{"prompt_and_completion": [0, 1, 0, 0], "errors": []},
                         {"prompt_and_completion": [0, 7], "errors": []}])
    assert good["prompt_and_completion_tokens"] == ["note", "rest", "note", "note"]
    assert good["sm"].note_num() == 1 and good["sm_duration"] == pytest.approx(0.5)  # cropped to 2 beats
    assert bad["sm"].note_num() == 0 and bad["sm"].ticks_per_quarter == 24 and "IndexError" in bad["errors"][0]
    assert bad["sm"].time_signatures[0].time == 0 and bad["sm"].tempos[0].qpm == pytest.approx(120)


def test_symusic_synth_refuses_at_construction_where_symusic_cannot_render(soundfont):
    try:
        symusic.Synthesizer(soundfont, 22050).render(processors.probe_score(), stereo=True)
    except TypeError:  # symusic 0.6.0, as installed: the synth's audio cannot reach Python
        with pytest.raises(SymusicSynthUnavailable, match="use TinySoundfontSynthProcessor"):
            SymusicSynthProcessor(soundfont, 22050, 10)
    else:
        assert SymusicSynthProcessor(soundfont, 22050, 10)([]) == []


class FakeSynthesizer:
    """symusic.Synthesizer as 0.5.9 behaves: (2, N) float32, here a ramp of 3 s at every rate."""

    def __init__(self, sf_path: str, sample_rate: int):
        self.sample_rate = sample_rate

    def render(self, score: symusic.Score, stereo: bool = True) -> np.ndarray:
        ramp = np.linspace(-0.5, 0.25, 3 * self.sample_rate, dtype=np.float32)
        return np.stack([ramp, ramp / 2])


def test_symusic_synth_cuts_and_divides_by_the_peak_where_the_original_added_1e6(monkeypatch):
    monkeypatch.setattr(symusic, "Synthesizer", FakeSynthesizer)
    synth = SymusicSynthProcessor("any.sf2", 100, max_duration_seconds=2)
    piano = make_multitrack_score([(PIANO, False, BEAT_NOTES)])
    long, short, empty = synth([{"sm": piano, "sm_duration": 9.0, "errors": []},
                                {"sm": piano, "sm_duration": 1.5, "errors": []},
                                {"sm": symusic.Score(12), "sm_duration": 0.0, "errors": []}])
    assert long["audio"].shape == (2, 200) and short["audio"].shape == (2, 150) and empty["audio"].shape == (2, 100)
    raw = FakeSynthesizer("", 100).render(piano)[:, :150]
    np.testing.assert_allclose(short["audio"], raw / (0.5 + 1e-6), rtol=1e-6)
    assert np.abs(short["audio"]).max() == pytest.approx(1.0, abs=1e-5) and not empty["audio"].any()
    assert short["audio_duration"] == 1.5 and short["sample_rate"] == 100



def test_a_soundfont_ensemble_combines_each_audio_reward_and_logs_every_soundfonts_value():
    class ScaledSynth(Processor):  # a stand-in renderer: audio of a loudness of its own, one per soundfont
        def __init__(self, level: float):
            self.level = level

        def __call__(self, records):
            for record in records:
                record["audio"] = np.full((2, 100), self.level, dtype=np.float32)
                record["sample_rate"] = SAMPLE_RATE
            return records

    class LoudnessRewardProcessor(Processor):  # a stand-in audio reward (a name no other test uses)
        REWARDS = ("stand_in_loudness",)
        READS_AUDIO = True

        def __call__(self, records):
            for record in records:
                record["normalized_rewards"]["stand_in_loudness"] = float(np.abs(record["audio"]).mean())
            return records

    records = ScaledSynth(0.2)(records_of([make_score([(0, 1, 60, 80)])] * 2))  # the chain's own rendering
    synths = {"main": None, "bright": ScaledSynth(0.6)}
    mean = SoundfontEnsembleProcessor(synths, [LoudnessRewardProcessor()])(
        [{**r, "normalized_rewards": {}, "errors": []} for r in records])
    assert [r["normalized_rewards"] for r in mean] == [pytest.approx(
        {"stand_in_loudness": 0.4, "stand_in_loudness@main": 0.2, "stand_in_loudness@bright": 0.6})] * 2
    assert all(float(r["audio"].mean()) == pytest.approx(0.2) for r in mean)  # the records keep their own audio
    lowest = SoundfontEnsembleProcessor(synths, [LoudnessRewardProcessor()], "min")(records)
    assert [r["normalized_rewards"]["stand_in_loudness"] for r in lowest] == pytest.approx([0.2, 0.2])
    held_out = SoundfontEnsembleProcessor({"bright": ScaledSynth(0.6)}, [LoudnessRewardProcessor()])(
        [{**r, "normalized_rewards": {}, "errors": []} for r in records])
    # held-out soundfonts alone (the watch): each one rendered, and the records' own rendering not scored again
    assert held_out[0]["normalized_rewards"] == pytest.approx({"stand_in_loudness": 0.6,
                                                               "stand_in_loudness@bright": 0.6})
    with pytest.raises(ValueError, match="combine"):
        SoundfontEnsembleProcessor(synths, [LoudnessRewardProcessor()], "median")
