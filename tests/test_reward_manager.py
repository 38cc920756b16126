"""RewardManager: weighted mean of normalised rewards, fallbacks for bad values, per-step artefacts, metrics."""

import math

import pyarrow.parquet as pq
import pytest

from processors import Processor
from reward_manager import RewardManager
from scores import make_score


class FixedRewards(Processor):
    """Gives every record a score and the rewards listed for its index."""

    def __init__(self, rewards_by_idx):
        self.rewards_by_idx = rewards_by_idx

    def __call__(self, records):
        for record in records:
            record["sm"] = make_score([(0, 1, 60, 80)])
            record["audio"] = [[0.0, 0.5], [0.0, -0.5]]
            record["sample_rate"] = 8000
            record["normalized_rewards"].update(self.rewards_by_idx[record["idx"]])
        return records


def call(manager, n):
    return manager(prompts=["p"] * n, completion_ids=[[5, 6]] * n, prompt_ids=[[1]] * n,
                   log_metric=lambda name, value: logged.setdefault(name, value))


logged: dict = {}


def test_reward_is_the_weighted_mean_and_bad_values_fall_back_to_logged_zero(tmp_path):
    rewards = [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 1.0}, {"a": math.nan, "b": 1.0}, {"b": 2.0}]
    manager = RewardManager([FixedRewards(rewards)], {"a": 3.0, "b": 1.0}, tmp_path)
    logged.clear()
    assert call(manager, 4) == pytest.approx([0.75, 0.625, 0.25, 0.25])
    table = pq.read_table(tmp_path / "rl_logs" / "0" / "logs.parquet").to_pylist()
    assert [row["errors"] == "" for row in table] == [True, True, False, False]
    assert "'a' was nan" in table[2]["errors"] and "clipped" in table[3]["errors"]
    assert logged["normalized_rewards/a"] == pytest.approx(0.75) and logged["reward_errors"] == 2


def test_each_step_writes_logs_midi_and_audio_at_the_interval(tmp_path):
    manager = RewardManager([FixedRewards([{"a": 0.2}] * 2)], {"a": 1.0}, tmp_path, audio_save_interval=2)
    for _ in range(3):
        call(manager, 2)
    for step in range(3):
        assert (tmp_path / "rl_logs" / str(step) / "logs.parquet").is_file()
        assert sorted(p.name for p in (tmp_path / "midi" / str(step)).iterdir()) == [
            "reward=0.2000_0.mid", "reward=0.2000_1.mid"]
        assert pq.read_table(tmp_path / "rl_logs" / str(step) / "logs.parquet").column("reward_step").to_pylist() == [step] * 2
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["0", "2"]


def test_ranks_write_separate_files(tmp_path):
    for rank in range(2):
        manager = RewardManager([FixedRewards([{"a": 0.2}])], {"a": 1.0}, tmp_path, process_index=rank, num_processes=2)
        call(manager, 1)
    assert sorted(p.name for p in (tmp_path / "rl_logs" / "0").iterdir()) == ["logs.rank0.parquet", "logs.rank1.parquet"]
    assert len(list((tmp_path / "midi" / "0").iterdir())) == 2


def test_zero_weights_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="non-zero weight"):
        RewardManager([], {"a": 0.0}, tmp_path)
