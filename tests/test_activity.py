"""Activity constraints and the criticality meter (rccsnn/activity.py) on hand-built networks with exact values.

The neurons are rccsnn's LIF (snntorch ``Leaky`` inside, beta 0.5, threshold 1, ATan surrogate with alpha 2, whose
derivative is ``1 / (1 + (pi x)^2)``) or snntorch neurons used directly, as snntorch's tutorials write models.
"""
from __future__ import annotations

import io
import math

import pytest
import snntorch as snn
import torch
from torch import nn

from rccsnn.activity import (ActivityConstraints, ActivityRecorder, CriticalityMeter, spiking_layers,
                             surrogate_derivative)
from rccsnn.errors import UserError
from rccsnn.masks import attach_masks, find_targets
from rccsnn.models import build_model
from rccsnn.snn import LIF, NeuronConfig, PerStep, SpikeMonitor, simulate


def atan_grad(x: float) -> float:
    """Derivative of snntorch's ATan spike (alpha 2) at ``x = U - threshold``."""
    return 1.0 / (1.0 + (math.pi * x) ** 2)


def one_layer(weights, bias: bool = False) -> nn.Sequential:
    """``[T, B, in] -> Linear(in, out) -> LIF``, weights ``[out, in]`` as given."""
    w = torch.tensor(weights, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
    return nn.Sequential(PerStep(lin), LIF(NeuronConfig(beta=0.5, threshold=1.0)))


class Tutorial(nn.Module):
    """snntorch-tutorial style: single-step neurons in a time loop (``Leaky`` with init_hidden, ``Synaptic``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True)
        self.fc2, self.lif2 = nn.Linear(3, 2), snn.Synaptic(alpha=0.8, beta=0.9)

    def forward(self, x):
        self.lif1.mem = torch.zeros(0)
        syn, mem = self.lif2.init_synaptic()
        out = []
        for t in range(x.shape[0]):
            spk, syn, mem = self.lif2(self.fc2(self.lif1(self.fc1(x[t]))), syn, mem)
            out.append(spk)
        return torch.stack(out)


# ------------------------------------------------------------------------------------------------ discovery
def test_spiking_layers_are_lifs_and_snntorch_neurons_outside_them():
    net = build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"channels": [4, 8], "hidden": 16})
    assert [n for n, _ in spiking_layers(net)] == ["features.1", "features.4", "classifier.1", "classifier.3"]
    assert [n for n, _ in spiking_layers(Tutorial())] == ["lif1", "lif2"]


# ------------------------------------------------------------------------------------------------ rates
def test_recorder_rates_are_the_mean_over_steps_samples_and_neurons_and_nothing_unarmed():
    net = Tutorial()
    rec = ActivityRecorder(net)
    x = torch.rand(3, 5, 4) * 4
    simulate(net, x[0], 3)  # not armed: nothing
    assert rec.rates() is None
    spikes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: spikes.setdefault(n, []).append(o if n == "lif1" else o[0]))
             for n, m in spiking_layers(net)]
    rec.arm()
    net(x)
    for h in hooks:
        h.remove()
    rates = rec.rates()
    assert rates.requires_grad
    want = [torch.stack(spikes[n]).mean().item() for n in ("lif1", "lif2")]
    assert rates.tolist() == pytest.approx(want, abs=1e-7)
    rec.disarm()
    assert rec.rates() is None


def test_calibrate_equals_the_spike_monitor_on_a_validation_pass():
    torch.manual_seed(0)
    net = build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"channels": [4, 8], "hidden": 16}).eval()
    x = torch.rand(6, 1, 8, 8) * 3
    constraints = ActivityConstraints(net, rho_min=0.1)
    with torch.no_grad():
        dense = constraints.calibrate(lambda: [simulate(net, x[:3], 4), simulate(net, x[3:], 4)])
        with SpikeMonitor(net, 4) as mon:
            simulate(net, x[:3], 4)
            simulate(net, x[3:], 4)
    assert dense.dtype == torch.float64
    assert dense.tolist() == [mon.firing_rates()[n] for n in constraints.names]  # exact: the same sums and counts
    assert constraints.recorder.rates() is None and not constraints.recorder.armed


# ------------------------------------------------------------------------------------------------ duals
def step_once(constraints, net, x, T=2):
    constraints.before_forward(0)
    out = simulate(net, x, T)
    term = constraints.loss_term(0)
    (out.sum() + term).backward()
    constraints.after_step(0)
    return term


def test_the_dual_ascends_on_a_violation_by_lr_over_the_phase():
    net = one_layer([[0.0, 0.0]])  # silent: r = 0 exactly
    constraints = ActivityConstraints(net, rho_min=0.5, lr_mu=5.0)
    constraints.set_dense(torch.tensor([0.4]))
    constraints.start(steps=10)
    step_once(constraints, net, torch.ones(3, 2))
    # g_hat = 1 - 0 / (0.5 * 0.4) = 1;  mu = 0 + 5 / 10 * 1
    assert constraints.mu.tolist() == [0.5]
    step_once(constraints, net, torch.ones(3, 2))
    assert constraints.mu.tolist() == [1.0]
    assert constraints.scalars()["dual/mu_1"] == 1.0 and constraints.scalars()["activity/1"] == 0.0


def test_the_dual_stays_zero_when_the_constraint_is_slack():
    net = one_layer([[1.0, 1.0]])  # U = 2 at every step: fires at every step, r = 1
    constraints = ActivityConstraints(net, rho_min=0.5, lr_mu=5.0, mu0=0.2)
    constraints.set_dense(torch.tensor([1.0]))
    constraints.start(steps=10)
    step_once(constraints, net, torch.ones(3, 2))
    # g_hat = 1 - 1 / 0.5 = -1:  mu = max(0, 0.2 - 0.5) = 0, and it stays there
    assert constraints.mu.tolist() == [0.0]
    step_once(constraints, net, torch.ones(3, 2))
    assert constraints.mu.tolist() == [0.0]


def test_a_layer_silent_in_the_dense_model_has_no_constraint():
    net = one_layer([[0.0, 0.0]])
    constraints = ActivityConstraints(net, rho_min=0.5)
    constraints.set_dense(torch.tensor([0.0]))
    constraints.start(steps=1)
    step_once(constraints, net, torch.ones(3, 2))
    assert constraints.mu.tolist() == [0.0]


def test_the_loss_term_reaches_the_weights_that_feed_a_silent_neuron():
    net = one_layer([[0.1, 0.1]])  # I = 0.2: U = 0.2, 0.3 over T = 2, never fires
    constraints = ActivityConstraints(net, rho_min=0.1, mu0=1.0)
    constraints.set_dense(torch.tensor([0.5]))  # floor 0.05
    constraints.start(steps=100)
    constraints.before_forward(0)
    out = simulate(net, torch.ones(1, 2), 2)
    assert out.sum().item() == 0.0
    term = constraints.loss_term(0)
    assert term.item() == pytest.approx(1.0)  # mu * (1 - 0 / 0.05)
    term.backward()
    # r = mean_t S[t], dS[t]/dU[t] = atan'(U[t] - 1); dU[0]/dw = x = 1, dU[1]/dw = beta * 1 + 1 = 1.5 (reset detached)
    dr_dw = 0.5 * (atan_grad(0.2 - 1.0) * 1.0 + atan_grad(0.3 - 1.0) * 1.5)
    grad = net[0][0].weight.grad
    assert grad.tolist() == [pytest.approx([-1.0 / 0.05 * dr_dw] * 2, rel=1e-5)]  # descent raises both weights


def test_constraints_state_round_trips_through_a_weights_only_load():
    net = one_layer([[0.0, 0.0]])
    a = ActivityConstraints(net, rho_min=0.5)
    a.set_dense(torch.tensor([0.4], dtype=torch.float64))
    a.start(steps=4)
    step_once(a, net, torch.ones(3, 2))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ActivityConstraints(net, rho_min=0.5)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.mu.tolist() == a.mu.tolist() == [1.25] and b.dense.tolist() == [0.4]
    assert b.scalars() == a.scalars()
    with pytest.raises(ValueError, match="activity constraints of layers"):
        ActivityConstraints(Tutorial()).load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs, needle", [({"rho_min": 1.5}, "rho_min"), ({"lr_mu": -1.0}, "lr_mu"),
                                            ({"mu0": float("nan")}, "mu0"), ({"momentum": 1.0}, "momentum")])
def test_bad_options_are_one_line_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle) as err:
        ActivityConstraints(one_layer([[1.0]]), **kwargs)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ criticality
def test_surrogate_derivative_is_the_neurons_own_surrogate():
    lif = LIF(NeuronConfig(threshold=1.0))
    mem = torch.tensor([1.0, 0.5, 0.0, 2.0])
    d = surrogate_derivative(lif.neuron, mem)
    assert d.tolist() == pytest.approx([atan_grad(0.0), atan_grad(-0.5), atan_grad(-1.0), atan_grad(1.0)])
    leaky = snn.Leaky(beta=0.5, spike_grad=snn.surrogate.fast_sigmoid(slope=25))
    assert surrogate_derivative(leaky, torch.tensor([0.96])).tolist() == pytest.approx([1 / (25 * 0.04 + 1) ** 2])


def test_criticality_is_the_surrogate_at_the_membrane_averaged_over_steps_and_samples():
    # Linear 1 -> 3 then LIF; T = 1 so U = w * x. Sample 1: x = 1, sample 2: x = 2.
    net = one_layer([[1.0], [0.5], [0.0]])
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    meter = CriticalityMeter(net, targets, momentum=0.5)
    x = torch.tensor([[1.0], [2.0]])
    with torch.no_grad():
        simulate(net.eval(), x, 1)  # evaluation is never recorded
    net.train()
    meter.fold()
    assert meter.score(0) is None
    simulate(net, x, 1)
    meter.fold()
    assert meter.feeds() == {"0.0": "1.neuron"}
    want = [(atan_grad(1.0 - 1) + atan_grad(2.0 - 1)) / 2, (atan_grad(0.5 - 1) + atan_grad(1.0 - 1)) / 2,
            atan_grad(-1.0)]
    assert meter.score(0).tolist() == pytest.approx(want, rel=1e-6)
    assert int(torch.argmax(meter.score(0))) == 1  # the neuron that sits at threshold
    simulate(net, x[:1], 1)  # EMA: 0.5 old + 0.5 new
    meter.fold()
    new = [atan_grad(0.0), atan_grad(-0.5), atan_grad(-1.0)]
    assert meter.score(0).tolist() == pytest.approx([0.5 * a + 0.5 * b for a, b in zip(want, new)], rel=1e-6)
    meter.close()


def test_criticality_meter_maps_targets_of_an_snntorch_tutorial_model():
    net = Tutorial()
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    meter = CriticalityMeter(net, targets)
    simulate(net, torch.rand(5, 4), 3)
    meter.fold()
    assert meter.feeds() == {"fc1": "lif1", "fc2": "lif2"}
    assert [tuple(meter.score(l).shape) for l in range(2)] == [(3,), (2,)]
