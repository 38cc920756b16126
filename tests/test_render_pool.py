"""smart_utils/render_pool.py: the original method's audio from worker processes, in order, with failures contained;
as many workers as the CPU quota, the batch, the ranks and the open-file limit allow, and the queued work balanced
over them."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import smart
from bench.original import OriginalTinySoundfontRenderer
from processors import TinySoundfontSynthProcessor
from scores import make_score, random_scores
from smart_utils import render_pool
from smart_utils.features import score_seconds
from smart_utils.records import crop_score, score_record
from smart_utils.render_pool import RenderPool, cgroup_cpu_limit, default_render_workers
from smart_utils.rendering import RenderSettings, SoundfontRenderer

SAMPLE_RATE = smart.SAMPLE_RATE


def records_of(scores):
    return [score_record(i, s) for i, s in enumerate(scores)]


def varied_scores():
    """Random scores (empty ones, 40-200 qpm) plus long, dense and slow ones that run far past 10 s."""
    scores = random_scores(18, seed=7)
    scores += [
        make_score([(i / 4, 0.5, 40 + i % 48, 100) for i in range(400)], qpm=40),  # 100 beats at 40 qpm: 150 s
        make_score([(i, 8, 30 + i % 60, 127) for i in range(60)], qpm=200),  # long overlapping notes
        make_score([(0, 1, 60, 80)]),  # a single short note
        make_score([(11 * 2, 1, 60, 80)]),  # starts after the 10 s cut
    ]
    return [crop_score(s, 100) for s in scores]


@pytest.fixture(scope="module")
def expected_audio(soundfont):
    """The original method's audio for ``varied_scores()``, rendered one after another as the original does."""
    original = OriginalTinySoundfontRenderer(soundfont, SAMPLE_RATE, max_duration_seconds=10)
    return [original.render(s, score_seconds(s)) for s in varied_scores()]


@pytest.fixture(scope="module")
def pooled(soundfont):
    processor = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, max_duration_seconds=10, num_workers=2)
    yield processor
    processor.close()


def assert_equal_to_original(records, expected):
    assert len(records) == len(expected)
    for record, audio in zip(records, expected):
        assert record["audio"].dtype == np.float32
        assert record["audio"].shape == audio.shape
        assert np.abs(record["audio"] - audio).max() <= 1e-5
        assert record["audio_duration"] == audio.shape[1] / SAMPLE_RATE
        assert not record.get("errors")


def test_two_workers_render_the_original_audio_over_many_scores_in_order(pooled, expected_audio):
    assert pooled.pool is not None and len(pooled.pool.worker_pids()) == 2
    for _ in range(2):  # the workers keep their synths between batches
        assert_equal_to_original(pooled(records_of(varied_scores())), expected_audio)
    assert sum(np.abs(a).max() > 0.99 for a in expected_audio) > 10  # real, peak-normalised audio


def test_one_worker_renders_in_process_with_the_same_audio(soundfont, expected_audio):
    processor = TinySoundfontSynthProcessor(soundfont, SAMPLE_RATE, 10)  # the original constructor
    assert processor.pool is None and processor.num_workers == 1
    assert_equal_to_original(processor(records_of(varied_scores())), expected_audio)
    single = varied_scores()[-3]
    assert np.array_equal(processor.render(single, score_seconds(single)), expected_audio[-3])


def test_a_failing_record_gets_one_second_of_silence_and_a_reason(pooled, expected_audio):
    records = records_of(varied_scores()[:3])
    records[1]["sm"] = "not a score"  # no dumps_midi: fails in the parent
    pooled(records)
    assert records[1]["audio"].shape == (2, SAMPLE_RATE) and not records[1]["audio"].any()
    assert records[1]["errors"][0].startswith("render: AttributeError")
    assert np.abs(records[2]["audio"] - expected_audio[2]).max() <= 1e-5

    # A job the worker cannot render fails alone, and the worker keeps serving.
    first = varied_scores()[0]
    results = pooled.pool.render_many([(b"not midi", 5.0), (first.dumps_midi(), score_seconds(first))])
    assert isinstance(results[0], str) and isinstance(results[1], np.ndarray)
    assert np.abs(results[1] - expected_audio[0]).max() <= 1e-5


def wait_until_gone(pid, timeout=10.0):
    """True once no process has this pid (the workers are reaped by the fork server, not by this process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


def parent_pid(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_dead_worker_is_replaced(soundfont, expected_audio):
    scores = varied_scores()
    jobs = [(s.dumps_midi(), score_seconds(s)) for s in scores]
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=2) as pool:
        pool.render_many(jobs[:2])
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until_gone(victim)
        results = pool.render_many(jobs)
        assert victim not in pool.worker_pids()
        assert all(isinstance(r, np.ndarray) for r in results)
        assert max(np.abs(r - e).max() for r, e in zip(results, expected_audio)) <= 1e-5
        pids = pool.worker_pids()
        server = pool.server_pid()
    assert pool.closed
    for pid in [*pids, server]:  # every worker and the fork server have exited
        assert wait_until_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        pool.render_many(jobs[:1])


def test_a_dead_fork_server_is_restarted_when_a_worker_must_be_replaced(soundfont, expected_audio):
    scores = varied_scores()
    jobs = [(s.dumps_midi(), score_seconds(s)) for s in scores]
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=2) as pool:
        pool.render_many(jobs[:2])
        server, victim = pool.server_pid(), pool.worker_pids()[0]
        os.kill(server, signal.SIGKILL)
        os.waitid(os.P_PID, server, os.WEXITED | os.WNOWAIT)  # dead (the server is this process's child)
        os.kill(victim, signal.SIGKILL)
        assert wait_until_gone(victim)
        results = pool.render_many(jobs)
        assert pool.server_pid() != server and victim not in pool.worker_pids()
        assert max(np.abs(r - e).max() for r, e in zip(results, expected_audio)) <= 1e-5


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_workers_are_forked_from_one_server_and_share_its_soundfont_memory(soundfont):
    def memory_kib(pid):
        fields = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value = line.split(":")
            fields[name] = int(value.split()[0])
        return fields

    scores = varied_scores()
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=2) as pool:
        pool.render_many([(s.dumps_midi(), score_seconds(s)) for s in scores])
        server = pool.server_pid()
        loaded = memory_kib(server)["Rss"]
        for pid in pool.worker_pids():
            assert parent_pid(pid) == server
            worker = memory_kib(pid)
            private = worker["Private_Clean"] + worker["Private_Dirty"]
            # The soundfont's samples (TimGM6mb: ~12 MB as floats) stay shared with the server after rendering.
            assert worker["Shared_Clean"] + worker["Shared_Dirty"] > 10_000 and private < loaded / 2, worker


class KillOnJob:
    """A worker's job pipe that SIGKILLs the worker right after handing it job ``job``: the kill lands while the
    batch is in flight, with that job queued on the worker, however fast or slow the machine."""

    def __init__(self, worker, job, killed):
        self.outbox, self.worker, self.job, self.killed = worker.outbox, worker, job, killed

    def send(self, message):
        self.outbox.send(message)
        if message is not None and message[0] == self.job and not self.killed:
            os.kill(self.worker.pid, signal.SIGKILL)
            self.killed.append(self.worker.pid)

    def close(self):
        self.outbox.close()


def test_a_worker_killed_mid_batch_fails_at_most_its_current_job(soundfont, expected_audio):
    scores = varied_scores()
    jobs = [(s.dumps_midi(), score_seconds(s)) for s in scores] * 2
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=2) as pool:
        pool.render_many(jobs[:2])
        pool.worker_pids()
        killed: list[int] = []
        # Jobs of equal cost are handed out in order, so the last job goes out last: the worker that gets it is
        # killed holding it (and maybe the job it is rendering), and no job is handed to it after the kill.
        for worker in pool._workers:
            worker.outbox = KillOnJob(worker, len(jobs) - 1, killed)
        results = pool.render_many(jobs)
        [victim] = killed
        failed = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(failed) <= 1 and all("died" in results[i] for i in failed)
        for i, result in enumerate(results):
            assert i in failed or np.abs(result - expected_audio[i % len(scores)]).max() <= 1e-5
        # The pool replaced the dead worker (at once, or, had it answered every job before dying, on the next
        # batch, which must still render every job).
        again = pool.render_many(jobs[:4])
        assert not [r for r in again if isinstance(r, str)]
        assert victim not in pool.worker_pids() and len(pool.worker_pids()) == 2


class KillAfterFirstJob(KillOnJob):
    """Kills the worker right after its first job of a batch and waits until it is gone, so that the pool's next
    hand-out to it finds its pipe closed (a worker that died between two hand-outs)."""

    def send(self, message):
        self.outbox.send(message)
        if message is not None and not self.killed:
            os.kill(self.worker.pid, signal.SIGKILL)
            self.killed.append(self.worker.pid)
            assert wait_until_gone(self.worker.pid)


def test_a_worker_that_dies_between_two_hand_outs_still_gets_every_job_an_answer(soundfont):
    """The jobs queued on a worker found dead at a hand-out are failed (the one it may have been rendering) or
    rendered by the others, never lost."""
    score = make_score([(i, 1, 60, 80) for i in range(20)])
    jobs = [(score.dumps_midi(), score_seconds(score))] * 6
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=2) as pool:
        pool.worker_pids()
        killed: list[int] = []
        pool._workers[0].outbox = KillAfterFirstJob(pool._workers[0], None, killed)
        results = pool.render_many(jobs)
    assert killed and all(isinstance(r, np.ndarray | str) for r in results), results
    assert sum(isinstance(r, str) for r in results) <= 1  # at most the job it was rendering; the rest rendered


def test_pool_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError):
        TinySoundfontSynthProcessor("unused.sf2", SAMPLE_RATE, 10, num_workers=0)
    bad = tmp_path / "broken.sf2"
    bad.write_bytes(b"not a soundfont")
    processor = TinySoundfontSynthProcessor(str(bad), SAMPLE_RATE, 10, num_workers=2)  # loads in the background
    with pytest.raises(RuntimeError, match="could not load"):
        processor(records_of([make_score([(0, 1, 60, 80)])]))
    assert processor.pool.closed


def test_the_render_settings_reach_the_workers_as_one_value(soundfont):
    """Another rate and cap than the defaults: the pool's workers render what the in-process renderer does."""
    settings = RenderSettings(soundfont, 16000, 2)
    scores = varied_scores()
    jobs = [(s.dumps_midi(), score_seconds(s)) for s in scores]
    expected = SoundfontRenderer(settings).render_many(jobs)
    with RenderPool(settings, num_workers=2) as pool:
        results = pool.render_many(jobs)
    assert max(r.shape[1] for r in results) == 2 * 16000
    assert all(np.array_equal(r, e) for r, e in zip(results, expected))


# --- how many workers, and the hand-out -------------------------------------------------------------------------------
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
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=workers) as pool:
        pool.worker_pids()
        for index, worker in enumerate(pool._workers):
            worker.outbox = RecordingOutbox(worker.outbox, index, sent)
        results = pool.render_many(jobs, costs)
    assert all(isinstance(result, np.ndarray) for result in results)
    load = [sum(costs[job] for job, worker in sent.items() if worker == w) for w in range(workers)]
    largest, second = sorted(range(len(costs)), key=lambda job: -costs[job])[:2]
    assert sent[largest] != sent[second]
    assert sorted(load, reverse=True) == loads  # every worker got work, the largest jobs first
