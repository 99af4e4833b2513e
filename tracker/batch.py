"""Tracking a folder of videos: parallel worker processes, resumable, going on past failures, with a report.

:func:`track_folder` tracks every video file of a folder (by extension, sorted by name) into
``out_dir/<stem><ext>``. Each file runs in its own task of a process pool (spawn start method, so workers
share no state with the caller; ``workers=1`` runs in this process). An output that already exists is
complete (every writer renames its file into place only when it is finished) and is skipped, so running the
same command again resumes an interrupted batch. A file that fails is recorded with its one-line error and
the others go on. ``out_dir/report.json`` is rewritten atomically after every file::

    {"format": "nphm-track.batch-report", "format_version": 1, "in_dir": ..., "out_dir": ..., "ext": ...,
     "counts": {"ok": n, "skipped": n, "failed": n}, "seconds": wall-clock seconds of this run,
     "files": [{"input", "output", "status": "ok"|"skipped"|"failed"|"pending", "error": str|null,
                "seconds": float, "frames": int|null}, ...]}
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from model.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
REPORT_NAME = "report.json"
REPORT_FORMAT = "nphm-track.batch-report"

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
    """

    input: str
    output: str
    status: str = "pending"
    error: str | None = None
    seconds: float = 0.0
    frames: int | None = None


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


def find_videos(in_dir: Path) -> list[Path]:
    """Video files directly in ``in_dir`` (by extension, case-insensitive), sorted by name."""
    return sorted((p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                  key=lambda p: p.name)


def track_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, ext: str = ".usd", workers: int = 2,
                 track_fn: TrackFn | None = None, progress: bool = True, **track_kwargs: Any) -> BatchReport:
    """Track every video of ``in_dir`` into ``out_dir/<stem><ext>``.

    Args:
        in_dir: folder of videos (``.mp4 .mov .mkv .avi .webm .m4v``; sub-folders are not searched).
        out_dir: output folder, created when missing.
        ext: output extension, any format of :mod:`exporters` (checked before any work).
        workers: parallel worker processes; 1 runs in this process. Each worker gets ``cpu_count // workers``
            threads (``OMP_NUM_THREADS`` and ``torch.set_num_threads``).
        track_fn: called as ``track_fn(video: Path, out: Path, **track_kwargs)``; default
            :func:`tracker.pipeline.track_video`. Must be picklable (a module-level function) when
            ``workers > 1``; its result's ``n_frames`` (if any) is reported.
        progress: show a progress bar over files.
        **track_kwargs: passed to every ``track_fn`` call (e.g. ``config=``); picklable when ``workers > 1``.

    Returns:
        The :class:`BatchReport` (also written to ``out_dir/report.json``).

    Raises:
        InputError: ``in_dir`` is not a folder or holds no video, two videos would write the same output,
            ``ext`` is unknown, ``workers < 1``, or ``out_dir`` cannot be created or written.
    """
    from exporters.registry import writer_class  # here, not at the top: worker processes do not need it

    start = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if not ext.startswith("."):
        ext = "." + ext
    writer_class(f"out{ext}")  # unknown extension: fail before any work
    if not in_dir.is_dir():
        raise InputError(f"{in_dir}: not a folder")
    videos = find_videos(in_dir)
    if not videos:
        raise InputError(f"{in_dir}: no video files ({' '.join(VIDEO_SUFFIXES)})")
    outputs = [out_dir / f"{v.stem}{ext}" for v in videos]
    seen: dict[Path, Path] = {}
    for v, o in zip(videos, outputs):
        if o in seen:
            raise InputError(f"{in_dir}: {seen[o].name} and {v.name} would both write {o.name}")
        seen[o] = v
    _prepare_out_dir(out_dir)
    if track_fn is None:
        from tracker.pipeline import track_video
        track_fn = track_video

    previous = _previous_frames(out_dir / REPORT_NAME)
    files = [FileReport(str(v), str(o)) for v, o in zip(videos, outputs)]
    report = BatchReport(files, out_dir / REPORT_NAME)
    todo = []
    for i, f in enumerate(files):
        if outputs[i].exists():
            f.status, f.frames = "skipped", previous.get(f.input)
        else:
            todo.append(i)

    def finish(i: int, outcome: tuple[str, str | None, float, int | None]) -> None:
        f = files[i]
        f.status, f.error, f.seconds, f.frames = outcome
        _write_report(report, in_dir, out_dir, ext, time.perf_counter() - start)
        bar.update(1)
        bar.set_postfix(failed=sum(x.status == "failed" for x in files), refresh=False)

    _write_report(report, in_dir, out_dir, ext, time.perf_counter() - start)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tqdm(total=len(todo), desc="videos", unit="video", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                finish(i, _track_one(track_fn, videos[i], outputs[i], track_kwargs))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                     initializer=_init_worker, initargs=(threads,)) as pool:
                futures: dict[Future, int] = {
                    pool.submit(_track_one, track_fn, videos[i], outputs[i], track_kwargs): i for i in todo}
                try:
                    for fut in as_completed(futures):
                        try:
                            outcome = fut.result()
                        except BrokenProcessPool:
                            outcome = ("failed", "the worker process died (out of memory or killed?)", 0.0, None)
                        finish(futures[fut], outcome)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    report.seconds = time.perf_counter() - start
    _write_report(report, in_dir, out_dir, ext, report.seconds)
    return report


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


def _init_worker(threads: int) -> None:
    """Worker start-up: share the CPU cores between workers."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _track_one(track_fn: TrackFn, video: Path, out: Path, kwargs: dict[str, Any]
               ) -> tuple[str, str | None, float, int | None]:
    """Run one file: ``(status, error, seconds, frames)``. Every exception becomes a one-line error (user
    errors as their message; anything else prefixed by its type, as it is likely a bug)."""
    t0 = time.perf_counter()
    try:
        result = track_fn(video, out, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not isinstance(exc, (InputError, OSError)) or not msg:
            msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        return "failed", msg, time.perf_counter() - t0, None
    frames = getattr(result, "n_frames", None)
    return "ok", None, time.perf_counter() - t0, int(frames) if isinstance(frames, int) else None


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
