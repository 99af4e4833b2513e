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

    \b
    Subcommands:
      export   convert an animation or track file to another format (.usd, .abc, .pc2, ...)
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


if __name__ == "__main__":  # pragma: no cover
    main()
