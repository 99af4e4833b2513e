import torch

from model.ensemble import EnsembleMLP, block_plan, block_size


def test_block_plan_places_each_edge_once_in_its_members_blocks():
    torch.manual_seed(0)
    b, n, m, members, q = 2, 40, 3, 5, 4
    member = torch.stack([torch.randperm(members)[:m] for _ in range(b * n)]).view(b, n, m)
    plan = block_plan(member, members, q)
    assert plan.rows.unique().numel() == b * n * m  # no two edges share a row
    inst = (member + members * torch.arange(b).view(b, 1, 1)).reshape(-1)
    assert torch.equal(plan.block_instance[plan.rows // q], inst)
    vals = torch.randn(b * n * m, 2)
    assert torch.equal(plan.gather(plan.scatter(vals)), vals)


def test_block_size_range():
    assert 16 <= block_size(10, 100, 8) <= block_size(10**6, 30, 64) <= 4096


def test_ensemble_blocks_match_per_member_linear_layers():
    torch.manual_seed(0)
    ens = EnsembleMLP(n_types=3, code_dim=2, point_dim=4, hidden=5, n_layers=2, out_dim=1, softplus_beta=100.0)
    types = torch.tensor([2, 0, 2])
    codes = torch.randn(1, 3, 2)
    feats = torch.randn(3, 6, 4)
    out, last = ens(feats, ens.code_bias(codes, types)[0], types)
    for j, t in enumerate(types.tolist()):
        h = torch.cat([codes[0, j].expand(6, 2), feats[j]], -1)
        for i in range(3):
            h = torch.nn.functional.linear(h, ens.weight[i][t], ens.bias[i][t])
            if i == 1:
                assert torch.allclose(last[j], h, atol=1e-6)
            if i < 2:
                h = torch.nn.functional.softplus(h, beta=100.0)
        assert torch.allclose(out[j], h, atol=1e-6)
