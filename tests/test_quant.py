"""Weight bit widths (rccsnn/quant.py) and what they cost (rccsnn/resources.py: op_energy, bitops)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rccsnn.errors import UserError
from rccsnn.masks import attach_masks, bake, find_targets
from rccsnn.quant import (LADDER, FakeQuant, bits_of, channel_scales, integers, levels, parse_ladder, quantize,
                          set_bits)
from rccsnn.resources import ENERGY_PJ, op_energy

WIDTHS = [b for b in LADDER if b < 32]


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(WIDTHS), rows=st.integers(1, 5), cols=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_quantize_is_symmetric_per_channel_with_half_a_step_of_error(bits, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 3
    w[torch.rand(rows, cols, generator=g) < 0.3] = 0.0
    q = quantize(w, bits)
    scale = channel_scales(w, bits)
    codes = q / scale.view(-1, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-3)             # on the grid of its channel
    assert float(codes.abs().max()) <= levels(bits) * (1 + 1e-6) + 1e-3  # within -q .. q (float32 division)
    assert bool(((q - w).abs() <= scale.view(-1, 1) / 2 * (1 + 1e-5) + 1e-7).all())  # round to nearest
    assert bool((q[w == 0] == 0).all())                                 # a pruned weight stays exactly 0
    ints, s = integers(q, bits)                                         # a weight at its bits gives its codes back
    assert torch.equal(ints, integers(w, bits)[0]) and torch.allclose(ints.float() * s.view(-1, 1), q, atol=1e-6)


def test_float32_is_identity_and_the_gradient_is_straight_through():
    w = torch.randn(3, 4, requires_grad=True)
    assert quantize(w, 32) is w
    quantize(w, 4).mul(torch.arange(12.0).view(3, 4)).sum().backward()
    assert torch.equal(w.grad, torch.arange(12.0).view(3, 4))


def test_quantizer_sits_after_the_mask_and_bakes_into_a_plain_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    targets[1].mask.mask[0, :3] = 0.0
    set_bits(net, {"1": 3, "0": 8})
    assert bits_of(net) == {"0": 8, "1": 3}
    assert targets[1].mask is not None and isinstance(net[1].parametrizations.weight[1], FakeQuant)
    expected = quantize(targets[1].weight.detach() * targets[1].mask.mask, 3)
    assert torch.equal(net[1].weight, expected)
    set_bits(net, {"1": 32})
    assert bits_of(net) == {"0": 8}
    set_bits(net, {"1": 3})
    bake(net)
    assert torch.equal(net[1].weight, expected) and not hasattr(net[1], "parametrizations")
    assert bool((net[1].weight[0, :3] == 0).all())


@pytest.mark.parametrize("value,message", [("2,x", "list of integers"), ("1,8", "from 2 to 16"),
                                           ("24", "from 2 to 16"), ("", "list of integers")])
def test_bad_ladders_and_widths_are_one_line_errors(value, message):
    with pytest.raises(UserError, match=message):
        parse_ladder(value)
    with pytest.raises(UserError, match="no weight layer of that name"):
        set_bits(nn.Sequential(nn.Linear(2, 2)), {"5": 8})
    with pytest.raises(UserError, match="from 2 to 16"):
        set_bits(nn.Sequential(nn.Linear(2, 2)), {"0": 1})


def test_ladder_parses_and_sorts():
    assert parse_ladder("8, 2,32,4,8") == (2, 4, 8, 32)
    assert parse_ladder([16, 3]) == (3, 16)
    assert LADDER == (2, 3, 4, 6, 8, 16, 32)


def test_energy_per_operation_by_bit_width():
    assert op_energy(32) == (ENERGY_PJ["fp32"]["e_mac"], ENERGY_PJ["fp32"]["e_ac"])
    assert op_energy(8) == pytest.approx((ENERGY_PJ["int8"]["e_mac"], ENERGY_PJ["int8"]["e_ac"]))
    assert op_energy(16) == pytest.approx((0.8, 0.06))       # multiply with b^2, add with b
    assert op_energy(4) == pytest.approx((0.05, 0.015))
    macs, acs = zip(*(op_energy(b) for b in LADDER))
    assert list(macs) == sorted(macs) and list(acs) == sorted(acs)
    assert op_energy(32, 9.0, 1.0) == (9.0, 1.0)
