"""A frame of a clip beside the tracked identity's neutral head (the README's picture of d0 and d6).

    nphm-track d6.mp4 --out d6.usd --max-frames 150       # writes d6.track.npz beside it
    python examples/scripts/identity_figure.py d6.mp4 d6.track.npz --out d6_identity.png

Three panels, cropped around the face: the frame; the tracked identity at the *neutral* expression in that
frame's pose and camera (so the shape, not the expression, is compared with the person); the same head seen
from the front. ``--time`` picks the frame (default: the track's first keyframe).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def neutral_mesh(models, z_id: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Head-frame vertices ``[V, 3]`` and faces ``[F, 3]`` of identity ``z_id [D]`` at the neutral expression."""
    from tracker.predict import start_topology

    topo = start_topology(models, torch.as_tensor(z_id, dtype=torch.float32)[None], resolution)
    return topo.neutral_vertices.numpy(), topo.faces.numpy()


def render(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from tracker.preview import render_overlay

    grey = np.full((*size, 3), 40, np.uint8)
    return render_overlay(grey, vertices_cam, faces, K, alpha=1.0)


def crop_box(points: np.ndarray, shape: tuple[int, int], margin: float = 0.35) -> tuple[int, int, int, int]:
    lo, hi = points.min(0), points.max(0)
    c, half = (lo + hi) / 2, (hi - lo).max() * (0.5 + margin)
    x0, y0 = int(max(c[0] - half, 0)), int(max(c[1] - half, 0))
    x1, y1 = int(min(c[0] + half, shape[1])), int(min(c[1] + half, shape[0]))
    return x0, y0, x1, y1


def main() -> None:
    import cv2

    from tracker.decode import open_video
    from tracker.pipeline import camera_vertices
    from tracker.predict import Models
    from tracker.trackfile import load_track

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("track", type=Path, help="the .track.npz nphm-track wrote for the video")
    ap.add_argument("--out", type=Path, required=True, help="a .png")
    ap.add_argument("--time", type=float, default=None, help="seconds into the clip (default: the first keyframe)")
    ap.add_argument("--resolution", type=int, default=128, help="marching cubes of the neutral head")
    ap.add_argument("--height", type=int, default=360, help="height of each panel (px)")
    args = ap.parse_args()

    track = load_track(args.track)
    tracked = np.flatnonzero(track.status == "tracked")
    if args.time is not None:
        row = int(tracked[np.argmin(np.abs(track.time_s[tracked] - args.time))])
    else:
        keys = track.meta.get("keyframes") or [int(track.frame_index[tracked[0]])]
        row = int(np.flatnonzero(track.frame_index == keys[0])[0])
    index = int(track.frame_index[row])
    with open_video(args.video) as stream:
        image = next(f.image for f in stream if f.index == index)
    models = Models.load()
    verts, faces = neutral_mesh(models, track.z_id, args.resolution)
    K = track.K[row]
    H, W = image.shape[:2]
    posed = render(camera_vertices(verts, torch.as_tensor(track.pose[row])), faces, K, (H, W))
    # the front view: model (x left of the head, y up, z out of the face) -> OpenCV camera, 0.5 m away
    front_R = np.diag([1.0, -1.0, -1.0])
    span = verts.max(0) - verts.min(0)
    dist = 2.6 * span[1]
    front_K = np.array([[H * 2.2, 0, W / 2], [0, H * 2.2, H / 2], [0, 0, 1.0]])
    centre = (verts.max(0) + verts.min(0)) / 2
    front = render((verts - centre) @ front_R.T + [0, 0, dist], faces, front_K, (H, W))
    x0, y0, x1, y1 = crop_box(track.detections_px[row], (H, W))
    panels = [image[y0:y1, x0:x1], posed[y0:y1, x0:x1]]
    fx0, fy0, fx1, fy1 = crop_box(np.argwhere(front.sum(-1) != 3 * 40)[:, ::-1].astype(float), (H, W), 0.1)
    panels.append(front[fy0:fy1, fx0:fx1])
    panels = [cv2.resize(p, (int(p.shape[1] * args.height / p.shape[0]), args.height), interpolation=cv2.INTER_AREA)
              for p in panels]
    sheet = np.concatenate(panels, axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"{args.out}: frame {index} ({track.time_s[row]:.2f} s), keyframes {track.meta.get('keyframes')}")


if __name__ == "__main__":
    main()
