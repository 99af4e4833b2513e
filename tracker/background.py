"""Once-per-video work in a forked process while the parent fits frames (issue 18).

What the export needs of the identity alone is computed once, right after the identity is known: its mesh
(marching cubes of its neutral head, :class:`model.topology.FixedTopology`, about 1.2 s on the project's two
cores) and the ARKit curve solver's points (:class:`tracker.arkit.SolvePoints`, about 0.4 s). The frame fits
that follow use the second core poorly (75 frames: 1.6 s on two threads, 2.1 s on one), so that work runs in a
forked child on one thread while the parent fits frames on the others; the frames the smoother releases in
the meantime wait for the mesh (their codes and poses: a few hundred bytes each) and are baked when it comes.

Threads are split, not shared: the parent drops to ``threads - 1`` for as long as the child runs (two OpenMP
teams on the same cores were measured slower than either alone). The result is the same as doing the work in
the parent: the mesh, the track and the baked vertices are bit-identical on one thread and on two.

Used only where it can pay and is safe: a ``fork`` start method (Linux), at least two torch threads, a parent
that may have children (not a daemonic worker), and enough frames left to cover the child's time. A child
that fails or dies is not fatal: the parent does the work itself (:meth:`InBackground.result` returns
``None``).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch

from model.topology import FixedTopology

ANSWER_TIMEOUT_S = 300.0
"""Seconds :meth:`InBackground.result` waits for the child before it gives up on it (a child that hangs, say on a
lock another thread of the parent held at the fork, must not hang the run; the work takes 2-3 s here)."""

MIN_FRAMES_LEFT = 24
"""Frames still to fit, below which the work stays in the parent: with fewer, the parent (on one thread fewer)
would mostly wait for the child."""


def can_fork(frames_left: Optional[int]) -> bool:
    """Whether :class:`InBackground` may be used now (module docstring); ``frames_left`` ``None``: unknown
    (a stream without a frame count), taken as enough."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and torch.get_num_threads() >= 2 and not multiprocessing.current_process().daemon
            and (frames_left is None or frames_left >= MIN_FRAMES_LEFT))


class InBackground:
    """Run ``work()`` in a forked child on one thread; its value (picklable, no torch tensors: numpy arrays)
    comes back through a pipe.

    The parent's torch threads drop by one until :meth:`result` or :meth:`close`; call one of them (a
    ``finally`` block) so that the threads are restored and the child is reaped.
    """

    def __init__(self, work: Callable[[], Any]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._threads = torch.get_num_threads()
        self._conn, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_child_main, args=(child, work), name="nphm-track export assets",
                                    daemon=True)
        self._process.start()
        child.close()
        torch.set_num_threads(max(1, self._threads - 1))
        self.child_seconds = float("nan")
        self.error: Optional[str] = None

    def ready(self) -> bool:
        """Whether the child has answered (:meth:`result` will not block)."""
        return self._process is None or self._conn.poll()

    def result(self, timeout: float = ANSWER_TIMEOUT_S) -> Any:
        """The child's value (waits for it up to ``timeout`` seconds), or ``None`` when the child failed or did
        not answer in time (``error`` says why; it is killed); the parent's threads are restored either way."""
        try:
            if not self._conn.poll(timeout):
                message = ("error", f"the background process gave no answer in {timeout:g} s")
            else:
                message = self._conn.recv()
        except (EOFError, OSError):
            message = ("error", f"the background process ended without an answer (exit code "
                                f"{self._process.exitcode})")
        finally:
            self.close()
        kind, payload = message[0], message[1]
        if kind == "error":
            self.error = payload
            return None
        self.child_seconds = message[2]
        return payload

    def close(self) -> None:
        """Reap the child (killed if still running) and restore the parent's threads; idempotent."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._process.join(timeout=0.5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()
        self._process = None
        torch.set_num_threads(self._threads)


def _child_main(conn, work: Callable[[], Any]) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP team is not the child's: one thread, no team at all
    start = time.perf_counter()
    try:
        value = work()
        conn.send(("ok", value, time.perf_counter() - start))
    except BaseException as exc:  # anything: the parent falls back to doing the work itself
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    finally:
        conn.close()


def topology_to_arrays(topology: FixedTopology) -> dict:
    """A topology as numpy arrays, to cross a pipe (a torch tensor would travel as shared memory)."""
    return {"canonical_vertices": topology.canonical_vertices.cpu().numpy(),
            "neutral_vertices": topology.neutral_vertices.cpu().numpy(),
            "faces": topology.faces.cpu().numpy(), "extraction": topology.extraction}


def topology_from_arrays(arrays: dict) -> FixedTopology:
    """:func:`topology_to_arrays` undone."""
    return FixedTopology(canonical_vertices=torch.from_numpy(arrays["canonical_vertices"]),
                         neutral_vertices=torch.from_numpy(arrays["neutral_vertices"]),
                         faces=torch.from_numpy(arrays["faces"]), extraction=arrays["extraction"])
