"""evaluation.py and smart_utils/evaluation.py on hand-made MIDI folders, a tiny random model and a fake run
folder: the features table, the summary and the report page, the rewards and Audiobox, which models a run folder
stands for, the end-of-run report, and the device every model is built on."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import symusic
import torch

import evaluation as evaluation_script
from bench.standins import make_tiny_policy
from configurator import smart_constants
from scores import make_score
from smart_utils import evaluation
from smart_utils.features import FEATURES
from smart_utils.generation import GenerationSettings
from smart_utils.run_logs import read_run_logs
from smart_utils.soundfont_sources import resolve_soundfont

PAPER_COLUMNS = list(FEATURES)
CONSTANTS = smart_constants()  # smart.py's defaults: how a tool without a run renders and builds rewards


def write_folder(folder: Path, voices: int, count: int = 6, seed: int = 0) -> Path:
    """``count`` 20-beat piano pieces with ``voices`` notes per beat (1 = monophonic, 3 = triads)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k in range(count):
        score = symusic.Score(24)
        track = symusic.Track("piano", 0, False)
        for beat in range(20):
            for pitch in rng.choice(np.arange(48, 84), size=voices, replace=False):
                track.notes.append(symusic.Note(beat * 24, 24, int(pitch), int(rng.integers(30, 120))))
        score.tracks.append(track)
        score.dump_midi(str(folder / f"piece{k}.mid"))
    return folder


def linked_files(report: Path) -> list[str]:
    """Every src= and href= target in report.html."""
    return re.findall(r'(?:src|href)="([^"]+)"', report.read_text())


class FakeAudiobox:
    """Stands in for AudioBoxAesRewardProcessor: scores grow with the number of notes, so systems differ."""

    def __init__(self, checkpoint, device=None):
        pass

    def __call__(self, records):
        for record in records:
            level = 1 + min(record["sm"].note_num(), 80) / 10
            record["aes_scores"] = {axis: level for axis in ("CE", "CU", "PC", "PQ")}
            record["normalized_rewards"].update({axis: level / 10 for axis in ("CE", "CU", "PC", "PQ")})
        return records


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("midi")
    return write_folder(root / "mono", voices=1), write_folder(root / "triads", voices=3, seed=1)


@pytest.fixture(scope="module")
def cli_output(folders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python evaluation.py DIR_A DIR_B --out OUT`` (in-process, so it counts toward coverage and runs fast)."""
    out = tmp_path_factory.mktemp("eval") / "out"
    argv = ["evaluation.py", str(folders[0]), str(folders[1]), "--out", str(out), "--listen", "3",
            "--permutations", "999"]
    original, sys.argv = sys.argv, argv
    try:
        evaluation_script.main()
    finally:
        sys.argv = original
    return out


def test_features_csv_has_a_row_per_sample_and_the_papers_columns(cli_output: Path):
    table = pd.read_csv(cli_output / "features.csv", keep_default_na=False)
    assert {"system", "sample", "prompt", *PAPER_COLUMNS} <= set(table.columns)
    assert list(table.system) == ["mono"] * 6 + ["triads"] * 6
    assert list(table["sample"]) == [f"piece{k}.mid" for k in range(6)] * 2
    assert (table.loc[table.system == "mono", "polyphony_rate"] == 0).all()
    assert (table.loc[table.system == "triads", "polyphony_rate"] == 1).all()  # three pitches at every tick
    assert (table.note_count == [20] * 6 + [60] * 6).all()


def test_summary_has_means_differences_diversity_and_says_what_was_skipped(cli_output: Path):
    summary = (cli_output / "summary.md").read_text()
    assert "| note_count | 20 ± 0 (6) | 60 ± 0 (6) |" in summary
    assert re.search(r"\| polyphony_rate \| 1 \* \| 0\.00\d+ \| 0\.0\d+ \|", summary)  # triads - mono, significant
    assert "| empty_beat_rate | 0 | 1 | 1 |" in summary
    assert "## Diversity" in summary and "near-duplicate share" in summary
    assert "Audiobox aesthetics (CE, CU, PC, PQ)**: no checkpoint given" in summary
    assert "\n| CE |" not in summary  # no invented Audiobox numbers


def test_report_links_only_existing_files_and_has_a_player_per_listened_sample(cli_output: Path):
    report = cli_output / "report.html"
    links = linked_files(report)
    missing = [link for link in links if not (cli_output / link).is_file()]
    assert links and not missing, missing
    assert not any(link.startswith(("/", "http")) for link in links)  # works offline, from any folder
    assert report.read_text().count("<audio") == 2 * 3
    assert {"figures/features.png", "figures/piano_rolls.png"} <= set(links)
    # two MIDI folders are paired by file order only, and the page says so instead of claiming shared prompts
    assert "not paired by prompt" in report.read_text() and "same prompt and seed" not in report.read_text()


def test_rewards_audiobox_and_soundfont_robustness(folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(evaluation, "AudioBoxAesRewardProcessor", FakeAudiobox)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"")
    held_out = tmp_path / "same_font_other_name.sf2"
    shutil.copy(resolve_soundfont("timgm6mb"), held_out)
    report = evaluation.evaluate_systems(
        {"mono": folders[0], "triads": folders[1]}, tmp_path / "out", constants=CONSTANTS, audiobox=str(checkpoint),
        reward_names=["note_density", "audio_activity"], robustness_soundfonts=[str(held_out)], permutations=99,
    )
    out = report.parent
    table = pd.read_csv(out / "features.csv")
    assert {"CE", "CU", "PC", "PQ", "reward_note_density", "reward_audio_activity"} <= set(table.columns)
    assert table.loc[table.system == "triads", "CE"].mean() > table.loc[table.system == "mono", "CE"].mean()
    robustness = pd.read_csv(out / "soundfont_robustness.csv")
    assert set(robustness.soundfont) == {"timgm6mb", "same_font_other_name"}
    wide = robustness.pivot_table(index=["system", "sample", "metric"], columns="soundfont", values="value")
    np.testing.assert_allclose(wide["same_font_other_name"], wide["timgm6mb"])  # the same font renders the same
    links = linked_files(report)
    assert "figures/audiobox.png" in links
    assert len([link for link in links if link.startswith("audio/")]) == 12  # by default each sample has a player
    assert "## Soundfont robustness" in (out / "summary.md").read_text()


def test_a_missing_audiobox_checkpoint_is_skipped_with_the_reason(folders, tmp_path: Path):
    report = evaluation.evaluate_systems({"mono": folders[0]}, tmp_path, constants=CONSTANTS,
                                         audiobox=str(tmp_path / "nope.pt"), permutations=9)
    assert "nope.pt does not exist" in (tmp_path / "summary.md").read_text()
    assert "CE" not in pd.read_csv(tmp_path / "features.csv").columns
    assert "## Differences" not in (tmp_path / "summary.md").read_text()  # one system: nothing to compare
    assert all((report.parent / link).is_file() for link in linked_files(report))


def test_an_unknown_reward_is_refused_before_any_work(folders, tmp_path: Path):
    with pytest.raises(ValueError, match="unknown reward"):
        evaluation.evaluate_systems({"mono": folders[0]}, tmp_path, constants=CONSTANTS, reward_names=["loudness"])


def fake_run(tmp_path: Path, model: Path) -> Path:
    """A run folder as smart.py leaves it: smart_config.json, checkpoint-<step>/ and two steps of reward logs."""
    run = tmp_path / "run"
    shutil.copytree(model, run / "checkpoint-2")
    history = {"log_history": [{"step": 1, "kl": 0.0}, {"step": 2, "kl": 0.1}]}
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(history))
    (run / "smart_config.json").write_text(json.dumps({"config": {"BASE_MODEL_PATH": str(model)}}))
    for step in (0, 1):
        rows = [{"reward_step": step, "idx": i, "reward": 0.1 * step + 0.01 * i, "prompt": "BOS_None",
                 "normalized_rewards": {"CE": 0.5 + 0.1 * step, "note_density": 0.2}} for i in range(4)]
        (run / "rl_logs" / str(step)).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), run / "rl_logs" / str(step) / "logs.parquet")
    return run


def test_a_run_folder_alone_is_its_base_model_against_its_tuned_model(tmp_path: Path):
    model = make_tiny_policy(tmp_path / "base_model")
    run = fake_run(tmp_path, model)
    systems, found = evaluation.parse_systems([str(run)])
    assert systems == {"base": str(model), "tuned": str(run)} and found == run
    named, _ = evaluation.parse_systems([f"mine={run}", str(model)])
    assert list(named) == ["mine", "base_model"]
    logs = read_run_logs(run)
    assert list(logs.columns) == ["reward_step", "reward", "CE", "note_density"] and len(logs) == 8
    (run / "smart_config.json").unlink()
    with pytest.raises(ValueError, match="give the base model explicitly"):
        evaluation.parse_systems([str(run)])


def test_same_model_same_prompts_gives_identical_samples_and_training_curves(tmp_path: Path):
    model = make_tiny_policy(tmp_path / "base_model")
    run = fake_run(tmp_path, model)
    config = {"BASE_MODEL_PATH": str(model), "PROMPT_SOURCE": "procedural", "PROMPT_MIDI_DIR": None, "SEED": 1,
              "MAX_COMPLETION_LENGTH": 64, "TEMPERATURE": 1.0, "TOP_K": 50, "TOP_P": 1.0, "MAX_BEATS": 100,
              "SOUNDFONT": "timgm6mb", "REWARD_WEIGHTS": {"note_density": 1.0}, "AUDIOBOX_CHECKPOINT": None,
              "SAMPLE_RATE": 48000, "MAX_AUDIO_DURATION": 10}
    report = evaluation.evaluate_run(run, config, n=3, permutations=99)
    assert report == run / "eval" / "report.html"
    table = pd.read_csv(run / "eval" / "features.csv", keep_default_na=False)
    base, tuned = (table[table.system == s].drop(columns=["system", "midi_path", "audio_file"]).reset_index(drop=True)
                   for s in ("base", "tuned"))
    pd.testing.assert_frame_equal(base, tuned)  # same weights, prompts and seed: the same pieces
    assert base.prompt.str.startswith("Bar_None TimeSig_").all()
    assert "figures/training.png" in linked_files(report)
    assert all((report.parent / link).is_file() for link in linked_files(report))
    assert "Same row = same prompt and seed." in report.read_text()  # both systems sampled: truly paired


def test_generation_settings_reach_the_report(folders, tmp_path: Path):
    model = make_tiny_policy(tmp_path / "m")
    settings = GenerationSettings(n=2, max_new_tokens=16, seed=3)
    evaluation.evaluate_systems({"model": model, "mono": folders[0]}, tmp_path / "out", constants=CONSTANTS,
                                generation=settings, soundfont=None, permutations=9)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "2 pieces, prompts 'procedural-no-starting-note', seed 3, 16 new tokens" in summary
    assert "**audio**: no soundfont given" in summary
    assert len(list((tmp_path / "out" / "samples" / "model").glob("*.mid"))) == 2


def test_the_end_of_run_report_renders_as_the_run_did(tmp_path: Path):
    """evaluate_run takes the run's SAMPLE_RATE, MAX_AUDIO_DURATION, MAX_BEATS and recorded soundfont file."""
    model = make_tiny_policy(tmp_path / "base_model")
    run = fake_run(tmp_path, model)
    recorded = tmp_path / "elsewhere" / "recorded.sf2"  # the file the run used; its name resolves nowhere
    recorded.parent.mkdir()
    shutil.copy(resolve_soundfont("timgm6mb"), recorded)
    (run / "run_record.json").write_text(json.dumps({"soundfont": {"path": str(recorded)}}))
    config = {"BASE_MODEL_PATH": str(model), "PROMPT_SOURCE": "procedural", "PROMPT_MIDI_DIR": None, "SEED": 1,
              "MAX_COMPLETION_LENGTH": 64, "TEMPERATURE": 1.0, "TOP_K": 50, "TOP_P": 1.0, "MAX_BEATS": 3,
              "SOUNDFONT": "no-longer-installed", "REWARD_WEIGHTS": {"audio_activity": 1.0},
              "AUDIOBOX_CHECKPOINT": None, "SAMPLE_RATE": 16000, "MAX_AUDIO_DURATION": 2}
    evaluation.evaluate_run(run, config, n=3, permutations=9)
    table = pd.read_csv(run / "eval" / "features.csv", keep_default_na=False)
    clips = [run / "eval" / name for name in table.audio_file if name]
    assert len(clips) == 6
    import soundfile

    for clip in clips:
        info = soundfile.info(str(clip))
        assert info.samplerate == 16000 and info.duration <= 2.1
    assert (table.duration_seconds <= 3 * 60 / 40 + 1e-6).all()  # 3 beats at the slowest prompt tempo
    summary = (run / "eval" / "summary.md").read_text()
    assert "16000 Hz, at most 2 s" in summary and "recorded" in summary


def test_an_interrupted_end_of_run_report_says_the_tuned_model_is_saved(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_systems", interrupted)
    config = {**smart_constants(), "REWARD_WEIGHTS": {"note_density": 1.0}, "SOUNDFONT": "timgm6mb"}
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_run(run, config, n=2)
    said = capsys.readouterr().out
    assert f"the tuned model is saved in {run}" in said and f"python evaluation.py {run}" in said


def test_evaluate_systems_builds_every_model_on_the_device_it_was_given(monkeypatch, tmp_path):
    from processors import Processor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the default would be cuda:0: it must not be used
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    got = {}

    def generate(model, out_dir, settings, device=None):
        got["sampling"] = device
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        make_score([(0, 1, 60, 80), (1, 1, 64, 80)]).dump_midi(str(Path(out_dir) / "0000.mid"))

    class Audiobox(Processor):
        def __init__(self, checkpoint=None, device=None, **kwargs):
            got["audiobox"] = device

        def __call__(self, records):
            return records

    def build(names, constants, device=None):
        got["rewards"] = device
        return []

    monkeypatch.setattr(evaluation, "generate_pieces", generate)
    monkeypatch.setattr(evaluation, "AudioBoxAesRewardProcessor", Audiobox)
    monkeypatch.setattr(evaluation, "build_reward_processors", build)
    monkeypatch.setattr(evaluation, "write_report", lambda result, out, permutations: out / "report.html")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_text("")  # a model system: its pieces are sampled
    constants = {**smart_constants(), "MAX_AUDIO_DURATION": 1}
    evaluation.evaluate_systems({"m": model}, tmp_path / "eval", constants=constants,
                                generation=evaluation.GenerationSettings(n=1), audiobox="hub",
                                reward_names=["note_density"], robustness_soundfonts=(), listen=0, device="cpu")
    assert got == {"sampling": "cpu", "audiobox": torch.device("cpu"), "rewards": torch.device("cpu")}
