"""Benchmark of model/mesh.py and model/topology.py on this CPU; prints one JSON line of figures.

    python tests/benchmarks/bench_geometry.py [--quick] [--threads N] [--presets default,trained,mononphm]
        [--head-resolutions 128,256] [--skip-generic]

Mesh extraction: an analytic sphere SDF and a random-initialised MLP SDF (a sphere plus a small random
MLP residual, so that a surface exists; its cost in points/s is measured and reported), at resolution
128 and 256 with the coarse-to-fine narrow band, and the MLP at 128 densely for comparison.
Inversion: 20k vertices on a sphere moved by a random MLP backward deformation (4 hidden layers of width
64, Softplus, input 3 coordinates + a 32-dim code), cold (from x_c) and warm-started (from the solution
perturbed by 1e-3), for both solvers; and frame to frame (code moved by 0.05 * N(0, 1), Broyden started
from the previous frame's positions and inverse Jacobians), without and with the implicit-gradient
backward pass.
Head presets (``--presets default,trained,mononphm``): ``model.head.HeadLayer`` with random weights at
the zero codes, and ``trained``, the shipped default weights at their mean identity and neutral code: posed SDF points/s, neutral mesh extraction through ``FixedTopology.extract`` at 128 and 256, and
posed positions of (up to) 20k of its vertices, from the neutral positions and then for a next frame.
Targets of the project: mesh at 128 in <= 5 s; 20k vertices deformed in <= 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from torch import nn

from model.mesh import extract_mesh
from model.topology import invert_deformation, pointwise_jacobian


def mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(depth):
        layers += [nn.Linear(d_in if k == 0 else width, width), nn.Softplus(beta=100)]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_mesh(quick: bool) -> dict:
    figures: dict = {}
    box = ([-1.0] * 3, [1.0] * 3)
    center = torch.tensor([0.05, -0.03, 0.02])

    def sphere(p):
        return (p - center).norm(dim=-1) - 0.6

    torch.manual_seed(0)
    residual = mlp(3, 128, 4, 1)
    with torch.no_grad():
        residual[-1].weight.mul_(0.5)  # keeps |grad sdf| near 1 so the surface stays a perturbed sphere

    def mlp_sdf(p):
        return sphere(p) + 0.05 * residual(p)[:, 0]

    points = torch.rand(200_000, 3) * 2 - 1
    with torch.no_grad():
        mlp_sdf(points[:65536])
        sec, _ = best_of(lambda: [mlp_sdf(c) for c in points.split(65536)], 3)
    figures["mlp_sdf"] = "sphere + 0.05 * MLP(3-128-128-128-128-1, Softplus)"
    figures["mlp_sdf_points_per_s"] = round(len(points) / sec)

    for name, fn in (("analytic", sphere), ("mlp", mlp_sdf)):
        for res in (128,) if quick else (128, 256):
            sec, mesh = best_of(lambda: extract_mesh(fn, *box, res), 1 if name == "mlp" else 2)
            figures[f"mesh_{name}_{res}_s"] = round(sec, 3)
            figures[f"mesh_{name}_{res}_sdf_s"] = round(mesh.info.seconds_sdf, 3)
            figures[f"mesh_{name}_{res}_evaluated_fraction"] = round(mesh.info.evaluated_fraction, 4)
            figures[f"mesh_{name}_{res}_vertices"] = len(mesh.vertices)
    if not quick:
        sec, mesh = best_of(lambda: extract_mesh(mlp_sdf, *box, 128, coarse_resolution=128), 1)
        figures["mesh_mlp_128_dense_s"] = round(sec, 3)
    return figures


class RandomDeformation(nn.Module):
    """x + scale * MLP([freq * x, z]): 4 hidden layers of width 64, input 3 + 32."""

    def __init__(self, d_code: int = 32, freq: float = 4.0):
        super().__init__()
        self.net = mlp(3 + d_code, 64, 4, 3)
        self.freq = freq
        self.scale = 1.0
        self.shift = torch.zeros(3)  # removes the random constant part of the offsets

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # x [B, N, 3], z [B, D]
        h = torch.cat([self.freq * x, z[:, None, :].expand(-1, x.shape[1], -1)], dim=-1)
        return x + self.scale * self.net(h) - self.shift


def bench_inversion(quick: bool) -> dict:
    torch.manual_seed(1)
    deformation = RandomDeformation()
    z = torch.randn(1, 32)
    n = 20_000
    direction = torch.randn(1, n, 3)
    x_true = 0.5 * direction / direction.norm(dim=-1, keepdim=True)  # [1, N, 3] on a head-sized sphere
    with torch.no_grad():  # scale the field to a max |dOffsets/dx| of 0.3: a strong, invertible expression
        _, jac = pointwise_jacobian(lambda x: deformation(x, z), x_true)
        deformation.scale = 0.3 / float(torch.linalg.matrix_norm(jac - torch.eye(3), 2).max())
        deformation.shift = (deformation(x_true, z) - x_true).mean((0, 1))
        x_c = deformation(x_true, z)
    figures = {
        "deformation": "x + s * MLP([4x, z]) - mean, 35-64-64-64-64-3 Softplus, max |dOffsets/dx| = 0.3",
        "deformation_offset_mean": round(float((x_c - x_true).norm(dim=-1).mean()), 4),
        "vertices": n,
    }
    warm_init = x_true + 1e-3 * torch.randn_like(x_true)

    def fn(x):
        return deformation(x, z)

    with torch.no_grad():
        sec, _ = best_of(lambda: fn(x_true), 5)
    figures["deformation_forward_s"] = round(sec, 4)
    for method in ("broyden", "newton"):
        for start, init in (("cold", None), ("warm", warm_init)):
            with torch.no_grad():
                sec, result = best_of(lambda: invert_deformation(fn, x_c, init, method=method), 1 if quick else 3)
            key = f"invert_{method}_{start}"
            figures[f"{key}_s"] = round(sec, 4)
            figures[f"{key}_iterations"] = result.iterations
            figures[f"{key}_converged_fraction"] = round(float(result.converged.float().mean()), 5)
            figures[f"{key}_max_error"] = float(f"{float((result.x - x_true).norm(dim=-1).max()):.2e}")
    # Tracking: the previous frame (code z_prev) was solved; warm-start from its positions and its
    # inverse Jacobians.
    z_prev = z + 0.05 * torch.randn_like(z)
    with torch.no_grad():
        prev = invert_deformation(lambda x: deformation(x, z_prev), x_c)
        figures["frame_to_frame_vertex_motion_max"] = float(f"{float((prev.x - x_true).norm(dim=-1).max()):.2e}")
        sec, result = best_of(
            lambda: invert_deformation(fn, x_c, prev.x, inv_jacobian_init=prev.inv_jacobian), 1 if quick else 3
        )
    figures["invert_broyden_next_frame_s"] = round(sec, 4)
    figures["invert_broyden_next_frame_iterations"] = result.iterations
    figures["invert_broyden_next_frame_converged_fraction"] = round(float(result.converged.float().mean()), 5)
    code = z.clone().requires_grad_(True)

    def with_backward():
        result = invert_deformation(lambda x: deformation(x, code), x_c, prev.x, inv_jacobian_init=prev.inv_jacobian)
        torch.autograd.grad(result.x.square().sum(), code)

    sec, _ = best_of(with_backward, 1 if quick else 3)
    figures["invert_broyden_next_frame_with_backward_s"] = round(sec, 4)
    return figures


def bench_head(name: str, resolutions: list[int], quick: bool) -> dict:
    """The real network: a preset randomly initialised at the zero codes, or ``trained``: the shipped
    default weights (model/weights/head_default.pt) at their mean identity and mean neutral expression."""
    from model.checkpoint import default_weights, load_checkpoint
    from model.config import preset
    from model.head import HeadLayer
    from model.topology import FixedTopology

    if name == "trained":
        layer, codes, meta = load_checkpoint(default_weights("head_default"))
        cfg = layer.cfg
        z_id = codes["z_id"].mean(0, keepdim=True)
        z_neutral = codes["z_ex"][codes["is_neutral"].bool()].mean(0, keepdim=True)
        box = (meta["bbox_min"], meta["bbox_max"])
    else:
        cfg = preset(name)
        torch.manual_seed(0)
        layer = HeadLayer(cfg).eval()
        z_id, z_neutral = torch.zeros(1, cfg.id_dim), torch.zeros(1, cfg.expr_dim)
        box = ([-0.6] * 3, [0.6] * 3)
    for p in layer.parameters():
        p.requires_grad_(False)
    chunk = 16384 if name == "mononphm" else 65536
    figures: dict = {}
    points = 1.2 * torch.rand(1, 4 * chunk if name == "default" else chunk, 3) - 0.6
    with torch.no_grad():
        layer(points[:, :1024], z_id, z_neutral)
        sec, _ = best_of(lambda: [layer(c, z_id, z_neutral) for c in points.split(chunk, dim=1)], 2)
    figures[f"{name}_sdf_points_per_s"] = round(points.shape[1] / sec)
    topology = None
    for res in resolutions:
        t0 = time.perf_counter()
        topo = FixedTopology.extract(layer, z_id, z_neutral, *box, res, chunk_size=chunk)
        figures[f"{name}_canonical_mesh_{res}_s"] = round(time.perf_counter() - t0, 3)
        figures[f"{name}_canonical_mesh_{res}_vertices"] = len(topo.canonical_vertices)
        figures[f"{name}_canonical_mesh_{res}_evaluated_fraction"] = round(topo.extraction.evaluated_fraction, 4)
        figures[f"{name}_canonical_mesh_{res}_sdf_s"] = round(topo.extraction.seconds_sdf, 3)
        topology = topology or topo

    n = min(20_000, len(topology.canonical_vertices))
    topo = type(topology)(topology.canonical_vertices[:n], topology.neutral_vertices[:n], topology.faces[:0])
    figures[f"{name}_deform_vertices"] = n
    g = torch.Generator().manual_seed(2)
    z_ex = 0.5 * torch.randn(1, cfg.expr_dim, generator=g)
    with torch.no_grad():
        sec, _ = best_of(lambda: layer.deform(topo.neutral_vertices[None], z_id, z_ex), 3)
        figures[f"{name}_forward_deformation_s"] = round(sec, 4)
        sec, first = best_of(lambda: topo.posed_vertices(layer, z_id, z_ex), 1)
        figures[f"{name}_posed_vertices_from_neutral_s"] = round(sec, 4)
        figures[f"{name}_posed_vertices_from_neutral_iterations"] = first.iterations
        converged = float(first.converged.double().mean())
        figures[f"{name}_posed_vertices_from_neutral_converged_fraction"] = round(converged, 5)
        z_next = z_ex + 0.05 * torch.randn(1, cfg.expr_dim, generator=g)
        sec, nxt = best_of(
            lambda: topo.posed_vertices(layer, z_id, z_next, first.x, inv_jacobian_init=first.inv_jacobian),
            1 if quick else 3,
        )
        figures[f"{name}_posed_vertices_next_frame_s"] = round(sec, 4)
        figures[f"{name}_posed_vertices_next_frame_iterations"] = nxt.iterations
        figures[f"{name}_posed_vertices_next_frame_converged_fraction"] = round(float(nxt.converged.float().mean()), 5)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resolution 128 only, single repeats")
    parser.add_argument("--presets", default="default,trained,mononphm",
                        help="head presets to time ('' for none; 'trained' = the shipped default weights)")
    parser.add_argument("--head-resolutions", default="128,256", help="mesh resolutions for the head presets")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-generic", action="store_true", help="only the head presets")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}
    if not args.skip_generic:
        figures.update(bench_mesh(args.quick))
        figures.update(bench_inversion(args.quick))
    resolutions = [int(r) for r in args.head_resolutions.split(",") if r]
    for name in filter(None, args.presets.split(",")):
        figures.update(bench_head(name, resolutions, args.quick))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
