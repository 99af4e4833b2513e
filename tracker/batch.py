"""Tracking a folder of videos: one task per file on an engine, resumable, going on past failures, with a report.

:func:`track_folder` tracks every video file of a folder (by extension, sorted by name) into
``out_dir/<stem><ext>`` (plus its track file ``<stem>.track.npz``, and with ``preview_dir`` a preview
``preview_dir/<stem>.preview.mp4``). Two videos that would write the same file are refused before any work.
Each file is one task; an :class:`Engine` runs the tasks and hands back their outcomes as they finish:
:class:`tracker.local_engine.LocalEngine` (the default) in worker processes on this machine (spawn start method, so workers share
no state with the caller), or :class:`tracker.ray_engine.RayEngine` as Ray tasks on a local Ray or a cluster.
Everything else is shared by the engines: a file whose output (and preview, when asked for) already exists is
complete (every writer renames its file into place only when it is finished) and is skipped, so running the
same command again resumes an interrupted batch. A file that fails, or whose worker process dies, is
recorded with its one-line error and the others go on (a dead worker's file can be run again: ``retries``
of either engine); hidden temporaries a killed worker left beside its outputs are removed.
``out_dir/report.json`` is rewritten atomically after every file::

    {"format": "nphm-track.batch-report", "format_version": 1, "in_dir": ..., "out_dir": ..., "ext": ...,
     "counts": {"ok": n, "skipped": n, "failed": n}, "seconds": wall-clock seconds of this run,
     "files": [{"input", "output", "status": "ok"|"skipped"|"failed"|"pending", "error": str|null,
                "seconds": float, "frames": int|null, "preview": str|null}, ...]}
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

from tqdm import tqdm

from model.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
REPORT_NAME = "report.json"
REPORT_FORMAT = "nphm-track.batch-report"
#: The error of a file whose worker process died while tracking it.
WORKER_DIED = "the worker process died (out of memory or killed?)"

TrackFn = Callable[..., Any]


@dataclass
class FileReport:
    """What happened to one input file.

    Attributes:
        input, output: the video and its output path.
        status: ``"ok"`` (tracked now), ``"skipped"`` (output already there), ``"failed"``, or ``"pending"``
            (not finished when the report was written).
        error: the one-line error message of a failure, else ``None``.
        seconds: wall-clock seconds spent on the file in this run.
        frames: frames tracked (``n_frames`` of the tracking result), ``None`` when unknown.
        preview: the preview video's path, ``None`` when no preview was asked for.
    """

    input: str
    output: str
    status: str = "pending"
    error: str | None = None
    seconds: float = 0.0
    frames: int | None = None
    preview: str | None = None


@dataclass
class BatchReport:
    """The outcome of :func:`track_folder`; ``failed`` says whether the command should exit non-zero."""

    files: list[FileReport]
    report_path: Path
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether any file failed."""
        return any(f.status == "failed" for f in self.files)


@dataclass(frozen=True)
class Task:
    """One file to track: its row in the report, the video, its output path and its preview path (``None``:
    no preview)."""

    index: int
    video: Path
    out: Path
    preview: Path | None = None

    def clear(self) -> None:
        """Remove what a killed attempt at this task left half-written (only while no attempt runs)."""
        remove_temporaries(self.out)
        if self.preview is not None:
            remove_temporaries(self.preview)


@dataclass
class Outcome:
    """How one task ended, as an engine reports it.

    Attributes:
        status: ``"ok"`` or ``"failed"``.
        error: the one-line reason of a failure, else ``None``.
        seconds: wall-clock seconds the task ran (0 when its worker died).
        frames: frames tracked, ``None`` when unknown.
        worker_died: the process running the task died (killed, out of memory, node lost), so it may have
            left temporaries beside its output; :func:`track_folder` removes them.
    """

    status: str
    error: str | None = None
    seconds: float = 0.0
    frames: int | None = None
    worker_died: bool = False


class Engine:
    """Where the tasks of :func:`track_folder` run: the one part of folder tracking that differs between the
    local process pool and a cluster (a small strategy object; the report, resume and failure rules live in
    :func:`track_folder`).

    :func:`track_folder` calls :meth:`start` once before the first task (only when there is work), then
    iterates :meth:`run`, and calls :meth:`stop` at the end, also after an error or Ctrl-C.
    """

    name: ClassVar[str] = "engine"

    def start(self, in_dir: Path, out_dir: Path, first_video: Path) -> None:
        """Get ready to run tasks (connect, check that the folders are reachable); :class:`InputError` when
        the batch cannot run."""

    def run(self, tasks: Sequence[Task], track_fn: TrackFn, kwargs: dict[str, Any]) -> Iterator[tuple[int, Outcome]]:
        """Run :func:`run_task` for every task; yield ``(task.index, outcome)`` in the order they finish.

        A task whose worker dies yields a failed :class:`Outcome` with ``worker_died=True``. When the
        iteration is abandoned (an exception, Ctrl-C, ``close()``), the outstanding tasks are cancelled.
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Release what :meth:`start` acquired."""


def find_videos(in_dir: Path) -> list[Path]:
    """Video files directly in ``in_dir`` (by extension, case-insensitive), sorted by name."""
    return sorted((p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                  key=lambda p: p.name)


def track_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, ext: str = ".usd", workers: int = 2,
                 track_fn: TrackFn | None = None, progress: bool = True, engine: Engine | None = None,
                 preview_dir: str | os.PathLike | None = None, **track_kwargs: Any) -> BatchReport:
    """Track every video of ``in_dir`` into ``out_dir/<stem><ext>``.

    Args:
        in_dir: folder of videos (``.mp4 .mov .mkv .avi .webm .m4v``; sub-folders are not searched).
        out_dir: output folder, created when missing. With a distributed engine both folders must be on a
            path every node sees (a shared file system).
        ext: output extension, any format of :mod:`exporters` or ``.csv`` (a Live Link Face take), checked
            with ``cfg.rig`` (:func:`tracker.bake.check_arkit_target`) before any work.
        workers: parallel worker processes of the default engine, ``LocalEngine(workers)``.
        track_fn: called as ``track_fn(video: Path, out: Path, **track_kwargs)`` (plus ``preview=`` the
            video's preview path with ``preview_dir``); default :func:`tracker.pipeline.track_video`. Must be
            picklable (a module-level function) when the tasks run in other processes; its result's
            ``n_frames`` (if any) is reported.
        progress: show a progress bar over files.
        engine: where the tasks run: :class:`tracker.local_engine.LocalEngine` (default) or
            :class:`tracker.ray_engine.RayEngine`; ``workers`` is ignored when given.
        preview_dir: write one preview per video, ``preview_dir/<stem>.preview.mp4`` (created when missing;
            may be ``out_dir``, not ``in_dir``); ``None``: no previews.
        **track_kwargs: passed to every ``track_fn`` call (e.g. ``cfg=``); picklable as ``track_fn``.

    Returns:
        The :class:`BatchReport` (also written to ``out_dir/report.json``).

    Raises:
        InputError: ``in_dir`` is not a folder or holds no video, two videos would write the same output,
            track file or preview (both named), ``ext`` is unknown, ``workers < 1``, ``out_dir`` or
            ``preview_dir`` cannot be created or written, ``preview`` is among ``track_kwargs``, or the
            engine cannot run the batch (:meth:`Engine.start`).
        KeyboardInterrupt: on Ctrl-C, after the outstanding tasks were cancelled; their rows stay
            ``pending`` in the report.
    """
    from tracker.bake import check_arkit_target, pca_options  # here, not at the top: workers do not need them

    start = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    preview_dir = None if preview_dir is None else Path(preview_dir)
    if engine is None:
        from tracker.local_engine import LocalEngine
        engine = LocalEngine(workers)
    if "preview" in track_kwargs:
        raise InputError("preview: a folder gets one preview per video; give preview_dir (a folder)")
    if not ext.startswith("."):
        ext = "." + ext
    rig = getattr(track_kwargs.get("cfg"), "rig", None)
    if not check_arkit_target(f"out{ext}", rig):  # a .csv take, or a rig format for --rig arkit
        pca_options(f"out{ext}", rig)  # unknown extension, or --rig pca without blend shapes: fail before any work
    if not in_dir.is_dir():
        raise InputError(f"{in_dir}: not a folder")
    videos = find_videos(in_dir)
    if not videos:
        raise InputError(f"{in_dir}: no video files ({' '.join(VIDEO_SUFFIXES)})")
    if preview_dir is not None and preview_dir.resolve() == in_dir.resolve():
        raise InputError(f"{preview_dir}: the previews cannot go into the input folder (the next run would "
                         "track them as videos)")
    tasks = plan_tasks(videos, out_dir, ext, preview_dir)
    _prepare_out_dir(out_dir)
    if preview_dir is not None:
        _prepare_out_dir(preview_dir)
    if track_fn is None:
        from tracker.pipeline import track_video
        track_fn = track_video

    previous = _previous_frames(out_dir / REPORT_NAME)
    files = [FileReport(str(t.video), str(t.out), preview=None if t.preview is None else str(t.preview))
             for t in tasks]
    report = BatchReport(files, out_dir / REPORT_NAME)
    todo = []
    for t, f in zip(tasks, files):
        if t.out.exists() and (t.preview is None or t.preview.exists()):
            f.status, f.frames = "skipped", previous.get(f.input)
        else:
            todo.append(t)
    if todo:
        engine.start(in_dir, out_dir, todo[0].video)
    try:
        _write_report(report, in_dir, out_dir, ext, time.perf_counter() - start)
        with tqdm(total=len(todo), desc="videos", unit="video", disable=not progress) as bar:
            results = engine.run(todo, track_fn, track_kwargs) if todo else iter(())
            try:
                for i, outcome in results:
                    if outcome.worker_died:
                        tasks[i].clear()
                    f = files[i]
                    f.status, f.error, f.seconds, f.frames = (outcome.status, outcome.error, outcome.seconds,
                                                              outcome.frames)
                    _write_report(report, in_dir, out_dir, ext, time.perf_counter() - start)
                    bar.update(1)
                    bar.set_postfix(failed=sum(x.status == "failed" for x in files), refresh=False)
            finally:
                getattr(results, "close", lambda: None)()  # an engine's generator cancels what is left
    finally:
        if todo:
            engine.stop()
    report.seconds = time.perf_counter() - start
    _write_report(report, in_dir, out_dir, ext, report.seconds)
    return report


def plan_tasks(videos: Sequence[Path], out_dir: Path, ext: str, preview_dir: Path | None = None) -> list[Task]:
    """One :class:`Task` per video: ``out_dir/<stem><ext>``, its track file ``<stem>.track.npz`` beside it,
    and with ``preview_dir`` the preview ``preview_dir/<stem>.preview.mp4``.

    Raises:
        InputError: two videos would write the same file (``a.mp4`` and ``a.mov``; ``a.mp4``'s track file
            ``a.track.npz`` is ``a.track.mp4``'s output with ``ext=".npz"``); the error names both videos
            and the file.
    """
    from tracker.pipeline import track_path_for

    writes: dict[Path, Path] = {}  # file written -> the video that writes it
    tasks = []
    for i, v in enumerate(videos):
        task = Task(i, v, out_dir / f"{v.stem}{ext}",
                    None if preview_dir is None else preview_dir / f"{v.stem}.preview.mp4")
        for path in (task.out, track_path_for(task.out), task.preview):
            if path is None:
                continue
            key = path.resolve()
            if key in writes:
                raise InputError(f"{v.parent}: {writes[key].name} and {v.name} would both write {path.name}")
            writes[key] = v
        tasks.append(task)
    return tasks


def run_task(track_fn: TrackFn, video: Path, out: Path, kwargs: dict[str, Any], preview: Path | None = None
             ) -> Outcome:
    """Run one file (in whichever process the engine picked): the :class:`Outcome`.

    Temporaries an earlier, killed attempt at the same output (or preview) left behind are removed first.
    ``preview``, when given, is passed on as ``track_fn(..., preview=preview)``. Every exception becomes a
    one-line error (user errors as their message; anything else prefixed by its type, as it is likely a bug).
    """
    t0 = time.perf_counter()
    Task(0, Path(video), Path(out), None if preview is None else Path(preview)).clear()
    if preview is not None:
        kwargs = {**kwargs, "preview": preview}
    try:
        result = track_fn(video, out, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not isinstance(exc, (InputError, OSError)) or not msg:
            msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        return Outcome("failed", msg, time.perf_counter() - t0)
    frames = getattr(result, "n_frames", None)
    return Outcome("ok", None, time.perf_counter() - t0, int(frames) if isinstance(frames, int) else None)


#: Suffixes of the temporaries the writers of one output use (``exporters.base.temp_name``): the output's
#: own, the NPZ/MDD data file, PC2/MDD rest mesh, glTF buffer, a replaced mesh-sequence folder; the track
#: file's is ``.npz``.
_TEMP_SUFFIXES = (".data", ".obj", ".bin", ".old", "")


def remove_temporaries(out: Path) -> list[Path]:
    """Delete the hidden temporaries (``exporters.base.temp_name``: ``.<stem>.<8 hex>.partial<suffix>``) that
    the writers of ``out`` and of its track file ``<stem>.track.npz`` leave beside it when their process is
    killed. Only call it when no task is writing ``out``. Returns the paths removed."""
    from exporters.base import remove_path

    stem = re.escape(out.name[: len(out.name) - len(out.suffix)] if out.suffix else out.name)
    suffixes = "|".join(re.escape(s) for s in {out.suffix, *_TEMP_SUFFIXES})
    pattern = re.compile(rf"\.{stem}(\.[0-9a-f]{{8}}\.partial({suffixes})|\.track\.[0-9a-f]{{8}}\.partial\.npz)")
    try:
        found = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []
    for p in found:
        remove_path(p)
    return found


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and check that files can be created in it (:class:`InputError` otherwise)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = _temp_name(out_dir / REPORT_NAME)
        open(probe, "xb").close()
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot write the output folder: {exc.strerror or exc}") from None


def _temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def init_worker_threads(threads: int) -> None:
    """Worker start-up: this process's share of the CPU cores (``OMP_NUM_THREADS``, torch threads)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _previous_frames(path: Path) -> dict[str, int]:
    """Frame counts by input of an earlier report in the same folder (for skipped files); {} if none."""
    try:
        files = json.loads(path.read_text())["files"]
        return {f["input"]: f["frames"] for f in files if isinstance(f.get("frames"), int)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_report(report: BatchReport, in_dir: Path, out_dir: Path, ext: str, seconds: float) -> None:
    """Write ``report.json`` atomically (temporary name in the same folder, then rename)."""
    report.counts = {s: sum(f.status == s for f in report.files) for s in ("ok", "skipped", "failed", "pending")}
    payload = {"format": REPORT_FORMAT, "format_version": 1, "in_dir": str(in_dir), "out_dir": str(out_dir),
               "ext": ext, "counts": report.counts, "seconds": round(seconds, 3),
               "files": [asdict(f) for f in report.files]}
    tmp = _temp_name(report.report_path)
    try:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, report.report_path)
    finally:
        if tmp.exists():
            tmp.unlink()
