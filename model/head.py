"""The MonoNPHM-architecture head network: a stateless layer (codes as inputs) and a code-owning holder.

Field model (all coordinates in model units, see ``model.config``):

* anchors = mean layout + MLP(global identity code)                                   ``[B, A, 3]``
* backward deformation (posed -> canonical): an MLP of ``[x_posed, compress(z_id, anchors), z_ex]``
  predicts 3 offsets and ``n_hyper`` hyper-coordinates; ``x_canonical = x_posed + offsets``
* canonical SDF: per anchor an MLP of ``[global code, local code, mirrored(x_can - anchor), hyper]``,
  one global MLP of ``[global code, last local code, x_can, hyper]``; blended over the K nearest anchors
  plus the global MLP with MonoNPHM's Gaussian weights (``model.anchors.blend_weights``)
* appearance (optional): a second ensemble of ``[global app code, local app code, bottleneck(geometry
  features)]`` blended with the same weights, giving raw RGB in the units of the training colours.

Batch convention: codes are ``[..., D]`` and points ``[..., N, 3]``; leading dims broadcast together
(e.g. points ``[N, 3]`` with codes ``[2, D]`` give outputs over batch ``(2,)``). The layer evaluates all
given points at once (memory grows with N times the number of members times the width): callers chunk
large point sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from model.anchors import blend_weights, default_layout, mirror_signs, nearest_anchors, symmetrize_layout
from model.config import HeadConfig
from model.ensemble import EnsembleMLP, block_plan, block_size
from model.errors import InputError


@dataclass
class DeformOutput:
    """Backward deformation of posed points: ``x_canonical = x_posed + offsets``."""

    offsets: Tensor  # [..., N, 3] model units
    hyper: Tensor  # [..., N, H] hyper-coordinates (H = cfg.n_hyper)


@dataclass
class HeadOutput:
    """Posed evaluation of the head field."""

    sdf: Tensor  # [..., N] signed distance, model units, negative inside
    canonical: Tensor  # [..., N, 3] canonical positions of the posed points
    hyper: Tensor  # [..., N, H]
    rgb: Optional[Tensor] = None  # [..., N, 3] raw colour; None when no appearance code was given


def _check_code(z: Tensor, dim: int, name: str) -> None:
    if not isinstance(z, Tensor) or z.ndim < 1 or z.shape[-1] != dim:
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise InputError(f"{name}: expected shape [..., {dim}], got {got}")
    if torch.isnan(z).any():
        raise InputError(f"{name}: contains NaN")


def _check_points(x: Tensor, dim: int, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[-1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name}: expected shape [..., N, {dim}], got {got}")


def _flatten(points: list[Tensor], codes: list[Tensor]) -> tuple[tuple[int, ...], list[Tensor], list[Tensor]]:
    """Broadcast leading dims of points ``[..., N, C]`` and codes ``[..., D]``; flatten them to one dim B."""
    try:  # numpy's: torch.broadcast_shapes imports sympy on its first call (0.35 s)
        batch = np.broadcast_shapes(*[tuple(p.shape[:-2]) for p in points], *[tuple(c.shape[:-1]) for c in codes])
    except ValueError as e:
        shapes = [tuple(t.shape) for t in points + codes]
        raise InputError(f"batch dimensions of points and codes do not broadcast: {shapes}") from e
    b = math.prod(batch)
    flat_p = [p.expand(*batch, *p.shape[-2:]).reshape(b, *p.shape[-2:]) for p in points]
    flat_c = [c.expand(*batch, c.shape[-1]).reshape(b, c.shape[-1]) for c in codes]
    return tuple(batch), flat_p, flat_c


class DeformationMLP(nn.Module):
    """MonoNPHM's backward deformation network (``DeformationNetwork`` in ``compress`` mode).

    Layers are plain ``nn.Linear`` with the released input layout: layer 0 sees ``[x, cond]``, the skip
    layer sees ``[h, x, cond] / sqrt(2)``, with ``cond = [compressed id, z_ex]``. The per-batch ``cond``
    part of those layers is computed once per call instead of once per point.
    """

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        cond = cfg.id_compressed_dim + cfg.expr_dim
        self.compressor = nn.Linear(cfg.id_dim + 3 * cfg.n_anchors, cfg.id_compressed_dim)
        hid = cfg.deform_hidden
        dims_in = [3 + cond] + [hid + (3 + cond if i == cfg.deform_skip else 0) for i in range(1, cfg.deform_layers)]
        self.layers = nn.ModuleList([nn.Linear(d, hid) for d in dims_in] + [nn.Linear(hid, 3 + cfg.n_hyper)])

    def condition(self, z_id: Tensor, z_ex: Tensor, anchors: Tensor) -> Tensor:
        """``[B, C]`` conditioning vector ``[compress([z_id, anchors.flatten()]), z_ex]``."""
        comp = self.compressor(torch.cat([z_id, anchors.flatten(-2)], dim=-1))
        return torch.cat([comp, z_ex], dim=-1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """``x [B, N, 3]``, ``cond [B, C]`` -> ``[B, N, 3 + n_hyper]`` (offsets then hyper-coordinates)."""
        beta = self.cfg.softplus_beta
        hid = self.cfg.deform_hidden
        h = None
        for i, lin in enumerate(self.layers):
            w = lin.weight
            if i == 0:
                h = x @ w[:, :3].T + (cond @ w[:, 3:].T + lin.bias).unsqueeze(-2)
            elif i == self.cfg.deform_skip:
                pre = h @ w[:, :hid].T + x @ w[:, hid:hid + 3].T + (cond @ w[:, hid + 3:].T).unsqueeze(-2)
                h = pre / math.sqrt(2.0) + lin.bias
            else:
                h = lin(h)
            if i < len(self.layers) - 1:
                h = nn.functional.softplus(h, beta=beta)
        return h


    def forward_with_jacobian(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` plus its Jacobian with respect to ``x`` by forward-mode propagation.

        Returns ``(out [B, N, 3 + n_hyper], jac [B, N, 3 + n_hyper, 3])`` with ``jac[..., i, j] =
        d out_i / d x_j``; differentiable (autograd) with respect to the weights, ``x`` and ``cond``.
        """
        beta = self.cfg.softplus_beta
        hid = self.cfg.deform_hidden
        h = jt = None  # jt: tangents [B, 3, N, width], one per input coordinate
        for i, lin in enumerate(self.layers):
            w = lin.weight
            if i == 0:
                h = x @ w[:, :3].T + (cond @ w[:, 3:].T + lin.bias).unsqueeze(-2)
                jt = w[:, :3].T.reshape(1, 3, 1, -1)
            elif i == self.cfg.deform_skip:
                pre = h @ w[:, :hid].T + x @ w[:, hid:hid + 3].T + (cond @ w[:, hid + 3:].T).unsqueeze(-2)
                h = pre / math.sqrt(2.0) + lin.bias
                jt = (jt @ w[:, :hid].T + w[:, hid:hid + 3].T.reshape(1, 3, 1, -1)) / math.sqrt(2.0)
            else:
                h = lin(h)
                jt = jt @ w.T
            if i < len(self.layers) - 1:
                jt = torch.sigmoid(beta * h).unsqueeze(1) * jt  # softplus' = sigmoid(beta * pre)
                h = nn.functional.softplus(h, beta=beta)
        return h, jt.permute(0, 2, 3, 1)

    def forward_with_cond_tangents(self, x: Tensor, cond: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` plus its derivatives along directions in conditioning space, by forward mode.

        Args:
            x: ``[B, N, 3]``; cond: ``[B, C]``; directions: ``[T, C]`` tangent vectors of ``cond``.
        Returns:
            ``(out [B, N, 3 + n_hyper], jac [B, N, 3 + n_hyper, T])`` with ``jac[..., i, k] = d out_i / d cond
            . directions[k]`` (the directional derivatives; e.g. rows of an expression basis). Not meant for
            autograd through ``jac``.
        """
        beta = self.cfg.softplus_beta
        hid = self.cfg.deform_hidden
        h = jt = None  # jt: tangents [B, T, N or 1, width]
        for i, lin in enumerate(self.layers):
            w = lin.weight
            if i == 0:
                h = x @ w[:, :3].T + (cond @ w[:, 3:].T + lin.bias).unsqueeze(-2)
                jt = (directions @ w[:, 3:].T)[None, :, None, :]  # [1, T, 1, width]
            elif i == self.cfg.deform_skip:
                pre = h @ w[:, :hid].T + x @ w[:, hid:hid + 3].T + (cond @ w[:, hid + 3:].T).unsqueeze(-2)
                h = pre / math.sqrt(2.0) + lin.bias
                jt = (jt @ w[:, :hid].T + (directions @ w[:, hid + 3:].T)[None, :, None, :]) / math.sqrt(2.0)
            else:
                h = lin(h)
                jt = jt @ w.T
            if i < len(self.layers) - 1:
                jt = torch.sigmoid(beta * h).unsqueeze(1) * jt
                h = nn.functional.softplus(h, beta=beta)
        jt = jt.expand(h.shape[0], -1, h.shape[1], -1)
        return h, jt.permute(0, 2, 3, 1)


class HeadLayer(nn.Module):
    """Stateless head network: every method takes the codes as inputs.

    Codes: ``z_id [..., cfg.id_dim]`` (geometry identity), ``z_ex [..., cfg.expr_dim]`` (expression),
    optional ``z_app [..., cfg.app_dim]`` (appearance, only with ``cfg.appearance``). Points in model
    units. NaN codes and wrong code shapes raise :class:`InputError`.

    Initialisation follows MonoNPHM (PyTorch's default Linear init, no geometric init), except the last
    anchor-offset layer, which starts at zero so that the anchors start at the mean layout. On CPU,
    chunks of about 8k points per call are fastest (``tests/benchmarks/bench_head.py``).
    """

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        a, p = cfg.n_anchors, cfg.n_symmetric_pairs
        self.register_buffer("anchor_mean", default_layout(a, p))  # [A, 3]
        self.register_buffer("mirror", mirror_signs(a, p), persistent=False)  # [A, 3]
        types = torch.cat([torch.arange(p).repeat_interleave(2), torch.arange(p, cfg.n_members)])
        self.register_buffer("member_type", types, persistent=False)  # [A + 1]
        self.anchor_offsets = nn.Sequential(
            nn.Linear(cfg.id_global_dim, cfg.anchor_hidden), nn.ReLU(),
            nn.Linear(cfg.anchor_hidden, cfg.anchor_hidden), nn.ReLU(),
            nn.Linear(cfg.anchor_hidden, 3 * a))
        nn.init.zeros_(self.anchor_offsets[-1].weight)  # start at the mean layout
        nn.init.zeros_(self.anchor_offsets[-1].bias)
        self.sdf_ensemble = EnsembleMLP(cfg.n_members, cfg.id_global_dim + cfg.id_local_dim, 3 + cfg.n_hyper,
                                        cfg.sdf_hidden, cfg.sdf_layers, 1, cfg.softplus_beta)
        self.deformation = DeformationMLP(cfg)
        if cfg.appearance:
            self.app_bottleneck = nn.Sequential(nn.Linear(cfg.sdf_hidden, cfg.app_bottleneck), nn.ReLU(),
                                                nn.Linear(cfg.app_bottleneck, cfg.app_bottleneck))
            self.app_ensemble = EnsembleMLP(cfg.n_members, cfg.app_global_dim + cfg.app_local_dim,
                                            cfg.app_bottleneck, cfg.app_hidden, cfg.app_layers, 3, None)

    # --- anchors ----------------------------------------------------------------------------------------
    def set_anchor_mean(self, points: Tensor, symmetrize: bool = True) -> None:
        """Set the mean anchor layout ``[A, 3]`` (model units), e.g. from landmarks of training data.

        With ``symmetrize`` (default) the layout is made exactly mirror-symmetric first (pairs averaged
        with their mirror, middle anchors on x = 0; ``model.anchors.symmetrize_layout``). Official MonoNPHM
        checkpoints load with ``symmetrize=False`` to keep their (nearly symmetric) layout bit-exact.
        """
        _check_points(points, 3, "anchor mean")
        if points.shape != (self.cfg.n_anchors, 3):
            raise InputError(f"anchor mean: expected shape [{self.cfg.n_anchors}, 3], got {tuple(points.shape)}")
        if not torch.isfinite(points).all():
            raise InputError("anchor mean: contains NaN or inf")
        pts = points.detach().to(self.anchor_mean)
        if symmetrize:
            pts = symmetrize_layout(pts, self.cfg.n_symmetric_pairs)
        with torch.no_grad():
            self.anchor_mean.copy_(pts)

    def _anchors(self, z_id: Tensor) -> Tensor:  # [B, D] -> [B, A, 3]
        off = self.anchor_offsets(z_id[..., :self.cfg.id_global_dim])
        return self.anchor_mean + off.view(*off.shape[:-1], self.cfg.n_anchors, 3)

    def anchors(self, z_id: Tensor) -> Tensor:
        """Canonical anchor positions ``[..., A, 3]`` for identity codes ``[..., id_dim]``."""
        _check_code(z_id, self.cfg.id_dim, "z_id")
        return self._anchors(z_id)

    # --- deformation ------------------------------------------------------------------------------------
    def _deform(self, x: Tensor, z_id: Tensor, z_ex: Tensor, anchors: Tensor) -> Tensor:
        cond = self.deformation.condition(z_id, z_ex, anchors)
        return self.deformation(x, cond)

    def deform(self, x_posed: Tensor, z_id: Tensor, z_ex: Tensor) -> DeformOutput:
        """Backward deformation of posed points ``[..., N, 3]``: ``x_canonical = x_posed + offsets``."""
        _check_points(x_posed, 3, "x_posed")
        _check_code(z_id, self.cfg.id_dim, "z_id")
        _check_code(z_ex, self.cfg.expr_dim, "z_ex")
        batch, (x,), (zi, ze) = _flatten([x_posed], [z_id, z_ex])
        out = self._deform(x, zi, ze, self._anchors(zi))
        out = out.view(*batch, *out.shape[-2:])
        return DeformOutput(offsets=out[..., :3], hyper=out[..., 3:])

    def deform_with_jacobian(self, x_posed: Tensor, z_id: Tensor, z_ex: Tensor) -> tuple[DeformOutput, Tensor]:
        """:meth:`deform` plus ``jac [..., N, 3, 3]``, the Jacobian ``d offsets_i / d x_posed_j`` (the
        Jacobian of ``x_canonical`` is ``I + jac``), computed by forward-mode propagation in one pass."""
        _check_points(x_posed, 3, "x_posed")
        _check_code(z_id, self.cfg.id_dim, "z_id")
        _check_code(z_ex, self.cfg.expr_dim, "z_ex")
        batch, (x,), (zi, ze) = _flatten([x_posed], [z_id, z_ex])
        cond = self.deformation.condition(zi, ze, self._anchors(zi))
        out, jac = self.deformation.forward_with_jacobian(x, cond)
        out = out.view(*batch, *out.shape[-2:])
        jac = jac[..., :3, :].reshape(*batch, x.shape[-2], 3, 3)
        return DeformOutput(offsets=out[..., :3], hyper=out[..., 3:]), jac

    # --- canonical fields -------------------------------------------------------------------------------
    def _member_codes(self, z: Tensor, gdim: int, ldim: int) -> Tensor:  # [B, D] -> [B, A+1, g+l]
        b = z.shape[0]
        a1 = self.cfg.n_anchors + 1
        return torch.cat([z[:, None, :gdim].expand(b, a1, gdim), z[:, gdim:].view(b, a1, ldim)], dim=-1)

    def _canonical(self, x: Tensor, hyper: Tensor, z_id: Tensor, z_app: Optional[Tensor], anchors: Tensor
                   ) -> tuple[Tensor, Optional[Tensor]]:
        """Flat-batch canonical SDF ``[B, N]`` and RGB ``[B, N, 3]`` (or None); ``anchors [B, A, 3]``."""
        cfg = self.cfg
        b, n, _ = x.shape
        a, k = cfg.n_anchors, cfg.k_nearest
        a1 = a + 1  # member instances per head: the anchors and the global member (index a)
        bidx = torch.arange(b, device=x.device).view(b, 1, 1)
        idx = nearest_anchors(x, anchors, k)  # [B, N, K] nearest first
        dist = (x.unsqueeze(-2) - anchors[bidx, idx]).norm(dim=-1)  # [B, N, K]
        w, wg = blend_weights(dist, cfg.blend_std_neighbour, cfg.blend_std_divisor, cfg.global_distance)
        if cfg.evaluation == "dense":  # every member on every point, zero weight outside the K nearest
            member = torch.arange(a1, device=x.device).expand(b, n, a1)
            weight = torch.cat([w.new_zeros(b, n, a).scatter(-1, idx, w), wg.unsqueeze(-1)], -1)
        else:  # only the K nearest anchors and the global member, as MonoNPHM
            member = torch.cat([idx, torch.full((b, n, 1), a, dtype=idx.dtype, device=x.device)], -1)
            weight = torch.cat([w, wg.unsqueeze(-1)], -1)
        m = member.shape[-1]  # member [B, N, M] of each edge, weight [B, N, M]
        anchors_ext = torch.cat([anchors, anchors.new_zeros(b, 1, 3)], 1)  # the global member sees x itself
        sign_ext = torch.cat([self.mirror, self.mirror.new_ones(1, 3)], 0)
        delta = (x.unsqueeze(-2) - anchors_ext[bidx, member]) * sign_ext[member]  # [B, N, M, 3] mirrored
        feats = torch.cat([delta, hyper.unsqueeze(-2).expand(b, n, m, hyper.shape[-1])], -1)

        n_inst = b * a1
        plan = block_plan(member, a1, block_size(member.numel(), n_inst, cfg.sdf_hidden))
        types = self.member_type[plan.block_instance % a1]  # [NB]
        bias = self.sdf_ensemble.code_bias(
            self._member_codes(z_id, cfg.id_global_dim, cfg.id_local_dim), self.member_type)  # [B, A+1, H]
        out, feat = self.sdf_ensemble(plan.scatter(feats.reshape(b * n * m, feats.shape[-1])),
                                      bias.reshape(n_inst, -1)[plan.block_instance], types)
        sdf = (weight * plan.gather(out).view(b, n, m)).sum(-1)  # [B, N]
        if z_app is None:
            return sdf, None
        bias_app = self.app_ensemble.code_bias(
            self._member_codes(z_app, cfg.app_global_dim, cfg.app_local_dim), self.member_type)
        out_app, _ = self.app_ensemble(self.app_bottleneck(feat),
                                       bias_app.reshape(n_inst, -1)[plan.block_instance], types)
        rgb = (weight.unsqueeze(-1) * plan.gather(out_app).view(b, n, m, 3)).sum(-2)  # [B, N, 3]
        return sdf, rgb

    def _check_app(self, z_app: Optional[Tensor]) -> None:
        if z_app is None:
            return
        if not self.cfg.appearance:
            raise InputError("z_app: this head has no appearance field (cfg.appearance is False)")
        _check_code(z_app, self.cfg.app_dim, "z_app")

    def canonical_sdf(self, x_canonical: Tensor, hyper: Tensor, z_id: Tensor,
                      anchors: Optional[Tensor] = None) -> Tensor:
        """Canonical SDF ``[..., N]`` at points ``[..., N, 3]`` with hyper-coordinates ``[..., N, n_hyper]``.

        ``anchors [..., A, 3]`` overrides the anchor positions predicted from ``z_id`` (e.g. to reuse them).
        """
        return self.canonical_fields(x_canonical, hyper, z_id, None, anchors)[0]

    def canonical_fields(self, x_canonical: Tensor, hyper: Tensor, z_id: Tensor, z_app: Optional[Tensor] = None,
                         anchors: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Canonical SDF ``[..., N]`` and RGB ``[..., N, 3]`` (None without ``z_app``) in one pass."""
        cfg = self.cfg
        _check_points(x_canonical, 3, "x_canonical")
        _check_points(hyper, cfg.n_hyper, "hyper")
        _check_code(z_id, cfg.id_dim, "z_id")
        self._check_app(z_app)
        if hyper.shape[-2] != x_canonical.shape[-2]:
            raise InputError(f"hyper: expected [..., {x_canonical.shape[-2]}, {cfg.n_hyper}] to match the points,"
                             f" got {tuple(hyper.shape)}")
        codes = [z_id] + ([z_app] if z_app is not None else [])
        pts = [x_canonical, hyper]
        if anchors is not None:
            _check_points(anchors, 3, "anchors")
            pts.append(anchors)
        batch, flat_p, flat_c = _flatten(pts, codes)
        x, h = flat_p[0], flat_p[1]
        anc = flat_p[2] if anchors is not None else self._anchors(flat_c[0])
        sdf, rgb = self._canonical(x, h, flat_c[0], flat_c[1] if z_app is not None else None, anc)
        n = x.shape[-2]
        return sdf.view(*batch, n), (rgb.view(*batch, n, 3) if rgb is not None else None)

    def forward(self, x_posed: Tensor, z_id: Tensor, z_ex: Tensor, z_app: Optional[Tensor] = None) -> HeadOutput:
        """Posed SDF (and RGB with ``z_app``) at points ``[..., N, 3]``: deform backwards, then evaluate the
        canonical fields at ``(x_posed + offsets, hyper)``."""
        cfg = self.cfg
        _check_points(x_posed, 3, "x_posed")
        _check_code(z_id, cfg.id_dim, "z_id")
        _check_code(z_ex, cfg.expr_dim, "z_ex")
        self._check_app(z_app)
        codes = [z_id, z_ex] + ([z_app] if z_app is not None else [])
        batch, (x,), flat_c = _flatten([x_posed], codes)
        zi, ze = flat_c[0], flat_c[1]
        anchors = self._anchors(zi)
        d = self._deform(x, zi, ze, anchors)
        x_can, hyper = x + d[..., :3], d[..., 3:]
        sdf, rgb = self._canonical(x_can, hyper, zi, flat_c[2] if z_app is not None else None, anchors)
        n = x.shape[-2]
        return HeadOutput(sdf=sdf.view(*batch, n), canonical=x_can.view(*batch, n, 3),
                          hyper=hyper.view(*batch, n, cfg.n_hyper),
                          rgb=rgb.view(*batch, n, 3) if rgb is not None else None)


class HeadModel(nn.Module):
    """Holder owning the codes as parameters, for test-time optimisation (batch of one head).

    Parameters ``z_id [1, id_dim]``, ``z_ex [1, expr_dim]`` and, with appearance, ``z_app [1, app_dim]``,
    initialised to zeros unless given.
    """

    def __init__(self, layer: HeadLayer, z_id: Optional[Tensor] = None, z_ex: Optional[Tensor] = None,
                 z_app: Optional[Tensor] = None):
        super().__init__()
        cfg = layer.cfg
        self.layer = layer

        self.z_id = _code_param(z_id, cfg.id_dim, "z_id")
        self.z_ex = _code_param(z_ex, cfg.expr_dim, "z_ex")
        self.z_app = _code_param(z_app, cfg.app_dim, "z_app") if cfg.appearance else None

    def anchors(self) -> Tensor:
        """``[1, A, 3]`` anchor positions of the held identity."""
        return self.layer.anchors(self.z_id)

    def forward(self, x_posed: Tensor, with_rgb: bool = False) -> HeadOutput:
        """Evaluate at posed points ``[N, 3]`` (or ``[1, N, 3]``); outputs have batch dim 1."""
        return self.layer(x_posed, self.z_id, self.z_ex, self.z_app if with_rgb else None)


def _code_param(z: Optional[Tensor], dim: int, name: str) -> nn.Parameter:
    """A ``[1, dim]`` parameter initialised from ``z`` (any shape holding exactly one code) or zeros."""
    if z is None:
        return nn.Parameter(torch.zeros(1, dim))
    _check_code(z, dim, name)
    if z.numel() != dim:
        raise InputError(f"{name}: expected shape [1, {dim}], got {tuple(z.shape)}")
    return nn.Parameter(z.detach().reshape(1, dim).clone())
