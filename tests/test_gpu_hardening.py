"""What only a GPU box, several GPUs or many cores would show, reproduced on a CPU (issue 14).

Each GPU condition is simulated: torch.cuda's answers, nvidia-smi's output, a cgroup quota file, an out-of-memory
error raised by a processor, two gloo processes standing in for two GPUs.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import warnings

import numpy as np
import pytest
import torch

import devices
import preflight
import render_pool
from conftest import ROOT
from processors import AES_AXES, AudioBoxAesRewardProcessor, Processor, check_weight_names, load_aes_predictor
from render_pool import RenderPool, cgroup_cpu_limit, default_render_workers
from reward_manager import ProcessorFailed, RewardManager
from scores import make_score

SAMPLE_RATE = 48000


# --- 4: a processor that fails on most records stops the run ------------------------------------------------------
class FailsOn(Processor):
    """Raises ``error`` for the records whose index is in ``failing``; gives the others reward 0.5."""

    def __init__(self, failing, error):
        self.failing, self.error = set(failing), error

    def __call__(self, records):
        for record in records:
            if record["idx"] in self.failing:
                raise self.error
            record["normalized_rewards"]["r"] = 0.5
        return records


def call(manager, n):
    return manager(prompts=["p"] * n, completion_ids=[[5, 6]] * n, prompt_ids=[[1]] * n)


@pytest.mark.parametrize("failing, n", [(range(8), 8), (range(5), 8), (range(2), 2)])
def test_a_processor_failing_on_most_records_stops_the_run(tmp_path, failing, n):
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
    manager = RewardManager([FailsOn(failing, error)], {"r": 1.0}, tmp_path)
    with pytest.raises(ProcessorFailed) as raised:
        call(manager, n)
    message = str(raised.value)
    assert f"FailsOn failed on {len(failing)} of {n} records of reward step 0" in message
    assert "OutOfMemoryError: CUDA out of memory" in message and "--RESUME" in message
    assert raised.value.__cause__ is error


@pytest.mark.parametrize("failing, n", [(range(4), 8), ([3], 8), ([1], 2), ([0], 3)])
def test_a_few_failing_records_keep_the_per_record_fallback(tmp_path, failing, n):
    manager = RewardManager([FailsOn(failing, RuntimeError("CUDA error: an illegal memory access"))], {"r": 1.0},
                            tmp_path)
    assert call(manager, n) == [0.0 if i in failing else 0.5 for i in range(n)]


# --- 7: render workers on big nodes, balanced hand-out ------------------------------------------------------------
@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "800000 100000\n"}, 8.0),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == quota


def test_default_workers_mind_quota_batch_ranks_and_open_files(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("800000 100000\n")  # a pod limited to 8 CPUs
    monkeypatch.setattr(render_pool, "available_cores", lambda: 128)  # on a 128-core host
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_render_workers(cgroup_root=tmp_path) == 8
    assert default_render_workers(batch_size=4, cgroup_root=tmp_path) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_render_workers(batch_size=64, cgroup_root=tmp_path) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(render_pool, "available_cores", lambda: 1000)  # no quota, and more cores than descriptors
    monkeypatch.setattr(render_pool.resource, "getrlimit", lambda which: (1024, 4096))
    assert default_render_workers(cgroup_root=tmp_path / "none") == (1024 - render_pool.FDS_RESERVED) // 3


class RecordingOutbox:
    """A worker's job pipe that notes which worker each job went to."""

    def __init__(self, outbox, worker, sent):
        self.outbox, self.worker, self.sent = outbox, worker, sent

    def send(self, message):
        if message is not None:
            self.sent[message[0]] = self.worker
        self.outbox.send(message)

    def close(self):
        self.outbox.close()


@pytest.mark.parametrize("workers, costs, loads", [
    (8, [3.0, 9.0, 1.0, 8.0, 2.0, 5.0, 4.0, 7.0], [9.0, 8.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.0]),  # one job each
    (4, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [9.0] * 4),  # both slots queued at once: 8+1, 7+2, 6+3, 5+4
])
def test_the_hand_out_uses_every_worker_and_balances_the_queued_work(soundfont, workers, costs, loads):
    score = make_score([(0, 0.5, 60, 80)])
    jobs = [(score.dumps_midi(), 0.5)] * len(costs)
    sent: dict[int, int] = {}
    with RenderPool(soundfont, SAMPLE_RATE, 10, num_workers=workers) as pool:
        pool.worker_pids()
        for index, worker in enumerate(pool._workers):
            worker.outbox = RecordingOutbox(worker.outbox, index, sent)
        results = pool.render_many(jobs, costs)
    assert all(isinstance(result, np.ndarray) for result in results)
    load = [sum(costs[job] for job, worker in sent.items() if worker == w) for w in range(workers)]
    largest, second = sorted(range(len(costs)), key=lambda job: -costs[job])[:2]
    assert sent[largest] != sent[second]
    assert sorted(load, reverse=True) == loads  # every worker got work, the largest jobs first


