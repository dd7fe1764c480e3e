"""Resource models against hand-computed values on a tiny network with known shapes and known firing rates.

The network (T = 2, direct encoding, LIF beta 0.5 / threshold 1 / subtract reset)::

    "0.0"  Conv2d(1 -> 2, 3x3, no padding, no bias)   input 6x6 -> 4x4: 16 positions, 18 weights
    "1"    LIF
    "2.1"  Linear(32 -> 3, no bias) after Flatten       1 position, 96 weights
    "3"    LIF

Conv channel 0 has all weights 1, channel 1 all weights -1. On a checkerboard of 0/1 pixels every 3x3 window sums
to 4 or 5, so channel 0 fires at every step (U = 4 then 0.5 * 4 + 4 - 1 = 5, or 5 then 6.5) and channel 1 never
does: the Linear layer's input rate is exactly 16 / 32 = 0.5. The checkerboard itself has rate 18 / 36 = 0.5 and
is 0/1 (spikes, not analog). A constant 0.5 image is analog; channel 0 then sees 4.5 and again fires every step.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rccsnn.masks import find_targets
from rccsnn.resources import (
    RESOURCES,
    Energy,
    LayerStats,
    MACs,
    Params,
    RateTracker,
    SynOps,
    create_resource,
    measure_stats,
)
from rccsnn.snn import LIF, NeuronConfig, PerStep

T = 2
N = [18, 96]
POSITIONS = [16.0, 1.0]
E_MAC, E_AC = 3.0, 0.5  # non-default energy constants (pJ)


def hand_net() -> nn.Sequential:
    conv = nn.Conv2d(1, 2, 3, bias=False)
    fc = nn.Linear(32, 3, bias=False)
    with torch.no_grad():
        conv.weight[0].fill_(1.0)
        conv.weight[1].fill_(-1.0)
        fc.weight.copy_(0.01 * torch.arange(1.0, 97.0).reshape(3, 32))
    neuron = NeuronConfig(beta=0.5, threshold=1.0, reset="subtract")
    return nn.Sequential(PerStep(conv), LIF(neuron), PerStep(nn.Flatten(), fc), LIF(neuron))


def checkerboard(batch: int) -> torch.Tensor:
    i = torch.arange(6)
    board = ((i[:, None] + i[None, :]) % 2).float()
    return board.expand(batch, 1, 6, 6).clone()


def loader(x: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=batch_size, shuffle=False)


def stats_for(net, x, batch_size=4, max_batches=None):
    targets = find_targets(net, exclude_first=False)
    return targets, measure_stats(net, targets, loader(x, batch_size), T, "direct", torch.device("cpu"),
                                  max_batches=max_batches)


def spiking_stats():
    return LayerStats(positions=torch.tensor(POSITIONS, dtype=torch.float64),
                      input_rate=torch.tensor([0.5, 0.5], dtype=torch.float64),
                      analog=torch.tensor([0.0, 0.0], dtype=torch.float64), T=T)


# ------------------------------------------------------------------------------------------------ measure_stats
def test_measure_stats_spiking_input():
    net = hand_net()
    targets, stats = stats_for(net, checkerboard(3))
    assert [t.name for t in targets] == ["0.0", "2.1"]
    assert [t.n for t in targets] == N
    assert stats.T == T
    for field in ("positions", "input_rate", "analog"):
        assert getattr(stats, field).dtype == torch.float64
    assert stats.positions.tolist() == POSITIONS
    assert stats.input_rate.tolist() == [0.5, 0.5]
    assert stats.analog.tolist() == [0.0, 0.0]


def test_measure_stats_analog_input():
    net = hand_net()
    _, stats = stats_for(net, torch.full((3, 1, 6, 6), 0.5))
    assert stats.positions.tolist() == POSITIONS
    assert stats.input_rate.tolist() == [0.5, 0.5]  # mean analog value; channel 0 fires every step
    assert stats.analog.tolist() == [1.0, 0.0]


def test_measure_stats_is_a_ratio_of_sums_over_batches_and_honours_max_batches():
    net = hand_net()
    x = torch.cat([checkerboard(2), torch.zeros(6, 1, 6, 6)])  # one active batch of 2, then silent ones
    _, stats = stats_for(net, x, batch_size=2)
    assert stats.input_rate.tolist() == [0.5 * 2 / 8, 0.5 * 2 / 8]
    _, first = stats_for(net, x, batch_size=2, max_batches=1)
    assert first.input_rate.tolist() == [0.5, 0.5]
    _, two = stats_for(net, x, batch_size=2, max_batches=2)
    assert two.input_rate.tolist() == [0.25, 0.25]


def test_measure_stats_runs_in_eval_mode_and_restores_the_mode():
    net = hand_net()
    net.train()
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    stats_for(net, checkerboard(2))
    assert seen == [False] and net.training
    net.eval()
    stats_for(net, checkerboard(2))
    assert not net.training


# ------------------------------------------------------------------------------------------------ coefficients
def test_registry_holds_the_six_resources():
    assert RESOURCES.names() == ["bitops", "energy", "macs", "memory", "params", "synops"]
    assert [RESOURCES.get(n).data_dependent for n in ("params", "macs", "synops", "energy")] == [False, False, True,
                                                                                                  True]


def test_coefficients_by_hand_spiking_input():
    net = hand_net()
    targets, stats = stats_for(net, checkerboard(3))
    assert Params().coefficients(targets, stats).tolist() == [1.0, 1.0]
    assert MACs().coefficients(targets, stats).tolist() == [16 * T, 1 * T]
    assert SynOps().coefficients(targets, stats).tolist() == [16 * T * 0.5, 1 * T * 0.5]
    energy = create_resource("energy", {"energy": {"e_mac": E_MAC, "e_ac": E_AC}})
    assert (energy.e_mac, energy.e_ac) == (E_MAC, E_AC)
    assert energy.coefficients(targets, stats).tolist() == [E_AC * 16 * T * 0.5, E_AC * 1 * T * 0.5]
    for model in (Params(), MACs(), SynOps(), energy):
        assert model.coefficients(targets, stats).dtype == torch.float64


def test_coefficients_by_hand_analog_input():
    net = hand_net()
    targets, stats = stats_for(net, torch.full((3, 1, 6, 6), 0.5))
    assert MACs().coefficients(targets, stats).tolist() == [32.0, 2.0]
    # an analog-input layer counts as MACs (rate 1), not at its mean input value 0.5
    assert SynOps().coefficients(targets, stats).tolist() == [32.0, 1.0]
    assert Energy(e_mac=E_MAC, e_ac=E_AC).coefficients(targets, stats).tolist() == [E_MAC * 32, E_AC * 1.0]


def test_default_energy_constants():
    assert (Energy().e_mac, Energy().e_ac) == (4.6, 0.9)
    assert create_resource("energy").e_mac == 4.6
    assert create_resource("energy", {"macs": {}}).e_ac == 0.9


def test_dense_absolute_and_measure_count_only_nonzero_weights():
    net = hand_net()
    targets, spiking = stats_for(net, checkerboard(3))
    _, analog = stats_for(net, torch.full((3, 1, 6, 6), 0.5))
    energy = Energy(e_mac=E_MAC, e_ac=E_AC)
    dense = {
        "params": (Params(), spiking, 18 + 96),
        "macs": (MACs(), spiking, 32 * 18 + 2 * 96),
        "synops": (SynOps(), spiking, 16 * 18 + 1 * 96),
        "synops analog": (SynOps(), analog, 32 * 18 + 1 * 96),
        "energy": (energy, spiking, 8 * 18 + 0.5 * 96),
        "energy analog": (energy, analog, 96 * 18 + 0.5 * 96),
    }
    for key, (model, stats, expected) in dense.items():
        assert model.dense(targets, stats) == expected, key
        assert model.absolute(targets, stats) == expected, key  # every weight is nonzero so far
        assert model.measure(targets, stats) == 1.0, key

    with torch.no_grad():
        targets[0].module.weight[1, 0, 0, :] = 0.0  # 3 conv weights
        targets[1].module.weight.view(-1)[[0, 5, 9, 17, 31, 40, 50, 63, 70, 95]] = 0.0  # 10 linear weights
    assert [t.nonzero() for t in targets] == [15, 86]
    absolute = {
        "params": 15 + 86,
        "macs": 32 * 15 + 2 * 86,
        "synops": 16 * 15 + 1 * 86,
        "synops analog": 32 * 15 + 1 * 86,
        "energy": 8 * 15 + 0.5 * 86,
        "energy analog": 96 * 15 + 0.5 * 86,
    }
    for key, (model, stats, dense_value) in dense.items():
        assert model.dense(targets, stats) == dense_value, key  # the dense cost does not move
        assert model.absolute(targets, stats) == absolute[key], key
        assert model.measure(targets, stats) == pytest.approx(absolute[key] / dense_value, rel=1e-15), key


def test_absolute_counts_the_masked_forward_weight():
    from rccsnn.masks import attach_masks

    net = hand_net()
    targets, stats = stats_for(net, checkerboard(2))
    attach_masks(targets)
    targets[1].mask.mask.view(-1)[:40] = 0.0
    assert Params().absolute(targets, stats) == 18 + 56
    assert MACs().absolute(targets, stats) == 32 * 18 + 2 * 56


def test_measure_of_a_zero_cost_model_is_zero():
    net = hand_net()
    targets, _ = stats_for(net, checkerboard(2))
    silent = LayerStats(torch.tensor(POSITIONS, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                        torch.zeros(2, dtype=torch.float64), T)
    assert SynOps().dense(targets, silent) == 0.0
    assert SynOps().measure(targets, silent) == 0.0


def test_with_rates_replaces_only_the_rates():
    stats = spiking_stats()
    other = stats.with_rates(torch.tensor([0.25, 0.125], dtype=torch.float32))
    assert other.input_rate.dtype == torch.float64
    assert other.input_rate.tolist() == [0.25, 0.125]
    assert other.positions is stats.positions and other.analog is stats.analog and other.T == T
    assert stats.input_rate.tolist() == [0.5, 0.5]


# ------------------------------------------------------------------------------------------------ RateTracker
def test_rate_tracker_ema_in_training_mode_only():
    net = hand_net()
    targets = find_targets(net, exclude_first=False)
    initial = torch.tensor([0.2, 0.4])
    tracker = RateTracker(targets, initial, momentum=0.75)
    assert tracker.rates().dtype == torch.float64
    assert tracker.rates().tolist() == pytest.approx([0.2, 0.4], abs=1e-7)  # float32 initial rates, widened
    initial[0] = 9.0  # the tracker keeps its own copy
    r0, r1 = tracker.rates().tolist()

    net.train()
    x = torch.full((3, 1, 6, 6), 0.25)  # mean 0.25
    targets[0].module(x)  # only the conv sees an input
    expected0 = 0.75 * r0 + 0.25 * 0.25
    assert tracker.rates().tolist() == pytest.approx([expected0, r1], rel=1e-15)

    net.eval()
    net(checkerboard(4).unsqueeze(0).expand(T, 4, 1, 6, 6))
    targets[0].module(torch.ones(2, 1, 6, 6))
    assert tracker.rates().tolist() == pytest.approx([expected0, r1], rel=1e-15)  # eval mode is ignored

    net.train()
    net(checkerboard(4).unsqueeze(0).expand(T, 4, 1, 6, 6))  # conv input rate 0.5, linear input rate 0.5
    expected = [0.75 * expected0 + 0.25 * 0.5, 0.75 * r1 + 0.25 * 0.5]
    assert tracker.rates().tolist() == pytest.approx(expected, rel=1e-15)
    net(torch.zeros(T, 4, 1, 6, 6))  # silent: both rates decay by the momentum
    expected = [0.75 * e for e in expected]
    assert tracker.rates().tolist() == pytest.approx(expected, rel=1e-15)

    tracker.set(torch.tensor([0.125, 0.0625]))
    assert tracker.rates().tolist() == [0.125, 0.0625]
    tracker.close()
    net(checkerboard(4).unsqueeze(0).expand(T, 4, 1, 6, 6))
    assert tracker.rates().tolist() == [0.125, 0.0625]
    assert all(len(t.module._forward_hooks) == 0 for t in targets)
