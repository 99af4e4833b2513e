"""``nphm-train``: data generation and every training loop, as subcommands."""

from __future__ import annotations

import click

from tracker import __version__
from tracker.cli_util import one_line_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nphm-train")
def main() -> None:
    """Build the synthetic head world from ICT-FaceKit and train the project's models."""


@main.group()
def data() -> None:
    """Generate the synthetic head world (SDF samples, renders, videos) from ICT-FaceKit."""


@data.command("heads")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--identities", type=click.IntRange(min=1), default=50, show_default=True,
              help="Number of random identities.")
@click.option("--expressions", type=click.IntRange(min=1), default=10, show_default=True,
              help="Expressions per identity (the first is neutral).")
@click.option("--seed", type=int, default=0, show_default=True, help="Global seed.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@click.option("--surface-points", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Surface points with normals per head.")
@click.option("--near-points", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Near-surface SDF points per head.")
@click.option("--space-points", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Uniform SDF points in the box per head.")
@one_line_errors("nphm-train")
def data_heads(out_dir: str, identities: int, expressions: int, seed: int, ict_path: str | None,
               surface_points: int, near_points: int, space_points: int) -> None:
    """SDF training samples of random ICT heads (resumable; see train/heads_data.py for the format)."""
    from train.heads_data import HeadsDataConfig, generate_heads_dataset

    config = HeadsDataConfig(n_surface=surface_points, n_near=near_points, n_space=space_points)
    result = generate_heads_dataset(out_dir, identities, expressions, seed, ict_path=ict_path, config=config)
    click.echo(f"{result.manifest_path}: {len(result.items)} heads ({result.n_written} written, "
               f"{result.n_skipped} already there) in {result.seconds:.1f} s")


@data.command("renders")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("-n", "n", type=int, default=1000, show_default=True, help="Number of renders.")
@click.option("--res", "resolution", type=int, default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed (sample i uses [seed, i]).")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def data_renders(out_dir: str, n: int, resolution: int, seed: int, ict_path: str | None) -> None:
    """Random ICT head renders with per-pixel ground truth (mask, depth, normals, canonical points).

    Writes OUT/renders/r_*.npz and OUT/manifest.json; re-running resumes.
    """
    from train.renders_data import generate_renders

    click.echo(generate_renders(out_dir, n, resolution, seed, ict_path))


@data.command("videos")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("-n", "n", type=int, default=1, show_default=True, help="Number of videos.")
@click.option("--frames", type=int, default=75, show_default=True, help="Frames per video.")
@click.option("--res", "resolution", type=int, default=512, show_default=True, help="Width = height (even).")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Frames per second.")
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed (video i uses [seed, i]).")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def data_videos(out_dir: str, n: int, frames: int, resolution: int, fps: float, seed: int,
                ict_path: str | None) -> None:
    """Synthetic H.264 videos of one head each, with per-frame ground truth beside them.

    Writes OUT/video_NNNN.mp4, OUT/video_NNNN.gt.npz and OUT/manifest.json; re-running resumes.
    """
    from train.video import generate_videos

    click.echo(generate_videos(out_dir, n, frames, resolution, fps, seed, ict_path))


if __name__ == "__main__":  # pragma: no cover
    main()
