"""Criticality-guided regeneration (rccsnn/methods/criticality.py): the budget-neutral swap on a hand-built layer
with exact values, the swap's invariants on a convolutional SNN, the method's budgets through ``compress()``,
its options, and its state through a weights_only round trip and an interrupted-and-resumed run.
"""
from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn

from helpers import train_tiny, whole_and_resumed
from rccsnn.compression import compress
from rccsnn.config import CompressConfig, MethodConfig, OptimConfig
from rccsnn.errors import UserError
from rccsnn.masks import attach_masks, find_targets
from rccsnn.methods import METHODS, Constraint, Problem
from rccsnn.methods.base import kept_counts
from rccsnn.methods.criticality import Criticality, CriticalityRegrowth
from rccsnn.models import build_model
from rccsnn.models.checkpoint import load_checkpoint
from rccsnn.resources import LayerStats, Params, SynOps
from rccsnn.snn import LIF, NeuronConfig, PerStep, simulate

RECIPE = """\
data: {name: digits, batch_size: 64}
model: {arch: convsnn, args: {channels: [4, 8], hidden: 16}, T: 2}
optim: {lr: 0.02, epochs: 2}
seed: 0
"""

# Linear 4 -> 3 then LIF (threshold 1), T = 1, input x = [1, 1, 2, 0.5]. Columns 0 and 1 are kept, 2 and 3 pruned
# (stored 0.3 each). Kept inputs give U = [0.22, 0.95, 3.5]: unit 1 sits at threshold (the most critical), unit 0
# well below, unit 2 far above. With loss = output spike count the straight-through gradient of W[i, j] is
# atan'(U_i - 1) * x_j, so among unit 1's pruned inputs column 2 (x = 2) has the larger gradient.
W = [[0.1, 0.12, 0.3, 0.3],
     [0.5, 0.45, 0.3, 0.3],
     [2.0, 1.5, 0.3, 0.3]]
MASK = [[1, 1, 0, 0]] * 3
X = [[1.0, 1.0, 2.0, 0.5]]


def hand_built():
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
    net = nn.Sequential(PerStep(lin), LIF(NeuronConfig(beta=0.5, threshold=1.0)))
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    with torch.no_grad():
        targets[0].mask.mask.copy_(torch.tensor(MASK, dtype=torch.float32))
    return net, targets


def observed(net, targets, **kwargs):
    regrowth = CriticalityRegrowth(net, targets, **kwargs)
    regrowth.record(True)
    simulate(net, torch.tensor(X), 1).sum().backward()
    regrowth.observe()
    return regrowth


def test_the_swap_regrows_the_inputs_of_the_most_critical_neuron_and_keeps_the_count():
    net, targets = hand_built()
    regrowth = observed(net, targets, fraction=0.1, critical_fraction=0.3)  # 1 unit; r = ceil(0.1 * 6) = 1
    assert int(torch.argmax(regrowth.meter.score(0))) == 1
    assert regrowth.regenerate() == 1
    # regrown: unit 1, column 2 (largest gradient among its pruned inputs); dropped: the smallest kept |w|, W[0, 0]
    assert targets[0].mask.mask.tolist() == [[0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert kept_counts(targets).tolist() == [6.0]
    assert torch.equal(targets[0].weight.detach(), torch.tensor(W))  # masks only: stored weights untouched


def test_a_larger_share_takes_the_next_gradients_and_the_next_smallest_weights():
    net, targets = hand_built()
    regrowth = observed(net, targets, fraction=0.3, critical_fraction=0.3)  # r = ceil(1.8) = 2
    assert regrowth.regenerate() == 2
    assert targets[0].mask.mask.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    # never more than the critical units' pruned inputs: unit 1 has no pruned input left
    assert regrowth.regenerate(fraction=0.5) == 0


def test_every_unit_counts_when_critical_fraction_is_one():
    net, targets = hand_built()
    regrowth = observed(net, targets, fraction=0.1, critical_fraction=1.0)
    assert regrowth.regenerate() == 1
    # the largest gradient among all pruned inputs: atan'(U - 1) * x is largest for unit 1, column 2 anyway
    assert targets[0].mask.mask[1, 2].item() == 1.0 and kept_counts(targets).tolist() == [6.0]


def test_the_swap_only_moves_weights_within_each_layer_of_a_conv_snn():
    torch.manual_seed(0)
    net = build_model("convsnn", (1, 8, 8), 10, NeuronConfig(), {"channels": [4, 8], "hidden": 16})
    targets = find_targets(net)
    attach_masks(targets)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in targets:
            t.mask.mask.copy_((torch.rand(t.shape, generator=gen) < 0.3).float())
    before = [t.mask.mask.clone() for t in targets]
    regrowth = CriticalityRegrowth(net, targets, fraction=0.5, critical_fraction=0.5)
    simulate(net, torch.rand(8, 1, 8, 8) * 2, 3).sum().backward()
    regrowth.observe()
    assert list(regrowth.meter.feeds().values()) == ["features.4.neuron", "classifier.1.neuron",
                                                      "classifier.3.neuron"]
    swapped = regrowth.regenerate()
    assert swapped > 0
    total = 0
    for t, old in zip(targets, before):
        new = t.mask.mask
        grown, dropped = (new > old).sum().item(), (new < old).sum().item()
        assert grown == dropped and new.sum() == old.sum()
        # regrown inputs belong to the layer's most critical half of its units
        units = regrowth.critical_units(targets.index(t))
        rows = (new > old).reshape(t.shape[0], -1).any(1)
        assert not (rows & ~units).any()
        total += grown
    assert total == swapped


def bound(targets, net, budgets, stats, **options):
    method = Criticality(**options)
    constraints = [Constraint(resource=r, budget=b, dense=r.dense(targets, stats)) for r, b in budgets]
    method.bind(Problem(net=net, targets=list(targets), constraints=constraints, stats=stats,
                        measure_stats=lambda: stats))
    return method


class StubLoop:
    def __init__(self, total_steps: int) -> None:
        self.total_steps, self.step, self.epoch, self.steps_per_epoch, self.lr = total_steps, 0, 0, total_steps, 0.01

    def restart_schedule(self, steps: int) -> None:
        pass


def test_a_swap_leaves_synops_and_params_on_the_masks_unchanged():
    net, targets = hand_built()
    stats = LayerStats(torch.ones(1, dtype=torch.float64), torch.tensor([0.37], dtype=torch.float64),
                       torch.zeros(1, dtype=torch.float64), T=1)
    method = bound(targets, net, [(Params(), 0.9), (SynOps(), 0.9)], stats, regrow=0.3, critical_fraction=0.3)
    method.setup(StubLoop(100))
    with torch.no_grad():
        targets[0].mask.mask.copy_(torch.tensor(MASK, dtype=torch.float32))
    method.before_forward(0)
    simulate(net, torch.tensor(X), 1).sum().backward()  # also moves the tracked input rate: measure after it
    method.after_backward(0)
    values = method.values().tolist()
    assert method.regrowth.regenerate() == 2
    assert method.values().tolist() == values


def test_events_prune_on_the_cubic_schedule_and_regenerate_with_a_decaying_share():
    net, targets = hand_built()
    stats = LayerStats(torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                       torch.zeros(1, dtype=torch.float64), T=1)
    method = bound(targets, net, [(Params(), 0.5)], stats, updates=4, window=0)
    loop = StubLoop(16)
    method.setup(loop)
    assert method.compress_steps == 8 and method.interval == 2
    assert [method.share(s) for s in (1, 3, 5, 7)] == pytest.approx(
        [0.1 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.25, 0.5, 0.75, 1.0)])
    for step in range(8):
        loop.step = step
        method.before_forward(step)
        simulate(net, torch.tensor(X), 1).sum().backward()
        method.after_backward(step)
        method.after_step(step)
        net.zero_grad()
    assert method.phase == "finetune" and method.feasible()
    assert method.regrown > 0 and method.events[-1] == f"regeneration swapped {method.regrown} weights over the phase"


def test_state_round_trips_through_a_weights_only_load():
    net, targets = hand_built()
    stats = LayerStats(torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                       torch.zeros(1, dtype=torch.float64), T=1)
    runs = []

    def measure():
        with torch.no_grad():
            simulate(net.eval(), torch.tensor(X), 1)
        net.train()
        return stats

    for _ in range(2):
        method = bound(targets, net, [(Params(), 0.5)], stats, rho_min=0.5, window=0)
        method.measure_stats = measure
        method.setup(StubLoop(16))
        runs.append(method)
    a, b = runs
    a.before_forward(0)
    out = simulate(net, torch.tensor(X), 1).sum()
    (out + a.loss_term(0)).backward()
    a.after_backward(0)
    a.after_step(0)
    a.regrown = 7
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.regrown == 7 and b.phase == a.phase
    assert torch.equal(b.regrowth.meter.score(0), a.regrowth.meter.score(0))
    assert torch.equal(b.regrowth.grad[0], a.regrowth.grad[0])
    assert b.activity.scalars() == a.activity.scalars()
    assert a.activity.dense.tolist() == pytest.approx([1 / 3])  # U = [0.22, 0.95, 3.5]: one of three fires


@pytest.mark.parametrize("options, needle", [
    ({"regrow": 1.5}, "regrow"), ({"critical_fraction": 0.0}, "critical_fraction"), ({"window": -1}, "window"),
    ({"momentum": 1.0}, "momentum"), ({"rho_min": -0.1}, "rho_min"), ({"lr_mu": float("inf")}, "lr_mu"),
    ({"updates": 0}, "updates"), ({"compress_fraction": 2.0}, "compress_fraction")])
def test_bad_options_are_one_line_user_errors(options, needle):
    with pytest.raises(UserError, match=needle) as err:
        METHODS.create("criticality", **options)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ through compress()
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("crit"), RECIPE)


def test_the_method_keeps_every_budget_on_a_tiny_net(tiny_ckpt, tmp_path):
    budgets = {"params": 0.3, "synops": 0.25}
    cfg = CompressConfig(model=str(tiny_ckpt), budgets=budgets, method=MethodConfig(name="criticality"),
                         optim=OptimConfig(lr=1e-3, epochs=2), out=str(tmp_path / "run"), device="cpu")
    result = compress(cfg, load_checkpoint(tiny_ckpt), progress=False)
    for name, budget in budgets.items():
        assert result.resources[name]["ratio"] <= budget, (name, result.resources[name])
    swapped = [e for e in result.events if e.startswith("regeneration swapped")]
    assert len(swapped) == 1 and int(swapped[0].split()[2]) > 0


def test_an_interrupted_run_resumes_to_the_same_model(tiny_ckpt, tmp_path, monkeypatch):
    def run(out, resume=False):
        cfg = CompressConfig(model=str(tiny_ckpt), budgets={"params": 0.2},
                             method=MethodConfig(name="criticality", options={"rho_min": 0.1, "window": 3}),
                             optim=OptimConfig(lr=1e-3, epochs=4), out=str(tmp_path / out), device="cpu")
        return compress(cfg, load_checkpoint(tiny_ckpt), resume=resume, progress=False)

    whole, resumed = whole_and_resumed(run, Criticality, 0, monkeypatch)
    a = torch.load(whole.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.events == whole.events and resumed.accuracy == whole.accuracy
    assert json.loads(json.dumps(resumed.resources)) == json.loads(json.dumps(whole.resources))
