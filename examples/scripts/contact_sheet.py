"""A contact sheet of a preview video: N evenly spaced frames in a grid, one image (the README's picture).

    nphm-track examples/synthetic_head/video_0000.mp4 --out anim.usd --preview preview.mp4
    python examples/scripts/contact_sheet.py preview.mp4 --out examples/synthetic_head/preview_sheet.jpg
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tracker.decode import open_video


def contact_sheet(video: Path, frames: int = 6, columns: int = 3, width: int = 1200) -> Image.Image:
    """``frames`` evenly spaced frames of ``video`` tiled ``columns`` wide, scaled to ``width`` pixels."""
    with open_video(video) as stream:
        images = [f.image for f in stream]
    if not images:
        raise SystemExit(f"{video}: no frames")
    pick = np.linspace(0, len(images) - 1, min(frames, len(images))).round().astype(int)
    tiles = [images[i] for i in pick]
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    image = Image.fromarray(sheet)
    return image.resize((width, round(width * image.height / image.width)), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="image to write (.jpg or .png)")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--columns", type=int, default=3)
    ap.add_argument("--width", type=int, default=1200)
    args = ap.parse_args()
    image = contact_sheet(args.video, args.frames, args.columns, args.width)
    tmp = args.out.with_name(args.out.stem + ".tmp" + args.out.suffix)
    image.save(tmp, quality=85)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
