"""The folder tracker's default engine: worker processes on this machine (``--engine local``).

:class:`LocalEngine` is an :class:`tracker.batch.Engine`: :func:`tracker.batch.track_folder` keeps the folder
semantics and the engine only runs the tasks. Unlike a ``concurrent.futures`` process pool, whose every
outstanding task fails when one worker dies, each worker here is watched on its own: the death of one (the
kernel's out-of-memory killer, a ``kill``, a crash in native code) fails only the file it was tracking, says
how it died (the signal or the exit code), and a new worker takes over the files still to do; ``retries``
runs such a file again first.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

from model.errors import InputError
from tracker.batch import Engine, Outcome, Task, TrackFn, init_worker_threads, run_task


@dataclass
class LocalEngine(Engine):
    """Worker processes on this machine (``--engine local``, the default).

    Each worker is a process of its own (spawn start method) that runs one file at a time; when one dies
    (killed, out of memory, a crash in native code), only the file it was tracking fails, with how it died
    (the signal or the exit code), and a new worker takes over the files still to do.

    Attributes:
        workers: parallel worker processes. Each gets ``cpu_count // workers`` threads (``OMP_NUM_THREADS``
            and ``torch.set_num_threads``). The ``track_fn`` and its keyword arguments must be picklable (a
            module-level function).
        retries: how many times a file is run again, in a new worker, when its worker process dies; a file
            that fails by itself (no face, a bad file) is not retried.
        in_process: run the tasks one after the other in this process instead (debugging, or a ``track_fn``
            that cannot be pickled); a dead worker is then the caller itself, and ``workers`` and ``retries``
            are not used.
    """

    workers: int = 2
    retries: int = 0
    in_process: bool = False
    name: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.retries < 0:
            raise InputError(f"retries must be >= 0, got {self.retries}")

    def run(self, tasks: Sequence[Task], track_fn: TrackFn, kwargs: dict[str, Any]) -> Iterator[tuple[int, Outcome]]:
        if self.in_process:
            for task in tasks:
                yield task.index, run_task(track_fn, task.video, task.out, kwargs, task.preview)
            return
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        todo, attempts = deque(tasks), {t.index: 0 for t in tasks}
        workers: list[_Worker] = []
        finished = False
        try:
            while todo or any(w.task is not None for w in workers):
                while todo and len(workers) < self.workers:  # start (or replace) workers while there is work
                    workers.append(_Worker(ctx, threads, track_fn, kwargs))
                for w in workers:
                    if w.task is None and todo:
                        w.assign(todo.popleft())
                ready = set(multiprocessing.connection.wait([w.conn for w in workers] +
                                                            [w.process.sentinel for w in workers]))
                for w in [w for w in workers if w.conn in ready or w.process.sentinel in ready]:
                    task, outcome = w.task, w.receive()
                    if outcome is not None:  # a result (a dead worker's last one too: the next turn buries it)
                        w.task = None
                        yield task.index, outcome
                        continue
                    workers.remove(w)
                    exitcode = w.bury()
                    if task is None:
                        continue
                    task.clear()
                    attempts[task.index] += 1
                    if attempts[task.index] <= self.retries:
                        todo.appendleft(task)  # first in line for the next worker
                        continue
                    n = attempts[task.index]
                    yield task.index, Outcome("failed", worker_death(exitcode) + (f" ({n} attempts)" if n > 1 else ""),
                                              worker_died=True)
            finished = True
        finally:  # done: let the workers exit; abandoned (Ctrl-C, an error, close()): kill them, clear their files
            for w in workers:
                w.stop(kill=not finished)


class _Worker:
    """One worker process of :class:`LocalEngine` and the file it is tracking (``task``)."""

    def __init__(self, ctx, threads: int, track_fn: TrackFn, kwargs: dict[str, Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, threads, track_fn, kwargs),
                                   name="nphm-track worker")
        self.process.start()
        child.close()
        self.task: Task | None = None

    def assign(self, task: Task) -> None:
        self.task = task
        try:
            self.conn.send((task.video, task.out, task.preview))
        except OSError:  # it has died already: its sentinel says so on the next wait
            pass

    def receive(self) -> Outcome | None:
        """The outcome the worker sent, or ``None`` when it has none (it died)."""
        try:
            return self.conn.recv() if self.conn.poll() else None
        except (EOFError, OSError):
            return None

    def bury(self) -> int | None:
        """Wait for the dead process; its exit code (negative: the signal that killed it)."""
        self.process.join()
        self.conn.close()
        return self.process.exitcode

    def stop(self, kill: bool) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        if kill and self.task is not None:
            self.task.clear()


def _worker_main(conn, threads: int, track_fn: TrackFn, kwargs: dict[str, Any]) -> None:
    """A :class:`LocalEngine` worker process: run the files it is sent until it is sent ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it stops the workers
    init_worker_threads(threads)
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the caller is gone
            return
        if job is None:
            return
        video, out, preview = job
        conn.send(run_task(track_fn, video, out, kwargs, preview))


def worker_death(exitcode: int | None) -> str:
    """One line on how a worker process ended: the signal that killed it, or its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the worker process was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"the worker process died with exit code {exitcode}"
