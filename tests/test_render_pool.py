"""The render pool: the original method's audio from worker processes, in order, with failures contained."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.original import OriginalTinySoundfontRenderer
from processors import DEFAULT_SAMPLE_RATE as SAMPLE_RATE
from processors import TinySoundfontSynthProcessor, crop_score, score_record, score_seconds
from scores import make_score, random_scores
from smart_utils.render_pool import RenderPool
from smart_utils.rendering import RenderSettings, SoundfontRenderer


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


def test_a_worker_killed_mid_batch_fails_at_most_its_current_job(soundfont, expected_audio):
    scores = varied_scores()
    jobs = [(s.dumps_midi(), score_seconds(s)) for s in scores] * 2
    with RenderPool(RenderSettings(soundfont, SAMPLE_RATE, 10), num_workers=2) as pool:
        pool.render_many(jobs[:2])
        victim = pool.worker_pids()[0]
        killer = threading.Timer(0.1, os.kill, (victim, signal.SIGKILL))
        killer.start()
        results = pool.render_many(jobs)
        killer.join()
        failed = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(failed) <= 1 and all("died" in results[i] for i in failed)
        for i, result in enumerate(results):
            if i not in failed:
                assert np.abs(result - expected_audio[i % len(scores)]).max() <= 1e-5
        # On a fast machine the batch can end before the kill lands; the pool then finds the dead worker idle
        # on its next batch, which must still render every job and replace the worker.
        again = pool.render_many(jobs[:4])
        assert not [r for r in again if isinstance(r, str)]
        assert victim not in pool.worker_pids() and len(pool.worker_pids()) == 2


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
