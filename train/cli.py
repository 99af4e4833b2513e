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
@click.option("--yaw", "yaw_deg", type=float, default=35.0, show_default=True,
              help="Largest head yaw, degrees (the pose wanders within +-yaw).")
@click.option("--pitch", "pitch_deg", type=float, default=15.0, show_default=True, help="Largest head pitch, degrees.")
@click.option("--roll", "roll_deg", type=float, default=10.0, show_default=True, help="Largest head roll, degrees.")
@click.option("--strong", is_flag=True,
              help="Strong expressions: jawOpen up to 1, full blinks, smiles, puckers, funnels, brows up and down, "
                   "some one-sided (half the keyframes are one strong expression at 0.7-1; speech jaw 0.5-1).")
@click.option("--still", is_flag=True,
              help="A still, neutral face (no expression, blink or speech) while the head turns: the jitter test.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def data_videos(out_dir: str, n: int, frames: int, resolution: int, fps: float, seed: int, yaw_deg: float,
                pitch_deg: float, roll_deg: float, strong: bool, still: bool, ict_path: str | None) -> None:
    """Synthetic H.264 videos of one head each, with per-frame ground truth beside them.

    Writes OUT/video_NNNN.mp4, OUT/video_NNNN.gt.npz and OUT/manifest.json; re-running resumes.
    """
    from train.video import VideoConfig, generate_videos, still_video_config, strong_video_config

    if strong and still:
        raise click.UsageError("--strong and --still exclude each other")
    cfg = VideoConfig(yaw_deg=yaw_deg, pitch_deg=pitch_deg, roll_deg=roll_deg)
    if strong:
        cfg = strong_video_config(cfg)
    if still:
        cfg = still_video_config(cfg)
    click.echo(generate_videos(out_dir, n, frames, resolution, fps, seed, ict_path, cfg=cfg))


@main.command("encoders")
@click.option("--kind", type=click.Choice(["normals", "points"]), required=True,
              help="normals: E_n (camera-space normals); points: E_p (canonical point map).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Renders folder from `nphm-train data renders` (trains on its train split).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (encoder.pt, train_state.pt, config.json, eval_log.jsonl); re-running resumes.")
@click.option("--preset", default="default", show_default=True, help="Encoder preset: tiny, default, large.")
@click.option("--steps", type=int, default=3000, show_default=True, help="Optimisation steps.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak AdamW learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-every", type=int, default=500, show_default=True, help="Held-out evaluation period (steps).")
@click.option("--eval-images", type=int, default=64, show_default=True, help="Held-out images evaluated.")
@click.option("--max-train-images", type=int, default=None, help="Use only the first N training renders.")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
@one_line_errors("nphm-train")
def encoders(kind: str, data_dir: str, out_dir: str, preset: str, steps: int, batch_size: int, lr: float,
             seed: int, eval_every: int, eval_images: int, max_train_images: int | None,
             threads: int | None) -> None:
    """Train a geometric encoder (ViT encoder-decoder) on synthetic renders (see train/encoder_training.py)."""
    import torch

    from train.encoder_training import EncoderTrainConfig, train_encoder

    if threads:
        torch.set_num_threads(threads)
    cfg = EncoderTrainConfig(data_dir=data_dir, out_dir=out_dir, target=kind, preset=preset, steps=steps,
                             batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
                             eval_images=eval_images, max_train_images=max_train_images)
    result = train_encoder(cfg)
    click.echo(f"{result.checkpoint}: {result.steps} steps in {result.seconds:.1f} s this run")
    if result.metrics is not None:
        click.echo(result.metrics.summary())


@main.command("eval-encoders")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Renders folder.")
@click.option("--split", type=click.Choice(["heldout", "train", "all"]), default="heldout", show_default=True)
@click.option("--max-images", type=int, default=None, help="Evaluate only the first N images of the split.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures of every checkpoint to this JSON file.")
@one_line_errors("nphm-train")
def eval_encoders(checkpoints: tuple[str, ...], data_dir: str, split: str, max_images: int | None,
                  json_path: str | None) -> None:
    """Normal angular error (deg) / point-map L1 (mm) over the face of encoder CHECKPOINTS, by |yaw|."""
    import json

    from train.encoder_eval import evaluate_checkpoint

    results = {}
    for path in checkpoints:
        metrics = evaluate_checkpoint(path, data_dir, split, max_images)
        click.echo(f"{path}\n{metrics.summary()}")
        results[path] = metrics.to_dict()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)


@main.command("head")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder written by `nphm-train data heads`.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: head.pt, train_state.pt (resume), config.json.")
@click.option("--preset", default="default", show_default=True, help="Head network preset (default, mononphm).")
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Optimisation steps.")
@click.option("--heads-per-step", type=click.IntRange(min=1), default=6, show_default=True,
              help="Heads (identity, expression) per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of codes, network and sampling.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=250, show_default=True,
              help="Steps between resumable training states.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@one_line_errors("nphm-train")
def head(data_dir: str, out_dir: str, preset: str, steps: int, heads_per_step: int, seed: int,
         checkpoint_every: int, ict_path: str | None, threads: int | None) -> None:
    """Train the head model (auto-decoder) on SDF samples; resumes from OUT/train_state.pt."""
    import torch

    from train.head_training import HeadTrainConfig, train_head

    if threads:
        torch.set_num_threads(threads)
    cfg = HeadTrainConfig(data_dir=data_dir, out_dir=out_dir, preset=preset, steps=steps,
                          heads_per_step=heads_per_step, seed=seed, checkpoint_every=checkpoint_every,
                          ict_path=ict_path)
    result = train_head(cfg)
    last = (f", last surface |sdf| {result.final_losses['surf_sdf'] * 250:.3f} mm"
            if "surf_sdf" in result.final_losses else "")
    click.echo(f"{result.checkpoint}: {result.steps} steps, {result.seconds / 60:.1f} min this run{last}")


@main.command("register")
@click.argument("mesh", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Head checkpoint (project format).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .npz of codes.")
@click.option("--units", type=click.Choice(["model", "cm", "m"]), default="model", show_default=True,
              help="Units of the mesh vertices (model: 1 cm = 0.04; cm: ICT centimetres, ICT frame).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Optimisation steps.")
@click.option("--points", type=click.IntRange(min=100), default=20000, show_default=True,
              help="Points sampled on the mesh.")
@one_line_errors("nphm-train")
def register(mesh: str, model_path: str, out_path: str, units: str, steps: int, points: int) -> None:
    """Fit identity and expression codes to MESH with the frozen head model (Pix2NPHM Eq. 11)."""
    from train.registration import RegisterConfig, register_mesh_file

    reg = register_mesh_file(mesh, model_path, out_path, units, RegisterConfig(steps=steps), points)
    click.echo(f"{out_path}: mean |sdf| at the mesh {reg.final_sdf_l1 * 250:.3f} mm after {steps} steps "
               f"({reg.seconds:.1f} s)")


@main.command("eval-head")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Head checkpoint written by `nphm-train head`.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="The `nphm-train data heads` folder the model was trained on (its held-out heads are used).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full report (per head and summary) as JSON here.")
@click.option("--resolution", type=click.IntRange(min=32), default=256, show_default=True,
              help="Marching-cubes resolution over the face box.")
@click.option("--max-heads", type=click.IntRange(min=1), default=None, help="Evaluate at most N heads per held-out split (evenly spread).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Registration steps.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def eval_head(model_path: str, data_dir: str, out_path: str | None, resolution: int, max_heads: int | None,
              steps: int, ict_path: str | None) -> None:
    """Representation error: register held-out heads, Chamfer L1/L2 (mm) and normal consistency (face)."""
    import json

    from train.registration import RegisterConfig, evaluate_checkpoint

    report = evaluate_checkpoint(model_path, data_dir, ict_path, RegisterConfig(steps=steps), resolution, max_heads)
    if out_path:
        from pathlib import Path

        Path(out_path).write_text(json.dumps(report, indent=2))
    click.echo(json.dumps(report["summary"]))


@main.command()
@click.option("--renders", "renders_dir", required=True, type=click.Path(file_okay=False),
              help="Renders folder from `nphm-train data renders` (trains on its train split).")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Head-model checkpoint.")
@click.option("--normal-encoder", required=True, type=click.Path(dir_okay=False), help="Normal encoder checkpoint.")
@click.option("--point-encoder", required=True, type=click.Path(dir_okay=False), help="Point-map encoder checkpoint.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (regressor.pt, train_state.pt, config.json, sdf_cache/); re-running resumes.")
@click.option("--preset", default="default", show_default=True, help="Regressor preset: tiny, default, paper.")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="Optimisation steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="Use only the first N training renders.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
@click.option("--prior", type=click.FloatRange(min=0), default=1e-2, show_default=True,
              help="Weight of the whitened code prior (keeps predicted codes like the head's training codes).")
@click.option("--code", "code_weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a direct code term against per-render code targets (fitted once, cached in "
                   "<out>/code_targets.npz); 0 = the paper's terms only.")
@click.option("--normal-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the 2D normal term (paper: 1); 0 skips rendering normals (much faster steps).")
@one_line_errors("nphm-train")
def regressor(renders_dir: str, head_path: str, normal_encoder: str, point_encoder: str, out_dir: str, preset: str,
              steps: int, batch_size: int, lr: float, seed: int, max_items: int | None, ict_path: str | None,
              threads: int | None, prior: float, code_weight: float, normal_weight: float) -> None:
    """Train the Pix2NPHM regressor (encoders and head frozen; see train/regressor_training.py)."""
    import torch

    from train.regressor_training import RegressorTrainConfig, train_regressor

    if threads:
        torch.set_num_threads(threads)
    from train.regressor_training import RegressorLossWeights

    cfg = RegressorTrainConfig(renders_dir=renders_dir, head=head_path, normal_encoder=normal_encoder,
                               point_encoder=point_encoder, out_dir=out_dir, preset=preset, steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, max_items=max_items, ict_path=ict_path,
                               weights=RegressorLossWeights(prior=prior, code=code_weight,
                                                            normal_2d=normal_weight))
    result = train_regressor(cfg)
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.final_losses.items())
    click.echo(f"{result.checkpoint}: {result.steps} steps in {result.seconds:.1f} s this run ({losses})")


@main.command("eval-single-view")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Renders folder from `nphm-train data renders` (its held-out split is evaluated).")
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default=None,
              help="Head-model checkpoint [default: the shipped weights].")
@click.option("--normal-encoder", type=click.Path(dir_okay=False), default=None,
              help="Normal encoder checkpoint [default: the shipped weights].")
@click.option("--point-encoder", type=click.Path(dir_okay=False), default=None,
              help="Point-map encoder checkpoint [default: the shipped weights].")
@click.option("--regressor", "regressor_path", type=click.Path(dir_okay=False), default=None,
              help="Regressor checkpoint [default: the shipped weights].")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--tto/--no-tto", default=True, show_default=True, help="Also evaluate after test-time optimisation.")
@click.option("--steps", type=click.IntRange(min=2), default=100, show_default=True, help="TTO steps.")
@click.option("--resolution", type=click.IntRange(min=8), default=128, show_default=True,
              help="Marching-cubes resolution of the evaluated meshes (whole head box).")
@click.option("--fit-resolution", type=click.IntRange(min=8), default=64, show_default=True,
              help="Marching-cubes resolution of the mesh the TTO optimises.")
@click.option("--samples", type=click.IntRange(min=100), default=100_000, show_default=True,
              help="Points sampled on each mesh for the Chamfer distances.")
@click.option("--no-align", is_flag=True, help="Skip the similarity ICP alignment to the ground truth.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@one_line_errors("nphm-train")
def eval_single_view(data_dir: str, head_path: str | None, normal_encoder: str | None, point_encoder: str | None,
                     regressor_path: str | None, max_images: int | None, tto: bool, steps: int, resolution: int,
                     fit_resolution: int, samples: int, no_align: bool, out_path: str | None, ict_path: str | None,
                     threads: int | None) -> None:
    """Single-view reconstruction benchmark (Pix2NPHM Table 2): Chamfer L1/L2 (mm), NC on held-out renders."""
    import torch

    from train.single_view_eval import SingleViewConfig, format_table, run_single_view

    if threads:
        torch.set_num_threads(threads)
    cfg = SingleViewConfig(max_images=max_images, tto=tto, steps=steps, fit_resolution=fit_resolution,
                           resolution=resolution, n_samples=samples, align=not no_align)
    report = run_single_view(data_dir, cfg, head_path, normal_encoder, point_encoder, regressor_path, ict_path,
                             out_path)
    click.echo(format_table(report))


@main.command("landmarks")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Head model checkpoint trained by `nphm-train head` (e.g. model/weights/head_default.pt).")
@click.option("--data-seed", type=int, required=True, help="Seed of the head's `nphm-train data heads` command.")
@click.option("--identities", type=click.IntRange(min=1), required=True,
              help="--identities of the head's `nphm-train data heads` command.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Asset to write (.npz), with a JSON card beside it.")
@click.option("--work", "work_dir", type=click.Path(file_okay=False), default="runs/landmarks", show_default=True,
              help="Folder for the resumable intermediate results (embedding, registered codes).")
@click.option("--renders", type=click.IntRange(min=1), default=240, show_default=True,
              help="ICT renders the detector is run on for the embedding.")
@click.option("--extra-identities", type=click.IntRange(min=0), default=300, show_default=True,
              help="Random ICT identities registered to the head model to fit the map on.")
@click.option("--rank", type=click.IntRange(min=1), default=96, show_default=True,
              help="Principal directions of the identity codes the map uses.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the renders and identities.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def landmarks(head_path: str, data_seed: int, identities: int, out_path: str, work_dir: str, renders: int,
              extra_identities: int, rank: int, seed: int, ict_path: str | None) -> None:
    """Landmark assets for a head model: the MediaPipe Face Mesh embedding on ICT-FaceKit (the real detector
    run on renders, its points ray-cast onto the mesh) and the map from identity codes to canonical
    landmarks, evaluated on held-out identities (see train/landmark_assets.py)."""
    from train.landmark_assets import run_landmarks_command

    card = run_landmarks_command(head_path, data_seed, identities, out_path, work_dir, renders, extra_identities,
                                 rank, seed, ict_path)
    held = card["metrics"]["map"].get("heldout", {})
    click.echo(f"wrote {out_path}: embedding spread {card['metrics']['embedding']['spread_mm_median']:.2f} mm median; "
               f"held-out canonical landmark error {held.get('mean_mm', float('nan')):.3f} mm "
               f"(mean head {held.get('mean_head_reference_mm', float('nan')):.3f} mm)")


def _head_data_options(what: str):
    """``--head --data-seed --identities --expressions``: a head checkpoint and its data command's settings
    (its training heads' ICT weights are re-derived from them)."""
    def wrap(f):
        for opt in reversed([
            click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False, exists=True),
                         help=f"Head model checkpoint ({what})."),
            click.option("--data-seed", type=int, required=True, help="Seed of the head's `nphm-train data heads` command."),
            click.option("--identities", type=click.IntRange(min=1), required=True,
                         help="--identities of the head's `nphm-train data heads` command."),
            click.option("--expressions", type=click.IntRange(min=1), required=True,
                         help="--expressions of the head's `nphm-train data heads` command.")]):
            f = opt(f)
        return f
    return wrap


@main.command("expression-finetune")
@_head_data_options("trained by `nphm-train head`; its expression side is retrained")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (head.pt, report.json, state.pt, config.json); re-running resumes.")
@click.option("--new-per-identity", type=click.IntRange(min=0), default=8, show_default=True,
              help="New strong and full-strength expressions per training identity.")
@click.option("--steps", type=click.IntRange(min=1), default=4000, show_default=True, help="Optimisation steps.")
@click.option("--deform-hidden", type=click.IntRange(min=1), default=None,
              help="Widen the deformation network to this many units per layer [default: keep the head's].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the new expressions and the sampling.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def expression_finetune(head_path: str, data_seed: int, identities: int, expressions: int, out_dir: str,
                        new_per_identity: int, steps: int, deform_hidden: int | None, seed: int, threads: int | None,
                        ict_path: str | None) -> None:
    """Retrain a head's backward deformation and expression codes on its training heads plus new strong
    expressions, with correspondences concentrated on the lids, brows and lips; the canonical SDF, anchors
    and identity codes stay (see train/expression_finetune.py)."""
    from train.expression_finetune import ExpressionFinetuneConfig, finetune_expressions

    if threads:
        import torch

        torch.set_num_threads(threads)
    finetune_expressions(ExpressionFinetuneConfig(head_path=head_path, out_dir=out_dir, data_seed=data_seed,
                                                  identities=identities, expressions=expressions,
                                                  new_per_identity=new_per_identity, steps=steps, seed=seed,
                                                  deform_hidden=deform_hidden, ict_path=ict_path), log=click.echo)


@main.command("forward-deformation")
@_head_data_options("e.g. model/weights/head_default.pt")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (forward.pt, report.json, state.pt, config.json); re-running resumes.")
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Optimisation steps.")
@click.option("--hidden", type=click.IntRange(min=1), default=128, show_default=True, help="Units per hidden layer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the network and the sampling.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def forward_deformation(head_path: str, data_seed: int, identities: int, expressions: int, out_dir: str, steps: int,
                        hidden: int, seed: int, threads: int | None, ict_path: str | None) -> None:
    """A head's forward deformation (canonical -> posed), trained on the exact ICT correspondences of the
    head's own training heads: the tracker poses the landmarks and the baked mesh with it (an open mouth
    stays open; see model/forward_deformation.py and train/forward_deformation_training.py)."""
    from train.forward_deformation_training import ForwardTrainConfig, train_forward_deformation

    if threads:
        import torch

        torch.set_num_threads(threads)
    train_forward_deformation(ForwardTrainConfig(head_path=head_path, out_dir=out_dir, data_seed=data_seed,
                                                 identities=identities, expressions=expressions, steps=steps,
                                                 hidden=hidden, seed=seed, ict_path=ict_path), log=click.echo)


@main.command("arkit-rig")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Head checkpoint, e.g. model/weights/head_default.pt (fine-tuned: its codes hold ict_w_ex).")
@click.option("--forward", "forward_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Its forward deformation [default: the one that belongs to the head].")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The rig asset (.pt), e.g. model/weights/arkit_rig_default.pt; its card is <out>.json.")
@click.option("--identities", type=click.IntRange(min=1), default=8, show_default=True,
              help="Training identities each shape's code is registered over.")
@click.option("--eval-identities", type=click.IntRange(min=1), default=8, show_default=True,
              help="Other training identities the card's errors are measured on.")
@click.option("--steps", type=click.IntRange(min=1), default=150, show_default=True, help="Adam steps per shape.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def arkit_rig(head_path: str, forward_path: str | None, out_path: str, identities: int, eval_identities: int,
              steps: int, seed: int, ict_path: str | None) -> None:
    """The head's expression code of each of ARKit's 52 blendshapes at weight 1, registered to ICT heads
    showing that one shape over several identities (train/arkit_rig.py). The tracker decodes them for the
    tracked identity into a personalised ARKit rig and solves each frame's ARKit curves against it."""
    from train.arkit_rig import ArkitRigConfig, build_arkit_rig

    build_arkit_rig(ArkitRigConfig(head_path=head_path, out_path=out_path, forward_path=forward_path,
                                   identities=identities, eval_identities=eval_identities, steps=steps, seed=seed,
                                   ict_path=ict_path), log=click.echo)


@main.command("arkit-regressor")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of the training samples (chunk_*.npz); made here first if incomplete (resumable).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="The regressor (.pt), e.g. model/weights/arkit_regressor_default.pt; omit to make the data only.")
@click.option("--samples", type=click.IntRange(min=1), default=6000, show_default=True,
              help="Renders of random identities, expressions and head poses run through MediaPipe Face Mesh.")
@click.option("--resolution", type=click.IntRange(min=64), default=256, show_default=True, help="Render size (px).")
@click.option("--steps", type=click.IntRange(min=1), default=6000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data and of the training.")
@click.option("--shard", default="0/1", show_default=True,
              help="I/N: make only every N-th chunk of the data, from the I-th (N processes side by side).")
@click.option("--squint-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of samples that narrow the eyes without closing them (squints, brows down, sneers).")
@click.option("--extra-data", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="More sample folders to train on (repeatable); the held-out samples are --data's last.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def arkit_regressor(data_dir: str, out_path: str | None, samples: int, resolution: int, steps: int, seed: int,
                    shard: str, squint_share: float, extra_data: tuple[str, ...], threads: int | None,
                    ict_path: str | None) -> None:
    """The landmark -> ARKit-52 regressor (model/arkit_regressor.py): renders of the synthetic head world through
    the real detector, then a small MLP from the 478 normalised landmarks to the 52 weights
    (train/arkit_regressor.py)."""
    from train.arkit_regressor import ArkitDataConfig, ArkitTrainConfig, generate_arkit_data, train_arkit_regressor

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        i, n = (int(v) for v in shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise click.BadParameter(f"{shard!r}: expected I/N with 0 <= I < N", param_hint="--shard") from None
    generate_arkit_data(ArkitDataConfig(out_dir=data_dir, samples=samples, resolution=resolution, seed=seed,
                                        ict_path=ict_path, shard=(i, n), squint_share=squint_share))
    if out_path is not None:
        train_arkit_regressor(ArkitTrainConfig(data_dir=data_dir, out_path=out_path, steps=steps, seed=seed,
                                               extra_data=tuple(extra_data)), log=click.echo)


@main.command("identity-prior")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A sample folder of `nphm-train arkit-regressor` (renders through the detector); the held-out "
                   "samples are its last.")
@click.option("--extra-data", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="More sample folders to train on (repeatable).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The prior (.pt), e.g. model/weights/identity_prior_default.pt.")
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default=None, help="Head checkpoint [default: shipped].")
@click.option("--data-seed", type=int, default=1, show_default=True,
              help="Seed of the head's `nphm-train data heads` command (its training identities).")
@click.option("--identities", type=click.IntRange(min=1), default=80, show_default=True,
              help="Identities of that command.")
@click.option("--steps", type=click.IntRange(min=1), default=6000, show_default=True,
              help="MLP reader steps (batches of 128; with --layers > 0); more over-fits 18,000 samples.")
@click.option("--layers", type=click.IntRange(min=0), default=3, show_default=True,
              help="The reader's hidden blocks (MLP); 0: a linear reader fitted in closed form (--reader-ridge).")
@click.option("--reader-ridge", type=click.FloatRange(min=0.0), default=3000.0, show_default=True,
              help="Ridge of the linear reader (standardised features): larger reads less identity, more stably.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--map-identities", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random ICT identities registered in 3D to fit the ICT -> identity-coordinates map beside the "
                   "head's training identities (about 3.5 s each on two threads).")
@click.option("--map-cache", type=click.Path(dir_okay=False), default=None,
              help="An .npz keeping those registrations (a rerun resumes).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--ict", "ict_path", type=click.Path(), default=None,
              help="ICT-FaceKit npz or FaceXModel/ folder [default: NPHM_ICT or <shared>/ict-facekit].")
@one_line_errors("nphm-train")
def identity_prior(data_dir: str, extra_data: tuple[str, ...], out_path: str, head_path: str | None, data_seed: int,
                   identities: int, steps: int, layers: int, reader_ridge: float, seed: int, map_identities: int,
                   map_cache: str | None, threads: int | None, ict_path: str | None) -> None:
    """The landmark tracker's identity prior (model/identity_prior.py): the head model's code for ICT's mean
    head, and a regressor of the identity from one frame's landmarks (train/identity_prior.py)."""
    from train.identity_prior import IdentityPriorTrainConfig, train_identity_prior

    if threads:
        import torch

        torch.set_num_threads(threads)
    train_identity_prior(IdentityPriorTrainConfig(data_dir=data_dir, out_path=out_path, extra_data=tuple(extra_data),
                                                  head_path=head_path, data_seed=data_seed, identities=identities,
                                                  steps=steps, layers=layers, reader_ridge=reader_ridge, seed=seed,
                                                  map_identities=map_identities, map_cache=map_cache,
                                                  ict_path=ict_path), log=click.echo)


@main.command("landmark-regressor")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (landmark_regressor.pt, train_state.pt, samples.pt, config.json); re-running resumes.")
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default=None, help="Head checkpoint [default: shipped].")
@click.option("--landmarks", "landmarks_path", type=click.Path(dir_okay=False), default=None,
              help="Landmark assets .npz [default: shipped].")
@click.option("--samples", type=click.IntRange(min=64), default=20000, show_default=True,
              help="Synthetic detections (the head model's own landmarks, projected, with detector-like noise).")
@click.option("--steps", type=click.IntRange(min=1), default=2500, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--noise-scale", type=click.FloatRange(min=0), default=0.3, show_default=True,
              help="Detector noise std as a multiple of the landmark assets' per-landmark spread.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@one_line_errors("nphm-train")
def landmark_regressor(out_dir: str, head_path: str | None, landmarks_path: str | None, samples: int, steps: int,
                       batch_size: int, lr: float, noise_scale: float, seed: int, threads: int) -> None:
    """Train the feed-forward landmark regressor (detections -> identity and expression coordinates) on
    synthetic detections; see train/landmark_regressor_training.py. Not used by the tracker yet."""
    from train.landmark_regressor_training import (LandmarkRegressorTrainConfig, SyntheticConfig,
                                                   train_landmark_regressor)

    cfg = LandmarkRegressorTrainConfig(head_path=head_path, landmarks_path=landmarks_path, n_samples=samples,
                                       steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads,
                                       data=SyntheticConfig(noise_scale=noise_scale))
    s = train_landmark_regressor(cfg, out_dir)
    click.echo(f"{out_dir}/landmark_regressor.pt: {s['steps']} steps, {s['samples']} samples, last {s['last']}")


@main.command("ship")
@click.argument("src", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "dst", required=True, type=click.Path(dir_okay=False),
              help="The float16 copy to write (e.g. model/weights/encoder_normals.pt).")
@one_line_errors("nphm-train")
def ship(src: str, dst: str) -> None:
    """Copy a trained checkpoint with float16 weights (half the size) for model/weights/."""
    from model.checkpoint import half_precision_copy

    out = half_precision_copy(src, dst)
    click.echo(f"wrote {out}: {out.stat().st_size / 1e6:.2f} MB (float16 weights)")


if __name__ == "__main__":  # pragma: no cover
    main()
