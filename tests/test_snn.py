"""The spiking runtime against hand-computed values: LIF dynamics, PerStep, SeqDropout, encoders, losses,
simulate and SpikeMonitor.

snntorch's Leaky (as wrapped by LIF) computes, with S[-1] = 0 and U[-1] = 0::

    U[t] = beta * U[t-1] + I[t] - R[t],   S[t] = 1 if U[t] > threshold else 0     (strictly greater)

    R[t] = S[t-1] * threshold          (subtract)
    R[t] = S[t-1] * beta * U[t-1]      (zero)
    R[t] = 0                           (none)

i.e. the reset for a spike at t is applied at t+1 ("one step late"). All inputs below are dyadic rationals so the
float32 arithmetic is exact.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from rccsnn.contracts import Readout
from rccsnn.errors import UserError
from rccsnn.snn import (
    ENCODERS,
    LIF,
    LOSSES,
    RESET_MECHANISMS,
    SURROGATES,
    NeuronConfig,
    PerStep,
    SeqDropout,
    SpikeMonitor,
    count_cross_entropy,
    direct_encoding,
    rate_encoding,
    rate_mse,
    simulate,
)


def lif_spikes(currents, beta=0.5, threshold=1.0, reset="subtract", surrogate="atan"):
    """Run one LIF neuron (B = 1) over the per-step ``currents`` and return its spikes as a list."""
    lif = LIF(NeuronConfig(beta=beta, threshold=threshold, reset=reset, surrogate=surrogate))
    x = torch.tensor(currents, dtype=torch.float32).reshape(-1, 1)
    return lif(x).flatten().tolist()


def reference_spikes(currents, beta, threshold, reset):
    """The recurrence of the module docstring, in plain Python."""
    u, s, out = 0.0, 0.0, []
    for i in currents:
        r = {"subtract": s * threshold, "zero": s * beta * u, "none": 0.0}[reset]
        u = beta * u + i - r
        s = 1.0 if u > threshold else 0.0
        out.append(s)
    return out


# ----------------------------------------------------------------------------------------------- LIF

def dense_macs(mon):
    """MACs per inference of each layer the monitor saw, counting every weight: each tap's MACs (the same for every
    output channel of a group) times the output channels of its group."""
    return {n: int(mon.tap_macs(n).sum()) * (mon.weights[n] // mon.tap_macs(n).numel()) for n in mon.positions}

def test_docstring_example():
    # U = 0.6, 0.9, 1.05
    assert lif_spikes([0.6, 0.6, 0.6]) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "reset, expected",
    [
        # U: 5, 2.5 - 1 = 1.5, 0.75 - 1 = -0.25, -0.125
        ("subtract", [1.0, 1.0, 0.0, 0.0]),
        # U: 5, 0.5 * (5 - 5) = 0, 0, 0
        ("zero", [1.0, 0.0, 0.0, 0.0]),
        # U: 5, 2.5, 1.25, 0.625
        ("none", [1.0, 1.0, 1.0, 0.0]),
    ],
)
def test_reset_mechanisms_by_hand(reset, expected):
    assert lif_spikes([5.0, 0.0, 0.0, 0.0], reset=reset) == expected


@pytest.mark.parametrize("surrogate", SURROGATES.names())
def test_reset_is_applied_one_step_late(surrogate):
    # snntorch: U[1] = 0.5 * 1.5 + 1.0 - 1.0 = 0.75 -> silent.
    # (An immediate reset would give U[1] = 0.5 * (1.5 - 1.0) + 1.0 = 1.25 and a spike.)
    assert lif_spikes([1.5, 1.0], reset="subtract", surrogate=surrogate) == [1.0, 0.0]


@pytest.mark.parametrize("surrogate", SURROGATES.names())
def test_reaching_the_threshold_exactly_is_not_a_spike(surrogate):
    # U: 1.0 (== threshold, silent), 0.5 + 1.0 = 1.5 (spike)
    assert lif_spikes([1.0, 1.0], surrogate=surrogate) == [0.0, 1.0]


def test_threshold():
    # threshold 2, I = 1.5: U = 1.5, 2.25 (spike), 1.125 + 1.5 - 2 = 0.625, 0.3125 + 1.5 = 1.8125,
    # 0.90625 + 1.5 = 2.40625 (spike)
    assert lif_spikes([1.5] * 5, threshold=2.0) == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_beta_one_integrates_without_leak():
    # U = 0.25, 0.5, 0.75, 1.0, 1.25 (spike), 1.5 (spike, no reset)
    assert lif_spikes([0.25] * 6, beta=1.0, reset="none") == [0, 0, 0, 0, 1, 1]


def test_beta_zero_has_no_memory():
    assert lif_spikes([0.75, 0.75, 1.25, 0.5, 3.0], beta=0.0, reset="none") == [0, 0, 1, 0, 1]


@settings(max_examples=150, deadline=None)
@given(
    currents=st.lists(st.integers(-8, 12).map(lambda k: k / 4), min_size=1, max_size=6),
    beta=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    threshold=st.sampled_from([0.5, 1.0, 1.5, 2.0]),
    reset=st.sampled_from(RESET_MECHANISMS),
)
def test_lif_matches_the_documented_recurrence(currents, beta, threshold, reset):
    assert lif_spikes(currents, beta, threshold, reset) == reference_spikes(currents, beta, threshold, reset)


def test_lif_is_elementwise_over_batch_and_features():
    lif = LIF(NeuronConfig())
    x = torch.tensor([[[5.0, 0.6]], [[0.0, 0.6]], [[0.0, 0.6]]])  # [T=3, B=1, 2]
    assert lif(x).tolist() == [[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]]


def test_no_state_leaks_between_calls():
    lif = LIF(NeuronConfig())
    x = torch.tensor([[0.6], [0.6], [0.6]])
    first = lif(x)
    assert torch.equal(lif(x), first)
    lif(torch.full((3, 1), 10.0))  # a strongly driven batch in between
    assert torch.equal(lif(x), first)
    assert first.flatten().tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "field, value",
    [("beta", 1.5), ("beta", -0.1), ("threshold", 0.0), ("reset", "soft"), ("surrogate", "relu")],
)
def test_bad_neuron_settings_are_user_errors(field, value):
    with pytest.raises(UserError, match=field if field != "surrogate" else "surrogate 'relu'"):
        LIF(NeuronConfig(**{field: value}))


# ----------------------------------------------------------------------------------------------- PerStep
def test_perstep_equals_a_loop_over_time():
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 4, 6)]
    per_step = PerStep(*layers).eval()
    x = torch.randn(4, 2, 2, 5, 4)  # [T, B, C, H, W]
    y = per_step(x)
    assert y.shape == (4, 2, 6)
    expected = torch.stack([nn.Sequential(*layers).eval()(x[t]) for t in range(4)])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_perstep_keeps_time_and_batch_apart():
    # y = 2x elementwise: element (t, b) must come back at (t, b), not shuffled across time and batch.
    fc = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        fc.weight.fill_(2.0)
    x = torch.arange(6.0).reshape(3, 2, 1)  # T=3, B=2
    assert PerStep(fc)(x).tolist() == (2 * x).tolist()


# ----------------------------------------------------------------------------------------------- SeqDropout
def test_seq_dropout_mask_is_shared_by_all_steps():
    torch.manual_seed(0)
    drop = SeqDropout(0.5).train()
    y = drop(torch.ones(5, 8, 50))
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept units are scaled by 1 / (1 - p)
    assert torch.equal(y, y[:1].expand_as(y))  # the same mask at every step
    assert 0 < (y[0] == 0).sum() < 8 * 50


def test_seq_dropout_is_identity_in_eval_and_for_p_zero():
    x = torch.rand(3, 2, 4)
    assert SeqDropout(0.5).eval()(x) is x
    assert SeqDropout(0.0).train()(x) is x


# ----------------------------------------------------------------------------------------------- encoders
def test_direct_encoding_repeats_the_input():
    x = torch.rand(2, 1, 3, 3)
    enc = ENCODERS.get("direct")(x, 5)
    assert enc.shape == (5, 2, 1, 3, 3)
    for t in range(5):
        assert torch.equal(enc[t], x)
    assert enc.data_ptr() == x.data_ptr()  # a view, no copy


def test_rate_encoding_is_bernoulli_with_mean_p():
    torch.manual_seed(0)
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0, 1.5, -0.5]])
    enc = rate_encoding(x, 4000)
    assert enc.shape == (4000, 1, 6)
    assert set(enc.unique().tolist()) <= {0.0, 1.0}
    mean = enc.mean(dim=(0, 1))
    assert mean[0] == 0.0 and mean[3] == 1.0
    assert mean[4] == 1.0 and mean[5] == 0.0  # clamped to [0, 1]
    # std of the mean of 4000 draws is at most 0.008; 0.03 is ~4 sigma
    assert abs(mean[1].item() - 0.25) < 0.03
    assert abs(mean[2].item() - 0.5) < 0.03


def test_rate_encoding_steps_are_independent_draws():
    torch.manual_seed(0)
    enc = rate_encoding(torch.full((1, 200), 0.5), 2)
    assert not torch.equal(enc[0], enc[1])


def test_encoders_registry():
    assert ENCODERS.names() == ["direct", "none", "rate"]
    assert ENCODERS.get("direct") is direct_encoding
    with pytest.raises(UserError, match="choices: direct, none, rate"):
        ENCODERS.get("poisson")


# ----------------------------------------------------------------------------------------------- losses
def spread(counts: torch.Tensor, T: int) -> torch.Tensor:
    """Spikes ``[T, B, K]`` whose count over time is ``counts [B, K]`` (integers in [0, T]): the first steps fire."""
    return (torch.arange(T).view(T, 1, 1) < counts.unsqueeze(0)).float()


def test_cross_entropy_on_counts_by_hand():
    counts = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 1])
    # sample 0: -log(e^2 / (e^2 + 1)) = log(1 + e^-2); sample 1: log 2
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert count_cross_entropy(Readout(spread(counts, 4)), target).item() == pytest.approx(expected, rel=1e-6)
    assert LOSSES.get("ce") is count_cross_entropy


def test_rate_mse_by_hand():
    counts = torch.tensor([[2.0, 0.0, 1.0]])
    # rates 0.5, 0, 0.25 against one-hot (0, 1, 0): (0.25 + 1 + 0.0625) / 3
    assert rate_mse(Readout(spread(counts, 4)), torch.tensor([1])).item() == pytest.approx(1.3125 / 3, rel=1e-6)
    assert LOSSES.get("mse") is rate_mse


# ----------------------------------------------------------------------------------------------- simulate and SpikeMonitor
def hand_net() -> nn.Sequential:
    """Linear(4 -> 3) - LIF - Linear(3 -> 2) - LIF with fixed weights (beta 0.5, threshold 1, subtract).

    With direct input x = (2, 0.5, 0, 0) for T = 4:
      layer 1 currents (2, 0.5, 1):  neuron 0: U = 2, 2, 2, 2             -> spikes 1 1 1 1
                                     neuron 1: U = .5, .75, .875, .9375   -> 0 0 0 0
                                     neuron 2: U = 1, 1.5, .75, 1.375     -> 0 1 0 1
      layer 2 currents (s0, s2):     out 0: I = 1 1 1 1: U = 1, 1.5, .75, 1.375  -> 0 1 0 1
                                     out 1: I = 0 1 0 1: U = 0, 1, .5, 1.25       -> 0 0 0 1
    """
    fc1, fc2 = nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.5, 0, 0, 0]]))
        fc2.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    neuron = NeuronConfig(beta=0.5, threshold=1.0, reset="subtract")
    return nn.Sequential(PerStep(fc1), LIF(neuron), PerStep(fc2), LIF(neuron))


X = torch.tensor([[2.0, 0.5, 0.0, 0.0]])


def test_simulate_returns_spike_counts():
    counts = simulate(hand_net(), X, 4)
    assert counts.tolist() == [[2.0, 1.0]]


def test_simulate_uses_the_named_encoding():
    torch.manual_seed(0)
    net = nn.Sequential(PerStep(nn.Identity()))
    x = torch.tensor([[0.0, 1.0, 0.3]])
    assert simulate(net, x, 6, "direct")[0].tolist() == pytest.approx([0.0, 6.0, 1.8])
    rate = simulate(net, x, 6, "rate")
    assert rate[0, 0] == 0 and rate[0, 1] == 6 and rate[0, 2] == rate[0, 2].round()


def test_spike_monitor_exact_statistics():
    net = hand_net()
    with SpikeMonitor(net, T=4) as mon:
        simulate(net, X, 4)
    assert mon.firing_rates() == {"1": 6 / 12, "3": 3 / 8}
    assert mon.input_rates() == {"0.0": 2.5 / 4, "2.0": 6 / 12}
    assert mon.analog_input == {"0.0": True, "2.0": False}  # direct input is analog, spikes are not
    assert mon.positions == {"0.0": 1, "2.0": 1}
    assert mon.weights == {"0.0": 12, "2.0": 6}
    assert dense_macs(mon) == {"0.0": 1 * 12 * 4, "2.0": 1 * 6 * 4}


def test_spike_monitor_rates_are_ratios_of_sums_over_batches():
    net = hand_net()
    with SpikeMonitor(net, T=4) as mon:
        simulate(net, X, 4)
        simulate(net, torch.zeros(3, 4), 4)  # a silent batch three times as large
    assert mon.firing_rates() == {"1": 6 / (12 + 36), "3": 3 / (8 + 24)}
    assert mon.input_rates() == {"0.0": 10 / (16 + 48), "2.0": 6 / (12 + 36)}


def test_spike_monitor_rate_encoding_is_not_analog():
    torch.manual_seed(0)
    net = hand_net()
    with SpikeMonitor(net, T=8) as mon:
        simulate(net, torch.full((2, 4), 0.5), 8, "rate")
    assert mon.analog_input["0.0"] is False


def test_spike_monitor_conv_positions_and_macs():
    conv2d = nn.Conv2d(2, 3, 3, stride=2, padding=1)  # 8x6 -> 4x3
    conv1d = nn.Conv1d(3, 5, 2)  # length 7 -> 6
    net = nn.Sequential(PerStep(conv2d), LIF(NeuronConfig()))
    with SpikeMonitor(net, T=3) as mon:
        net(direct_encoding(torch.rand(2, 2, 8, 6), 3))
    assert mon.positions == {"0.0": 4 * 3}
    assert mon.weights == {"0.0": 3 * 2 * 9}
    # Exact, padding honoured: kernel rows 0/1/2 fall inside the 8 input rows at 3/4/4 of the 4 output rows, kernel
    # columns at 2/3/3 of the 3 output columns (positions x taps would count 4 * 3 at every tap).
    assert dense_macs(mon) == {"0.0": (3 + 4 + 4) * (2 + 3 + 3) * (3 * 2) * 3}

    net1d = nn.Sequential(PerStep(conv1d), LIF(NeuronConfig()))
    with SpikeMonitor(net1d, T=2) as mon:
        net1d(direct_encoding(torch.rand(1, 3, 7), 2))
    assert dense_macs(mon) == {"0.0": 6 * (5 * 3 * 2) * 2}


def test_spike_monitor_linear_on_sequences_counts_positions():
    net = nn.Sequential(PerStep(nn.Linear(4, 2)), LIF(NeuronConfig()))
    with SpikeMonitor(net, T=2) as mon:
        net(direct_encoding(torch.rand(3, 5, 4), 2))  # [B, S=5, F=4]
    assert mon.positions == {"0.0": 5}
    assert dense_macs(mon) == {"0.0": 5 * 8 * 2}


def test_spike_monitor_removes_its_hooks_on_exit():
    net = hand_net()
    modules = list(net.modules())
    before = [len(m._forward_hooks) for m in modules]
    with SpikeMonitor(net, T=4) as mon:
        assert sum(len(m._forward_hooks) for m in modules) == 4  # two LIF, two Linear
        simulate(net, X, 4)
    assert [len(m._forward_hooks) for m in modules] == before
    simulate(net, torch.full((5, 4), 3.0), 4)  # not recorded any more
    assert mon.firing_rates() == {"1": 0.5, "3": 0.375}


def test_spike_monitor_removes_its_hooks_when_the_forward_fails():
    net = hand_net()
    with pytest.raises(RuntimeError):
        with SpikeMonitor(net, T=4):
            simulate(net, torch.zeros(1, 5), 4)  # wrong input width
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_spike_monitor_watches_snntorch_neurons_of_an_own_loop_model():
    """A model written as snntorch's tutorials write it (its own time loop, ``snn.Leaky`` and ``snn.Synaptic``
    returning tuples) gets the firing rate of each neuron, counted by hand from the spikes it returns; a LIF's inner
    Leaky is not listed twice."""
    import snntorch as snn

    torch.manual_seed(0)

    class OwnLoop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(4, 6), snn.Leaky(beta=0.5)
            self.fc2, self.syn2 = nn.Linear(6, 3), snn.Synaptic(alpha=0.5, beta=0.5)
            self.record: list = []

        def forward(self, x: Tensor) -> Tensor:  # [T, B, 4] -> [T, B, 3]
            mem1 = self.lif1.init_leaky()
            syn2, mem2 = self.syn2.init_synaptic()
            out = []
            for x_t in x:
                spk1, mem1 = self.lif1(self.fc1(x_t) * 3, mem1)
                spk2, syn2, mem2 = self.syn2(self.fc2(spk1) * 3, syn2, mem2)
                self.record.append((spk1, spk2))
                out.append(spk2)
            return torch.stack(out)

    net = OwnLoop()
    with torch.no_grad(), SpikeMonitor(net, T=5) as mon:
        net(torch.rand(5, 7, 4))
    spk1 = torch.stack([a for a, _ in net.record])
    spk2 = torch.stack([b for _, b in net.record])
    assert 0 < spk1.mean() < 1  # the hand count is not trivially 0 or 1
    by_hand = {"lif1": float(spk1.sum()) / spk1.numel(), "syn2": float(spk2.sum()) / spk2.numel()}
    assert mon.firing_rates() == pytest.approx(by_hand, rel=1e-12)

    zoo = nn.Sequential(nn.Linear(4, 3), LIF(NeuronConfig()))
    with torch.no_grad(), SpikeMonitor(zoo, T=2) as mon:
        simulate(zoo, torch.rand(3, 4), 2)
    assert list(mon.firing_rates()) == ["1"]  # the LIF, not also its inner snntorch Leaky
