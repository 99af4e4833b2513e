"""Benchmark of the geometric encoders on this CPU; prints ONE JSON line.

For a preset (default ``default``): parameter counts (encoder / decoder), token shape, forward latency per
image without gradients for batch 1 and batch 16 (``forward``: tokens + maps; ``encode``: tokens only, what
the regressor needs), one training step (forward + backward) per image at batch 16, and the peak resident
memory of the process (``ru_maxrss``). Times are the best of ``--repeats`` runs; with ``--cpu-time`` they
are CPU seconds of the (single) thread (``time.thread_time``), which time-slicing by other processes on a
shared machine does not inflate. The load average is reported.

    python tests/benchmarks/bench_encoders.py [--preset default] [--threads 1] [--cpu-time] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
from _timing import best_time

from model.vit import build_encoder, encoder_preset




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true", help="one thread, CPU seconds of that thread")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    cfg = encoder_preset(args.preset, "normals")
    enc = build_encoder(cfg).eval()
    n_enc = sum(p.numel() for n, p in enc.named_parameters()
                if n.startswith(("patch_embed", "pos_embed", "blocks", "norm.")))
    n_all = sum(p.numel() for p in enc.parameters())
    s = cfg.image_size
    out = {"bench": "encoders", "preset": args.preset, "image_size": s, "patch_size": cfg.patch_size,
           "params_total": n_all, "params_encoder": n_enc, "params_decoder": n_all - n_enc,
           "threads": torch.get_num_threads(), "clock": "thread_time" if args.cpu_time else "wall"}
    with torch.no_grad():
        for b in (1, 16):
            x = torch.rand(b, 3, s, s)
            out[f"forward_ms_per_image_b{b}"] = round(1000 * best_time(lambda: enc(x), args.repeats, clock) / b, 2)
            out[f"encode_ms_per_image_b{b}"] = round(1000 * best_time(lambda: enc.encode(x), args.repeats, clock) / b, 2)
        out["tokens_shape_b1"] = list(enc.encode(torch.rand(1, 3, s, s)).shape)
    enc.train()
    x = torch.rand(16, 3, s, s)

    def step():
        o = enc(x)
        (o.normals.square().mean() + o.mask_logits.square().mean()).backward()

    out["train_step_ms_per_image_b16"] = round(1000 * best_time(step, max(1, args.repeats - 1), clock) / 16, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
