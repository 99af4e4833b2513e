"""Tests of model/topology.py: inverting backward deformations, implicit gradients, fixed topology."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.topology import FixedTopology, InversionResult, invert_deformation, pointwise_jacobian

METHODS = ("newton", "broyden")


class ResidualField:
    """D(x; z) = x + scale * MLP([freq * x, z]) with tanh; |dOffsets/dx| <= 0.6 where the tests look.

    The identity plus a contraction is invertible, so every target has exactly one preimage.
    """

    def __init__(self, seed: int, d_code: int = 4, width: int = 16, freq: float = 3.0):
        g = torch.Generator().manual_seed(seed)
        sizes = [3 + d_code, width, width, 3]
        self.weights = [torch.randn(o, i, generator=g, dtype=torch.float64) / i**0.5 for i, o in zip(sizes, sizes[1:])]
        self.biases = [0.3 * torch.randn(o, generator=g, dtype=torch.float64) for o in sizes[1:]]
        self.freq = freq
        self.d_code = d_code
        self.scale = 1.0
        # Scale so that |dOffsets/dx| <= 0.6 on a dense sample of the region the tests use.
        probe = 3 * torch.rand(1024, 3, generator=g, dtype=torch.float64) - 1.5
        code = torch.randn(1024, d_code, generator=g, dtype=torch.float64)
        probe.requires_grad_(True)
        out = self(probe, code)
        rows = [torch.autograd.grad(out[:, i].sum(), probe, retain_graph=True)[0] for i in range(3)]
        jac = torch.stack(rows, dim=1).detach()  # [1024, 3, 3], rows of the point-wise Jacobians
        self.scale = 0.6 / float(torch.linalg.matrix_norm(jac - torch.eye(3, dtype=torch.float64), 2).max())

    def __call__(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x [..., 3], z [D] or broadcastable to [..., D]."""
        h = torch.cat([self.freq * x, z.expand(*x.shape[:-1], self.d_code)], dim=-1)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T + b
            if k < len(self.weights) - 1:
                h = torch.tanh(h)
        return x + self.scale * h


def _problem(seed: int, shape=(2, 50)):
    field = ResidualField(seed)
    g = torch.Generator().manual_seed(seed + 100)
    z = torch.randn(*shape[:-1], 1, field.d_code, generator=g, dtype=torch.float64)
    x_true = 2 * torch.rand(*shape, 3, generator=g, dtype=torch.float64) - 1
    return field, z, x_true, field(x_true, z)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverts_random_residual_fields(method, seed):
    field, z, x_true, x_c = _problem(seed)
    assert (x_c - x_true).norm(dim=-1).max() > 0.05  # a real deformation, not the identity
    result = invert_deformation(lambda x: field(x, z), x_c, method=method, tol=1e-10)
    assert result.x.shape == x_c.shape and result.residual.shape == x_c.shape[:-1]
    assert bool(result.converged.all())
    assert (field(result.x, z) - x_c).norm(dim=-1).max() < 1e-5
    assert torch.allclose(result.x, x_true, atol=1e-8)  # the preimage is unique


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_takes_fewer_iterations(method):
    field, z, x_true, x_c = _problem(3)
    g = torch.Generator().manual_seed(7)
    near = x_true + 1e-3 * torch.randn(x_true.shape, generator=g, dtype=torch.float64)
    cold = invert_deformation(lambda x: field(x, z), x_c, method=method, tol=1e-10)
    warm = invert_deformation(lambda x: field(x, z), x_c, near, method=method, tol=1e-10)
    assert bool(cold.converged.all()) and bool(warm.converged.all())
    assert warm.iterations < cold.iterations


def test_previous_inverse_jacobians_speed_up_broyden():
    """Tracking: the next frame starts from the previous frame's positions and inverse Jacobians."""
    field, z, x_true, x_c = _problem(10)
    previous = invert_deformation(lambda x: field(x, z), x_c, tol=1e-10)
    z_next = z + 0.1  # the next frame's expression: same canonical vertices, new posed positions
    plain = invert_deformation(lambda x: field(x, z_next), x_c, previous.x, tol=1e-10)
    primed = invert_deformation(
        lambda x: field(x, z_next), x_c, previous.x, tol=1e-10, inv_jacobian_init=previous.inv_jacobian
    )
    assert bool(plain.converged.all()) and bool(primed.converged.all())
    assert (primed.x - previous.x).norm(dim=-1).max() > 1e-3  # the frame did move the points
    assert primed.iterations < plain.iterations
    assert torch.allclose(primed.x, plain.x, atol=1e-9)
    with pytest.raises(InputError, match="inv_jacobian_init"):
        invert_deformation(lambda x: field(x, z), x_c, inv_jacobian_init=torch.eye(3))


@pytest.mark.parametrize("method", METHODS)
def test_compaction_evaluates_only_unconverged_points(method):
    field, z, x_true, x_c = _problem(11, shape=(2, 40))
    x_init = x_true.clone()
    x_init[:, :5] += 0.05  # only 5 of 40 points start away from their solution
    sizes = []

    def fn(x):
        sizes.append(x.shape[-2])
        return field(x, z)

    with torch.no_grad():  # (with grad, one last evaluation on all points attaches the gradient)
        compact = invert_deformation(fn, x_c, x_init, method=method, tol=1e-10)
    assert sizes[0] == 40 and max(sizes[1:]) == 5  # after the first evaluation only the 5 moving points are evaluated
    with torch.no_grad():
        full = invert_deformation(lambda x: field(x, z), x_c, x_init, method=method, tol=1e-10, compact=False)
    # Same iterates up to rounding (a matmul over fewer rows may round differently in the last bit).
    assert torch.allclose(compact.x, full.x, rtol=0, atol=1e-12) and compact.iterations == full.iterations


@pytest.mark.parametrize("method", METHODS)
def test_implicit_gradient_matches_finite_differences(method):
    field, z, x_true, x_c = _problem(4, shape=(1, 3))
    z = z.clone().requires_grad_(True)
    x_c = x_c.detach().clone().requires_grad_(True)

    def solve(code, target):
        return invert_deformation(lambda x: field(x, code), target, method=method, tol=1e-13, max_iter=60).x

    assert torch.autograd.gradcheck(solve, (z, x_c), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradient_reaches_captured_parameters():
    """Parameters the deformation closes over (not passed in) receive the implicit gradient too."""
    field, z, _, x_c = _problem(5, shape=(1, 6))
    w = field.weights[-1]
    w.requires_grad_(True)
    result = invert_deformation(lambda x: field(x, z), x_c.detach(), tol=1e-13, max_iter=60)
    (grad,) = torch.autograd.grad(result.x.square().sum(), w)
    direction = torch.randn_like(w)
    eps = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            w += sign * eps * direction
            values.append(invert_deformation(lambda x: field(x, z), x_c, tol=1e-13, max_iter=60).x.square().sum())
            w -= sign * eps * direction
    numeric = (values[0] - values[1]) / (2 * eps)
    assert torch.allclose((grad * direction).sum(), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("shape", [(), (2,), (1, 2), (2, 1, 3)])
def test_batch_dims(shape):
    field = ResidualField(6)
    z = torch.linspace(-1, 1, field.d_code, dtype=torch.float64)
    x_true = torch.rand(*shape, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_c = field(x_true, z)
    result = invert_deformation(lambda x: field(x, z), x_c, tol=1e-10)
    assert isinstance(result, InversionResult)
    assert result.x.shape == (*shape, 3)
    assert result.residual.shape == shape and result.converged.shape == shape
    assert torch.allclose(result.x, x_true, atol=1e-8)


def test_nonconverged_points_are_reported():
    """D(x) = x / (1 + |x|) maps onto the open unit ball: targets outside have no preimage."""

    def squash(x):
        return x / (1 + x.norm(dim=-1, keepdim=True))

    x_c = torch.tensor([[0.3, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, -0.2, 0.4], [2.0, 2.0, 2.0]], dtype=torch.float64)
    for method in METHODS:
        result = invert_deformation(squash, x_c, method=method, tol=1e-9, max_iter=40)
        assert result.converged.tolist() == [True, False, True, False]
        assert bool((result.residual[~result.converged] > 0.4).all())  # honest residuals, not tol
        assert (squash(result.x[result.converged]) - x_c[result.converged]).norm(dim=-1).max() < 1e-9


def test_no_graph_without_grad_and_graph_with_grad():
    field, z, _, x_c = _problem(8, shape=(1, 5))
    with torch.no_grad():
        assert invert_deformation(lambda x: field(x, z), x_c).x.grad_fn is None
    plain = invert_deformation(lambda x: field(x, z), x_c, tol=1e-10)
    assert not plain.x.requires_grad  # nothing requires grad: plain values
    zg = z.clone().requires_grad_(True)
    attached = invert_deformation(lambda x: field(x, zg), x_c, tol=1e-10)
    assert attached.x.requires_grad
    assert torch.equal(attached.x.detach(), plain.x)  # the very same value, now attached to the graph


def test_pointwise_jacobian_matches_jacrev():
    field, z, x_true, _ = _problem(9, shape=(2, 4))
    _, jac = pointwise_jacobian(lambda x: field(x, z), x_true)
    for b in range(2):
        for n in range(4):
            ref = torch.func.jacrev(lambda p: field(p, z[b, 0]))(x_true[b, n])  # [3, 3]
            assert torch.allclose(jac[b, n], ref, atol=1e-12)


def test_bad_inputs_raise_input_error():
    identity = lambda x: x  # noqa: E731
    x_c = torch.zeros(2, 5, 3)
    with pytest.raises(InputError, match=r"\[\.\.\., 3\]"):
        invert_deformation(identity, torch.zeros(2, 5, 2))
    with pytest.raises(InputError, match="x_init must match x_c"):
        invert_deformation(identity, x_c, torch.zeros(2, 4, 3))
    with pytest.raises(InputError, match="same shape"):
        invert_deformation(lambda x: x[..., :1, :], x_c)
    with pytest.raises(InputError, match="method"):
        invert_deformation(identity, x_c, method="secant")
    with pytest.raises(InputError, match="NaN"):
        invert_deformation(identity, torch.full((1, 3), float("nan")))
    with pytest.raises(InputError, match="tol"):
        invert_deformation(identity, x_c, tol=0.0)


# --- FixedTopology with an analytic head layer ------------------------------------------------------


@dataclass
class _Deformation:
    offsets: torch.Tensor  # [B, N, 3]


@dataclass
class _Output:
    sdf: torch.Tensor  # [B, N]


class _AnalyticLayer:
    """A smooth, invertible backward deformation whose coefficients are the codes.

    offsets(x) = 0.1 * tanh(z_ex @ A) * sin(2 x + phase) + 0.05 * z_id[:3]; the canonical shape is a
    sphere of radius 0.5 around the origin. Offsets are 0.2-Lipschitz in x for |z_ex| <= 1.
    """

    def __init__(self, d_id: int = 3, d_ex: int = 4):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(d_ex, 3, generator=g, dtype=torch.float64)
        self.phase = torch.rand(3, generator=g, dtype=torch.float64) * 6.0

    def deform(self, x, z_id, z_ex):
        amp = 0.1 * torch.tanh(z_ex @ self.a)  # [B, 3]
        return _Deformation(offsets=amp[:, None, :] * torch.sin(2 * x + self.phase) + 0.05 * z_id[:, None, :3])

    def __call__(self, x, z_id, z_ex):
        canonical = x + self.deform(x, z_id, z_ex).offsets
        return _Output(sdf=canonical.norm(dim=-1) - 0.5)


def test_fixed_topology_follows_the_posed_surface():
    layer = _AnalyticLayer()
    z_id = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)
    z_neutral = torch.zeros(4, dtype=torch.float64)
    topo = FixedTopology.extract(layer, z_id, z_neutral, [-0.8] * 3, [0.8] * 3, 24)
    n_vertices, faces = len(topo.canonical_vertices), topo.faces.clone()
    assert n_vertices > 100 and topo.faces.dtype == torch.int64
    # Canonical vertices lie on the canonical sphere up to marching-cubes interpolation error.
    assert (topo.canonical_vertices.norm(dim=-1) - 0.5).abs().max() < 0.02

    z_ex = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.9, -0.5, 0.3, 0.7]], dtype=torch.float64)
    result = topo.posed_vertices(layer, z_id.expand(2, 3), z_ex, tol=1e-10)
    assert result.x.shape == (2, n_vertices, 3) and bool(result.converged.all())
    assert torch.allclose(result.x[0], topo.neutral_vertices, atol=1e-8)  # neutral expression: v0
    assert (result.x[1] - result.x[0]).norm(dim=-1).max() > 0.02  # the expression moved the mesh
    posed_canonical = result.x + layer.deform(result.x, z_id.expand(2, 3), z_ex).offsets
    assert torch.allclose(posed_canonical, topo.canonical_vertices.expand(2, -1, -1), atol=1e-8)
    assert torch.equal(topo.faces, faces)


def test_fixed_topology_gradient_wrt_expression():
    layer = _AnalyticLayer()
    z_id = torch.zeros(1, 3, dtype=torch.float64)
    topo = FixedTopology.extract(layer, z_id, torch.zeros(1, 4, dtype=torch.float64), [-0.8] * 3, [0.8] * 3, 12)
    keep = torch.arange(0, len(topo.canonical_vertices), 7)
    small = FixedTopology(topo.canonical_vertices[keep], topo.neutral_vertices[keep], topo.faces[:0])
    z_ex = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: small.posed_vertices(layer, z_id, z, tol=1e-13, max_iter=60).x, (z_ex,), eps=1e-6, atol=1e-6
    )


def test_fixed_topology_bad_inputs():
    layer = _AnalyticLayer()
    z_id, z_ex = torch.zeros(3), torch.zeros(4)
    with pytest.raises(InputError, match=r"\[V, 3\]"):
        FixedTopology.from_neutral_mesh(layer, torch.zeros(4, 2), torch.zeros(1, 3, dtype=torch.int64), z_id, z_ex)
    with pytest.raises(InputError, match="outside"):
        FixedTopology.from_neutral_mesh(layer, torch.zeros(4, 3), torch.tensor([[0, 1, 4]]), z_id, z_ex)
    with pytest.raises(InputError, match="one identity"):
        FixedTopology.from_neutral_mesh(layer, torch.zeros(4, 3), torch.tensor([[0, 1, 2]]), torch.zeros(2, 3), z_ex)
    f64 = dict(dtype=torch.float64)
    topo = FixedTopology.from_neutral_mesh(
        layer, torch.rand(4, 3, **f64), torch.tensor([[0, 1, 2]]), torch.zeros(3, **f64), torch.zeros(4, **f64)
    )
    with pytest.raises(InputError, match="same B"):
        topo.posed_vertices(layer, torch.zeros(2, 3, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))


def test_fixed_topology_with_the_head_layer():
    """The real network (tiny config, random weights, float64): extraction, inversion, gradients."""
    from model.config import HeadConfig
    from model.head import HeadLayer

    cfg = HeadConfig(
        n_anchors=7, n_symmetric_pairs=2, k_nearest=4, blend_std_neighbour=3, anchor_hidden=6,
        id_global_dim=4, id_local_dim=3, sdf_hidden=8, sdf_layers=2, expr_dim=5, id_compressed_dim=3,
        deform_hidden=8, deform_layers=3, deform_skip=1, n_hyper=2, appearance=False,
    )
    torch.manual_seed(0)
    layer = HeadLayer(cfg).double()
    z_id = 0.3 * torch.randn(1, cfg.id_dim, dtype=torch.float64)
    z_neutral = torch.zeros(1, cfg.expr_dim, dtype=torch.float64)
    with torch.no_grad():  # random weights: extract the level set at the median SDF so a surface exists
        probe = 1.2 * torch.rand(1, 2000, 3, dtype=torch.float64) - 0.6
        level = float(layer(probe, z_id, z_neutral).sdf.median())
    topo = FixedTopology.extract(layer, z_id, z_neutral, [-0.6] * 3, [0.6] * 3, 16, level=level)
    assert len(topo.canonical_vertices) > 50 and topo.canonical_vertices.dtype == torch.float64
    assert topo.extraction is not None and topo.extraction.resolution == 16

    z_ex = 0.5 * torch.randn(2, cfg.expr_dim, dtype=torch.float64)
    result = topo.posed_vertices(layer, z_id.expand(2, -1), z_ex, tol=1e-10)
    assert result.x.shape == (2, len(topo.canonical_vertices), 3) and bool(result.converged.all())
    canonical = result.x + layer.deform(result.x, z_id.expand(2, -1), z_ex).offsets
    assert (canonical - topo.canonical_vertices).norm(dim=-1).max() < 1e-5

    keep = torch.arange(0, len(topo.canonical_vertices), max(1, len(topo.canonical_vertices) // 6))
    small = FixedTopology(topo.canonical_vertices[keep], topo.neutral_vertices[keep], topo.faces[:0])
    z_ex1 = z_ex[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: small.posed_vertices(layer, z_id, z, tol=1e-13, max_iter=60).x, (z_ex1,), eps=1e-6, atol=1e-6
    )
