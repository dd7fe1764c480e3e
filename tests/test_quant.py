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


# ------------------------------------------------------------------------------------------------ compact files
def _quantized_model(bits_by_layer, keep=0.3, seed=0):
    """A tiny convsnn, a random ``keep`` of its weights kept, each layer at its bits, baked; and its spec."""
    from rccsnn.models import build_model
    from rccsnn.models.checkpoint import LoadedModel, ModelSpec
    from rccsnn.snn import NeuronConfig

    torch.manual_seed(seed)
    net = build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"channels": [4, 8], "hidden": 16}).eval()
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    for t in targets:
        t.mask.mask.copy_((torch.rand(t.shape) < keep).float())
    names = [t.name for t in targets]
    bits = {names[i]: b for i, b in bits_by_layer.items()}
    set_bits(net, bits)
    bits = bits_of(net)  # the quantized layers (a layer at 32 bits is float32, recorded as none)
    bake(net)
    spec = ModelSpec(arch="convsnn", args={"channels": [4, 8], "hidden": 16}, input_shape=(1, 8, 8),
                     num_classes=10, T=2, bits=bits)
    return LoadedModel(net=net, spec=spec), bits


@pytest.mark.parametrize("bits", WIDTHS)
def test_compact_packs_each_ladder_width_and_loads_back(bits):
    """Every ladder width round-trips: the same codes, the weights within float rounding of the scale, and the
    stored values take exactly ceil(nonzero x b / 8) bytes."""
    from rccsnn.formats.compact import decoded, plan_compact

    loaded, named = _quantized_model({0: bits, 2: bits, 3: 32})
    plan = plan_compact(loaded)
    back = decoded(plan)
    assert back.spec.bits == named
    for name, b in named.items():
        entry = plan.contents["tensors"][f"{name}.weight"]
        original = dict(loaded.net.named_modules())[name].weight.detach()
        again = dict(back.net.named_modules())[name].weight.detach()
        nonzero = int(torch.count_nonzero(original))
        assert entry["bits"] == b and entry["values"].dtype == torch.uint8
        stored = nonzero if entry["encoding"] != "dense" else original.numel()
        assert entry["values"].numel() == (stored * b + 7) // 8
        assert torch.equal(integers(again, b)[0], integers(original, b)[0])
        assert torch.allclose(again, original, rtol=1e-6, atol=0) and torch.equal(again == 0, original == 0)
    x = torch.rand(3, 1, 8, 8)
    from rccsnn.snn import simulate
    with torch.no_grad():
        assert torch.equal(simulate(back.net, x, 2).argmax(1), simulate(loaded.net, x, 2).argmax(1))


def test_packed_file_is_as_small_as_the_decision():
    """The packed weights take sum(nonzero x b) / 8 + indices + scales (to the byte, per layer)."""
    from rccsnn.formats.compact import entry_nbytes, plan_compact

    loaded, named = _quantized_model({0: 3, 1: 4, 2: 6, 3: 2}, keep=0.1)
    plan = plan_compact(loaded)
    for name, b in named.items():
        entry = plan.contents["tensors"][f"{name}.weight"]
        nonzero = int(torch.count_nonzero(dict(loaded.net.named_modules())[name].weight))
        index = entry_nbytes(entry) - entry["values"].numel() - 4 * entry["scale"].numel()
        assert entry["encoding"] in ("bitmask", "delta") and index == entry_nbytes(
            {k: v for k, v in entry.items() if k in ("bitmask", "deltas")})
        assert entry["values"].numel() == (nonzero * b + 7) // 8


def test_corrupt_packed_entry_is_refused():
    from rccsnn.formats.compact import decode_entry, plan_compact

    loaded, named = _quantized_model({1: 4})
    entry = dict(plan_compact(loaded).contents["tensors"][f"{next(iter(named))}.weight"])
    for broken, message in ((dict(entry, bits=40), "bad bits"), (dict(entry, values=entry["values"][:-1]), "bytes"),
                            (dict(entry, scale=entry["scale"][:1]), "scale per output channel")):
        with pytest.raises(ValueError, match=message):
            decode_entry(broken)


def test_report_prices_each_layer_at_its_bits():
    """The report's per-layer bits, energy at those bits and bit-ops follow op_energy and SynOps x b."""
    from rccsnn.data import load_data
    from rccsnn.metrics import report

    loaded, named = _quantized_model({1: 4, 3: 8})
    r = report(loaded, load_data("digits"), "val", torch.device("cpu"))
    seen = {layer["name"]: layer for layer in r["layers"]}
    for name, layer in seen.items():
        b = named.get(name, 32)
        assert layer["bits"] == b
        e_mac, e_ac = op_energy(b)
        expected = layer["macs"] * e_mac if layer["analog_input"] else layer["synops"] * e_ac
        assert layer["energy_pj"] == pytest.approx(expected, rel=1e-9)
        assert layer["bitops"] == pytest.approx(b * (layer["macs"] if layer["analog_input"] else layer["synops"]))
    assert r["total"]["energy_pj"] == pytest.approx(sum(layer["energy_pj"] for layer in r["layers"]))


def test_a_mask_attached_after_a_quantizer_goes_first():
    """The quantizer must see the masked weight (pruned weights 0, the scale from the kept ones) whatever the order
    in which the two were attached."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4))
    set_bits(net, {"0": 3})
    (target,) = find_targets(net, exclude_first=False)
    attach_masks([target])
    assert [type(p).__name__ for p in net[0].parametrizations.weight] == ["Mask", "FakeQuant"]
    target.mask.mask[:, 0] = 0.0
    assert torch.equal(net[0].weight, quantize(target.weight.detach() * target.mask.mask, 3))


def test_report_prices_the_compact_bytes_of_a_quantized_layer_as_export_stores_them():
    from rccsnn.data import load_data
    from rccsnn.formats.compact import entry_nbytes, plan_compact
    from rccsnn.metrics import report

    loaded, named = _quantized_model({1: 4, 2: 6})
    r = report(loaded, load_data("digits"), "val", torch.device("cpu"))
    plan = plan_compact(loaded)
    for layer in r["layers"]:
        assert layer["bytes_compact"] == entry_nbytes(plan.contents["tensors"][f"{layer['name']}.weight"])


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(6, 3, 3, 3), (40, 17), (300, 1), (2, 700)]), density=st.floats(0.0, 1.0),
       bits=st.sampled_from([None, 2, 3, 4, 6, 8, 16, 32]), seed=st.integers(0, 10 ** 6))
def test_the_memory_count_is_the_bytes_the_export_writes(shape, density, bits, seed):
    """``memory``'s exact count (weight_nbytes) equals the bytes of the entry the export writes, at any density (dense,
    bitmask and delta layouts, gaps past 255) and width."""
    from rccsnn.formats.compact import encode_weight, entry_nbytes
    from rccsnn.storage import weight_nbytes

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    if bits is not None and bits < 32:
        w = quantize(w, bits)
    assert weight_nbytes(w, bits) == entry_nbytes(encode_weight(w, bits=bits))
