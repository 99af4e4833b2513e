"""Benchmark of the Pix2NPHM regressor on this CPU; prints ONE JSON line.

At the default presets (head ``default``, encoders ``default``, regressor ``--preset``, random weights or
``--head CKPT``): parameter counts, feed-forward latency per image without gradients for batch 1 and 16
of the regressor alone (from tokens) and of both encoders + regressor (from 128 px images), one training
step of :mod:`train.regressor_training` at ``--batch`` renders (regressor from cached tokens, or encoders +
regressor; 3D loss at 512 points and 2D normal loss at 128 sphere-traced pixels per render, backward, Adam)
on a synthetic batch (front
camera at 3 units, random pixels in the central quarter, points in the box), and the peak resident memory
of the process (``ru_maxrss``). Times are the best of ``--repeats`` runs; with ``--cpu-time`` they are CPU
seconds of the single thread (``time.thread_time``), which other processes on a shared machine do not
inflate.

    python tests/benchmarks/bench_regressor.py [--preset default] [--head CKPT] [--cpu-time] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
from _timing import best_time




def main() -> None:
    from model.checkpoint import load_checkpoint
    from model.config import preset
    from model.head import HeadLayer
    from model.regressor import Regressor, regressor_preset
    from model.vit import build_encoder, encoder_preset
    from train.regressor_data import RegressorBatch, RegressorSet
    from train.regressor_training import RegressorTrainConfig, RegressorTrainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--head", default=None, help="head checkpoint for the training step (default: random default head)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true", help="one thread, CPU seconds of that thread")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="renders per training step")
    args = ap.parse_args()
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    if args.head:
        head, codes, _ = load_checkpoint(args.head)
    else:
        head, codes = HeadLayer(preset("default")).eval(), {}
    enc_n = build_encoder(encoder_preset("default", "normals")).eval()
    enc_p = build_encoder(encoder_preset("default", "points")).eval()
    rcfg = regressor_preset(args.preset, head.cfg, enc_n.cfg, enc_p.cfg)
    reg = Regressor(rcfg).eval()
    s = enc_n.cfg.image_size
    out = {"bench": "regressor", "preset": args.preset, "width": rcfg.width, "depth": rcfg.depth,
           "heads": rcfg.heads, "tokens": rcfg.n_class_tokens + rcfg.normal_tokens + rcfg.point_tokens,
           "params_regressor": sum(p.numel() for p in reg.parameters()),
           "params_encoders": sum(p.numel() for m in (enc_n, enc_p) for n, p in m.named_parameters()
                                  if n.startswith(("patch_embed", "pos_embed", "blocks", "norm."))),
           "threads": torch.get_num_threads(), "clock": "thread_time" if args.cpu_time else "wall",
           "head": args.head or "random default"}
    with torch.no_grad():
        for b in (1, 16):
            tn = torch.randn(b, rcfg.normal_tokens, rcfg.normal_dim)
            tp = torch.randn(b, rcfg.point_tokens, rcfg.point_dim)
            out[f"regressor_ms_per_image_b{b}"] = round(1000 * best_time(lambda: reg(tn, tp), args.repeats, clock) / b, 2)
            x = torch.rand(b, 3, s, s)
            full = lambda: reg(enc_n.encode(x), enc_p.encode(x))  # noqa: E731
            out[f"encoders_regressor_ms_per_image_b{b}"] = round(1000 * best_time(full, args.repeats, clock) / b, 2)

    B, P, N = args.batch, 128, 512
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[300.0, 0, 127.5], [0, 300.0, 127.5], [0, 0, 1]])
    data = RegressorSet(
        rgb=(torch.rand(B, 3, s, s, generator=g) * 255).to(torch.uint8), K=K.expand(B, 3, 3).clone(),
        R=torch.diag(torch.tensor([1.0, -1.0, -1.0])).expand(B, 3, 3).clone(),
        t=torch.tensor([0.0, 0.0, 3.0]).expand(B, 3).clone(), pixels=96 + 64 * torch.rand(B, 4 * P, 2, generator=g),
        normals=torch.nn.functional.normalize(torch.randn(B, 4 * P, 3, generator=g) - torch.tensor([0, 0, 2.0]), dim=-1),
        pixel_valid=torch.ones(B, 4 * P, dtype=torch.bool),
        near=torch.rand(B, 4 * N, 3, generator=g) * 0.8 - 0.4, near_sdf=torch.zeros(B, 4 * N), files=["synthetic"] * B)
    cfg = RegressorTrainConfig(renders_dir="-", head="-", normal_encoder="-", point_encoder="-", out_dir="-",
                               preset=args.preset, batch_size=B, n_points=N, n_pixels=P)
    trainer = RegressorTrainer(cfg, head, codes, enc_n, enc_p, data)
    batch: RegressorBatch = trainer.sample_batch()
    out[f"train_step_s_b{B}_cached_tokens"] = round(best_time(lambda: trainer.train_step(batch), max(1, args.repeats - 2),
                                                          clock), 3)
    trainer.tokens = None  # encoders at every step
    out[f"train_step_s_b{B}_encoding"] = round(best_time(lambda: trainer.train_step(batch), max(1, args.repeats - 2),
                                                     clock), 3)
    with torch.no_grad():
        out["train_hit_fraction"] = round(float(trainer.losses(batch)["hit_fraction"]), 3)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
