"""``nphm-train expression-finetune``: retrain a head's expression side on more and stronger expressions.

Why: the base head (trained on 8 mild expressions per identity, 256 random skin correspondences per head
and step) barely moves its eyelids and brows even at its own training codes: at the codes with the
strongest ``eyeBlink_L`` its posed lids closed by 0.02 of the truth's closure, and its brows rose by none
of a ``browInnerUp`` (``tests/benchmarks/bench_expression_capacity.py --head <base> --no-forward``; started
at the truth the lids still reopen: no closed-lid root). Those are the parts an animator tracks a face for,
and a few hundred vertices of 26 thousand: random sampling hardly sees them.

What changes: the backward deformation network and the expression codes. What stays: the canonical SDF,
the anchors and the identity codes, so the canonical space and everything built on it (the landmark map
of :mod:`model.landmarks`, the identity fit) stay valid.

Data, all exact ICT-FaceKit correspondences in model units (the head's canonical space is each identity's
ICT neutral face, :mod:`train.frame`): the head's training heads (ICT weights re-derived from the data seed,
codes started from the trained ones) plus ``new_per_identity`` new heads per training identity with a new
code each (started at the mean neutral code): half one strong expression of
:data:`train.video.STRONG_EXPRESSIONS` at 0.7-1.0 (jaw fully open, full blinks, winks, smiles, pucker,
funnel, brows up and down), half the sampler's random expressions at full strength.

Loss per step (``heads_per_step`` heads): the correspondence term ``|x_posed + offsets(x_posed) - x_canonical|``
(Huber in mm, 1 mm) at ``points_per_head`` skin vertices, a third drawn uniformly from the face and head, a
third from the *expressive* vertices (those some ICT blendshape moves by more than ``expressive_mm``: lids,
brows, lips, jaw, cheeks), a third in proportion to how far this head's expression moves them; a distillation term keeping the network's output (offsets and hyper-coordinates)
at random points of the box, for the original heads, at the original network's (so the posed SDF stays
what the original training made it away from the face); a code norm term. Resumable (``<out>/state.pt``);
writes ``<out>/head.pt`` with the codes of every head and their ICT weights (``codes["ict_w_ex"]``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from model.errors import InputError
from train.frame import BOX_MAX, BOX_MIN, ict_to_model
from train.ict import PARTS
from train.metrics import MM_PER_UNIT

SKIN = PARTS["head_neck"].stop  # the skin: ICT's face and head-and-neck vertices [0, SKIN)


@dataclass
class ExpressionFinetuneConfig:
    head_path: str
    out_dir: str
    data_seed: int = 1
    identities: int = 80
    expressions: int = 8
    new_per_identity: int = 8
    steps: int = 4000
    heads_per_step: int = 16
    points_per_head: int = 512
    expressive_mm: float = 3.0
    lr_net: float = 5e-4
    lr_codes: float = 1e-2
    w_distill: float = 1.0
    w_code: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 500
    deform_hidden: Optional[int] = None
    """Widen the deformation network to this many hidden units (function-preserving start, see
    :func:`widen_deformation`); ``None`` keeps the head's width."""
    ict_path: Optional[str] = None


def widen_deformation(layer, hidden: int, seed: int = 0):
    """A copy of head ``layer`` whose deformation network has ``hidden`` units per layer and computes exactly
    the same function: the old units keep their weights, the new ones get random incoming and zero outgoing
    weights (so they start silent and learn). Everything else is copied unchanged."""
    from dataclasses import replace as dc_replace

    from model.head import HeadLayer

    old_cfg = layer.cfg
    h = old_cfg.deform_hidden
    if hidden < h:
        raise InputError(f"deform_hidden {hidden} is narrower than the head's {h}")
    new = HeadLayer(dc_replace(old_cfg, deform_hidden=hidden))
    state = {k: v for k, v in layer.state_dict().items() if not k.startswith("deformation.layers.")}
    new.load_state_dict(state, strict=False)
    g = torch.Generator().manual_seed(seed)
    old_layers, new_layers = layer.deformation.layers, new.deformation.layers
    skip = old_cfg.deform_skip
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(old_layers, new_layers)):
            W = torch.randn(b.weight.shape, generator=g) / math.sqrt(b.weight.shape[1])
            bias = torch.zeros(b.bias.shape)
            n_out = a.weight.shape[0]
            if i == 0:
                W[:n_out] = a.weight
            else:
                hid_new = hidden  # the input's hidden part: old units first, then the new ones
                W[:n_out, :hid_new] = 0.0
                W[:n_out, :h] = a.weight[:, :h]
                if i == skip:
                    W[:n_out, hid_new:] = a.weight[:, h:]
            bias[:n_out] = a.bias
            if i == len(old_layers) - 1:
                W, bias = W[:n_out], bias[:n_out]
            b.weight.copy_(W)
            b.bias.copy_(bias)
    return new.eval()


def new_expressions(kit, rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, K_ex]`` strong and full-strength random expressions (module docstring)."""
    from train.sampler import sample_expression
    from train.video import strong_expression

    names = list(kit.expression_names)
    out = []
    for i in range(n):
        out.append(strong_expression(rng, names) if i % 2 == 0 else sample_expression(rng, 1, names)[0])
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def expressive_vertices(kit, threshold_mm: float) -> np.ndarray:
    """Skin vertex ids some ICT blendshape moves by more than ``threshold_mm`` (ICT units are cm)."""
    move = np.linalg.norm(kit.expression_modes[:, :SKIN], axis=-1).max(0) * 10.0  # [V] mm
    return np.flatnonzero(move > threshold_mm)


class _Data:
    """Canonical and posed skin vertices (model units) of every head, its identity and ICT weights."""

    def __init__(self, kit, w_ids: np.ndarray, head_identity: np.ndarray, w_ex: np.ndarray):
        self.identity = torch.as_tensor(head_identity).long()
        neutral = np.stack([ict_to_model(kit.vertices(w, np.zeros(kit.n_expression, np.float32))[:SKIN])
                            for w in w_ids]).astype(np.float32)
        self.neutral = torch.from_numpy(neutral)  # [N_id, V, 3]
        self.posed = torch.from_numpy(np.stack([ict_to_model(kit.vertices(w_ids[i], w)[:SKIN]).astype(np.float32)
                                                for i, w in zip(head_identity, w_ex)]))  # [N, V, 3]
        self.w_ex = torch.from_numpy(np.asarray(w_ex, np.float32))


def finetune_expressions(cfg: ExpressionFinetuneConfig, log=print) -> dict:
    from model.checkpoint import load_checkpoint, save_checkpoint
    from train.ict import default_ict_path, load_ict
    from train.landmark_assets import head_expressions

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    kit = load_ict(Path(cfg.ict_path) if cfg.ict_path else default_ict_path())
    layer, codes, meta = load_checkpoint(cfg.head_path)
    original_layer = layer
    if cfg.deform_hidden is not None and cfg.deform_hidden != layer.cfg.deform_hidden:
        layer = widen_deformation(layer, cfg.deform_hidden, cfg.seed)
    if "ict_w_ex" in codes:
        raise InputError(f"{cfg.head_path}: already fine-tuned (its codes hold ict_w_ex); start from the original head")
    w_train, old_ident, old_w = head_expressions(codes, meta, kit, cfg.data_seed, cfg.identities, cfg.expressions)
    files = meta["train_files"]  # one per expression code (head_expressions checked)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.data_seed, 77, cfg.seed]))
    n_id = len(codes["z_id"])
    new_w = new_expressions(kit, rng, n_id * cfg.new_per_identity)
    new_ident = np.repeat(np.arange(n_id), cfg.new_per_identity)
    n_old = len(old_w)
    data = _Data(kit, w_train, np.concatenate([old_ident, new_ident]), np.concatenate([old_w, new_w]))
    expressive = torch.as_tensor(expressive_vertices(kit, cfg.expressive_mm))
    log(f"data: {n_old} original + {len(new_w)} new heads, {len(expressive)} expressive vertices")

    original = copy.deepcopy(original_layer.deformation).eval()
    for p in list(layer.parameters()) + list(original.parameters()):
        p.requires_grad_(False)
    for p in layer.deformation.parameters():
        p.requires_grad_(True)
    neutral_code = codes["z_ex"][codes["is_neutral"].bool()].mean(0)
    z_ex = torch.nn.Parameter(torch.cat([codes["z_ex"].float(), neutral_code.expand(len(new_w), -1).clone()]))
    z_id = codes["z_id"].float()
    with torch.no_grad():
        anchors = layer.anchors(z_id)  # [N_id, A, 3] frozen
    opt = torch.optim.Adam([{"params": layer.deformation.parameters(), "lr": cfg.lr_net},
                            {"params": [z_ex], "lr": cfg.lr_codes}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=0.02 * cfg.lr_net)
    g = torch.Generator().manual_seed(cfg.seed)
    step, seconds = 0, 0.0
    state_path = out / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        layer.deformation.load_state_dict(st["deformation"])
        with torch.no_grad():
            z_ex.copy_(st["z_ex"])
        opt.load_state_dict(st["opt"]); sched.load_state_dict(st["sched"]); g.set_state(st["rng"])
        step, seconds = st["step"], st["seconds"]
        log(f"resumed at step {step}")
    before = correspondence_report(layer, z_id, codes["z_ex"].float(), anchors, data, expressive, n_old,
                                   only_original=True) if step == 0 else None
    lo, hi = torch.as_tensor(BOX_MIN, dtype=torch.float32), torch.as_tensor(BOX_MAX, dtype=torch.float32)
    n_heads = len(data.w_ex)
    t = time.perf_counter()
    while step < cfg.steps:
        heads = torch.randint(0, n_heads, (cfg.heads_per_step,), generator=g)
        ident = data.identity[heads]
        third = cfg.points_per_head // 3
        moved = (data.posed[heads] - data.neutral[ident]).norm(dim=-1)  # [B, V] this head's motion
        vid = torch.cat([torch.randint(0, SKIN, (len(heads), third), generator=g),
                         expressive[torch.randint(0, len(expressive), (len(heads), third), generator=g)],
                         torch.multinomial(moved + 1e-6, cfg.points_per_head - 2 * third, replacement=True,
                                           generator=g)], 1)
        posed = data.posed[heads[:, None], vid]
        canonical = data.neutral[ident[:, None], vid]
        cond = layer.deformation.condition(z_id[ident], z_ex[heads], anchors[ident])
        offsets = layer.deformation(posed, cond)[..., :3]
        d = (posed + offsets - canonical).norm(dim=-1) * MM_PER_UNIT
        corresp = torch.nn.functional.huber_loss(d, torch.zeros_like(d), delta=1.0)
        old = heads[heads < n_old]
        distill = torch.zeros(())
        if len(old):
            box = lo + (hi - lo) * torch.rand(len(old), 256, 3, generator=g)
            oi = data.identity[old]
            with torch.no_grad():
                ref = original(box, original.condition(z_id[oi], codes["z_ex"][old].float(), anchors[oi]))
            new = layer.deformation(box, layer.deformation.condition(z_id[oi], z_ex[old], anchors[oi]))
            distill = ((new - ref) * MM_PER_UNIT).abs().mean()
        loss = corresp + cfg.w_distill * distill + cfg.w_code * z_ex[heads].square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 250 == 0:
            log(f"step {step}: correspondence {float(corresp.detach()):.3f} (Huber, mm), mean distance "
                f"{float(d.detach().mean()):.3f} mm, distillation {float(distill.detach()):.3f} mm")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            seconds += time.perf_counter() - t
            t = time.perf_counter()
            tmp = state_path.with_suffix(".tmp")
            torch.save({"deformation": layer.deformation.state_dict(), "z_ex": z_ex.detach().clone(),
                        "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": g.get_state(), "step": step,
                        "seconds": seconds}, tmp)
            tmp.replace(state_path)
    layer.eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    report = {"steps": step, "train_seconds": round(seconds, 1), "original_heads": n_old, "new_heads": len(new_w),
              "correspondence_mm_before": before,
              "correspondence_mm": correspondence_report(layer, z_id, z_ex.detach(), anchors, data, expressive, n_old)}
    new_codes = dict(codes)
    new_codes["z_ex"] = z_ex.detach().clone()
    new_codes["identity_of_head"] = data.identity.clone()
    new_codes["is_neutral"] = torch.cat([codes["is_neutral"].bool(), torch.zeros(len(new_w), dtype=torch.bool)])
    new_codes["ict_w_ex"] = data.w_ex.clone()
    new_meta = dict(meta)
    new_meta["train_files"] = list(files) + [f"id{i:04d}_strong{j:03d}" for i in range(n_id)
                                             for j in range(cfg.new_per_identity)]
    new_meta["expression_finetune"] = {"config": asdict(cfg), "report": report}
    save_checkpoint(out / "head.pt", layer, new_codes, new_meta)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report))
    return report


def correspondence_report(layer, z_id, z_ex, anchors, data: _Data, expressive: torch.Tensor, n_old: int,
                          only_original: bool = False) -> dict:
    """Mean correspondence distance (mm) on all skin vertices and on the expressive ones, original and new
    heads (the posed vertex's backward offset against its canonical vertex; 0 is exact)."""
    res = {}
    with torch.no_grad():
        sets = [("original", torch.arange(0, n_old, 7))]
        if not only_original:
            sets.append(("new", torch.arange(n_old, len(data.w_ex), 7)))
        for name, heads in sets:
            all_, exp_ = [], []
            for h in heads.tolist():
                i = int(data.identity[h])
                cond = layer.deformation.condition(z_id[i][None], z_ex[h][None], anchors[i][None])
                p = data.posed[h][None]
                dist = (p + layer.deformation(p, cond)[..., :3] - data.neutral[i][None]).norm(dim=-1)[0] * MM_PER_UNIT
                all_.append(float(dist.mean()))
                exp_.append(float(dist[expressive].mean()))
            res[name] = {"heads": len(heads), "skin": round(float(np.mean(all_)), 3),
                         "expressive": round(float(np.mean(exp_)), 3)}
    return res
