"""``nphm-track``: the command-line entry point.

Subcommands are registered here; each is thin: it parses options, builds a config and calls one library
function that is also importable from Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tracker import __version__
from model.errors import InputError
from tracker.cli_util import DefaultCommandGroup, one_line_errors

if TYPE_CHECKING:
    from tracker.batch import Engine


@click.group(cls=DefaultCommandGroup, default_command="track",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nphm-track")
def main() -> None:
    """Turn a face video into an animated 3D head (Neural Parametric Head Model).

    \b
      nphm-track video.mp4 --out anim.usd            track a video (the default command: `track`)
      nphm-track face.jpg --out face.obj             one photo -> one head mesh
      nphm-track videos/ --out results/              every video of a folder
      nphm-track export anim.track.npz --out a.abc   re-export a track without re-tracking
      nphm-track transfer src.track.npz face.jpg --out t.usd   expressions onto another identity
      nphm-track video.mp4 --out take.csv            ARKit-52 curves (a Live Link Face take)
      nphm-track video.mp4 --out me.glb --rig arkit  your face as 52 ARKit shape keys, animated
      nphm-track rig face.jpg --out me.glb           your face as an ARKit rig, to drive with any source

    Every command has --help.
    """


RIG_CHOICES = ["pca", "arkit"]
RIG_HELP = ("What a .usd/.glb/.gltf holds: arkit = your own face as 52 ARKit blend shapes (named as Apple names "
            "them; Blender makes them shape keys) animated by the tracked ARKit curves; pca = 32 principal shapes "
            "of the baked frames (meaningless to an artist, but any expression). Default: the baked mesh per frame "
            "(time-sampled points in USD, exact; glTF always stores PCA morph targets).")

_MODEL_OPTIONS = [
    click.option("--head", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                 help="Head-model checkpoint [default: the shipped model/weights/head_default.pt]."),
    click.option("--normal-encoder", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                 help="Normal encoder checkpoint [default: the shipped one]."),
    click.option("--point-encoder", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                 help="Point-map encoder checkpoint [default: the shipped one]."),
    click.option("--regressor", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                 help="Regressor checkpoint [default: the shipped one]."),
    click.option("--landmarks", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
                 help="Landmark assets of the head model (`nphm-train landmarks`) [default: the shipped ones, with "
                      "the shipped head; none with another --head, which then tracks with --evidence maps only]."),
]


def model_options(fn):
    for option in reversed(_MODEL_OPTIONS):
        fn = option(fn)
    return fn


@main.command("track")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Video: the animation (.usd .usdc .usda .abc .pc2 .mdd .glb .gltf .npz, folder/ or "
                   "name_####.obj|ply), or a Live Link Face take of the ARKit-52 curves (.csv), plus a track file "
                   "<out>.track.npz beside it. Image: the mesh (.obj .ply .stl or any of those). Folder of videos: "
                   "the output folder.")
@click.option("--preview", type=click.Path(path_type=Path), default=None,
              help="Video: also write an mp4 of the tracked mesh drawn over the input. Folder of videos: a folder "
                   "(created if missing; may be the --out folder) for one <name>.preview.mp4 per video.")
@click.option("--format", "ext", default=".usd", show_default=True,
              help="Folder input only: the extension of every output.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Folder input, --engine local: parallel worker processes.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Folder input only: where the videos run: local = worker processes on this machine; ray = one "
                   "Ray task per video, on a local Ray or a cluster (extra: pip install -e \".[ray]\"). With ray, "
                   "the input and output folders must be on a path every node sees (a shared file system).")
@click.option("--address", default=None,
              help="--engine ray: the Ray cluster to connect to (ray://host:10001 or host:6379) [default: "
                   "$RAY_ADDRESS, else start a local Ray]; one that does not answer as Ray fails within 10 s.")
@click.option("--cpus-per-task", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--engine ray: CPUs reserved per video [default: 1].")
@click.option("--gpus-per-task", type=click.FloatRange(min=0), default=None,
              help="--engine ray with --device cuda: GPUs reserved per video; fractions share a GPU [default: 1].")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="Folder input: run a video again up to N times when its worker process dies (killed, out of "
                   "memory, a lost node); the others go on either way [default: 0].")
@click.option("--decoder", type=click.Choice(["pyav", "decord"]), default="pyav", show_default=True,
              help="Video decoder (decord is an optional extra).")
@click.option("--device", default="cpu", show_default=True, help="torch device of the networks (cpu, cuda).")
@click.option("--tto/--no-tto", default=True, show_default=True,
              help="Image with --evidence maps: refine the feed-forward codes by test-time optimisation.")
@click.option("--steps", type=click.IntRange(min=2), default=100, show_default=True,
              help="Image with --evidence maps: test-time optimisation steps.")
@click.option("--resolution", type=click.IntRange(min=32), default=128, show_default=True,
              help="Marching-cubes resolution of the output mesh.")
@click.option("--with-pose", is_flag=True, help="Video: export the rigid head motion too (camera frame, Y up).")
@click.option("--rig", type=click.Choice(RIG_CHOICES), default=None, help=RIG_HELP)
@click.option("--focal", type=float, default=None,
              help="Focal length of the camera in pixels, the start of its estimate over the identity keyframes "
                   "[default: 1.3 x the frame's longer side].")
@click.option("--evidence", type=click.Choice(["landmarks", "maps"]), default="landmarks", show_default=True,
              help="Video or photo: what is fitted to: the face's 478 landmarks (MediaPipe Face Mesh), or the "
                   "older geometric encoders' normal and point maps (measured worse; kept for comparison).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Video: track only the first N frames (a quick look at a long video).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@model_options
@one_line_errors("nphm-track")
def track(source: Path, out: Path, preview: Path | None, ext: str, workers: int, engine: str, address: str | None,
          cpus_per_task: float | None, gpus_per_task: float | None, retries: int | None, decoder: str, device: str,
          tto: bool, steps: int, resolution: int, with_pose: bool, rig: str | None, focal: float | None, evidence: str,
          max_frames: int | None, quiet: bool, head: Path | None, normal_encoder: Path | None, point_encoder: Path | None,
          regressor: Path | None, landmarks: Path | None) -> None:
    """Track SOURCE (a video, a photo, or a folder of videos) into an animated head.

    A video is decoded as a stream; MediaPipe Face Mesh finds the face's 478 landmarks in every frame; the
    identity and the focal length are fitted once to a few keyframes of the first frames and kept; every
    frame's expression and head pose are then fitted to its landmarks (Levenberg-Marquardt), warm-started
    from the previous frame, and smoothed with a short fixed lag.
    """
    from tracker.decode import IMAGE_SUFFIXES

    weights = {"head": head, "normal_encoder": normal_encoder, "point_encoder": point_encoder,
               "regressor": regressor, "landmarks": landmarks}
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.is_dir():
        folder_engine = _folder_engine(engine, workers, device, address, cpus_per_task, gpus_per_task, retries)
        _track_folder(source, out, ext, folder_engine, decoder, device, resolution, with_pose, focal, quiet, weights,
                      evidence, max_frames=max_frames, preview=preview, rig=rig)
        return
    from tracker.predict import Models

    if source.suffix.lower() in IMAGE_SUFFIXES:
        from exporters.static import check_mesh_target
        from tracker.single_image import reconstruct_image

        check_mesh_target(out)
        res = reconstruct_image(source, out, tto=tto, steps=steps, resolution=resolution,
                                models=Models.load(device=device, **weights), evidence=evidence)
        click.echo(f"wrote {res.out}: {res.n_vertices} vertices, {res.n_faces} faces ({res.describe()})")
        return
    from tracker.pipeline import TrackConfig, track_video

    cfg = TrackConfig(decoder=decoder, device=device, export_resolution=resolution, with_pose=with_pose,
                      focal_px=focal, max_frames=max_frames, evidence=evidence, rig=rig)
    models = None if all(v is None for v in weights.values()) else Models.load(device=device, **weights)
    res = track_video(source, out, cfg, models=models, preview=preview, progress=not quiet)
    click.echo(f"wrote {res.out} ({res.frames} frames: {res.tracked} tracked, {res.held} held, {res.gaps} without "
               f"a face; {res.fps:.2f} fps) and {res.track_path}" + (f"; preview {res.preview}" if res.preview else ""))


def _folder_engine(engine: str, workers: int, device: str, address: str | None, cpus_per_task: float | None,
                   gpus_per_task: float | None, retries: int | None) -> Engine:
    """The folder tracker's engine from the command's options."""
    if engine == "local":
        from tracker.local_engine import LocalEngine

        given = [k for k, v in {"--address": address, "--cpus-per-task": cpus_per_task,
                                "--gpus-per-task": gpus_per_task}.items() if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --engine ray")
        return LocalEngine(workers, retries=retries or 0)
    from tracker.ray_engine import RayEngine

    if _given("workers"):
        raise InputError("--workers: only with --engine local (with ray: --cpus-per-task, --gpus-per-task)")
    cuda = device.startswith("cuda")
    if gpus_per_task and not cuda:
        raise InputError("--gpus-per-task: only with --device cuda")
    return RayEngine(address=address, cpus_per_task=1.0 if cpus_per_task is None else cpus_per_task,
                     gpus_per_task=(1.0 if cuda else 0.0) if gpus_per_task is None else gpus_per_task,
                     retries=retries or 0)


def _given(param: str) -> bool:
    """Whether the running command's option ``param`` was given (on the command line or by its env var)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(param) in (ParameterSource.COMMANDLINE,
                                                                   ParameterSource.ENVIRONMENT)


def _track_folder(source: Path, out: Path, ext: str, engine: Engine, decoder: str, device: str, resolution: int,
                  with_pose: bool, focal: float | None, quiet: bool, weights: dict, evidence: str = "landmarks",
                  max_frames: int | None = None, preview: Path | None = None, rig: str | None = None) -> None:
    """A folder of videos: every option applies to each video (``--preview``: the folder of the previews), or
    is refused here before any work."""
    from tracker.batch import VIDEO_SUFFIXES, track_folder
    from tracker.pipeline import TrackConfig, track_video_quietly

    if any(v is not None for v in weights.values()):
        raise InputError("a folder is tracked with the shipped weights in this version (no --head/--regressor)")
    photo_only = [f"--{p.replace('_', '-')}" for p in ("tto", "steps") if _given(p)]
    if photo_only:
        raise InputError(f"{', '.join(photo_only)}: only for a photo, not a folder of videos")
    if preview is not None and preview.suffix.lower() in VIDEO_SUFFIXES and not preview.is_dir():
        raise InputError(f"--preview {preview}: a folder of videos gets one preview per video; give a folder "
                         f"(e.g. --preview {out}), not a file")
    cfg = TrackConfig(decoder=decoder, device=device, export_resolution=resolution, with_pose=with_pose,
                      focal_px=focal, evidence=evidence, max_frames=max_frames, rig=rig)
    report = track_folder(source, out, ext=ext if ext.startswith(".") else f".{ext}", engine=engine,
                          progress=not quiet, track_fn=track_video_quietly, preview_dir=preview, cfg=cfg)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())
    click.echo(f"{source}: {counts}; report {report.report_path}")
    if report.failed:
        failed = [f for f in report.files if f.status == "failed"]
        for f in failed:
            click.echo(f"nphm-track: error: {f.input}: {f.error}", err=True)
        raise SystemExit(1)


@main.command("export")
@click.argument("animation", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output file; the extension picks the format (.usd .usdc .usda .abc .pc2 .mdd .glb .gltf "
                   ".npz); a folder/ or name_####.obj|.ply writes a mesh sequence; a track's .csv is a Live Link "
                   "Face take of its ARKit-52 curves.")
@click.option("--fps", type=float, default=None, help="Frame rate; default: the one stored in the file.")
@click.option("--units", type=click.Choice(["m", "cm", "mm"]), default=None,
              help="Output units; default: the file's own units (metres).")
@click.option("--blendshapes", type=int, default=None,
              help="USD only: encode as K UsdSkel blend shapes (PCA) instead of per-frame points.")
@click.option("--morph-targets", type=int, default=None, help="glTF only: number of morph targets (32).")
@click.option("--head", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Track input: head checkpoint [default: the one the track records].")
@click.option("--resolution", type=click.IntRange(min=32), default=128, show_default=True,
              help="Track input: marching-cubes resolution of the mesh.")
@click.option("--with-pose", is_flag=True, help="Track input: export the rigid head motion too.")
@click.option("--rig", type=click.Choice(RIG_CHOICES), default=None, help="Track input: " + RIG_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@one_line_errors("nphm-track")
def export(animation: Path, out: Path, fps: float | None, units: str | None, blendshapes: int | None,
           morph_targets: int | None, head: Path | None, resolution: int, with_pose: bool, rig: str | None,
           quiet: bool) -> None:
    """Re-export a track file (<name>.track.npz, written beside every tracked video) or convert an
    animation NPZ (written by the NPZ exporter) to another format, without tracking again."""
    from exporters import convert_animation
    from tracker.trackfile import is_track_file

    options = {k: v for k, v in (("blendshapes", blendshapes), ("morph_targets", morph_targets))
               if v is not None}
    if animation.is_file() and is_track_file(animation):
        from tracker.bake import export_track

        result = export_track(animation, out, head=head, resolution=resolution, with_pose=with_pose,
                              progress=not quiet, fps=fps, units=units or "m", rig=rig, **options)
    else:
        if rig is not None or out.suffix.lower() == ".csv":
            raise InputError(f"{animation}: --rig and .csv takes need a track file (<name>.track.npz), not an "
                             "animation NPZ")
        result = convert_animation(animation, out, fps=fps, units=units, **options)
    click.echo(f"wrote {result.path}: {result.n_frames} frames x {result.n_vertices} vertices, "
               f"{result.bytes_written / 1e6:.2f} MB")


@main.command("transfer")
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="The animation of TARGET's identity with SOURCE's expressions (any export format), plus its "
                   "track file <out>.track.npz; or a .track.npz alone.")
@click.option("--tto/--no-tto", default=True, show_default=True,
              help="Image target: refine its identity by test-time optimisation.")
@click.option("--resolution", type=click.IntRange(min=32), default=128, show_default=True,
              help="Marching-cubes resolution of the mesh.")
@click.option("--with-pose", is_flag=True, help="Export SOURCE's rigid head motion too.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@one_line_errors("nphm-track")
def transfer(source: Path, target: Path, out: Path, tto: bool, resolution: int, with_pose: bool,
             quiet: bool) -> None:
    """Put the expressions of track SOURCE on the identity of TARGET (a track file or a photo)."""
    from exporters import writer_class
    from tracker.bake import export_track
    from tracker.pipeline import track_path_for
    from tracker.transfer import transfer_expressions

    track_only = out.name.endswith(".track.npz")
    if not track_only:
        writer_class(out)  # an unknown extension fails before any work
    track_file = out if track_only else track_path_for(out)
    track = transfer_expressions(source, target, track_file, tto=tto)
    if track_only:
        click.echo(f"wrote {track_file}: {track.n_frames} frames")
        return
    result = export_track(track, out, resolution=resolution, with_pose=with_pose, progress=not quiet)
    click.echo(f"wrote {result.path}: {result.n_frames} frames x {result.n_vertices} vertices, and {track_file}")


@main.command("rig")
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="The rig: .glb or .gltf (morph targets named in mesh.extras.targetNames: Blender's shape keys) "
                   "or .usd/.usdc/.usda (UsdSkel blend shapes).")
@click.option("--resolution", type=click.IntRange(min=32), default=128, show_default=True,
              help="Marching-cubes resolution of the mesh.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@one_line_errors("nphm-track")
def rig(source: Path, out: Path, resolution: int, quiet: bool) -> None:
    """Your own face as an ARKit rig: the identity of SOURCE (a photo of a face, or a track file
    <name>.track.npz) as a neutral mesh with ARKit's 52 blend shapes, to drive with any ARKit source (a Live
    Link Face take, another performer's curves). From a video: track it, then `nphm-track export
    video.track.npz --out me.glb --rig arkit` (the rig animated by the video)."""
    from exporters.rig import check_rig_target
    from tracker.bake import export_personal_rig
    from tracker.trackfile import is_track_file, load_track

    check_rig_target(out)
    if is_track_file(source):
        track = load_track(source)
        z_id, head = track.z_id, None if track.head in ("", "default") else track.head
    else:
        from tracker.decode import IMAGE_SUFFIXES
        from tracker.transfer import identity_from_image

        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{source}: give a photo ({' '.join(sorted(IMAGE_SUFFIXES))}) or a track file; "
                             "for a video, track it first")
        z_id, _ = identity_from_image(source, "default", None, True, None, None)
        head = None
    result = export_personal_rig(z_id, out, head=head, resolution=resolution)
    click.echo(f"wrote {result.path}: {result.n_vertices} vertices, 52 ARKit blend shapes, "
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
