"""Fixed topology: posed vertex positions by inverting a backward deformation, with implicit gradients.

The head model deforms *backwards*: ``D(x_posed) = x_posed + offsets(x_posed, z_id, z_ex)`` is the
canonical position of a posed point. A mesh extracted once per identity (at the neutral expression)
and carried into canonical space is animated by finding, for each canonical vertex ``x_c``, the posed
point ``x`` with ``D(x) = x_c``; every frame then has the same vertices and faces.

All positions are in model units. A deformation ``canonical_fn`` here maps posed points ``[..., 3]`` to
canonical points of the same shape and must act point-wise: each output point depends on its own input
point only (and on whatever the function closes over: codes, network parameters). The per-point 3 x 3
Jacobians below rely on this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from model.errors import InputError
from model.mesh import ExtractionInfo, extract_mesh

DeformFn = Callable[[torch.Tensor], torch.Tensor]
_METHODS = ("newton", "broyden")


@dataclass(frozen=True)
class InversionResult:
    """Posed points found by :func:`invert_deformation`."""

    x: torch.Tensor  # [..., 3] posed positions (model units); carries implicit gradients when grad is on
    residual: torch.Tensor  # [...] |D(x) - x_c| (model units), detached
    converged: torch.Tensor  # [...] bool, residual < tol; the other points are the best iterate found
    iterations: int  # solver iterations run (each evaluates canonical_fn once, Newton also its Jacobian)
    inv_jacobian: torch.Tensor  # [..., 3, 3] the solver's last inverse Jacobian near x (Broyden: an estimate)


def invert_deformation(
    canonical_fn: DeformFn,
    x_c: torch.Tensor,
    x_init: torch.Tensor | None = None,
    *,
    max_iter: int = 30,
    tol: float = 1e-5,
    method: str = "broyden",
    inv_jacobian_init: torch.Tensor | None = None,
    compact: bool = True,
) -> InversionResult:
    """Solve ``canonical_fn(x) = x_c`` for ``x`` independently at every point.

    Args:
        canonical_fn: point-wise backward deformation, posed ``[..., 3]`` -> canonical ``[..., 3]``
            (same shape). It may close over codes and parameters that require grad.
        x_c: target canonical positions ``[..., 3]`` (model units).
        x_init: starting posed positions, same shape as ``x_c`` (e.g. the previous frame's solution);
            default ``x_c`` itself, as the deformation is close to the identity.
        max_iter: most iterations; points not within ``tol`` by then are reported in ``converged``.
        tol: convergence threshold on ``|canonical_fn(x) - x_c|`` (model units). The default suits
            float32; in float64 much smaller values (1e-10) are reachable.
        method: ``"newton"``: exact per-point 3 x 3 Jacobians by autograd wherever a point moved (3
            vector-Jacobian products in one batched backward pass; quadratic convergence, but a Jacobian
            costs about 7 forward passes). ``"broyden"`` (default): "good" Broyden updates of per-point
            inverse Jacobians started at the identity or at ``inv_jacobian_init`` (one forward pass per
            iteration, superlinear convergence; the fast choice for near-identity deformations and warm
            starts). Both backtrack per point: a step that does not reduce the residual is halved.
        inv_jacobian_init: ``[..., 3, 3]`` starting inverse Jacobians for Broyden, e.g. the previous
            frame's ``result.inv_jacobian``; default the identity. Ignored by Newton.
        compact: evaluate ``canonical_fn`` only on the points still unconverged (a subset along the
            points axis, dim -2, shared by all leading batch entries). Needs a ``canonical_fn`` that
            accepts any number of points there; pass ``False`` for one that does not.

    Returns:
        The solution. When grad mode is on and ``x_c`` or anything ``canonical_fn`` closes over requires
        grad, ``result.x`` is differentiable through the implicit function theorem:
        ``dx/dtheta = -J^{-1} dD/dtheta`` and ``dx/dx_c = J^{-1}`` with ``J = dD/dx`` at the solution
        (first derivatives only; for points not converged, at the best iterate).

    Raises:
        InputError: on wrong shapes or dtypes, non-finite inputs, a bad option, or a ``canonical_fn``
            that changes the shape of its input.
    """
    _check_inputs(x_c, x_init, max_iter, tol, method)
    if inv_jacobian_init is not None and inv_jacobian_init.shape != (*x_c.shape, 3):
        raise InputError(
            f"inv_jacobian_init must have shape [..., 3, 3] = {[*x_c.shape, 3]}, got {tuple(inv_jacobian_init.shape)}"
        )
    grad_wanted = torch.is_grad_enabled()
    target = x_c.detach()  # [..., 3]
    x = (target if x_init is None else x_init.detach()).clone()  # [..., 3]

    with torch.no_grad():
        if method == "newton":
            y, jac = _pointwise_jacobian(canonical_fn, x)  # [..., 3], [..., 3, 3]
            inv_jac = _inverse3(jac)
        else:
            y = _call(canonical_fn, x)
            if inv_jacobian_init is None:
                inv_jac = torch.eye(3, dtype=x.dtype, device=x.device).expand(*x.shape, 3).clone()  # [..., 3, 3]
            else:
                inv_jac = inv_jacobian_init.detach().to(x.dtype).clone()
        r = y - target  # [..., 3]
        res = r.norm(dim=-1)  # [...]
        alpha = torch.ones_like(res)  # [...] step length of each point's backtracking
        stale = torch.zeros_like(res, dtype=torch.bool)  # [...] Newton: x moved since its Jacobian
        iterations = 0
        while iterations < max_iter:
            active = res >= tol  # [...]
            if not bool(active.any()):
                break
            iterations += 1
            if method == "newton" and bool((active & stale).any()):  # Jacobians only where x moved
                part = _Columns.of(active & stale, compact)
                _, jac = _pointwise_jacobian(canonical_fn, part.take(x, 1))
                fresh = part.take(active & stale, 0)[..., None, None]
                inv_jac = part.put(inv_jac, 2, torch.where(fresh, _inverse3(jac), part.take(inv_jac, 2)))
                stale = stale & ~active
            # Work only on the points (indices along the N axis, dim -2) still active in some batch entry.
            part = _Columns.of(active, compact)
            xs, rs, ress, alphas = part.take(x, 1), part.take(r, 1), part.take(res, 0), part.take(alpha, 0)
            inv_js, acts = part.take(inv_jac, 2), part.take(active, 0)
            step = -(inv_js @ rs.unsqueeze(-1)).squeeze(-1)  # [..., n, 3]
            x_try = xs + (alphas * acts).unsqueeze(-1) * step
            r_try = _call(canonical_fn, x_try) - part.take(target, 1)
            res_try = r_try.norm(dim=-1)
            accept = acts & (res_try < ress)  # [..., n]
            if method == "broyden":  # the secant pair is informative whether or not the step is taken
                inv_js = torch.where(acts[..., None, None], _broyden_update(inv_js, x_try - xs, r_try - rs), inv_js)
                inv_jac = part.put(inv_jac, 2, inv_js)
            else:
                stale = part.put(stale, 0, part.take(stale, 0) | accept)
            x = part.put(x, 1, torch.where(accept.unsqueeze(-1), x_try, xs))
            r = part.put(r, 1, torch.where(accept.unsqueeze(-1), r_try, rs))
            res = part.put(res, 0, torch.where(accept, res_try, ress))
            halved = torch.where(acts, alphas * 0.5, alphas)
            alpha = part.put(alpha, 0, torch.where(accept, torch.ones_like(alphas), halved))

    converged = res < tol
    if not grad_wanted:
        return InversionResult(x=x, residual=res, converged=converged, iterations=iterations, inv_jacobian=inv_jac)
    # Implicit differentiation by one attached Newton step. The solve above ran without a graph. With
    # r = D(x*; theta) - x_c evaluated once more *with* the graph, x_out = x* - J^{-1} (r - r.detach())
    # (J^{-1} detached) has exactly the value x* (the solver's iterate, whose residual is reported) and
    # exactly the implicit-function gradient: d x_out = -J^{-1} (dD/dtheta dtheta - dx_c). This works for
    # any closure, whatever parameters it captures, because ordinary autograd finds them through r; a
    # custom autograd.Function would need every captured tensor passed in explicitly. The price is one
    # extra forward pass and one exact Jacobian at x* (the solver's own is a secant estimate or was
    # taken before the last step).
    with torch.enable_grad():
        y = _call(canonical_fn, x)  # [..., 3], attached to theta
    if not (y.requires_grad or x_c.requires_grad):
        return InversionResult(x=x, residual=res, converged=converged, iterations=iterations, inv_jacobian=inv_jac)
    exact_inv_jac = _inverse3(_pointwise_jacobian(canonical_fn, x)[1])  # at x itself, not an estimate
    r = y - x_c  # [..., 3], zero up to the residual; only its derivatives matter
    x_out = x - (exact_inv_jac @ (r - r.detach()).unsqueeze(-1)).squeeze(-1)
    return InversionResult(
        x=x_out, residual=res, converged=converged, iterations=iterations, inv_jacobian=exact_inv_jac
    )


class _Columns:
    """A subset of point indices along the points axis; ``tail`` counts the axes after that axis."""

    def __init__(self, cols: torch.Tensor | None):
        self.cols = cols

    @classmethod
    def of(cls, mask: torch.Tensor, compact: bool) -> _Columns:
        """The point indices where ``mask`` [..., N] holds in some batch entry (all when not compact)."""
        if not compact or mask.dim() == 0:
            return cls(None)
        cols = mask.reshape(-1, mask.shape[-1]).any(0)  # [N]
        return cls(None if bool(cols.all()) else cols.nonzero().squeeze(1))

    def take(self, t: torch.Tensor, tail: int) -> torch.Tensor:
        return t if self.cols is None else t.index_select(t.dim() - 1 - tail, self.cols)

    def put(self, full: torch.Tensor, tail: int, part: torch.Tensor) -> torch.Tensor:
        return part if self.cols is None else full.index_copy_(full.dim() - 1 - tail, self.cols, part)


def pointwise_jacobian(canonical_fn: DeformFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Value ``[..., 3]`` and per-point Jacobian ``[..., 3, 3]`` (``J[..., i, j] = dD_i/dx_j``), detached.

    ``canonical_fn`` must be point-wise; the Jacobian is then read off three vector-Jacobian products
    with the unit cotangents, batched into one backward pass.
    """
    if x.shape[-1:] != (3,):
        raise InputError(f"x must have shape [..., 3], got {tuple(x.shape)}")
    return _pointwise_jacobian(canonical_fn, x)


def _pointwise_jacobian(canonical_fn: DeformFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        y = _call(canonical_fn, leaf)  # [..., 3]
        if not y.requires_grad:  # canonical_fn ignores x: a constant map
            return y.detach(), torch.zeros(*x.shape, 3, dtype=x.dtype, device=x.device)
        cotangents = torch.eye(3, dtype=y.dtype, device=y.device).view(3, *([1] * (y.dim() - 1)), 3)
        rows = torch.autograd.grad(y, leaf, cotangents.expand(3, *y.shape), is_grads_batched=True)[0]
    return y.detach(), rows.movedim(0, -2)  # [..., 3, 3]


def _call(canonical_fn: DeformFn, x: torch.Tensor) -> torch.Tensor:
    y = canonical_fn(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"canonical_fn must map points {list(x.shape)} to the same shape, got {got}")
    return y


def _inverse3(m: torch.Tensor) -> torch.Tensor:
    """Inverses of 3 x 3 matrices ``[..., 3, 3]`` by the adjugate; near-singular ones get ``m^T / |m|^2``.

    The fallback turns a Newton step into a (scaled) gradient step on ``|D(x) - x_c|^2``, which the
    backtracking then controls.
    """
    a, b, c = m[..., 0, :], m[..., 1, :], m[..., 2, :]  # rows [..., 3]
    adj_t = torch.stack([torch.cross(b, c, dim=-1), torch.cross(c, a, dim=-1), torch.cross(a, b, dim=-1)], dim=-1)
    det = (a * torch.cross(b, c, dim=-1)).sum(-1)  # [...]
    scale = m.square().sum((-2, -1))  # [...] |m|_F^2
    ok = det.abs() > 1e-10 * scale.pow(1.5)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    fallback = m.transpose(-1, -2) / scale.clamp_min(1e-30)[..., None, None]
    return torch.where(ok[..., None, None], adj_t / safe_det[..., None, None], fallback)


def _broyden_update(inv_jac: torch.Tensor, dx: torch.Tensor, dr: torch.Tensor) -> torch.Tensor:
    """"Good" Broyden update of inverse Jacobians ``[..., 3, 3]`` from secant pairs ``dx, dr [..., 3]``.

    ``H' = H + (dx - H dr) dx^T H / (dx^T H dr)`` (Sherman-Morrison form); pairs with a vanishing
    denominator leave ``H`` unchanged.
    """
    h_dr = (inv_jac @ dr.unsqueeze(-1)).squeeze(-1)  # [..., 3]
    dx_h = (dx.unsqueeze(-2) @ inv_jac).squeeze(-2)  # [..., 3]
    denom = (dx * h_dr).sum(-1)  # [...]
    ok = denom.abs() > 1e-12 * dx.norm(dim=-1) * h_dr.norm(dim=-1) + torch.finfo(dx.dtype).tiny
    safe = torch.where(ok, denom, torch.ones_like(denom))[..., None, None]
    update = (dx - h_dr).unsqueeze(-1) * dx_h.unsqueeze(-2) / safe
    return inv_jac + torch.where(ok[..., None, None], update, torch.zeros_like(update))


def _check_inputs(x_c, x_init, max_iter, tol, method) -> None:
    if not isinstance(x_c, torch.Tensor) or x_c.shape[-1:] != (3,) or not x_c.is_floating_point():
        got = (tuple(x_c.shape), x_c.dtype) if isinstance(x_c, torch.Tensor) else type(x_c).__name__
        raise InputError(f"x_c must be a floating-point tensor of shape [..., 3], got {got}")
    if not bool(torch.isfinite(x_c).all()):
        raise InputError("x_c contains NaN or infinite positions")
    if x_init is not None:
        if not isinstance(x_init, torch.Tensor) or x_init.shape != x_c.shape or x_init.dtype != x_c.dtype:
            got = (tuple(x_init.shape), x_init.dtype) if isinstance(x_init, torch.Tensor) else type(x_init).__name__
            raise InputError(f"x_init must match x_c: shape {list(x_c.shape)}, dtype {x_c.dtype}; got {got}")
        if not bool(torch.isfinite(x_init).all()):
            raise InputError("x_init contains NaN or infinite positions")
    if method not in _METHODS:
        raise InputError(f"method must be one of {_METHODS}, got {method!r}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise InputError(f"max_iter must be an integer >= 0, got {max_iter}")
    if not tol > 0:
        raise InputError(f"tol must be > 0 (model units), got {tol}")


class Deformer(Protocol):
    """What :class:`FixedTopology` needs of a head layer (``model.head.HeadLayer`` fits)."""

    def deform(self, x_posed: torch.Tensor, z_id: torch.Tensor, z_ex: torch.Tensor) -> Any:
        """Backward deformation; the result has ``.offsets`` [B, N, 3], canonical = posed + offsets."""


@dataclass(frozen=True)
class FixedTopology:
    """One identity's mesh in canonical space, animated by inverting the layer's backward deformation.

    Built once per identity from a mesh extracted in posed space at the neutral expression
    (:meth:`from_neutral_mesh`); :meth:`posed_vertices` then gives the same ``V`` vertices for any
    expression, so the faces never change. The canonical vertices belong to the identity code they were
    built with: after changing ``z_id``, build again. With hyper-dimensions (``n_hyper > 0``) the
    canonical SDF itself changes with the expression, so the posed vertices follow the deformation but
    need not lie exactly on the posed zero level set.
    """

    canonical_vertices: torch.Tensor  # [V, 3] v_c = v0 + offsets(v0, z_id, z_neutral), model units
    neutral_vertices: torch.Tensor  # [V, 3] v0: posed positions at the neutral expression (initial guess)
    faces: torch.Tensor  # [F, 3] int64, CCW seen from outside
    extraction: ExtractionInfo | None = None  # how the neutral mesh was extracted, when by :meth:`extract`

    @classmethod
    def extract(
        cls,
        layer: Deformer,
        z_id: torch.Tensor,
        z_neutral: torch.Tensor,
        bbox_min: Sequence[float],
        bbox_max: Sequence[float],
        resolution: int,
        **mesh_options: Any,
    ) -> FixedTopology:
        """Extract the neutral mesh of one identity by marching cubes and carry it into canonical space.

        ``layer(x_posed [1, N, 3], z_id [1, D_id], z_ex [1, D_ex])`` must return an object with
        ``.sdf`` [1, N]; the box and resolution are as in :func:`model.mesh.extract_mesh`, which also
        takes ``mesh_options`` (``chunk_size``, ``coarse_resolution``, ``band``, ``largest_component``,
        here True by default).
        """
        z_id, z_neutral = _single_code(z_id, "z_id"), _single_code(z_neutral, "z_neutral")
        dtype = z_id.dtype

        def sdf_fn(points: torch.Tensor) -> torch.Tensor:
            return layer(points.unsqueeze(0), z_id, z_neutral).sdf[0]

        mesh_options.setdefault("largest_component", True)  # a head is one surface: drop stray ones
        mesh = extract_mesh(sdf_fn, bbox_min, bbox_max, resolution, dtype=dtype, device=z_id.device, **mesh_options)
        vertices = torch.as_tensor(mesh.vertices, dtype=dtype, device=z_id.device)
        topology = cls.from_neutral_mesh(layer, vertices, torch.as_tensor(mesh.faces), z_id, z_neutral)
        return dataclasses.replace(topology, extraction=mesh.info)

    @classmethod
    def from_neutral_mesh(
        cls, layer: Deformer, vertices: torch.Tensor, faces: torch.Tensor, z_id: torch.Tensor, z_neutral: torch.Tensor
    ) -> FixedTopology:
        """Carry a mesh extracted at the neutral expression into canonical space.

        Args:
            layer: has ``deform(x_posed [1, V, 3], z_id [1, D_id], z_ex [1, D_ex])`` returning ``.offsets``.
            vertices: ``[V, 3]`` posed vertices v0 at the neutral expression (model units).
            faces: ``[F, 3]`` vertex indices.
            z_id: ``[D_id]`` or ``[1, D_id]`` identity code; z_neutral: ``[D_ex]`` or ``[1, D_ex]``.
        """
        vertices = torch.as_tensor(vertices)
        faces = torch.as_tensor(faces)
        if vertices.dim() != 2 or vertices.shape[1] != 3 or not vertices.is_floating_point():
            raise InputError(f"vertices must be a float tensor [V, 3], got {tuple(vertices.shape)}")
        if faces.dim() != 2 or faces.shape[1] != 3 or faces.is_floating_point():
            raise InputError(f"faces must be an integer tensor [F, 3], got {tuple(faces.shape)} {faces.dtype}")
        if len(faces) and (int(faces.min()) < 0 or int(faces.max()) >= len(vertices)):
            raise InputError(f"faces index vertices outside [0, {len(vertices)})")
        z_id, z_neutral = _single_code(z_id, "z_id"), _single_code(z_neutral, "z_neutral")
        with torch.no_grad():
            offsets = layer.deform(vertices.unsqueeze(0), z_id, z_neutral).offsets  # [1, V, 3]
        if offsets.shape != (1, *vertices.shape):
            raise InputError(
                f"layer.deform must return offsets [1, V, 3] = [1, {len(vertices)}, 3], got {tuple(offsets.shape)}"
            )
        return cls(
            canonical_vertices=(vertices + offsets[0]).detach(),
            neutral_vertices=vertices.detach(),
            faces=faces.to(torch.int64),
        )

    def posed_vertices(
        self,
        layer: Deformer,
        z_id: torch.Tensor,
        z_ex: torch.Tensor,
        x_init: torch.Tensor | None = None,
        **solver: Any,
    ) -> InversionResult:
        """Posed positions ``[B, V, 3]`` of the canonical vertices for expression codes ``z_ex``.

        Args:
            layer: the same kind of layer as in :meth:`from_neutral_mesh`.
            z_id: ``[B, D_id]`` identity codes (normally the same identity repeated).
            z_ex: ``[B, D_ex]`` expression codes.
            x_init: ``[B, V, 3]`` warm start, e.g. the previous frame's ``result.x``; default: the
                neutral posed vertices.
            **solver: options of :func:`invert_deformation` (``max_iter``, ``tol``, ``method``).

        Returns:
            The :class:`InversionResult`; ``result.x`` is ``[B, V, 3]`` and differentiable with respect
            to the codes and the layer's parameters. Check ``result.converged``.
        """
        if z_id.dim() != 2 or z_ex.dim() != 2 or len(z_id) != len(z_ex):
            raise InputError(
                "z_id must be [B, D_id] and z_ex [B, D_ex] with the same B, "
                f"got {tuple(z_id.shape)} and {tuple(z_ex.shape)}"
            )
        batch = len(z_id)
        x_c = self.canonical_vertices.to(z_ex.dtype).expand(batch, -1, -1)  # [B, V, 3]
        if x_init is None:
            x_init = self.neutral_vertices.to(z_ex.dtype).expand(batch, -1, -1).clone()

        def canonical_fn(x: torch.Tensor) -> torch.Tensor:
            return x + layer.deform(x, z_id, z_ex).offsets

        return invert_deformation(canonical_fn, x_c, x_init, **solver)


def _single_code(z: torch.Tensor, name: str) -> torch.Tensor:
    """A code of one identity as ``[1, D]``."""
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() != 2 or len(z) != 1:
        raise InputError(f"{name} must have shape [D] or [1, D] (one identity), got {tuple(z.shape)}")
    return z.detach()
