"""smart_utils/trackers.py with a real local tracker: a short offline run with REPORT_TO="tensorboard" leaves event
files that hold the watch's values and the audio step's clips."""

from __future__ import annotations

import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT


def test_an_offline_run_sends_the_watch_and_audio_clips_to_tensorboard(tmp_path, tiny_policy):
    run_dir = tmp_path / "run"
    args = [f"--BASE_MODEL_PATH={tiny_policy}", "--SOUNDFONT=timgm6mb", "--REWARD_WEIGHTS={'note_density': 1.0}",
            "--WATCH_REWARDS=['filled_beats']", "--NUM_TRAIN_STEPS=2", "--SAVE_STEPS=2", "--BATCH_SIZE=4",
            "--NUM_GENERATIONS=2", "--MAX_COMPLETION_LENGTH=32", "--AUDIO_SAVE_INTERVAL=1", "--AUDIO_TO_TRACKER=2",
            "--EVAL_SAMPLES=0", "--RENDER_WORKERS=1", "--REPORT_TO=tensorboard", f"--OUTPUT_DIR={run_dir}"]
    result = subprocess.run([sys.executable, "smart.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    event_files = list(run_dir.rglob("events.out.tfevents.*"))
    assert event_files, f"no TensorBoard event file under {run_dir}"
    events = EventAccumulator(str(event_files[0].parent), size_guidance={"audio": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for name in ("watch/filled_beats", "watch/diversity", "watch/group_diversity"):
        assert any(tag.endswith(name) for tag in scalars), (name, scalars)
    diversity = next(tag for tag in scalars if tag.endswith("watch/diversity"))
    assert len(events.Scalars(diversity)) == 2  # one value per step
    assert sorted(events.Tags()["audio"]) == ["audio/clip_0", "audio/clip_1"]  # AUDIO_TO_TRACKER clips a step
    for tag in ("audio/clip_0", "audio/clip_1"):
        clips = events.Audio(tag)
        assert [clip.step for clip in clips] == [0, 1]  # every audio step (AUDIO_SAVE_INTERVAL=1)
        assert all(clip.sample_rate == 48000 and clip.length_frames > 0 for clip in clips)
