"""Multi-track models: smart_utils/multitrack.py (is the model multi-track?), the program-adherence rewards
(processors.py), decoding and rendering several tracks, multi-track prompts, and smart.py end to end with a
multi-track stand-in."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import symusic

from bench.standins import make_tiny_multitrack_policy
from configurator import smart_constants
from conftest import ROOT
from processors import (
    MidiTokToSymusicProcessor,
    ProgramPromptAdherenceRewardProcessor,
    TrackIoURewardProcessor,
    TrackPromptAdherenceRewardProcessor,
    build_reward_processors,
    reward_class,
    reward_owners,
)
from scores import make_multitrack_score
from smart_utils.multitrack import checked_multitrack_setting
from smart_utils.prompts import MAX_PROMPT_PROGRAMS, build_prompts, dataset_prompt_tokens
from smart_utils.rendering import RenderSettings, SoundfontRenderer
from smart_utils.tokenizer import default_remi, load_tokenizers, multitrack_remi, writes_tracks_in_one_stream

PIANO, BASS, DRUMS = 0, 33, -1  # GM programs; -1 is miditok's drums
BEAT_NOTES = [(beat, 0.5, 40 + beat, 100) for beat in range(4)]  # four short notes: pitches 40-43
THREE_TRACKS = [(PIANO, False, [(b, 0.5, 60 + b, 90) for b in range(4)]), (BASS, False, BEAT_NOTES),
                (0, True, [(b, 0.5, 36, 90) for b in range(4)])]


def token_record(tokens: list[str], score: symusic.Score | None = None) -> dict:
    return {"prompt_and_completion_tokens": tokens, "sm": score or symusic.Score(12), "normalized_rewards": {},
            "errors": []}


# --- the adherence rewards, on hand-built token streams ---------------------------------------------------------------


def test_programs_iou_is_the_token_set_iou_before_and_after_the_first_bar():
    # head {0, 33, drums}; body {0, 33, 25} (Program_0 twice): |{0, 33}| / |{0, 33, 25, drums}| = 2/4
    tokens = ["Program_0", "Program_33", "Program_-1", "Bar_None", "TimeSig_4/4", "Position_0", "Program_0",
              "Pitch_60", "Program_33", "Pitch_40", "Bar_None", "Program_25", "Pitch_50", "Program_0", "Pitch_62"]
    record = ProgramPromptAdherenceRewardProcessor()([token_record(tokens)])[0]
    assert record["normalized_rewards"] == {"programs_iou": 0.5}
    assert record["head_programs"] == ["Program_0", "Program_33", "Program_Drums"] and not record["errors"]
    same = ProgramPromptAdherenceRewardProcessor()([token_record(["Program_5", "Bar_None", "Program_5"])])[0]
    assert same["normalized_rewards"]["programs_iou"] == 1.0


@pytest.mark.parametrize("tokens, reason", [(["Program_0", "Pitch_60"], "no Bar_None"),
                                            (["Bar_None", "Pitch_60"], "no Program token")])
def test_programs_iou_is_zero_with_a_reason_where_the_original_wrote_nothing(tokens, reason):
    record = ProgramPromptAdherenceRewardProcessor()([token_record(tokens)])[0]
    assert record["normalized_rewards"] == {"programs_iou": 0.0} and reason in record["errors"][0]


def test_track_iou_weights_the_prompts_program_counts_against_non_empty_tracks():
    # prompt: piano x2, bass x1; output: a piano track, an empty bass track, a drum track -> piano 1, drums 1.
    # intersection min(2,1) + min(1,0) + min(0,1) = 1; union 2 + 1 + 1 = 4; sets {0, 33} vs {0, drums}: 1/3
    score = make_multitrack_score([(PIANO, False, BEAT_NOTES), (BASS, False, []), (0, True, BEAT_NOTES)])
    tokens = ["Program_0", "Program_0", "Program_33", "Bar_None", "Program_-1", "Pitch_36"]
    record = TrackPromptAdherenceRewardProcessor()([token_record(tokens, score)])[0]
    assert record["normalized_rewards"] == {"programs_iou": 0.25}
    assert record["set_iou_tracks"] == pytest.approx(1 / 3)
    assert record["body_tracks"] == ["Program_0", "Program_Drums"]


def test_track_iou_reads_drums_both_ways_and_ends_the_head_at_track_none():
    drums_only = make_multitrack_score([(0, True, BEAT_NOTES)])
    record = TrackIoURewardProcessor()([token_record(["Program_-1", "Bar_None"], drums_only)])[0]
    assert record["normalized_rewards"] == {"programs_iou_tracks": 1.0}  # the original's spelling never matched
    piano = make_multitrack_score([(PIANO, False, BEAT_NOTES)])
    # the original tokenizer's head ends at Track_None: Program_33 after it is not asked for -> 1 / 1
    record = TrackIoURewardProcessor()([token_record(["Program_0", "Track_None", "Program_33", "Bar_None"], piano)])[0]
    assert record["normalized_rewards"]["programs_iou_tracks"] == 1.0
    record = TrackIoURewardProcessor()([token_record(["Pitch_60"], symusic.Score(12))])[0]
    assert record["normalized_rewards"]["programs_iou_tracks"] == 0.0 and len(record["errors"]) == 2


def test_the_two_rewards_are_found_under_two_names_and_run_together():
    constants = smart_constants()
    assert reward_class("programs_iou", constants) is ProgramPromptAdherenceRewardProcessor
    assert reward_class("programs_iou_tracks", constants) is TrackIoURewardProcessor
    # the original's class keeps its name but is found by none (its programs_iou is the token-set reward's)
    assert TrackPromptAdherenceRewardProcessor.REWARDS == ()
    assert reward_owners("programs_iou", constants) == [ProgramPromptAdherenceRewardProcessor]
    chain = build_reward_processors(["programs_iou", "programs_iou_tracks"], constants)
    assert [type(processor) for processor in chain] == [ProgramPromptAdherenceRewardProcessor,
                                                        TrackIoURewardProcessor]
    piano = make_multitrack_score([(PIANO, False, BEAT_NOTES)])
    records = [token_record(["Program_0", "Program_33", "Bar_None", "Program_0"], piano)]
    for processor in chain:
        records = processor(records)
    assert records[0]["normalized_rewards"] == {"programs_iou": 0.5, "programs_iou_tracks": 0.5}


def test_the_multitrack_setting_comes_from_the_tokenizer_and_a_contradiction_stops_the_run():
    assert checked_multitrack_setting(None, multitrack_remi(), ["programs_iou"]) is True
    assert checked_multitrack_setting(None, default_remi(), ["CE"]) is False
    with pytest.raises(ValueError, match="IS_MULTITRACK=True but the model's tokenizer writes one track"):
        checked_multitrack_setting(True, default_remi(), ["CE"])
    with pytest.raises(ValueError, match="REWARD_WEIGHTS has \\['programs_iou'\\]"):
        checked_multitrack_setting(None, default_remi(), ["programs_iou", "CE"])


# --- decoding, rendering, prompts -------------------------------------------------------------------------------------


def test_a_one_stream_programs_tokenizer_decodes_to_one_track_per_program(tmp_path):
    remi = multitrack_remi()
    remi.save(tmp_path)
    assert writes_tracks_in_one_stream(load_tokenizers(str(tmp_path))[0])  # the saved tokenizer.json keeps its programs
    ids = remi.encode(make_multitrack_score(THREE_TRACKS)).ids
    record = MidiTokToSymusicProcessor(remi, is_multitrack=True, max_beats=100)([{"prompt_and_completion": ids,
                                                                                   "errors": []}])[0]
    assert [(t.program, t.is_drum, t.note_num()) for t in record["sm"].tracks] == [(0, False, 4), (33, False, 4),
                                                                                   (0, True, 4)]
    assert not record["errors"]
    wrong = MidiTokToSymusicProcessor(remi, is_multitrack=False, max_beats=100)([{"prompt_and_completion": ids,
                                                                                   "errors": []}])[0]
    assert wrong["sm"].note_num() == 0 and "dimension" in wrong["errors"][0]  # why the switch must match


def test_each_track_renders_with_its_program_and_drums_on_the_drum_channel(soundfont):
    renderer = SoundfontRenderer(RenderSettings(soundfont, 22050, 10))
    pitched, bass, drums = (make_multitrack_score([track]) for track in THREE_TRACKS)

    def audio(score: symusic.Score) -> np.ndarray:
        return renderer.render_midi(score.dumps_midi(), 2.0).copy()

    drum_audio = audio(drums)  # symusic writes the drum track on channel 10, where TinySoundFont plays the kit
    same_notes_on_piano = make_multitrack_score([(0, False, THREE_TRACKS[2][2])])
    assert not np.allclose(drum_audio, audio(same_notes_on_piano), atol=1e-2)
    bass_audio = audio(bass)
    assert renderer.synth.program_info(0)[2] == BASS  # the track's program change reached its channel
    assert not np.allclose(bass_audio, audio(make_multitrack_score([(PIANO, False, BEAT_NOTES)])), atol=1e-2)
    # all three together are the three alone, mixed: TinySoundFont sums voices, so the peak-normalised mix is a
    # linear combination of the peak-normalised parts up to float rounding
    parts = np.stack([audio(pitched).ravel(), bass_audio.ravel(), drum_audio.ravel()], axis=1)
    mix = audio(make_multitrack_score(THREE_TRACKS)).ravel()
    weights, *_ = np.linalg.lstsq(parts, mix, rcond=None)
    assert np.abs(parts @ weights - mix).max() < 1e-3 and (weights > 0.1).all()


def test_multitrack_prompts_ask_for_programs_before_the_first_bar(tmp_path):
    remi = multitrack_remi()
    for prompt in build_prompts("procedural", remi, 20, seed=3):
        tokens = prompt.split()
        head = tokens[: tokens.index("Bar_None")]
        assert 1 <= len(head) <= MAX_PROMPT_PROGRAMS and len(set(head)) == len(head)
        assert all(token.startswith("Program_") for token in head)
        assert tokens[-4] == head[0]  # the starting note is played by the first program asked for
        assert all(token in remi.vocab for token in tokens)
    assert build_prompts("procedural", default_remi(), 3, seed=3)[0].startswith("Bar_None")
    piece = tmp_path / "piece.mid"
    make_multitrack_score([(0, True, BEAT_NOTES), (BASS, False, [(0.5, 1, 40, 90)])]).dump_midi(str(piece))
    assert dataset_prompt_tokens(remi, piece)[:3] == ["Program_-1", "Program_33", "Bar_None"]


# --- smart.py end to end ----------------------------------------------------------------------------------------------


def test_two_grpo_steps_of_a_multitrack_model_on_programs_iou(tmp_path):
    policy = make_tiny_multitrack_policy(tmp_path / "policy")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "smart.py", f"--BASE_MODEL_PATH={policy}", "--IS_MULTITRACK=True", "--SOUNDFONT=timgm6mb",
         "--REWARD_WEIGHTS={'programs_iou': 1.0, 'audio_activity': 1.0}", "--NUM_TRAIN_STEPS=2", "--BATCH_SIZE=4",
         "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=32", "--SAVE_STEPS=2", "--EVAL_SAMPLES=0",
         "--RENDER_WORKERS=1", f"--OUTPUT_DIR={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "smart_config.json").read_text())["config"]["IS_MULTITRACK"] is True
    for step in (0, 1):
        for row in pq.read_table(run_dir / "rl_logs" / str(step) / "logs.parquet").to_pylist():
            tokens = row["prompt_and_completion_tokens"]
            head = set(tokens[: tokens.index("Bar_None")])
            body = {t for t in tokens[tokens.index("Bar_None") + 1 :] if t.startswith("Program_")}
            assert row["normalized_rewards"]["programs_iou"] == pytest.approx(len(head & body) / len(head | body))
            # the prompt's starting note is played by its first program: that track is in the step's MIDI file
            first = int(tokens[0].removeprefix("Program_"))
            midi = symusic.Score(str(next((run_dir / "midi" / str(step)).glob(f"*_{row['idx']}.mid"))))
            assert any(t.note_num() and (t.is_drum if first == -1 else t.program == first) for t in midi.tracks)
    assert (run_dir / "model.safetensors").is_file() and writes_tracks_in_one_stream(load_tokenizers(str(run_dir))[0])
