"""Render a batch of scores on all cores: a persistent pool of worker processes, each with a ``SoundfontRenderer``.

This is an optional layer on top of smart_utils/rendering.py (``TinySoundfontSynthProcessor(num_workers=1)`` does
without it); what is rendered, and how, is entirely the renderer's. ``RenderPool(settings, num_workers)``:

- the soundfont is loaded once, by a fork server that then forks every worker from itself, so the workers share
  its memory (copy-on-write: MuseScore General decompresses to 0.5-1.8 GB, which 16 workers would otherwise
  hold 16 times) and start with the soundfont already loaded. The load happens in the background:
  ``RenderPool()`` returns at once, and the first ``render_many`` waits only for what is still loading;
- jobs are ``(MIDI bytes, duration)``, results are float32 ``(2, N)`` arrays, returned in job order; the most
  expensive jobs are handed out first, one to every worker (the least loaded first) before any worker gets a
  second queued job, so that a worker never waits for the parent; then each job to the next idle worker; the
  audio comes back through memory shared with the worker (no pipe, no pickle);
- a job that fails comes back as an error message (never an exception), and a worker that dies is replaced;
- the fork server is a plain ``python -m smart_utils.render_pool`` process started with ``subprocess`` (fork + exec, so
  nothing is inherited from a parent that already runs torch threads or CUDA). Unlike ``multiprocessing``'s
  "spawn" or "forkserver" it does not re-import the parent's ``__main__``: for ``smart.py`` that would be 10 s
  and 1 GB of torch/TRL imports. It imports numpy and tinysoundfont only, and runs single-threaded, so forking
  it is safe. The standard library's ``ProcessPoolExecutor`` cannot keep the sharing: its workers are forked
  from the training process (unsafe once CUDA and torch threads run) or from one forkserver per process that
  holds no soundfont, so each worker's initializer would load its own copy;
- the server and workers ignore SIGINT/SIGTERM (Ctrl-C reaches the whole process group; smart.py then finishes
  the step and saves a checkpoint, which needs the renders) and exit when the parent closes the pool or dies.

Renders in different workers see different histories; equality with the original holds anyway because every
render starts from the same flushed synth (tests/test_render_pool.py checks many scores in sequence).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import mmap
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from smart_utils.rendering import RenderSettings, SoundfontRenderer

CLOSE_TIMEOUT_SECONDS = 5.0  # how long close() waits for a worker to exit before killing it
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where a container sees its own cgroup (its CPU quota)
FDS_PER_WORKER = 3  # descriptors the parent holds per worker: two pipe ends and the mapped audio slots
FDS_RESERVED = 256  # descriptors left for everything else (torch, datasets, checkpoints, logs)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's container in cores (e.g. 8.0 for a pod limited to 8 CPUs), None if unlimited.

    Containers (Docker, Kubernetes) limit CPU time with a cgroup quota while the affinity mask still lists every
    core of the host, so a pod limited to 8 CPUs on a 128-core node would otherwise start 128 workers that share 8
    cores. Inside a container ``root`` is the container's own cgroup: cgroup v2 writes the quota as
    ``cpu.max`` ("<quota> <period>" or "max <period>"), v1 as ``cpu.cfs_quota_us`` (-1: none) and
    ``cpu.cfs_period_us`` under ``cpu/`` or ``cpu,cpuacct/``.
    """
    candidates = [(root / "cpu.max", None)] + [
        (root / folder / "cpu.cfs_quota_us", root / folder / "cpu.cfs_period_us") for folder in ("cpu", "cpu,cpuacct")
    ]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
            if quota in ("max", "-1"):
                return None
            cores = float(quota) / float(period)
        except (OSError, ValueError, ZeroDivisionError):  # not this cgroup version, or unreadable
            continue
        return cores if cores > 0 else None
    return None


def fd_limited_workers() -> int:
    """The most workers this process's open-file limit leaves room for (each holds FDS_PER_WORKER descriptors)."""
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return sys.maxsize
    return max(1, (soft_limit - FDS_RESERVED) // FDS_PER_WORKER)


def default_render_workers(batch_size: int | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Workers for one rank: the cores this process may use, shared by the ranks torchrun/accelerate start here.

    The cores are the fewer of the affinity mask and the container's CPU quota (``cgroup_cpu_limit``, rounded up).
    More workers than completions per step (``batch_size``) would sit idle, and more than the open-file limit
    allows would fail to start, so both cap the count; at least one.
    """
    cores = available_cores()
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    workers = min(cores // max(1, local_ranks), fd_limited_workers())
    if batch_size is not None:
        workers = min(workers, batch_size)
    return max(1, workers)


# --- the pool -------------------------------------------------------------------------------------------------
# A fork server loads the soundfont once and forks every worker from itself, so all workers share its soundfont
# memory copy-on-write: TinySoundFont decompresses an SF3 at load (MuseScore General: 0.5-1.8 GB per process),
# and 16 workers loading their own copies would hold 16 of them. The server is a plain ``python -m
# smart_utils.render_pool --fork-server FD SETTINGS`` process (fork + exec, single-threaded: it imports numpy and
# tinysoundfont only; the RenderSettings come as JSON), and it never renders, so every worker starts from the same
# fresh synth.
#
# Parent -> server (a Unix stream socket): one byte b"F" per worker wanted, carrying the worker's three file
# descriptors (SCM_RIGHTS); closing the socket stops the server. Server -> parent: b"R" once the soundfont is
# loaded, or b"E" and an error message before it exits.
# Each worker shares PREFETCH audio slots with the parent (an anonymous shared memory file): it renders into the
# slot named in the job and the parent copies the audio out, so no audio goes through a pipe or pickle.
# Parent -> worker (a pipe): (job, slot, midi, seconds) per job, None to stop. Worker -> parent: ("ready", pid)
# once, then per job ("done", job, shape) or ("failed", job, message).

PREFETCH = 2  # jobs queued per worker, so that it never waits for the parent between jobs
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # safe to fork
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where ``python -m smart_utils.render_pool`` finds the package


def fork_server_environment() -> dict[str, str]:
    """The fork server's environment: single-threaded, and able to import this package from any working folder."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **SINGLE_THREADED, "PYTHONPATH": path}


def _shared_memory(size: int) -> int:
    """A file descriptor of ``size`` bytes of anonymous memory that a child process can map."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("render-pool")
    else:  # not Linux: an unlinked temp file
        import tempfile

        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, size)
    return fd


class _ForkServer:
    """The process that holds the loaded soundfont and forks workers from it; restartable if it dies."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.socket: socket.socket | None = None
        self.loaded = False
        self.start()

    def start(self) -> None:
        """Start a server; it loads the soundfont in the background (``wait_until_loaded`` collects the outcome)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __spec__.name, "--fork-server", str(theirs.fileno()),
                 json.dumps(dataclasses.asdict(self.settings))],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=fork_server_environment(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket, self.loaded = ours, False

    def wait_until_loaded(self) -> None:
        """Return once the soundfont is loaded; raise ``RuntimeError`` with the reason if it could not be."""
        if self.loaded:
            return
        try:
            reply = self.socket.recv(1)
        except OSError:  # the server died with requests unread
            reply = b""
        if reply == b"R":
            self.loaded = True
            return
        message = b""
        try:
            while chunk := self.socket.recv(65536):
                message += chunk
        except OSError:  # the server died: no message, the exit code says what happened
            pass
        self.socket.close()  # lets a server that reported an error exit
        code = self.process.wait()
        reason = message.decode(errors="replace") or f"the render fork server exited with code {code}"
        raise RuntimeError(f"render worker could not load {self.settings.soundfont_path}: {reason}")

    def fork_worker(self, fds: tuple[int, int, int]) -> None:
        """Ask for a worker on these (to-worker read end, from-worker write end, shared memory) descriptors."""
        try:
            socket.send_fds(self.socket, [b"F"], list(fds))
        except OSError:  # the server died: a new one loads the soundfont again and serves this request
            self.stop(timeout=0)
            self.start()
            socket.send_fds(self.socket, [b"F"], list(fds))

    def stop(self, timeout: float) -> None:
        """Close the socket (the server exits on its end of file), wait for it, kill it if it does not exit."""
        if self.socket is not None:
            self.socket.close()
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _Worker:
    """A worker process forked by the server: the pipe ends and audio slots the parent holds, and its jobs."""

    def __init__(self, server: _ForkServer, slot_values: int):
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        memory_fd = _shared_memory(PREFETCH * slot_values * 4)
        try:
            server.fork_worker((to_worker_r, from_worker_w, memory_fd))
            memory = mmap.mmap(memory_fd, PREFETCH * slot_values * 4)
        except BaseException:
            os.close(to_worker_w)
            os.close(from_worker_r)
            raise
        finally:  # the server holds its own copies now, and hands them to the worker
            for fd in (to_worker_r, from_worker_w, memory_fd):
                os.close(fd)
        self.slots = np.frombuffer(memory, dtype=np.float32).reshape(PREFETCH, slot_values)
        self.free_slots = list(range(PREFETCH))
        self.inbox = Connection(from_worker_r, writable=False)
        self.outbox = Connection(to_worker_w, readable=False)
        self.pid: int | None = None  # known from its ("ready", pid) message
        self.jobs: deque[tuple[int, int]] = deque()  # (job, slot)

    def wait_until_ready(self) -> None:
        """Read the worker's first message, its pid (a worker that died before sending it keeps ``pid`` None)."""
        if self.pid is None:
            with contextlib.suppress(EOFError, OSError):
                self.pid = self.inbox.recv()[1]

    def stop(self, timeout: float) -> None:
        """Ask the worker to exit and wait (its end of file) up to ``timeout`` seconds, then kill it."""
        with contextlib.suppress(OSError):  # the worker is gone already
            self.outbox.send(None)
        self.outbox.close()
        deadline = time.monotonic() + timeout
        try:
            while self.inbox.poll(max(0.0, deadline - time.monotonic())):
                message = self.inbox.recv()  # results nobody waits for any more, up to the end of file
                if message[0] == "ready":
                    self.pid = message[1]
            if self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)
        except (EOFError, OSError):  # exited (end of file), or already gone when killed
            pass
        self.inbox.close()


def _stop_all(workers: list[_Worker], server: _ForkServer, timeout: float) -> None:
    for worker in workers:
        worker.stop(timeout)
    workers.clear()
    server.stop(timeout)


class RenderPool:
    """``num_workers`` processes, each with its own ``SoundfontRenderer``; see the module docstring."""

    def __init__(self, settings: RenderSettings, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers={num_workers!r}: a render pool needs at least one worker")
        if not 0 < settings.max_audio_seconds < float("inf"):  # it sizes the audio slots shared with workers
            raise ValueError(f"max_audio_seconds={settings.max_audio_seconds!r} must be a positive number")
        self._slot_values = 2 * settings.max_samples
        absolute = os.path.abspath(settings.soundfont_path)  # as the error messages name it
        self._server = _ForkServer(dataclasses.replace(settings, soundfont_path=absolute))
        self._workers: list[_Worker] = []
        # Stops the workers when the pool is garbage-collected, closed, or at interpreter exit (whichever first).
        self._finalizer = weakref.finalize(self, _stop_all, self._workers, self._server, CLOSE_TIMEOUT_SECONDS)
        for _ in range(num_workers):  # forked as soon as the server has loaded the soundfont
            self._workers.append(_Worker(self._server, self._slot_values))

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop every worker and the fork server (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _wait_until_loaded(self) -> None:
        if self.closed:
            raise RuntimeError("render pool is closed")
        try:
            self._server.wait_until_loaded()
        except BaseException:
            self.close()
            raise

    def worker_pids(self) -> list[int | None]:
        """The workers' process ids (waiting for workers still starting; None for one that died starting)."""
        self._wait_until_loaded()
        for worker in self._workers:
            if not worker.jobs:  # with jobs queued, the ready message is read in render_many
                worker.wait_until_ready()
        return [worker.pid for worker in self._workers]

    def server_pid(self) -> int:
        return self._server.process.pid

    def render_many(
        self, jobs: Sequence[tuple[bytes, float]], costs: Sequence[float] | None = None
    ) -> list[np.ndarray | str]:
        """Render ``(midi bytes, duration seconds)`` jobs; for each, in order, its audio or an error message.

        ``costs`` (optional, one number per job) sets the hand-out order, most expensive first, which shortens
        the wait for the last job when costs vary; without them every job counts the same. A worker that dies
        fails the job it was rendering (its queued jobs go to the others) and is replaced.
        """
        self._wait_until_loaded()
        results: list[np.ndarray | str | None] = [None] * len(jobs)
        costs = [1.0] * len(jobs) if costs is None else costs
        order = sorted(range(len(jobs)), key=lambda i: -costs[i])
        order.reverse()  # pop() from the end hands out the first in order
        requeued: set[int] = set()  # jobs put back once after their worker died before starting them

        def requeue(job: int, reason: str) -> None:
            if job in requeued:
                results[job] = reason
            else:
                requeued.add(job)
                order.append(job)

        def hand_out(worker: _Worker, most: int = PREFETCH) -> None:
            while order and worker.free_slots and most > 0:
                job = order.pop()
                midi, seconds = jobs[job]
                slot = worker.free_slots.pop()
                try:
                    worker.outbox.send((job, slot, midi, float(seconds)))
                except OSError:  # it died: this job and any queued on it go to the others, or to its replacement
                    reason = f"render worker {worker.pid} is gone"
                    requeue(job, reason)
                    if worker.jobs:  # it may have died rendering the first of them: that one fails, as on EOF
                        results[worker.jobs.popleft()[0]] = f"render worker {worker.pid} died"
                    for queued, _ in worker.jobs:
                        requeue(queued, reason)
                    worker.jobs.clear()
                    worker = self._replace(worker)
                    continue
                worker.jobs.append((job, slot))
                most -= 1

        # Every worker gets one job before any gets a second, and each next job (the largest left) goes to the
        # worker with the least queued work, so the largest jobs start at once, on different workers.
        for _ in range(PREFETCH):
            for worker in sorted(self._workers, key=lambda w: sum(costs[job] for job, _ in w.jobs)):
                hand_out(worker, most=1)
        while any(worker.jobs for worker in self._workers):
            busy = {worker.inbox: worker for worker in self._workers if worker.jobs}
            for connection in wait(list(busy)):
                worker = busy[connection]
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    reason = f"render worker {worker.pid} died"
                    results[worker.jobs.popleft()[0]] = reason
                    for job, _ in worker.jobs:
                        requeue(job, reason)
                    hand_out(self._replace(worker))
                    continue
                if message[0] == "ready":
                    worker.pid = message[1]
                    continue
                job, slot = worker.jobs.popleft()
                assert job == message[1], (job, message[1])
                if message[0] == "done":
                    channels, samples = message[2]
                    results[job] = worker.slots[slot, : channels * samples].reshape(channels, samples).copy()
                else:
                    results[job] = message[2]
                worker.free_slots.append(slot)
                hand_out(worker)
        return results  # type: ignore[return-value]  # every slot is filled

    def _replace(self, worker: _Worker) -> _Worker:
        """A fresh worker in place of one that died."""
        worker.stop(timeout=0)
        new = _Worker(self._server, self._slot_values)
        self._workers[self._workers.index(worker)] = new
        return new


def _worker_loop(renderer: SoundfontRenderer, read_fd: int, write_fd: int, memory_fd: int) -> None:
    """A worker's loop: render jobs until told to stop or the parent goes away."""
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    slots = np.frombuffer(mmap.mmap(memory_fd, 0), dtype=np.float32).reshape(PREFETCH, -1)
    try:
        outbox.send(("ready", os.getpid()))
        while (message := inbox.recv()) is not None:
            job, slot, midi, seconds = message
            try:
                audio = renderer.render_midi(midi, seconds, out=slots[slot])
            except Exception as error:  # a score the synth cannot play fails alone
                outbox.send(("failed", job, f"{type(error).__name__}: {error}"))
            else:
                outbox.send(("done", job, audio.shape))
    except (EOFError, OSError):  # the parent closed the pool or died
        pass


def _fork_server_main(socket_fd: int, settings: RenderSettings) -> None:
    """Load the soundfont, then fork a worker for every request until the parent closes the socket."""
    # Ctrl-C reaches the whole process group; smart.py then finishes the step and saves a checkpoint, which
    # needs the renders. The workers inherit this; they exit when the parent closes their pipes or dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped as they exit
    parent = socket.socket(fileno=socket_fd)
    try:
        renderer = SoundfontRenderer(settings)
    except Exception as error:
        parent.sendall(b"E" + f"{type(error).__name__}: {error}".encode())
        parent.shutdown(socket.SHUT_WR)  # the end of the message
        while parent.recv(4096):  # wait for the pool to close (exiting with requests unread would reset the
            pass  # connection before the parent has read the message); their descriptors are dropped unread
        return
    parent.sendall(b"R")
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(parent, 1, 3)
        except OSError:
            return
        if not request:  # the pool was closed, or its process died
            return
        if os.fork() == 0:
            parent.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 0
            try:
                _worker_loop(renderer, *fds)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--fork-server"]:
        sys.exit("started by RenderPool: python -m smart_utils.render_pool --fork-server FD SETTINGS_JSON")
    _fork_server_main(int(sys.argv[2]), RenderSettings(**json.loads(sys.argv[3])))
