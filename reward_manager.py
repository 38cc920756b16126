"""Turn a batch of completions into SMART rewards, and keep a record of every reward step on disk.

``RewardManager`` is passed to TRL's ``GRPOTrainer`` as its reward function. For each batch it builds one record
per completion, runs the processor chain, combines the normalised rewards into the reward TRL optimises
(the weighted mean, as in the original), and writes per step:

    rl_logs/<step>/logs.parquet     one row per completion: tokens, rewards, scores, durations, errors
    midi/<step>/reward=<r>_<idx>.mid
    audio/<step>/reward=<r>_<idx>.wav   every ``audio_save_interval`` steps, written by a background thread

WAVs are the one slow export (64 clips x 10 s of 48 kHz stereo is ~120 MB, ~1.3 s on a CPU), and nothing in
training reads them, so a background thread writes them while the trainer goes on; the next audio step, and
``wait_for_audio`` (smart.py calls it before exiting), wait for it, so at most one step of clips is in memory.

With several processes each rank writes its own files (``logs.rank<k>.parquet``, ``rank<k>_reward=...``), so
no file is written by two ranks. Means of every normalised reward and each processor's seconds go to the
trainer's logs through TRL's ``log_metric`` (averaged over ranks by TRL).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from processors import Processor
from smart_utils.files import write_wav
from smart_utils.records import Record, add_error, completion_record

NOT_LOGGED = ("sm", "audio")  # too large for the parquet log; saved as MIDI and WAV instead


class ProcessorFailed(RuntimeError):
    """A processor failed on most records of a step: the run must stop instead of training on fallback rewards."""


class ProcessorContractError(TypeError):
    """A processor returned something other than the records it was given."""


def checked_output(processor: Processor, given: list[Record], returned: Any) -> list[Record]:
    """``returned`` if it is what a processor must return: a list of as many records (dicts) as it was given.
    Anything else (None from a ``__call__`` that forgot ``return records``, new objects of another kind) would
    score every completion 0 without a word, so it stops the first step, naming the processor."""
    if isinstance(returned, list) and len(returned) == len(given) and all(isinstance(r, dict) for r in returned):
        return returned
    what = type(returned).__name__ if not isinstance(returned, list) else f"a list of {len(returned)} items"
    raise ProcessorContractError(
        f"{type(processor).__name__}.__call__ returned {what} for {len(given)} records; a processor returns the "
        "list of records it was given (add fields to each, then `return records`)"
    )


def is_broken(failed: int, total: int) -> bool:
    """Whether ``failed`` of ``total`` records failing one processor means the processor, not the records, is bad.

    More than half of the records, and at least 2. Bad records are rare: the processors handle garbage without raising
    (tests/test_bench_fuzz_rewards.py and bench/fuzz_rewards.py: 0 failures in 10,000 random token sequences), so an
    exception is a bug hit by an unusual record, and even a bug that hits a whole GRPO group leaves the other groups
    of the step training normally. More than half of a step failing is what a broken processor or device looks like (a
    CUDA out-of-memory or device error fails every record), and at that point most groups would have no signal. At
    least 2, so that a lone completion that fails (a batch of 1, or 1 of 2 or 3) keeps the fallback: one record cannot
    tell a broken processor from a bad record.
    """
    return failed >= 2 and 2 * failed > total


def parquet_safe(table: pa.Table) -> pa.Table:
    """The table with every struct column that has no fields (a dict that is empty in every row, e.g. no reward
    at all in a step) stored as nulls: Parquet cannot write a struct without fields, and a step's log must not
    crash the run."""
    for index, field in reversed(list(enumerate(table.schema))):
        if pa.types.is_struct(field.type) and field.type.num_fields == 0:
            table = table.set_column(index, field.name, pa.nulls(len(table)))
    return table


class RewardManager:
    """Run ``processors`` on each batch and return the weighted mean of the rewards named in ``reward_weights``."""

    def __init__(
        self,
        processors: Sequence[Processor],
        reward_weights: dict[str, float],
        output_dir: str | Path,
        audio_save_interval: int = 10,
        start_step: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        watch: Callable[[list[Record], int, float], dict[str, float]] | None = None,
        on_audio_step: Callable[[int, list[tuple[str, np.ndarray, int]]], None] | None = None,
    ):
        if not reward_weights or sum(reward_weights.values()) == 0:
            raise ValueError(f"reward_weights={reward_weights!r}: give at least one reward a non-zero weight")
        self.processors = list(processors)
        self.reward_weights = dict(reward_weights)
        self.output_dir = Path(output_dir)
        self.audio_save_interval = audio_save_interval
        self.global_reward_step = start_step
        self.process_index = process_index
        self.num_processes = num_processes
        self.watch = watch  # measured after the reward is computed, never part of it (smart_utils/watch.py)
        self.on_audio_step = on_audio_step  # hands an audio step's clips to the trackers (smart_utils/trackers.py)
        self._audio_writer: threading.Thread | None = None
        self.__name__ = "RewardManager"  # TRL names the reward column after this

    def __call__(
        self,
        prompts: list[str],
        completion_ids: list[list[int]],
        prompt_ids: list[list[int]] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        """TRL's reward-function interface. ``prompt_ids`` is a dataset column holding each prompt's token ids."""
        if prompt_ids is None:
            raise ValueError("RewardManager needs the dataset column 'prompt_ids' (each prompt's token ids)")
        records = [
            completion_record(i, prompt, ids, completion, self.global_reward_step)
            for i, (prompt, ids, completion) in enumerate(zip(prompts, prompt_ids, completion_ids))
        ]
        records, seconds = self.run_processors(records)
        for record in records:
            record["reward"] = self.total_reward(record)
            record["reward_weights"] = self.reward_weights
        self.export_records(records)
        start = time.perf_counter()
        watched = {} if self.watch is None else self.watch(
            records, self.global_reward_step, float(np.mean([r["reward"] for r in records])))
        if watched:
            watched["seconds/watch"] = time.perf_counter() - start
        if log_metric is not None:
            self.log_step_metrics(records, seconds, log_metric)
            for name, value in watched.items():
                log_metric(name, value)
        self.global_reward_step += 1
        return [record["reward"] for record in records]

    def run_processors(self, records: list[Record]) -> tuple[list[Record], dict[str, float]]:
        """Apply the chain in order, each processor to what the previous one returned (as the original does);
        return the final records and each processor's wall time in seconds."""
        seconds: dict[str, float] = {}
        for processor in self.processors:
            start = time.perf_counter()
            records = self.apply_guarded(processor, records)
            seconds[type(processor).__name__] = time.perf_counter() - start
        timing = ", ".join(f"{name} {s:.2f}s" for name, s in seconds.items())
        print(f"[reward step {self.global_reward_step}] {timing}", flush=True)
        return records, seconds

    def apply_guarded(self, processor: Processor, records: list[Record]) -> list[Record]:
        """Run ``processor`` on the batch without letting a few bad records end the run.

        Processors should not raise on a bad record, but one that does (a bug, an input nobody foresaw) would
        otherwise stop hours of training. The batch is then re-run record by record, so only the records that
        still fail lose that processor's rewards (counted as 0), each with the exception logged in ``errors``.

        If the processor still fails on most records (``is_broken``), the cause is the processor or its device
        (out of GPU memory, a CUDA error, a missing file), not the records, and it would fail the same way every
        step: every completion would get the same fallback reward, GRPO's advantages would all be 0, and the
        run would optimise only the KL term while looking healthy. That raises ``ProcessorFailed`` instead.
        """
        name = type(processor).__name__
        try:
            return checked_output(processor, records, processor(records))
        except ProcessorContractError:
            raise
        except Exception as error:
            print(f"[reward step {self.global_reward_step}] {name} raised {type(error).__name__}: {error}; "
                  "re-running it record by record", flush=True)
        failures: list[Exception] = []
        output = []
        for record in records:
            try:
                record = checked_output(processor, [record], processor([record]))[0]
            except ProcessorContractError:
                raise
            except Exception as error:
                add_error(record, f"{name}: {type(error).__name__}: {error}")
                failures.append(error)
            output.append(record)
        if is_broken(len(failures), len(records)):
            first = failures[0]
            raise ProcessorFailed(
                f"{name} failed on {len(failures)} of {len(records)} records of reward step "
                f"{self.global_reward_step} (first: {type(first).__name__}: {first}). A processor failing on most "
                "records is broken, not fed bad records, and every completion would get the same fallback reward "
                "(zero advantages: the run would only optimise the KL term), so the run stops here. Fix the cause "
                "(out of GPU memory: a smaller AUDIOBOX_BATCH_SIZE) and continue from the last checkpoint with "
                "python smart.py --RESUME=<run dir>"
            ) from first
        return output

    def total_reward(self, record: Record) -> float:
        """Weighted mean of the record's normalised rewards; a missing or non-finite reward counts as 0, logged."""
        total = 0.0
        for name, weight in self.reward_weights.items():
            value = record["normalized_rewards"].get(name)
            if value is None or not math.isfinite(value):
                add_error(record, f"reward {name!r} was {value!r}; counted as 0")
                value = 0.0
            elif not 0.0 <= value <= 1.0:
                add_error(record, f"reward {name!r}={value} outside [0, 1]; clipped")
                value = min(max(value, 0.0), 1.0)
            total += weight * value
        return total / sum(self.reward_weights.values())

    def _name(self, stem: str) -> str:
        return stem if self.num_processes == 1 else f"rank{self.process_index}_{stem}"

    def export_records(self, records: list[Record]) -> None:
        """Write the step's parquet log, every MIDI file and, every ``audio_save_interval`` steps, the audio."""
        step = self.global_reward_step
        log_dir = self.output_dir / "rl_logs" / str(step)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_name = "logs.parquet" if self.num_processes == 1 else f"logs.rank{self.process_index}.parquet"
        rows = [
            {**{key: value for key, value in record.items() if key not in NOT_LOGGED},
             "errors": "; ".join(record["errors"])}
            for record in records
        ]
        pq.write_table(parquet_safe(pa.Table.from_pylist(rows)), log_dir / log_name)

        midi_dir = self.output_dir / "midi" / str(step)
        midi_dir.mkdir(parents=True, exist_ok=True)
        for record in records:
            if "sm" in record:  # absent only where the decoder itself failed on this record (logged in errors)
                record["sm"].dump_midi(str(midi_dir / self._name(f"reward={record['reward']:.4f}_{record['idx']}.mid")))

        if step % self.audio_save_interval == 0:
            self.wait_for_audio()  # one step of clips in flight at most
            audio_dir = self.output_dir / "audio" / str(step)
            audio_dir.mkdir(parents=True, exist_ok=True)
            clips = [
                (audio_dir / self._name(f"reward={record['reward']:.4f}_{record['idx']}.wav"), record["audio"],
                 record["sample_rate"])
                for record in records if "audio" in record
            ]
            if self.on_audio_step is not None:
                self.on_audio_step(step, [(path.stem, audio, rate) for path, audio, rate in clips])
            # Not a daemon: an interpreter that exits without wait_for_audio() still finishes the files.
            self._audio_writer = threading.Thread(target=write_wavs, args=(clips,), name=f"wav-writer-step-{step}")
            self._audio_writer.start()

    def wait_for_audio(self) -> None:
        """Block until the WAVs handed to the background writer are on disk."""
        if self._audio_writer is not None:
            self._audio_writer.join()
            self._audio_writer = None

    def log_step_metrics(
        self, records: list[Record], seconds: dict[str, float], log_metric: Callable[[str, float], None]
    ) -> None:
        """Send per-reward means, per-processor seconds and the error count to the trainer's logs."""
        names = sorted({name for record in records for name in record["normalized_rewards"]})
        for name in names:
            values = [r["normalized_rewards"][name] for r in records if name in r["normalized_rewards"]]
            finite = [v for v in values if v is not None and math.isfinite(v)]
            if finite:
                log_metric(f"normalized_rewards/{name}", float(np.mean(finite)))
        for processor, value in seconds.items():
            log_metric(f"seconds/{processor}", value)
        log_metric("reward_errors", float(sum(len(r["errors"]) > 0 for r in records)))


def write_wavs(clips: list[tuple[Path, np.ndarray, int]]) -> None:
    """``write_wav`` each ``(path, audio, sample rate)``; a failure skips that file.

    Runs in the writer thread, where an exception would only print a traceback and lose the remaining clips.
    """
    for path, audio, sample_rate in clips:
        try:
            write_wav(path, audio, sample_rate)
        except Exception as error:  # a full disk or a vanished directory must not cost the rest of the run
            print(f"[reward manager] could not write {path}: {type(error).__name__}: {error}", flush=True)
