"""The main job's own speed figure: ``nphm-track`` on the shipped 75-frame example, as a user runs it (issue 18).

Runs the CLI ``--runs`` times in fresh processes, one after another, and prints one JSON line with the fps
each run reported (frames over the seconds from opening the video to the files written; Python's start and
the imports are outside it) and each run's wall time (the whole command). The project's machine is a shared
virtual one whose speed drifts by up to a third over minutes, so the median is the figure, min and max are
printed beside it, and so is a reference: the milliseconds of a 2048x2048 float32 matrix product on the same
threads just before each run (about 100 ms on two threads when the machine is at its usual speed)::

    python tests/benchmarks/bench_cli_speed.py             # 5 runs, default settings, USD out
    python tests/benchmarks/bench_cli_speed.py --runs 9 --threads 1

``--against DIR`` runs another checkout of the project (say ``git worktree add /tmp/old <commit>``) in turn
with this one, run for run, so that both see the same drift; its figures are printed under ``"against"``::

    python tests/benchmarks/bench_cli_speed.py --runs 7 --against /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "synthetic_head" / "video_0000.mp4"
REPORTED = re.compile(r"wrote .*?; ([0-9.]+) fps\)")


def run_once(out: Path, threads: int | None, root: Path = ROOT) -> tuple[float, float]:
    """``(reported fps, wall seconds)`` of one CLI run of the checkout at ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", "import sys; from tracker.cli import main; sys.argv[0] = 'nphm-track'; main()",
           str(EXAMPLE), "--out", str(out)]  # the README's command, progress bar and all
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - start
    found = REPORTED.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"nphm-track failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return float(found.group(1)), wall


def reference_ms(threads: int | None) -> float:
    """Median milliseconds of a 2048^2 float32 matrix product (the machine's speed at the moment)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(2048, 2048)
    x @ x
    times = []
    for _ in range(10):
        start = time.perf_counter()
        x @ x
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs [default: all cores]")
    ap.add_argument("--against", type=Path, default=None,
                    help="another checkout of the project, run in turn with this one (module docstring)")
    args = ap.parse_args()
    roots = {"this": ROOT} if args.against is None else {"this": ROOT, "against": args.against.resolve()}
    fps: dict = {k: [] for k in roots}
    wall: dict = {k: [] for k in roots}
    reference = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            reference.append(reference_ms(args.threads))
            for k, root in roots.items():
                f, w = run_once(Path(tmp) / "anim.usd", args.threads, root)
                fps[k].append(f)
                wall[k].append(w)
    out = {"bench": "cli_speed", "clip": EXAMPLE.name, "frames": 75, "threads": args.threads or os.cpu_count(),
           "runs": args.runs, **summary(fps["this"], wall["this"]), "reference_matmul_ms": reference}
    if args.against is not None:
        out["against"] = {"checkout": str(args.against), **summary(fps["against"], wall["against"])}
    print(json.dumps(out))


def summary(fps: list[float], wall: list[float]) -> dict:
    return {"fps_reported_median": round(statistics.median(fps), 2), "fps_reported_min": min(fps),
            "fps_reported_max": max(fps), "fps_reported": fps, "wall_seconds_median": round(statistics.median(wall), 2),
            "wall_seconds": [round(w, 2) for w in wall]}


if __name__ == "__main__":
    main()
