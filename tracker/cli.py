"""``nphm-track``: the command-line entry point.

Subcommands are registered here; each is thin: it parses options, builds a config and calls one library
function that is also importable from Python.
"""

from __future__ import annotations

from pathlib import Path

import click

from tracker import __version__
from tracker.cli_util import DefaultCommandGroup, one_line_errors


@click.group(cls=DefaultCommandGroup, default_command="track",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nphm-track")
def main() -> None:
    """Turn a face video into an animated 3D head (Neural Parametric Head Model).

    Tracking a video (`nphm-track VIDEO --out anim.usd`) is not built yet in this version; the commands
    below work today. Every command has --help.
    """


@main.command("export")
@click.argument("animation", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output file; the extension picks the format (.usd .usdc .usda .abc .pc2 .mdd .glb .gltf "
                   ".npz); a folder/ or name_####.obj|.ply writes a mesh sequence.")
@click.option("--fps", type=float, default=None, help="Frame rate; default: the one stored in the file.")
@click.option("--units", type=click.Choice(["m", "cm", "mm"]), default=None,
              help="Output units; default: the file's own units (metres).")
@click.option("--blendshapes", type=int, default=None,
              help="USD only: encode as K UsdSkel blend shapes (PCA) instead of per-frame points.")
@click.option("--morph-targets", type=int, default=None, help="glTF only: number of morph targets (32).")
@one_line_errors("nphm-track")
def export(animation: Path, out: Path, fps: float | None, units: str | None, blendshapes: int | None,
           morph_targets: int | None) -> None:
    """Convert an animation NPZ (written by the NPZ exporter) to another format."""
    from exporters import convert_animation

    options = {k: v for k, v in (("blendshapes", blendshapes), ("morph_targets", morph_targets))
               if v is not None}
    result = convert_animation(animation, out, fps=fps, units=units, **options)
    click.echo(f"wrote {result.path}: {result.n_frames} frames x {result.n_vertices} vertices, "
               f"{result.bytes_written / 1e6:.2f} MB")


@main.command("sample")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output animation; the extension picks the format (.usd .abc .pc2 .mdd .glb .npz, folder/).")
@click.option("--model", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Head checkpoint [default: the shipped model/weights/head_default.pt].")
@click.option("--frames", type=click.IntRange(min=1), default=50, show_default=True, help="Number of frames.")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Frames per second.")
@click.option("--resolution", type=click.IntRange(min=32), default=128, show_default=True,
              help="Marching-cubes resolution of the neutral mesh.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which learnt expressions are visited.")
@one_line_errors("nphm-track")
def sample(out: Path, model: Path | None, frames: int, fps: float, resolution: int, seed: int) -> None:
    """Animate the head model's mean identity through learnt expressions (no video needed).

    The mesh keeps one topology for every frame, so the result is a point-cache style animation.
    """
    from tracker.sample import SampleConfig, sample_animation

    result = sample_animation(out, model, SampleConfig(frames=frames, fps=fps, resolution=resolution, seed=seed))
    click.echo(f"wrote {result.path}: {result.n_frames} frames x {result.n_vertices} vertices, "
               f"{result.bytes_written / 1e6:.2f} MB")


if __name__ == "__main__":  # pragma: no cover
    main()
