"""Ray as the folder tracker's distributed engine: one Ray task per video (``--engine ray``).

:class:`RayEngine` is an :class:`tracker.batch.Engine`: :func:`tracker.batch.track_folder` keeps the folder
semantics (output names, skipping finished outputs, the report rewritten as each result arrives, failures
recorded and the rest going on) and the engine only runs the tasks. It starts a local Ray, or connects to a
running cluster (``address``, else ``$RAY_ADDRESS``); a Ray that this process already started
(``ray.init()`` by the caller) is used as it is.

Every node reads the inputs and writes the outputs itself, so both folders must be on a path every node
sees (a shared file system mounted at the same place), and every node needs this package installed. At the
start one task checks that it sees the output folder the caller created and can write to it.

Ray is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from model.errors import InputError, MissingDependencyError
from tracker.batch import WORKER_DIED, Engine, Outcome, Task, TrackFn, init_worker_threads, run_task

RAY_INSTALL = 'pip install -e ".[ray]"'


def import_ray():
    """The ``ray`` module, or :class:`MissingDependencyError` with the install command."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--engine ray needs Ray, an optional extra: {RAY_INSTALL}") from None
    return ray


@dataclass
class RayEngine(Engine):
    """Each video is a Ray task (``nphm-track videos/ --out results/ --engine ray``).

    Attributes:
        address: the cluster to connect to (``ray://host:10001``, ``host:6379``, ``auto``); ``None``:
            ``$RAY_ADDRESS`` if set, else start a local Ray for this batch (shut down at the end).
        num_cpus: CPUs of a local Ray this engine starts [default: all of this machine's]; ignored when
            connecting to a cluster.
        cpus_per_task: CPUs reserved per video; the task runs ``max(1, int(cpus_per_task))`` torch threads.
        gpus_per_task: GPUs reserved per video (fractions share a GPU); set it when the tracking runs on
            ``cuda`` (Ray hides the GPUs from tasks that reserve none).
        retries: how many times a video is run again when its worker process dies (a lost node, a killed
            process); a video that fails by itself (no face, a bad file) is not retried.
        start_timeout_s: how long the start-up check waits for a node that can run a task (an autoscaling
            cluster may have to start one).
        connect_timeout_s: how long the check that a cluster's address answers (before ``ray.init``, which
            retries a wrong address for minutes) waits for it.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    retries: int = 0
    start_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    name: ClassVar[str] = "ray"
    _ray: Any = field(default=None, init=False, repr=False)
    _owned: bool = field(default=False, init=False, repr=False)
    _local: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.cpus_per_task > 0:
            raise InputError(f"cpus_per_task must be > 0, got {self.cpus_per_task}")
        if self.gpus_per_task < 0:
            raise InputError(f"gpus_per_task must be >= 0, got {self.gpus_per_task}")
        if self.retries < 0:
            raise InputError(f"retries must be >= 0, got {self.retries}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise InputError(f"num_cpus must be >= 1, got {self.num_cpus}")

    # ------------------------------------------------------------------------------------------ the Engine
    def start(self, in_dir: Path, out_dir: Path, first_video: Path) -> None:
        """Start or connect to Ray (a cluster's address must answer as a gRPC server within
        ``connect_timeout_s``: :func:`check_address`), then check from one task that it sees ``out_dir`` (the same folder, not a
        namesake on its node), can write to it, and can read ``first_video``."""
        ray = self._ray = import_ray()
        self._owned = self._local = False
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            local = address == "local"
            if not local and address != "auto":
                check_address(address, self.connect_timeout_s)
            try:
                ray.init(address=address, **({"num_cpus": self.num_cpus, "include_dashboard": False} if local else {}))
            except (ConnectionError, ValueError, RuntimeError) as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InputError(f"cannot {'start a local Ray' if local else f'connect to Ray at {address}'}: "
                                 f"{msg}") from None
            self._owned, self._local = True, local
        try:
            self._check_resources()
            self._check_folders(out_dir, first_video)
        except BaseException:
            self.stop()
            raise

    def run(self, tasks: Sequence[Task], track_fn: TrackFn, kwargs: dict[str, Any]) -> Iterator[tuple[int, Outcome]]:
        ray = self._ray
        remote = ray.remote(_ray_task).options(**self._resources(), max_retries=self.retries, retry_exceptions=False)
        fn_ref, kwargs_ref = ray.put(track_fn), ray.put(kwargs)  # sent once, not once per video
        threads = max(1, int(self.cpus_per_task))
        refs: dict[Any, Task] = {}
        pending: list = []
        try:
            for t in tasks:
                ref = remote.remote(threads, fn_ref, t.video, t.out, kwargs_ref, t.preview)
                refs[ref] = t
                pending.append(ref)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref].index, self._outcome(ref)
        except BaseException:  # Ctrl-C, an error in the caller, or the caller closed us
            self._cancel(pending, [refs[r] for r in pending])
            raise

    def stop(self) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
        self._owned = False

    # ------------------------------------------------------------------------------------------ internals
    def _resources(self) -> dict[str, float]:
        return {"num_cpus": self.cpus_per_task, "num_gpus": self.gpus_per_task}

    def _check_resources(self) -> None:
        """On a local Ray this engine started, a task that needs more than the machine has would wait for
        ever: refuse it."""
        if not self._local:
            return
        have = self._ray.cluster_resources()
        cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
        if self.cpus_per_task > cpus or self.gpus_per_task > gpus:
            raise InputError(f"a task needs {self.cpus_per_task:g} CPUs and {self.gpus_per_task:g} GPUs; the local "
                             f"Ray has {cpus:g} CPUs and {gpus:g} GPUs (--cpus-per-task, --gpus-per-task)")

    def _check_folders(self, out_dir: Path, first_video: Path) -> None:
        ray = self._ray
        token = secrets.token_hex(8)
        marker = out_dir / f".nphm-track-probe.{token}"
        marker.write_text(token)
        try:
            ref = ray.remote(_probe_folders).options(**self._resources(), max_retries=0).remote(
                str(out_dir), marker.name, token, str(first_video))
            try:
                host, error = ray.get(ref, timeout=self.start_timeout_s)
            except ray.exceptions.GetTimeoutError:
                ray.cancel(ref, force=True)
                raise InputError(f"no Ray node ran a task needing {self.cpus_per_task:g} CPUs and "
                                 f"{self.gpus_per_task:g} GPUs within {self.start_timeout_s:g} s") from None
        finally:
            marker.unlink(missing_ok=True)
        if error:
            raise InputError(f"{error} (in a Ray task on {host}: inputs and outputs must be on a path every node "
                             f"sees)")

    def _outcome(self, ref) -> Outcome:
        """The task's outcome, or a failed one saying how its worker or node was lost."""
        ex = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except ex.OutOfMemoryError:
            reason = "Ray killed the worker process: its node was running out of memory"
        except ex.WorkerCrashedError:
            reason = WORKER_DIED
        except (ex.NodeDiedError, ex.LocalRayletDiedError):
            reason = "the Ray node running it died"
        except ex.TaskCancelledError:
            reason = "cancelled"
        except ex.RayTaskError as exc:  # raised outside run_task's own handling, e.g. unpickling the track fn
            cause = getattr(exc, "cause", None) or exc
            lines = str(cause).strip().splitlines()
            return Outcome("failed", f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": "))
        except ex.RayError as exc:
            lines = str(exc).strip().splitlines()
            reason = f"Ray: {type(exc).__name__}" + (f": {lines[0]}" if lines else "")
        if self.retries:
            reason += f" ({self.retries + 1} attempts)"
        return Outcome("failed", reason, worker_died=True)

    def _cancel(self, refs: list, tasks: list[Task]) -> None:
        """Cancel the outstanding tasks, wait until they are gone, then remove what they left half-written."""
        ray = self._ray
        try:
            for ref in refs:
                ray.cancel(ref, force=True)
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=30)
        except Exception:  # noqa: BLE001 - cancelling is best effort; the interrupt itself goes on
            pass
        for task in tasks:
            task.clear()


def _ray_task(threads: int, track_fn: TrackFn, video: Path, out: Path, kwargs: dict[str, Any],
              preview: Path | None = None) -> Outcome:
    """One video in a Ray worker: its share of the cores, then :func:`tracker.batch.run_task`."""
    init_worker_threads(threads)
    return run_task(track_fn, video, out, kwargs, preview)


def _probe_folders(out_dir: str, marker: str, token: str, video: str) -> tuple[str, str | None]:
    """In a Ray task: ``(host, None)`` if this node sees the caller's output folder (the marker file holds
    ``token``), can create and delete files there, and can read ``video``; else ``(host, one-line error)``."""
    host = socket.gethostname()
    path = Path(out_dir) / marker
    try:
        seen = path.read_text()
    except OSError:
        seen = None
    if seen != token:
        return host, f"{out_dir}: not the output folder the command created (not shared with this node?)"
    probe = path.with_name(f"{marker}.{os.getpid()}.partial")
    try:
        open(probe, "xb").close()
        probe.unlink()
        path.unlink()
    except OSError as exc:
        return host, f"{out_dir}: cannot write the output folder: {exc.strerror or exc}"
    try:
        with open(video, "rb") as f:
            f.read(1)
    except OSError as exc:
        return host, f"{video}: cannot read it: {exc.strerror or exc}"
    return host, None


#: Default ports of a Ray address without one: the Ray Client server (``ray://``) and the GCS.
RAY_CLIENT_PORT, GCS_PORT = 10001, 6379
#: An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """Check that a Ray cluster address (``ray://host[:10001]`` or ``host[:6379]``) answers as a gRPC server,
    as the Ray Client server and the GCS do, within ``timeout_s`` seconds.

    ``ray.init`` retries an address where nothing listens for a minute and more before it fails, and one
    where something else listens (the dashboard's 8265) may hang; this check fails in at most
    ``timeout_s`` (plus the name lookup). It is skipped for TLS clusters (``$RAY_USE_TLS``), whose
    handshake it does not speak, which are then checked by the TCP connection alone.

    Raises:
        InputError: one line naming the address: unparsable, the host unknown, nothing listening, no answer
            in time, or not a gRPC server.
    """
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port_text = rest.rpartition(":")
    if not sep or "]" in port_text:  # no port (an IPv6 address in brackets has colons of its own)
        host, port_text = rest, str(RAY_CLIENT_PORT if client else GCS_PORT)
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        raise InputError(f"cannot connect to Ray at {address}: not host:port or ray://host:port")
    tls = os.environ.get("RAY_USE_TLS", "0").lower() not in ("", "0", "false")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout_s) as conn:
            if tls:
                return
            conn.settimeout(timeout_s)
            conn.sendall(_HTTP2_HELLO)
            head = b""
            while len(head) < 9:  # the server's first frame must be its SETTINGS
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.gaierror as exc:
        raise InputError(f"cannot connect to Ray at {address}: unknown host {host} ({exc.strerror})") from None
    except OSError as exc:  # refused, unreachable, timed out
        reason = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise InputError(f"cannot connect to Ray at {address}: {reason}") from None
    if len(head) < 9 or head[3] != 4:
        port_hint = f"Ray Client's is {RAY_CLIENT_PORT}" if client else f"the GCS's is {GCS_PORT}"
        raise InputError(f"cannot connect to Ray at {address}: it does not answer as Ray does (a gRPC server; "
                         f"{port_hint}, not the dashboard's 8265)")
