"""Once-per-video work in a forked process while the parent fits frames (issue 18).

The identity's export mesh (marching cubes of its neutral head, :class:`model.topology.FixedTopology`) takes
about 1.2 s on the project's two cores, once, right after the identity is known. The frame fits that follow
use the second core poorly (75 frames: 1.6 s on two threads, 2.1 s on one), so the mesh is extracted in a
forked child on one thread while the parent fits frames on the others; the frames the smoother releases in
the meantime wait for the mesh (their codes and poses: a few hundred bytes each) and are baked when it comes.

Threads are split, not shared: the parent drops to ``threads - 1`` for as long as the child runs (two OpenMP
teams on the same cores were measured slower than either alone). The result is the same as extracting in the
parent: the mesh, the track and the baked vertices are bit-identical on one thread and on two.

Used only where it can pay and is safe: a ``fork`` start method (Linux), at least two torch threads, a parent
that may have children (not a daemonic worker), and enough frames left to cover the child's time. A child
that fails or dies is not fatal: the parent extracts the mesh itself (:meth:`MeshInBackground.result`
returns ``None``).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from typing import Callable, Optional

import torch

from model.topology import FixedTopology

MIN_FRAMES_LEFT = 24
"""Frames still to fit, below which the mesh is extracted in the parent: the child's mesh takes about as long
as the parent needs for this many frames on one thread (both about 0.7-0.9 s here), and with fewer the parent
would only wait."""


def can_fork(frames_left: Optional[int]) -> bool:
    """Whether :class:`MeshInBackground` may be used now (module docstring); ``frames_left`` ``None``: unknown
    (a stream without a frame count), taken as enough."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and torch.get_num_threads() >= 2 and not multiprocessing.current_process().daemon
            and (frames_left is None or frames_left >= MIN_FRAMES_LEFT))


class MeshInBackground:
    """Run ``extract()`` (a :class:`FixedTopology` of the parent's networks) in a forked child on one thread.

    The parent's torch threads drop by one until :meth:`result` or :meth:`close`; call one of them (a
    ``finally`` block) so that the threads are restored and the child is reaped.
    """

    def __init__(self, extract: Callable[[], FixedTopology]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._threads = torch.get_num_threads()
        self._conn, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_child_main, args=(child, extract), name="nphm-track mesh", daemon=True)
        self._process.start()
        child.close()
        torch.set_num_threads(max(1, self._threads - 1))
        self.child_seconds = float("nan")
        self.error: Optional[str] = None

    def ready(self) -> bool:
        """Whether the child has answered (:meth:`result` will not block)."""
        return self._process is None or self._conn.poll()

    def result(self) -> Optional[FixedTopology]:
        """The child's topology (blocks until it comes), or ``None`` when the child failed (``error`` says
        why); the parent's threads are restored either way."""
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            message = ("error", f"the mesh process ended without an answer (exit code {self._process.exitcode})")
        finally:
            self.close()
        kind, payload = message[0], message[1]
        if kind == "error":
            self.error = payload
            return None
        self.child_seconds = message[2]
        return _from_arrays(payload)

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


def _child_main(conn, extract: Callable[[], FixedTopology]) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP team is not the child's: one thread, no team at all
    start = time.perf_counter()
    try:
        topology = extract()
        conn.send(("ok", _to_arrays(topology), time.perf_counter() - start))
    except BaseException as exc:  # anything: the parent falls back to extracting itself
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    finally:
        conn.close()


def _to_arrays(topology: FixedTopology) -> dict:
    """Numpy copies (a torch tensor through a pipe would travel as shared memory)."""
    return {"canonical_vertices": topology.canonical_vertices.cpu().numpy(),
            "neutral_vertices": topology.neutral_vertices.cpu().numpy(),
            "faces": topology.faces.cpu().numpy(), "extraction": topology.extraction}


def _from_arrays(arrays: dict) -> FixedTopology:
    return FixedTopology(canonical_vertices=torch.from_numpy(arrays["canonical_vertices"]),
                         neutral_vertices=torch.from_numpy(arrays["neutral_vertices"]),
                         faces=torch.from_numpy(arrays["faces"]), extraction=arrays["extraction"])
