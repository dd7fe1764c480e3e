"""Targets and masks: which weights are prunable, the forward W * M, the straight-through gradient, state_dict round
trips, apply_masks and bake()."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from rccsnn.errors import UserError
from rccsnn.masks import Mask, Target, apply_masks, attach_masks, bake, density, find_targets, set_straight_through
from rccsnn.snn import LIF, NeuronConfig, PerStep


def _named() -> nn.Module:
    """Weight layers, in registration order: ``0.0`` Conv2d(1->2, 3x3) (followed by BatchNorm2d ``0.1``, not a
    target), ``2.0`` Conv1d(4->3, 2), ``3.0`` Conv3d(1->1, 1), ``4.1`` Linear(8->5), ``head`` Linear(5->3)."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("0", PerStep(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2)))
    net.add_module("1", LIF(NeuronConfig()))
    net.add_module("2", PerStep(nn.Conv1d(4, 3, 2)))
    net.add_module("3", PerStep(nn.Conv3d(1, 1, 1)))
    net.add_module("4", PerStep(nn.Flatten(), nn.Linear(8, 5)))
    net.add_module("head", nn.Linear(5, 3))
    return net


ALL = ["0.0", "2.0", "3.0", "4.1", "head"]


def names(targets):
    return [t.name for t in targets]


# ------------------------------------------------------------------------------------------------ find_targets
def test_first_layer_is_excluded_by_default():
    net = _named()
    targets = find_targets(net)
    assert names(targets) == ALL[1:]
    # BatchNorm, LIF and biases are never targets
    assert all(isinstance(t.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for t in targets)


def test_exclude_first_false_keeps_every_weight_layer_in_order():
    net = _named()
    targets = find_targets(net, exclude_first=False)
    assert names(targets) == ALL
    modules = dict(net.named_modules())
    for t in targets:
        assert t.module is modules[t.name]
        assert t.shape == tuple(modules[t.name].weight.shape)
        assert t.n == modules[t.name].weight.numel()
        assert t.weight is modules[t.name].weight
        assert t.mask is None
    assert [t.n for t in targets] == [2 * 1 * 9, 3 * 4 * 2, 1, 5 * 8, 3 * 5]


@pytest.mark.parametrize(
    "include, exclude, exclude_first, expected",
    [
        (["Linear"], [], False, ["4.1", "head"]),
        (["Linear"], [], True, ["4.1", "head"]),
        (["Conv1d", "Conv3d"], [], True, ["2.0", "3.0"]),
        (["4.*"], [], True, ["4.1"]),
        (["*.0"], [], False, ["0.0", "2.0", "3.0"]),
        (["*.0"], [], True, ["2.0", "3.0"]),
        (["head"], [], True, ["head"]),
        ([], ["Linear"], True, ["2.0", "3.0"]),
        ([], ["Linear"], False, ["0.0", "2.0", "3.0"]),
        ([], ["2.*", "head"], True, ["3.0", "4.1"]),
        (["Linear", "Conv1d"], ["head"], True, ["2.0", "4.1"]),
        ([], ["Conv2d"], False, ["2.0", "3.0", "4.1", "head"]),
    ],
)
def test_include_and_exclude_by_glob_and_type_name(include, exclude, exclude_first, expected):
    assert names(find_targets(_named(), include, exclude, exclude_first)) == expected


def test_glob_matches_the_whole_name():
    # "4" alone is a container module name, not a weight layer; "4" must not match "4.1" (no implicit prefix match)
    with pytest.raises(UserError, match="no prunable layers"):
        find_targets(_named(), include=["4"])


@pytest.mark.parametrize(
    "include, exclude, exclude_first",
    [
        (["nothing*"], [], True),
        (["Conv2d"], [], True),  # the only Conv2d is the first layer
        ([], ["*"], False),
        (["Linear"], ["Linear"], False),
        ([], ["Conv1d", "Conv3d", "Linear"], True),
    ],
)
def test_empty_selection_is_a_user_error(include, exclude, exclude_first):
    with pytest.raises(UserError, match="no prunable layers left"):
        find_targets(_named(), include, exclude, exclude_first)


def test_a_network_with_one_weight_layer_has_no_targets_by_default():
    net = nn.Sequential(PerStep(nn.Linear(4, 2)))
    with pytest.raises(UserError):
        find_targets(net)
    assert names(find_targets(net, exclude_first=False)) == ["0.0"]


# ------------------------------------------------------------------------------------------------ Mask
def linear_with_mask(straight_through=True):
    torch.manual_seed(1)
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 13.0).reshape(3, 4))
    (t,) = find_targets(nn.Sequential(lin), exclude_first=False)
    attach_masks([t], straight_through=straight_through)
    m = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]])
    t.mask.mask.copy_(m)
    return lin, t, m


def test_attach_masks_starts_dense_and_keeps_the_stored_weight():
    lin = nn.Linear(4, 3)
    w = lin.weight.detach().clone()
    (t,) = find_targets(nn.Sequential(lin), exclude_first=False)
    attach_masks([t])
    assert parametrize.is_parametrized(lin, "weight")
    assert isinstance(t.mask, Mask)
    assert torch.equal(t.mask.mask, torch.ones(3, 4))
    assert torch.equal(t.weight, w)
    assert t.weight is lin.parametrizations.weight.original
    attach_masks([t])  # a second call does not stack another parametrization
    assert len(lin.parametrizations.weight) == 1


def test_forward_is_w_times_m():
    lin, t, m = linear_with_mask()
    w = torch.arange(1.0, 13.0).reshape(3, 4)
    assert torch.equal(lin.weight, w * m)
    with torch.no_grad():
        assert torch.equal(lin.weight, w * m)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(lin(x), x @ (w * m).T)
    # the stored weight is untouched (a pruned weight can regrow)
    assert torch.equal(t.weight, w)


def test_nonzero_and_density_count_mask_and_stored_zeros():
    lin, t, m = linear_with_mask()
    assert t.nonzero() == int(m.sum()) == 8
    with torch.no_grad():
        t.weight[0, 0] = 0.0  # kept by the mask but zero
        t.weight[1, 0] = 0.0  # already masked
    assert t.nonzero() == 7
    assert density([t]) == [7 / 12]


@pytest.mark.parametrize("straight_through", [True, False])
def test_gradient_reaches_masked_weights_only_when_straight_through(straight_through):
    lin, t, m = linear_with_mask(straight_through)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 1.0]])
    lin(x).sum().backward()
    # d sum(x W^T) / dW[i, j] = sum_b x[b, j] for every row i
    full = x.sum(0).expand(3, 4)
    if straight_through:
        assert torch.equal(t.weight.grad, full)
        assert (t.weight.grad[m == 0] != 0).all()
    else:
        assert torch.equal(t.weight.grad, full * m)
        assert (t.weight.grad[m == 0] == 0).all()


def test_set_straight_through_switches_the_gradient():
    lin, t, m = linear_with_mask(True)
    set_straight_through([t], False)
    assert t.mask.straight_through is False
    lin(torch.ones(1, 4)).sum().backward()
    assert torch.equal(t.weight.grad, m)
    t.weight.grad = None
    set_straight_through([t], True)
    lin(torch.ones(1, 4)).sum().backward()
    assert torch.equal(t.weight.grad, torch.ones(3, 4))


def masked_convnet(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(PerStep(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)), LIF(NeuronConfig()),
                        PerStep(nn.Conv2d(3, 2, 3, padding=1)), LIF(NeuronConfig()),
                        PerStep(nn.Flatten(), nn.Linear(2 * 16, 5)))
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    return net, targets


def test_state_dict_round_trip_of_a_masked_model():
    src, src_targets = masked_convnet(0)
    g = torch.Generator().manual_seed(3)
    for t in src_targets:
        t.mask.mask.copy_((torch.rand(t.shape, generator=g) > 0.4).float())
    state = src.state_dict()
    assert "0.0.parametrizations.weight.original" in state
    assert "0.0.parametrizations.weight.0.mask" in state
    assert "0.0.weight" not in state

    dst, dst_targets = masked_convnet(1)
    dst.load_state_dict(state, strict=True)
    for s, d in zip(src_targets, dst_targets):
        assert torch.equal(d.mask.mask, s.mask.mask)
        assert torch.equal(d.weight, s.weight)
        assert torch.equal(d.module.weight, s.weight * s.mask.mask)
    x = torch.rand(2, 3, 1, 4, 4, generator=g) * 3
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_apply_masks_zeroes_the_stored_weights():
    net, targets = masked_convnet(0)
    before = [t.weight.detach().clone() for t in targets]
    g = torch.Generator().manual_seed(5)
    masks = [(torch.rand(t.shape, generator=g) > 0.5).float() for t in targets]
    for t, m in zip(targets, masks):
        t.mask.mask.copy_(m)
    apply_masks(targets)
    for t, w, m in zip(targets, before, masks):
        assert torch.equal(t.weight, w * m)
        assert torch.equal(t.mask.mask, m)  # the masks themselves are unchanged
        assert int(torch.count_nonzero(t.weight)) == int(torch.count_nonzero(w * m))


def test_bake_writes_w_times_m_and_removes_the_parametrizations():
    net, targets = masked_convnet(0)
    g = torch.Generator().manual_seed(7)
    expected = {}
    for t in targets:
        t.mask.mask.copy_((torch.rand(t.shape, generator=g) > 0.5).float())
        expected[t.name] = (t.weight * t.mask.mask).detach().clone()
    x = torch.rand(2, 3, 1, 4, 4, generator=g) * 3
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert bake(net) is net
    modules = dict(net.named_modules())
    for name, w in expected.items():
        module = modules[name]
        assert not parametrize.is_parametrized(module)
        assert not hasattr(module, "parametrizations")
        assert type(module.weight) is nn.Parameter
        assert torch.equal(module.weight, w)
    state = net.state_dict()
    assert not any("parametrizations" in k for k in state)
    assert {"0.0.weight", "2.0.weight", "4.1.weight"} <= set(state)
    with torch.no_grad():
        assert torch.equal(net(x), out)
    buffer = io.BytesIO()
    torch.save(net, buffer)  # parametrized modules cannot be pickled; baked ones can


def test_target_weight_and_mask_follow_the_module():
    net, targets = masked_convnet(0)
    t = targets[0]
    assert isinstance(t, Target)
    assert t.weight is t.module.parametrizations.weight.original
    bake(net)
    assert t.mask is None
    assert t.weight is t.module.weight
