"""smart_utils/watch.py: what the watch logs, that it never touches the reward, and when the stop rules fire."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from processors import FilledBeatsRewardProcessor, NoteDensityRewardProcessor
from reward_manager import RewardManager
from scores import make_score
from smart_utils import features
from smart_utils.records import completion_record
from smart_utils.watch import (
    DIVERSITY,
    GROUP_DIVERSITY,
    STOPPED_FILE,
    StopOnCollapse,
    StopRules,
    Watch,
    diversity_collapse,
    group_mean_distance,
    judge_divergence,
)

SAME = [(0, 1, 60, 80), (1, 1, 64, 80), (2, 1, 67, 80)]  # a C major arpeggio on the beat
OTHER = [(0.5, 0.5, 61, 80), (1.5, 0.5, 66, 80), (3.25, 0.5, 70, 80)]  # other pitch classes, off the beat


def records_of(scores: list) -> list[dict]:
    records = []
    for i, score in enumerate(scores):
        record = completion_record(i, f"prompt {i // 2}", [1, 2], [3 + i], 0)
        record["sm"] = score
        records.append(record)
    return records


def test_group_mean_distance_is_zero_for_copies_and_counts_groups_separately():
    same, other = features.style_descriptor(make_score(SAME)), features.style_descriptor(make_score(OTHER))
    overall, within = group_mean_distance([same, same, other, other], size=2)
    assert within == 0.0  # each group of two holds two copies
    assert overall == pytest.approx(float(features.descriptor_distance(same, other)) * 4 / 6)  # 4 of 6 pairs differ
    overall, within = group_mean_distance([same, other, same, other], size=2)
    assert within == pytest.approx(float(features.descriptor_distance(same, other)))
    assert math.isnan(group_mean_distance([None, same], size=2)[0])  # fewer than two pieces with notes


def test_watch_logs_judges_on_copies_and_never_changes_the_records(tmp_path):
    records = records_of([make_score(SAME), make_score(OTHER), make_score(SAME), make_score(SAME)])
    records[0]["normalized_rewards"]["CE"] = 0.7  # a judge the chain already wrote
    before = [dict(r["normalized_rewards"]) for r in records]
    history = tmp_path / "watch.jsonl"
    watch = Watch([FilledBeatsRewardProcessor()], trained=["note_density"], judges=["CE", "filled_beats"],
                  num_generations=2, history_file=history)
    values = watch(records, step=0, trained_reward=0.5)
    assert [r["normalized_rewards"] for r in records] == before  # measured on copies
    assert values["watch/CE"] == pytest.approx(0.7)
    expected = np.mean([1 - features.empty_beat_rate(r["sm"]) for r in records])
    assert values["watch/filled_beats"] == pytest.approx(expected)
    assert values[GROUP_DIVERSITY] == pytest.approx(np.mean([
        float(features.descriptor_distance(features.style_descriptor(make_score(SAME)),
                                           features.style_descriptor(make_score(OTHER)))), 0.0]))
    line = json.loads(history.read_text().splitlines()[0])
    assert line["step"] == 0 and line["reward"] == 0.5 and line[DIVERSITY] == pytest.approx(values[DIVERSITY])


def test_watch_skips_steps_between_intervals_and_a_resumed_run_keeps_only_earlier_history(tmp_path):
    history = tmp_path / "watch.jsonl"
    watch = Watch([], trained=[], judges=[], num_generations=2, interval=2, history_file=history)
    records = records_of([make_score(SAME), make_score(OTHER)])
    assert watch(records, 1, 0.1) == {}
    for step in (0, 2, 4):
        assert DIVERSITY in watch(records, step, 0.1)
    resumed = Watch([], trained=[], judges=[], num_generations=2, history_file=history, resumed_before=3)
    assert [entry["step"] for entry in resumed.history] == [0, 2]
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [0, 2]


def test_the_manager_returns_the_weighted_reward_whatever_the_watch_measures(tmp_path):
    scores = [make_score(SAME), make_score(OTHER)]
    logged: dict[str, float] = {}

    class Decoded:  # the decoder's output, without a tokenizer
        def __call__(self, records):
            for record, score in zip(records, scores):
                record["sm"] = score
            return records

    def manager(watch):
        return RewardManager([Decoded(), NoteDensityRewardProcessor()], {"note_density": 1.0},
                             tmp_path / str(id(watch)), watch=watch)

    kwargs = dict(prompts=["a", "a"], completion_ids=[[3], [4]], prompt_ids=[[1], [1]])
    plain = manager(None)(**kwargs)
    watched = manager(Watch([FilledBeatsRewardProcessor()], ["note_density"], [], 2))(
        **kwargs, log_metric=logged.__setitem__)
    assert watched == plain
    assert "watch/filled_beats" in logged and DIVERSITY in logged


def history(diversity: list[float], reward: list[float] | None = None, judge: list[float] | None = None):
    reward = reward or [0.5] * len(diversity)
    return [{"step": k, "reward": reward[k], DIVERSITY: d, **({"watch/CU": judge[k]} if judge else {})}
            for k, d in enumerate(diversity)]


def test_diversity_rule_fires_only_below_the_fraction_of_the_baseline():
    rules = StopRules(diversity_fraction=0.5, baseline_steps=3)
    assert diversity_collapse(history([0.4, 0.4, 0.4]), rules) is None  # the baseline is still being measured
    assert diversity_collapse(history([0.4, 0.4, 0.4, 0.25]), rules) is None
    assert "fell below 0.5" in diversity_collapse(history([0.4, 0.4, 0.4, 0.19]), rules)
    assert diversity_collapse(history([0.4, 0.4, 0.4, 0.19]), StopRules()) is None  # off by default


def test_judge_rule_fires_when_the_judge_falls_while_the_reward_rises():
    rules = StopRules(judge_steps=4)
    rising, falling = [0.1, 0.2, 0.3, 0.4], [0.8, 0.7, 0.6, 0.5]
    assert "watch/CU fell" in judge_divergence(history([0.5] * 4, rising, falling), rules)
    assert judge_divergence(history([0.5] * 4, rising, rising), rules) is None  # both rise: progress
    assert judge_divergence(history([0.5] * 4, falling, falling), rules) is None  # the reward does not rise
    assert judge_divergence(history([0.5] * 3, rising[:3], falling[:3]), rules) is None  # fewer steps than asked


def test_a_rule_stops_the_run_with_a_checkpoint_and_a_resumed_run_continues_without_it(tmp_path):
    watch = Watch([], trained=[], judges=[], num_generations=2)
    watch.history = history([0.4, 0.4, 0.4, 0.4, 0.4, 0.1])
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    stopper = StopOnCollapse(watch, StopRules(diversity_fraction=0.5), tmp_path, is_main_process=True)
    stopper.seen = 0
    stopper.on_step_end(None, SimpleNamespace(global_step=6), control)
    assert control.should_save and control.should_training_stop and "diversity" in stopper.stopped
    saved = json.loads((tmp_path / STOPPED_FILE).read_text())
    assert saved["step"] == 6 and saved["rules"] == ["diversity"] and "fell below" in saved["reason"]

    resumed = StopOnCollapse(watch, StopRules(diversity_fraction=0.5), tmp_path, is_main_process=True)
    watch.history.append({"step": 6, "reward": 0.5, DIVERSITY: 0.05})
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    resumed.on_step_end(None, SimpleNamespace(global_step=7), control)
    assert not control.should_training_stop and resumed.stopped is None
