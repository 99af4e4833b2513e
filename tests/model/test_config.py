import dataclasses

import pytest

from model.config import HeadConfig, preset, preset_names
from model.errors import InputError


def test_mononphm_preset_has_published_sizes():
    c = preset("mononphm")
    assert (c.n_anchors, c.n_symmetric_pairs, c.n_middle, c.k_nearest) == (65, 30, 5, 12)
    assert (c.sdf_layers, c.sdf_hidden, c.softplus_beta) == (4, 200, 100.0)
    assert c.id_dim == 64 + 66 * 32 == 2176
    assert c.app_dim == 2176 and c.appearance
    assert (c.expr_dim, c.deform_layers, c.deform_hidden, c.deform_skip) == (100, 6, 400, 3)
    assert (c.id_compressed_dim, c.n_hyper, c.anchor_hidden) == (16, 2, 64)
    assert (c.blend_std_divisor, c.global_distance, c.blend_std_neighbour) == (3.75, 0.75, 8)
    assert c.n_members == 36


def test_default_preset_is_smaller_with_same_structure():
    d, m = preset("default"), preset("mononphm")
    assert d.n_anchors < m.n_anchors and d.n_symmetric_pairs > 0 and d.n_middle > 0
    assert d.id_dim == d.id_global_dim + (d.n_anchors + 1) * d.id_local_dim
    assert not d.appearance and d.app_dim == 0


def test_unknown_preset_lists_presets():
    with pytest.raises(InputError) as e:
        preset("huge")
    for name in preset_names():
        assert name in str(e.value)


def test_dict_round_trip_and_unknown_field():
    c = preset("default")
    assert HeadConfig.from_dict(c.to_dict()) == c
    with pytest.raises(InputError, match="bogus"):
        HeadConfig.from_dict({**c.to_dict(), "bogus": 1}, source="x.pt")


@pytest.mark.parametrize("change", [dict(k_nearest=0), dict(n_symmetric_pairs=40), dict(blend_std_neighbour=13),
                                    dict(deform_skip=6), dict(evaluation="fast"), dict(sdf_hidden=-1)])
def test_invalid_configs_raise(change):
    with pytest.raises(InputError):
        dataclasses.replace(preset("mononphm"), **change)
