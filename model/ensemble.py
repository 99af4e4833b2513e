"""A stack of same-shaped MLPs evaluated with batched matmuls (the anchor ensembles of MonoNPHM).

Member ``t`` is an MLP whose input is ``[code (code_dim), point features (point_dim)]``: the code part is
constant over the points of one member, so the first layer splits into a per-member bias (computed once,
:meth:`EnsembleMLP.code_bias`) plus a small per-point product. All members' weights are stacked into
``[T, out, in]`` tensors (nn.Linear layout per member).

Evaluation is edge based, as MonoNPHM's message passing: an edge is a (point, member instance) pair. Edges
are bucketed per member instance into fixed-size blocks of ``Q`` rows (:func:`block_plan`), and all blocks
run through their member's weights in one ``torch.bmm`` per layer (weights gathered per block), with no
Python loop over members. Evaluating only the K nearest anchors this way measured 4-6x faster on CPU than
evaluating every member on every point (``evaluation="dense"`` in ``HeadConfig``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EnsembleMLP(nn.Module):
    """``n_types`` MLPs with ``n_layers`` hidden layers of width ``hidden`` and no skip connection.

    Args:
        n_types: number of distinct member MLPs T.
        code_dim: size of the per-member constant input (first columns of the first layer).
        point_dim: size of the per-point input (last columns of the first layer).
        hidden: hidden width H.
        n_layers: number of hidden layers (>= 1).
        out_dim: output size.
        softplus_beta: Softplus beta for the activations; ``None`` means ReLU.
    """

    def __init__(self, n_types: int, code_dim: int, point_dim: int, hidden: int, n_layers: int, out_dim: int,
                 softplus_beta: float | None):
        super().__init__()
        self.code_dim, self.point_dim, self.hidden, self.out_dim = code_dim, point_dim, hidden, out_dim
        self.softplus_beta = softplus_beta
        dims = [code_dim + point_dim] + [hidden] * n_layers + [out_dim]
        self.weight = nn.ParameterList(
            [nn.Parameter(torch.empty(n_types, dims[i + 1], dims[i])) for i in range(len(dims) - 1)])
        self.bias = nn.ParameterList([nn.Parameter(torch.empty(n_types, dims[i + 1])) for i in range(len(dims) - 1)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's nn.Linear initialisation, per member: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for w, b in zip(self.weight, self.bias):
            bound = 1.0 / math.sqrt(w.shape[-1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def _act(self, h: Tensor) -> Tensor:
        if self.softplus_beta is None:
            return F.relu(h)
        return F.softplus(h, beta=self.softplus_beta)

    def code_bias(self, codes: Tensor, types: Tensor) -> Tensor:
        """First-layer contribution of the member codes plus the first bias.

        Args:
            codes: ``[B, M, code_dim]`` one code per member instance.
            types: ``[M]`` int64 member type of each instance.
        Returns:
            ``[B, M, H]``.
        """
        w = self.weight[0][:, :, :self.code_dim].index_select(0, types)  # [M, H, C]
        return torch.einsum("bmc,mhc->bmh", codes, w) + self.bias[0].index_select(0, types)

    def forward(self, feats: Tensor, bias0: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
        """Run blocks of points, each block through one member.

        Args:
            feats: ``[NB, Q, point_dim]`` per-point inputs, block ``j`` of member type ``types[j]``.
            bias0: ``[NB, H]`` first-layer code bias of each block's member instance (:meth:`code_bias`).
            types: ``[NB]`` int64 member type of each block.
        Returns:
            ``(out [NB, Q, out_dim], last_pre [NB, Q, H])``; ``last_pre`` is the pre-activation of the last
            hidden layer (MonoNPHM's geometry features for the appearance branch).
        """
        # bmm then an in-place bias add: 1.6x faster on CPU than baddbmm with a broadcast bias
        w0 = self.weight[0][:, :, self.code_dim:].index_select(0, types)  # [NB, H, P]
        h = torch.bmm(feats, w0.transpose(1, 2)).add_(bias0.unsqueeze(1))
        last_pre = h
        for i in range(1, len(self.weight)):
            last_pre = h
            w = self.weight[i].index_select(0, types).transpose(1, 2)  # [NB, in, out]
            h = torch.bmm(self._act(h), w).add_(self.bias[i].index_select(0, types).unsqueeze(1))
        return h, last_pre


@dataclass
class BlockPlan:
    """Where each edge sits in the padded block layout ``[n_blocks, q, ...]``."""

    rows: Tensor  # [E] int64 row (in n_blocks * q) of each edge, edges in their original order
    block_instance: Tensor  # [n_blocks] int64 member instance of each block
    n_blocks: int
    q: int

    def scatter(self, edge_values: Tensor) -> Tensor:
        """``[E, C]`` edge values -> ``[n_blocks, q, C]`` padded blocks (padding rows are zero)."""
        out = edge_values.new_zeros(self.n_blocks * self.q, edge_values.shape[-1])
        return out.index_put((self.rows,), edge_values).view(self.n_blocks, self.q, edge_values.shape[-1])

    def gather(self, block_values: Tensor) -> Tensor:
        """``[n_blocks, q, C]`` -> ``[E, C]`` values of the edges, in their original order."""
        return block_values.reshape(self.n_blocks * self.q, block_values.shape[-1]).index_select(0, self.rows)


def block_size(n_edges: int, n_instances: int, width: int) -> int:
    """Rows per block balancing padding (~ instances * q * width) against the per-block weight copies
    (~ n_edges / q * width^2): the power of two nearest ``sqrt(n_edges * width / n_instances)``, in [16, 4096]."""
    q = math.sqrt(max(n_edges, 1) * width / max(n_instances, 1))
    return int(min(4096, max(16, 2 ** round(math.log2(max(q, 1.0))))))


def block_plan(member: Tensor, n_members: int, q: int) -> BlockPlan:
    """Bucket the edges of every point into blocks of ``q`` rows per member instance, without sorting.

    Args:
        member: ``[B, N, M]`` int64 member of each of the M edges of each point, in ``[0, n_members)``;
            the members of one point must be distinct. Instance of an edge = ``b * n_members + member``.
        n_members: members per batch element.
        q: rows per block.
    Returns:
        The plan; edges are flattened in ``[B, N, M]`` order, points keep their order inside a bucket.
    """
    b, n, m = member.shape
    dev = member.device
    sel = torch.zeros(b, n, n_members, dtype=torch.int32, device=dev).scatter_(-1, member, 1)
    slot = (sel.cumsum(1, dtype=torch.int32) - 1).gather(-1, member).long()  # [B, N, M] rank in bucket
    counts = sel.sum(1, dtype=torch.int64).reshape(-1)  # [B * n_members]
    n_blk = (counts + q - 1) // q
    blk_start = n_blk.cumsum(0) - n_blk
    inst = member + n_members * torch.arange(b, device=dev).view(b, 1, 1)
    rows = (blk_start.index_select(0, inst.reshape(-1)) * q + slot.reshape(-1))
    block_instance = torch.repeat_interleave(torch.arange(b * n_members, device=dev), n_blk)
    return BlockPlan(rows=rows, block_instance=block_instance, n_blocks=int(block_instance.numel()), q=q)
