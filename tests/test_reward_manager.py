"""reward_manager.py's RewardManager: weighted mean of normalised rewards, fallbacks for bad values, per-step
artefacts, metrics, the processors' contract (each one's return value is the next one's input), and a processor that
raises: a fallback for the records it fails on, or the run stopped when it fails on most of them (a CUDA
out-of-memory error, say)."""

import math
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from bench import fuzz_rewards
from processors import MidiTokToSymusicProcessor, Processor
from reward_manager import ProcessorContractError, ProcessorFailed, RewardManager
from scores import make_score
from smart_utils.tokenizer import default_remi


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
    manager.wait_for_audio()
    for step in range(3):
        assert (tmp_path / "rl_logs" / str(step) / "logs.parquet").is_file()
        assert sorted(p.name for p in (tmp_path / "midi" / str(step)).iterdir()) == [
            "reward=0.2000_0.mid", "reward=0.2000_1.mid"]
        logged_steps = pq.read_table(tmp_path / "rl_logs" / str(step) / "logs.parquet").column("reward_step")
        assert logged_steps.to_pylist() == [step] * 2
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["0", "2"]
    audio, rate = soundfile.read(tmp_path / "audio" / "2" / "reward=0.2000_1.wav")
    assert rate == 8000 and np.allclose(audio.T, [[0.0, 0.5], [0.0, -0.5]], atol=1 / 32768)


class BlockingWrites:
    """Stands in for soundfile.write: each call waits until ``release`` is set, then records its path."""

    def __init__(self):
        self.release = threading.Event()
        self.written = []
        self.paths = []

    def __call__(self, path, *args, **kwargs):
        assert self.release.wait(timeout=10), "the test never released the writer"
        self.written.append(path.name)
        self.paths.append(path)


def test_wavs_are_written_in_the_background_and_wait_for_audio_waits_for_them(tmp_path, monkeypatch):
    writes = BlockingWrites()
    monkeypatch.setattr(soundfile, "write", writes)
    manager = RewardManager([FixedRewards([{"a": 0.2}] * 2)], {"a": 1.0}, tmp_path, audio_save_interval=1)
    assert call(manager, 2) == [0.2, 0.2]  # returned while the writer is still blocked
    assert writes.written == []
    writes.release.set()
    manager.wait_for_audio()
    assert writes.written == ["reward=0.2000_0.wav", "reward=0.2000_1.wav"]


def writer_threads() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate() if thread.name.startswith("wav-writer"))


def test_an_audio_step_waits_for_the_previous_steps_wavs(tmp_path, monkeypatch):
    writes = BlockingWrites()
    monkeypatch.setattr(soundfile, "write", writes)
    manager = RewardManager([FixedRewards([{"a": 0.2}])], {"a": 1.0}, tmp_path, audio_save_interval=1)
    call(manager, 1)  # step 0: its writer blocks
    waiting, writers_seen = threading.Event(), []
    real_wait = manager.wait_for_audio

    def wait_for_audio():  # step 1's export, about to wait for step 0's writer: what is being written then
        writers_seen.append(writer_threads())
        waiting.set()
        real_wait()

    monkeypatch.setattr(manager, "wait_for_audio", wait_for_audio)
    returned = threading.Event()
    second = threading.Thread(target=lambda: (call(manager, 1), returned.set()))
    second.start()
    assert waiting.wait(timeout=10), "step 1 never waited for step 0's WAVs"
    # step 1 waits before it hands its own clips to a writer: never more than one step of clips held for writing
    assert writers_seen == [["wav-writer-step-0"]] and not returned.is_set() and writes.written == []
    writes.release.set()
    second.join(timeout=10)
    manager.wait_for_audio()
    assert returned.is_set() and writes.written == ["reward=0.2000_0.wav"] * 2
    assert [path.parent.name for path in writes.paths] == ["0", "1"]


def test_a_wav_that_cannot_be_written_is_reported_and_the_others_still_are(tmp_path, monkeypatch, capsys):
    real_write = soundfile.write

    def fail_for_the_first(path, *args, **kwargs):
        if path.name.endswith("_0.wav"):
            raise OSError("No space left on device")
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(soundfile, "write", fail_for_the_first)
    manager = RewardManager([FixedRewards([{"a": 0.2}] * 2)], {"a": 1.0}, tmp_path, audio_save_interval=1)
    call(manager, 2)
    manager.wait_for_audio()
    assert [p.name for p in (tmp_path / "audio" / "0").iterdir()] == ["reward=0.2000_1.wav"]
    assert "could not write" in capsys.readouterr().out


def test_ranks_write_separate_files(tmp_path):
    for rank in range(2):
        manager = RewardManager([FixedRewards([{"a": 0.2}])], {"a": 1.0}, tmp_path, process_index=rank,
                                num_processes=2)
        call(manager, 1)
    logs = sorted(p.name for p in (tmp_path / "rl_logs" / "0").iterdir())
    assert logs == ["logs.rank0.parquet", "logs.rank1.parquet"]
    assert len(list((tmp_path / "midi" / "0").iterdir())) == 2


def test_zero_weights_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="non-zero weight"):
        RewardManager([], {"a": 0.0}, tmp_path)


def test_a_step_where_no_record_got_a_reward_is_still_logged(tmp_path):
    """One completion whose only processor failed: no reward at all, an empty dict that parquet cannot store as a
    struct. The step is logged (reward 0 and the reason), not a crash halfway through a run."""

    class Fails(Processor):
        def __call__(self, records):
            raise RuntimeError("broken on this record")

    manager = RewardManager([Fails()], {"CE": 1.0}, tmp_path, audio_save_interval=1000)
    assert call(manager, 1) == [0.0]
    rows = pq.read_table(tmp_path / "rl_logs" / "0" / "logs.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["reward"] == 0.0 and "broken on this record" in rows[0]["errors"]


# --- the processors' contract: each one's return value is the next one's input ----------------------------------------
class ForgetsToReturn(Processor):
    """Adds its reward and forgets ``return records``."""

    def __call__(self, records):
        for record in records:
            record["normalized_rewards"]["a"] = 1.0


class ReturnsTheWrongThing(Processor):
    def __init__(self, make):
        self.make = make

    def __call__(self, records):
        return self.make(records)


@pytest.mark.parametrize("processor, what", [
    (ForgetsToReturn(), "returned NoneType for 2 records"),
    (ReturnsTheWrongThing(lambda records: records[:1]), "returned a list of 1 items for 2 records"),
    (ReturnsTheWrongThing(lambda records: [r["idx"] for r in records]), "returned a list of 2 items for 2 records"),
    (ReturnsTheWrongThing(tuple), "returned tuple for 2 records"),
])
def test_a_processor_that_does_not_return_its_records_fails_the_first_step_naming_it(tmp_path, processor, what):
    manager = RewardManager([FixedRewards([{"a": 0.2}] * 2), processor], {"a": 1.0}, tmp_path)
    with pytest.raises(ProcessorContractError) as raised:
        call(manager, 2)
    assert isinstance(raised.value, TypeError)
    message = str(raised.value)
    assert message.startswith(f"{type(processor).__name__}.__call__ {what}") and "return records" in message
    assert not (tmp_path / "rl_logs").exists()  # no step is logged (nor trained on) with every reward lost


class ReturnsNewRecords(Processor):
    """Builds new records instead of adding to the ones it was given."""

    def __call__(self, records):
        return [{**record, "normalized_rewards": {"a": 0.1 * (record["idx"] + 1)}, "errors": []} for record in records]


class Doubles(Processor):
    """Reads what the previous processor returned."""

    def __call__(self, records):
        for record in records:
            record["normalized_rewards"]["b"] = 2 * record["normalized_rewards"]["a"]
        return records


def test_the_records_a_processor_returns_are_what_the_next_one_and_the_reward_use(tmp_path):
    manager = RewardManager([FixedRewards([{"a": 0.9}] * 2), ReturnsNewRecords(), Doubles()], {"a": 1.0, "b": 1.0},
                            tmp_path)
    assert call(manager, 2) == pytest.approx([(0.1 + 0.2) / 2, (0.2 + 0.4) / 2])
    rows = pq.read_table(tmp_path / "rl_logs" / "0" / "logs.parquet").to_pylist()
    assert [row["normalized_rewards"] for row in rows] == [pytest.approx({"a": 0.1, "b": 0.2}),
                                                           pytest.approx({"a": 0.2, "b": 0.4})]


# --- a processor that raises: the records it fails on, or the whole run -----------------------------------------------
REMI = default_remi()
PROMPT_IDS = [REMI.vocab[t] for t in fuzz_rewards.PROMPT]


class RaisesOnShortCompletions(Processor):
    """A buggy reward: raises on any record whose completion has fewer than 3 tokens."""

    def __call__(self, records):
        for record in records:
            if len(record["completion"]) < 3:
                raise IndexError("completion too short")
            record["normalized_rewards"]["length"] = 1.0
        return records


def test_a_processor_that_raises_costs_only_the_records_it_fails_on(tmp_path):
    manager = RewardManager([MidiTokToSymusicProcessor(REMI, False, 100), RaisesOnShortCompletions()],
                            {"length": 1.0}, tmp_path)
    rewards = manager(prompts=[""] * 3, completion_ids=[[4, 5, 6], [4], [7, 8, 9]], prompt_ids=[PROMPT_IDS] * 3)
    assert rewards == [1.0, 0.0, 1.0]
    errors = pq.read_table(tmp_path / "rl_logs" / "0" / "logs.parquet").column("errors").to_pylist()
    assert "RaisesOnShortCompletions: IndexError: completion too short" in errors[1]
    assert "RaisesOnShortCompletions" not in errors[0] + errors[2]


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


def call_without_metrics(manager, n):
    return manager(prompts=["p"] * n, completion_ids=[[5, 6]] * n, prompt_ids=[[1]] * n)


@pytest.mark.parametrize("failing, n", [(range(8), 8), (range(5), 8), (range(2), 2)])
def test_a_processor_failing_on_most_records_stops_the_run(tmp_path, failing, n):
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
    manager = RewardManager([FailsOn(failing, error)], {"r": 1.0}, tmp_path)
    with pytest.raises(ProcessorFailed) as raised:
        call_without_metrics(manager, n)
    message = str(raised.value)
    assert f"FailsOn failed on {len(failing)} of {n} records of reward step 0" in message
    assert "OutOfMemoryError: CUDA out of memory" in message and "--RESUME" in message
    assert raised.value.__cause__ is error


@pytest.mark.parametrize("failing, n", [(range(4), 8), ([3], 8), ([1], 2), ([0], 3)])
def test_a_few_failing_records_keep_the_per_record_fallback(tmp_path, failing, n):
    manager = RewardManager([FailsOn(failing, RuntimeError("CUDA error: an illegal memory access"))], {"r": 1.0},
                            tmp_path)
    assert call_without_metrics(manager, n) == [0.0 if i in failing else 0.5 for i in range(n)]
