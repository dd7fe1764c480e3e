"""Minimax's loss-aware importance (``importance: fisher``), the output floor and the pacing rule, on toy problems
with hand-computed values; and that ``importance: w2, pacing: legacy, output_floor: 0`` is the engine as it was.

Gradients are set by hand where the Fisher's values are checked (no task loss), and come from a real backward
pass in the step-for-step comparison with the old engine.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rccsnn.errors import UserError
from rccsnn.masks import find_targets
from rccsnn.methods import Constraint, Problem
from rccsnn.methods.base import kept_counts
from rccsnn.methods.minimax import DESCENT_SHARE, Minimax, MinimaxEngine
from rccsnn.resources import LayerStats, Params
from test_methods import masked_linears

f64 = torch.float64

# A: w^2 = [.01, .25, .1024, 4]       B: w^2 = [1.44, .09, .0036, .49]
A = [[0.1, -0.5], [0.32, 2.0]]
B = [[1.2, 0.3], [-0.06, 0.7]]
# g^2:  A [9, 1, 1, .01]              B [.01, 1.21, 100, 1]
GA = [[3.0, 1.0], [-1.0, 0.1]]
GB = [[0.1, -1.1], [10.0, 1.0]]
# F w^2: A [.09, .25, .1024, .04]     B [.0144, .1089, .36, .49]   (all distinct)


def two_targets(*weights):
    """A net of one masked ``Linear`` per weight matrix, and its targets (``test_methods.masked_linears``)."""
    targets = masked_linears(*weights)
    return nn.Sequential(*[t.module for t in targets]), targets


def set_grads(targets, *grads):
    for t, g in zip(targets, grads):
        t.weight.grad = None if g is None else torch.as_tensor(g, dtype=torch.float32).clone()


def engine(targets, allocation="global", **kw):
    hyper = dict(allocation=allocation, steps=10, lr_s=1.0, lr_y=1.0, lr_z=5.0, y0=1.0, z0=1.0, s_max=1.0,
                 importance="fisher", fisher_steps=4)
    hyper.update(kw)
    return MinimaxEngine(targets, 1, **hyper)


def pruned(targets):
    return [[i for i, m in enumerate(t.mask.mask.flatten().tolist()) if m == 0] for t in targets]


class Loop:
    """What a method asks of the training loop."""

    def __init__(self, total_steps, steps_per_epoch=1, lr=0.01):
        self.total_steps, self.steps_per_epoch, self.step, self.epoch, self._lr = total_steps, steps_per_epoch, 0, 0, lr
        self.restarts = []

    @property
    def lr(self):
        return self._lr

    def restart_schedule(self, steps):
        self.restarts.append((self.step, steps))

    def train_epoch(self, epoch, desc=None):
        raise AssertionError("not in these tests")


def bound(method, net, targets, budget):
    L = len(targets)
    stats = LayerStats(torch.ones(L, dtype=f64), torch.ones(L, dtype=f64), torch.zeros(L, dtype=f64), T=1)
    res = Params()
    method.bind(Problem(net=net, targets=list(targets), constraints=[Constraint(res, budget, res.dense(targets, stats))],
                        stats=stats, measure_stats=lambda: stats))
    return method


# ------------------------------------------------------------------------------------------------ the Fisher
def test_first_gradient_initialises_the_fisher_and_later_ones_enter_its_ema():
    _, targets = two_targets(A, B)
    e = engine(targets)  # fisher_steps 4: beta = 0.75
    set_grads(targets, GA, GB)
    e.accumulate()
    assert e.seen == [1, 1]
    assert e.fisher_of(0).flatten().tolist() == pytest.approx([9.0, 1.0, 1.0, 0.01])
    assert e.fisher_of(1).flatten().tolist() == pytest.approx([0.01, 1.21, 100.0, 1.0])
    set_grads(targets, [[1.0, 1.0], [1.0, 1.0]], None)  # B has no gradient this step: its Fisher is left alone
    e.accumulate()
    assert e.seen == [2, 1]
    assert e.fisher_of(0).flatten().tolist() == pytest.approx([0.75 * 9 + 0.25, 1.0, 1.0, 0.75 * 0.01 + 0.25])
    assert e.fisher_of(1).flatten().tolist() == pytest.approx([0.01, 1.21, 100.0, 1.0])


def test_the_fisher_buffers_are_rescaled_before_they_overflow_and_keep_the_ema():
    _, targets = two_targets(A, B)
    e = engine(targets, fisher_steps=2)  # beta 0.5: the buffers' factor doubles every step
    g = torch.Generator().manual_seed(5)
    reference = None
    for step in range(120):
        grads = [torch.randn(2, 2, generator=g) for _ in range(2)]
        set_grads(targets, *grads)
        e.accumulate()
        sq = torch.cat([x.double().flatten() ** 2 for x in grads])
        reference = sq if reference is None else 0.5 * reference + 0.5 * sq
        assert e.inv <= 1e15
    got = torch.cat([e.fisher_of(l).double().flatten() for l in range(2)])
    assert torch.allclose(got, reference, rtol=1e-5)


def masked_by_saliency(s, **engine_options):
    """Targets A, B with one Fisher step from GA, GB and the masks the sparsity levels ``s`` give: (targets, engine)."""
    _, targets = two_targets(A, B)
    e = engine(targets, **engine_options)
    set_grads(targets, GA, GB)
    e.accumulate()
    e.s = torch.tensor(s, dtype=f64)
    e.set_masks()
    return targets, e


def test_global_selection_prunes_the_smallest_saliencies_across_layers():
    targets, e = masked_by_saliency([3 / 8])
    # F w^2 in order: B0 .0144, A3 .04, A0 .09 | A2 .1024, B1 .1089, ...: A's largest weight goes (its gradient is
    # tiny), which no magnitude ranking would do
    assert pruned(targets) == [[0, 3], [0]]
    assert e.kept.tolist() == [2.0, 3.0]
    # the w^2 ranking (per-layer units, the old default) on the same weights prunes others
    _, targets2 = two_targets(A, B)
    e2 = engine(targets2, importance="w2")
    e2.s = torch.tensor([3 / 8], dtype=f64)
    e2.set_masks()
    assert pruned(targets2) != pruned(targets)


def test_layerwise_selection_ranks_each_layer_by_its_saliency():
    targets, e = masked_by_saliency([0.5, 0.25], allocation="layerwise")
    assert pruned(targets) == [[0, 3], [0]]  # A: .04, .09; B: .0144


def test_penalty_and_marginal_value_are_in_the_unit_of_the_mean_fisher_at_initial_mean_squares():
    targets, e = masked_by_saliency([3 / 8])
    energy = [(0.01 + 0.25 + 0.1024 + 4.0) / 4, (1.44 + 0.09 + 0.0036 + 0.49) / 4]
    unit = (energy[0] * (9 + 1 + 1 + 0.01) + energy[1] * (0.01 + 1.21 + 100 + 1)) / 8
    assert e.unit == pytest.approx(unit, rel=1e-6)
    costs, dense = torch.ones(1, 2, dtype=f64), torch.tensor([8.0], dtype=f64)
    e.step(costs, dense, torch.tensor([0.1], dtype=f64), lr_w=0.0)  # lr_w 0: the proximal step moves nothing
    # S: the pruned saliencies .0144 + .04 + .09 over N, in units of the unit; y ascends by lr_y / P of it
    assert e.penalty == pytest.approx((0.0144 + 0.04 + 0.09) / 8 / unit, rel=1e-5)
    assert e.y == pytest.approx(1.0 + 0.1 * e.penalty, rel=1e-12)


def test_a_target_without_gradient_history_falls_back_to_its_magnitude_in_the_fisher_unit():
    net, targets = two_targets(A, B)
    method = bound(Minimax(nodes=[]), net, targets, 0.5)
    method.setup(Loop(total_steps=20))
    set_grads(targets, GA, None)  # B never gets a gradient
    method.after_backward(0)
    method.after_step(0)
    e = method.engine
    f = (0.09 + 0.25 + 0.1024 + 0.04) / (0.01 + 0.25 + 0.1024 + 4.0)  # sum F w^2 / sum w^2 over A
    assert e.fallback == [1]
    assert e.fallback_unit == pytest.approx(f, rel=1e-6)
    assert e.fisher_of(1).flatten().tolist() == pytest.approx([f] * 4, rel=1e-6)
    said = [m for m in method.events if "no gradient history" in m]
    assert len(said) == 1 and said[0].startswith("1 has no gradient history")
    set_grads(targets, GA, None)
    method.after_backward(1)
    method.after_step(1)
    assert len([m for m in method.events if "no gradient history" in m]) == 1  # said once
    set_grads(targets, GA, GB)  # the first gradient replaces the fallback
    method.after_backward(2)
    assert e.fisher_of(1).flatten().tolist() == pytest.approx([0.01, 1.21, 100.0, 1.0])


def test_sequential_folds_the_task_gradient_into_the_fisher_before_dropping_it():
    net, targets = two_targets(A, B)
    method = bound(Minimax(schedule="sequential"), net, targets, 0.3)
    method.setup(Loop(total_steps=100))
    set_grads(targets, GA, GB)
    method.after_backward(0)
    assert all(t.weight.grad is None for t in targets)
    assert method.engine.seen == [1, 1]
    assert method.engine.fisher_of(1).flatten().tolist() == pytest.approx([0.01, 1.21, 100.0, 1.0])


def test_nothing_enters_the_fisher_while_the_masks_are_held_or_frozen():
    net, targets = two_targets(A, B)
    method = bound(Minimax(), net, targets, 0.3)
    method.setup(Loop(total_steps=100))
    method.hold = 3
    set_grads(targets, GA, GB)
    method.after_backward(0)
    assert method.engine.seen == [0, 0]
    method.hold, method.phase = 0, "finetune"
    method.after_backward(1)
    assert method.engine.seen == [0, 0]


def test_w2_allocates_no_fisher_buffers():
    _, targets = two_targets(A, B)
    e = engine(targets, importance="w2")
    set_grads(targets, GA, GB)
    e.accumulate()
    assert e.fisher is None and e.unit is None


def test_the_fisher_resumes_from_the_state_dict_into_the_same_buffers():
    _, targets = two_targets(A, B)
    e = engine(targets)
    set_grads(targets, GA, GB)
    e.accumulate()
    e.set_masks()
    state = e.state_dict()
    _, targets2 = two_targets(A, B)
    e2 = engine(targets2)
    buffers = list(e2.fisher)
    e2.load_state_dict(state)
    assert all(a is b for a, b in zip(buffers, e2.fisher))
    assert all(torch.equal(a, b) for a, b in zip(e.fisher, e2.fisher))
    assert e2.seen == [1, 1] and e2.unit == e.unit and e2.inv == e.inv


def test_the_layer_floor_keeps_a_layer_whose_saliencies_are_all_below_the_others():
    torch.manual_seed(4)
    _, targets = two_targets(torch.randn(20, 10), torch.randn(10, 20))
    e = engine(targets, s_max=0.9, layer_floor=True)
    grads = [torch.full((20, 10), 1e-3), torch.ones(10, 20)]  # every saliency of the first layer is tiny
    set_grads(targets, *grads)
    e.accumulate()
    assert e.keep.tolist() == [20.0, 20.0]  # ceil(0.1 n_l)
    e.s = torch.tensor([0.85], dtype=f64)  # 340 of 400 pruned: the first layer alone would go
    e.set_masks()
    assert e.kept.tolist() == [20.0, 40.0]
    # the first layer keeps its 20 most important weights, the second the 40 most important of its own
    sal = [(t.weight.detach() ** 2 * g ** 2).flatten() for t, g in zip(targets, grads)]
    for t, x, kept in zip(targets, sal, (20, 40)):
        top = torch.zeros(x.numel())
        top[torch.argsort(x, descending=True)[:kept]] = 1.0
        assert torch.equal(t.mask.mask.flatten(), top)
    e.s = torch.tensor([1.0], dtype=f64)
    assert e.k().tolist() == [360.0]
    # the marginal value is the second layer's smallest kept saliency, not the first layer's floor (the engine's
    # candidates are in the units of its Fisher buffers, F * inv)
    S, v = e._penalty(e._candidates([None, None]), e.thr)
    assert float(v[0]) / e.inv == pytest.approx(float(sal[1][targets[1].mask.mask.flatten() > 0].min()), rel=1e-6)


def test_minimax_uses_the_layer_floor_with_fisher_only():
    for importance, expected in (("fisher", True), ("w2", False)):
        net, targets = two_targets(torch.randn(20, 10), torch.randn(5, 20))
        method = bound(Minimax(importance=importance), net, targets, 0.05)
        method.setup(Loop(total_steps=100))
        assert method.engine.layer_floor is expected


# ------------------------------------------------------------------------------------------------ output floor
def test_every_output_unit_keeps_its_most_important_input_however_far_s_goes():
    _, targets = two_targets(A, B)
    e = engine(targets, floor_layer=1, floor_per_row=1)
    set_grads(targets, GA, GB)
    e.accumulate()
    assert e.protected.tolist() == [0.0, 2.0]
    e.s = torch.tensor([1.0], dtype=f64)
    assert e.k().tolist() == [6.0]  # N - protected: s cannot prune what the floor keeps
    e.set_masks()
    # B's rows: [.0144, .1089] keeps input 1, [.36, .49] keeps input 1 (flat 3); everything else goes
    assert pruned(targets) == [[0, 1, 2, 3], [0, 2]]
    assert e.kept.tolist() == [0.0, 2.0]


def test_output_floor_holds_with_sampled_thresholds():
    torch.manual_seed(0)
    hidden, out = torch.randn(50, 40), torch.randn(10, 50)
    _, targets = two_targets(hidden, out)
    e = engine(targets, floor_layer=1, floor_per_row=2, sample_size=64, importance="w2")
    e.s = torch.tensor([0.999], dtype=f64)
    e.set_masks(exact=False, picks=e._draw(exact=False))
    rows = targets[1].mask.mask.sum(1)
    assert bool((rows >= 2).all())
    assert e.k().tolist() == [2480.0]  # s may prune everything but the 20 protected weights
    assert float(e.kept.sum()) < 250  # the floor, and what a threshold from 64 candidates missed


def test_the_minimax_floor_is_on_the_networks_last_weight_layer_and_in_the_projection():
    torch.manual_seed(1)
    net, targets = two_targets(torch.randn(20, 10), torch.randn(5, 20))
    method = bound(Minimax(output_floor=1), net, targets, 0.05)
    method.setup(Loop(total_steps=100))
    assert method.engine.floor_layer == 1
    # the projection at the end of a phase that did not reach the budget: 15 weights may stay, 5 of them the floor
    method.end_compression()
    assert float(kept_counts(targets).sum()) <= 0.05 * 300
    assert bool((targets[1].mask.mask.sum(1) >= 1).all())
    assert method.projected > 0 and method.phase == "finetune"


def test_the_projection_drops_the_output_floor_only_when_nothing_else_is_left():
    torch.manual_seed(2)
    net, targets = two_targets(torch.randn(20, 10), torch.randn(5, 20))
    method = bound(Minimax(output_floor=1), net, targets, 0.5)
    method.setup(Loop(total_steps=100))
    pruned_count = method.project([3.5])  # fewer weights than output units: the floor must give
    assert pruned_count == 297 and float(kept_counts(targets).sum()) == 3.0


def test_no_output_floor_on_a_network_whose_last_layer_is_not_a_target():
    net, targets = two_targets(A, B)
    only_first = [targets[0]]
    method = bound(Minimax(), net, only_first, 0.5)
    method.setup(Loop(total_steps=10))
    assert method.engine.floor_layer is None


# ------------------------------------------------------------------------------------------------ pacing
@pytest.mark.parametrize("total, per_epoch, budget, hold, fisher_steps", [
    (200, 20, 0.002, 20, 14),    # 10 epochs of digits: holds of an epoch, the Fisher over a tenth of the phase
    (6000, 20, 0.01, 420, 20),   # 300 epochs: holds of node_fraction x P, the Fisher over an epoch
    (60, 20, 0.05, 10, 4),       # 3 epochs: an epoch would be more than a quarter of the phase
])
def test_auto_pacing_values(total, per_epoch, budget, hold, fisher_steps):
    net, targets = two_targets(torch.randn(20, 10), torch.randn(5, 20))
    method = bound(Minimax(), net, targets, budget)
    method.setup(Loop(total_steps=total, steps_per_epoch=per_epoch))
    P = round(0.7 * total)  # the default compress_fraction
    plan = method.plan()
    assert plan["decade_steps"] == pytest.approx(DESCENT_SHARE * P / math.log10(1 / budget))
    assert plan["hold"] == hold and method.hold_steps() == hold
    assert plan["fisher_steps"] == fisher_steps
    assert method.engine.beta == pytest.approx(1 - 1 / fisher_steps)
    assert plan["nodes"] == pytest.approx([5 * budget, 2 * budget])
    assert method.engine.decade_steps == plan["decade_steps"]


def test_legacy_pacing_values():
    net, targets = two_targets(torch.randn(20, 10), torch.randn(5, 20))
    method = bound(Minimax(pacing="legacy", compress_fraction=0.5), net, targets, 0.002)
    method.setup(Loop(total_steps=200, steps_per_epoch=20))
    assert method.plan() == dict(decade_steps=None, nodes=pytest.approx([0.01, 0.004]), hold=10, fisher_steps=10)
    assert method.engine.decade_steps is None and method.engine.max_ds == pytest.approx(2.0 / 100)


def test_log_density_trust_region_bounds_each_step_by_a_factor_of_the_kept_fraction():
    _, targets = two_targets(torch.randn(30, 30))
    e = engine(targets, importance="w2", decade_steps=10.0, z0=1e6)  # z pushes as hard as it can
    costs, dense, budgets = torch.ones(1, 1, dtype=f64), torch.tensor([900.0], dtype=f64), torch.tensor([1e-4])
    densities = [1.0]
    for _ in range(20):
        e.step(costs, dense, budgets.double(), lr_w=0.0)
        densities.append(1.0 - float(e.s[0]))
    # every step at the limit: the kept fraction falls by 10^(-1/10), a decade every 10 steps
    for a, b in zip(densities, densities[1:]):
        assert b == pytest.approx(a * 10 ** -0.1, rel=1e-9)
    assert densities[10] == pytest.approx(0.1) and densities[20] == pytest.approx(0.01)


def test_auto_pacing_reaches_a_tight_budget_within_the_phase_without_a_projection():
    torch.manual_seed(3)
    net, targets = two_targets(torch.randn(40, 50), torch.randn(10, 40))
    method = bound(Minimax(), net, targets, 0.01)
    loop = Loop(total_steps=400, steps_per_epoch=20)
    method.setup(loop)
    for step in range(400):
        loop.step = step
        method.before_forward(step)
        method.after_backward(step)
        method.after_step(step)
        if method.phase != "compress":
            break
    assert method.phase == "finetune" and method.projected == 0 and method.feasible()
    assert [m.split()[2] for m in method.events if m.startswith("reached node")] == ["0.05", "0.02"]


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("kwargs, needle", [
    (dict(importance="hessian"), "unknown importance 'hessian'; choices: fisher, w2"),
    (dict(pacing="fast"), "unknown pacing 'fast'; choices: auto, legacy"),
    (dict(output_floor=-1), "output_floor must be an integer >= 0"),
    (dict(output_floor=1.5), "output_floor must be an integer >= 0"),
    (dict(activity=1.5), "activity must be a fraction in [0, 1]"),
    (dict(activity="high"), "activity must be a fraction in [0, 1]"),
    (dict(regrow="random"), "unknown regrow 'random'; choices: none, criticality"),
    (dict(activity_layers="hidden"), "unknown activity_layers 'hidden'; choices: output, all"),
])
def test_new_options_are_validated(kwargs, needle):
    with pytest.raises(UserError) as info:
        Minimax(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_defaults():
    m = Minimax()
    assert (m.importance, m.pacing, m.output_floor, m.rho_min, m.activity_layers, m.regrow) == (
        "fisher", "auto", 1, 0.1, "output", "none")


@pytest.mark.parametrize("which, expected", [("output", ["3"]), ("all", ["1", "3"])])
def test_activity_constrains_the_output_neurons_or_every_spiking_layer(which, expected):
    from rccsnn.snn import LIF, NeuronConfig, PerStep

    net = nn.Sequential(PerStep(nn.Flatten(), nn.Linear(8, 6)), LIF(NeuronConfig()), PerStep(nn.Linear(6, 4)),
                        LIF(NeuronConfig()))
    targets = find_targets(net, exclude_first=False)
    method = bound(Minimax(activity=0.2, activity_layers=which), net, targets, 0.5)
    method.setup(Loop(total_steps=20))
    assert method.activity.names == expected


def test_activity_and_regrow_wire_their_components():
    from rccsnn.activity import ActivityConstraints
    from rccsnn.methods.criticality import CriticalityRegrowth

    net, targets = two_targets(A, B)
    method = bound(Minimax(activity=0.1, regrow="criticality"), net, targets, 0.5)
    method.setup(Loop(total_steps=20))
    assert isinstance(method.activity, ActivityConstraints) and method.activity.rho_min == 0.1
    assert isinstance(method.regrowth, CriticalityRegrowth)
    assert "regrowth" in method.state_dict() and "activity" in method.state_dict()
    plain = bound(Minimax(activity=0.0), *two_targets(A, B), 0.5)
    plain.setup(Loop(total_steps=20))
    assert plain.activity is None and plain.regrowth is None and plain.loss_term(0) is None


# ------------------------------------------------------------------------------------------------ the old engine
def legacy_run(**opts):
    """60 steps of a joint run with real gradients on a 3-layer MLP (8-32-24-4), budget 0.1 of the weights, driven
    as the Trainer drives a method; per-step records at steps 4, 9, 14, 19, 23 and the final sum of |w|."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 4))
    x, labels = torch.randn(64, 8), torch.randint(0, 4, (64,))
    targets = find_targets(net, exclude_first=False)
    method = bound(Minimax(importance="w2", pacing="legacy", output_floor=0, activity=0.0, regrow="none",
                           finetune_step="none", compress_fraction=0.5, **opts), net, targets, 0.1)
    loop = Loop(60, 10, 0.01)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    method.setup(loop)
    records = []
    for step in range(60):
        loop.step = step
        method.before_forward(step)
        loss = nn.functional.cross_entropy(net(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(step)
        optimizer.step()
        method.after_step(step)
        if step in (4, 9, 14, 19, 23):
            e = method.engine
            check = sum(float((t.mask.mask.flatten() * torch.arange(1, t.n + 1)).sum()) for t in targets)
            records.append((method.phase, e.s.tolist(), e.y, e.z.tolist(), e.kept.tolist(), check))
    return records, method.events, sum(float(t.weight.detach().double().abs().sum()) for t in targets)


#: Recorded with the engine of commit c13d719 (before importance, pacing and the output floor existed).
LEGACY = {
    "global": (dict(), 78.29494897977474, [
        ('compress', [0.29439014606504255], 1.0004212382996946, [4.302083333333333], [185.0, 535.0, 70.0], 231729.0),
        ('compress', [0.49910714285808594], 1.0069058160974027, [5.00297619047619], [127.0, 376.0, 57.0], 162103.0),
        ('compress', [0.699107142858086], 1.0142087772269206, [6.171130952380952], [55.0, 245.0, 36.0], 101508.0),
        ('compress', [0.7991071428580859], 1.0339113653764, [6.394345238095237], [23.0, 178.0, 23.0], 70270.0),
        ('finetune', [0.8991071428580428], 1.0678814031531993, [6.636904761904761], [2.0, 94.0, 16.0], 35542.0),
    ]),
    "layerwise": (dict(allocation="layerwise", sample_size=64), 91.78500067948335, [
        ('compress', [0.2943305786957757, 0.2944292991750295, 0.29424030321598466], 1.0002929852191162,
         [4.407738095238095], [189.0, 559.0, 69.0], 242087.0),
        ('compress', [0.49859919618876214, 0.49869791666801594, 0.49850892070897107], 1.0063802236316441,
         [5.138392857142857], [128.0, 384.0, 48.0], 165006.0),
        ('compress', [0.6985991961887621, 0.698697916668016, 0.6985089207089711], 1.017991843812308,
         [6.319940476190476], [80.0, 290.0, 20.0], 120288.0),
        ('compress', [0.7980783628554288, 0.7981770833346826, 0.7979880873756378], 1.030128782951901,
         [6.694940476190476], [51.0, 154.0, 19.0], 64367.0),
        ('finetune', [0.9483939001546231, 0.886718750001321, 0.8640463786743167], 1.0569366655922345,
         [6.988095238095238], [13.0, 86.0, 13.0], 32836.0),
    ]),
    "sequential": (dict(schedule="sequential", nodes=[0.3]), 34.845069515518844, [
        ('compress', [0.2999999834832787], 1.0005473289684907, [5.941964285714286], [177.0, 537.0, 70.0], 227083.0),
        ('compress', [0.633333316816612], 1.0116236068886686, [8.16220238095238], [93.0, 280.0, 37.0], 119284.0),
        ('compress', [0.7657738095247073], 1.0170820240545155, [8.605654761904761], [60.0, 180.0, 22.0], 77144.0),
        ('finetune', [0.8991071428580406], 1.0275420349917974, [8.94047619047619], [26.0, 77.0, 9.0], 33772.0),
        ('finetune', [0.8991071428580406], 1.0275420349917974, [8.94047619047619], [26.0, 77.0, 9.0], 33772.0),
    ]),
}


@pytest.mark.parametrize("case", sorted(LEGACY))
def test_w2_legacy_pacing_without_floor_is_the_old_engine_step_for_step(case):
    opts, weight_sum, expected = LEGACY[case]
    records, events, final = legacy_run(**opts)
    for got, want in zip(records, expected):
        phase, s, y, z, kept, check = got
        assert phase == want[0]
        assert s == pytest.approx(want[1], rel=1e-12, abs=1e-15)
        assert y == pytest.approx(want[2], rel=1e-12)
        assert z == pytest.approx(want[3], rel=1e-12)
        assert kept == want[4] and check == want[5]
    assert final == pytest.approx(weight_sum, rel=1e-9)
    assert events[-1].startswith("masks frozen at step")


# ------------------------------------------------------------------------------------------------ the z step
def test_z_takes_the_larger_of_the_additive_and_the_log_step():
    """Under pacing auto, while R > B: z <- max(z + (lr_z / P) (R - B) / B_final, z exp(min((lr_log_z / P) (R - B) / B,
    ln 10 / decade_steps))), B the stage's budget; under the budget the additive step alone, projected at 0."""
    _, targets = two_targets(torch.randn(10, 10))
    P, lr_z, lr_log_z, decade_steps = 8, 0.05, 4.0, 3.0
    e = engine(targets, allocation="layerwise", importance="w2", steps=P, lr_z=lr_z, lr_log_z=lr_log_z,
               decade_steps=decade_steps)
    z = torch.tensor([0.5, 2.0, 3.0, 0.01, 0.01], dtype=f64)
    e.z = z.clone()
    costs = torch.ones(5, 1, dtype=f64)
    dense = torch.full((5,), 100.0, dtype=f64)
    # R = 1 (the dense masks): 25 % over, 400 % over, 50 % under, 400 % over from a small price, 50 % under from a
    # small price
    budgets = torch.tensor([0.8, 0.2, 2.0, 0.2, 2.0], dtype=f64)
    final = torch.full((5,), 0.1, dtype=f64)
    e.step(costs, dense, budgets, lr_w=0.0, final=final)
    rel = (1.0 - budgets) / budgets
    g = torch.clamp(lr_log_z / P * rel, max=math.log(10) / decade_steps)
    assert g.tolist() == pytest.approx([0.125, math.log(10) / 3, -0.25, math.log(10) / 3, -0.25])  # capped twice
    additive = (z + lr_z / P * (1.0 - budgets) / final).clamp_min(0.0)
    log = z * torch.exp(g)
    assert (log > additive).tolist() == [True, True, False, False, True]
    # over budget the larger step; under it the additive one, which takes a small price to 0 (the log one never would)
    expected = [log[0], log[1], additive[2], additive[3], 0.0]
    assert additive[4] == 0.0
    assert e.z.tolist() == pytest.approx([float(x) for x in expected], rel=1e-12, abs=0)
    # pacing legacy (no decade_steps) has no log step
    with pytest.raises(ValueError):
        engine(targets, importance="w2", lr_log_z=1.0)


def test_additive_dual_stalls_where_the_log_step_lands():
    """w^2 spread over four decades, as saliencies are over a descent, and every weight growing 1 % a step, as the kept
    weights do while they train under the joint schedule (the marginal value y v rises 2 % a step): the additive
    step alone falls behind and the phase ends far above the budget; with the log step the price keeps up and the
    budget is reached within the phase."""
    torch.manual_seed(0)
    w = 10.0 ** (2.0 * torch.rand(20, 50))
    reached, kept = {}, {}
    for lr_log_z in (0.0, 30.0):
        _, targets = two_targets(w.clone())
        P = 200
        e = engine(targets, importance="w2", steps=P, lr_z=5.0, lr_log_z=lr_log_z, decade_steps=0.5 * P / 2)
        e.set_masks()
        costs, dense = torch.ones(1, 1, dtype=f64), torch.tensor([1000.0], dtype=f64)
        for t in range(P):
            with torch.no_grad():
                targets[0].weight.mul_(1.01)
            e.step(costs, dense, torch.tensor([0.01], dtype=f64), lr_w=0.0)
            if float(e.kept.sum()) <= 10:
                break
        reached[lr_log_z], kept[lr_log_z] = t, float(e.kept.sum())
    assert kept[0.0] > 100  # more than 10x the budget after the whole phase: the deadline's projection
    assert kept[30.0] <= 10 and reached[30.0] < 0.7 * P


def test_the_log_step_is_on_under_auto_pacing_only():
    net, targets = two_targets(torch.randn(20, 10), torch.randn(5, 20))
    for kwargs, lr_log_z in ((dict(), 30.0), (dict(pacing="legacy"), 0.0), (dict(lr_log_z=12.0), 12.0),
                             (dict(lr_log_z=0.0), 0.0), (dict(pacing="legacy", lr_log_z=0.0), 0.0),
                             (dict(lr_log_z="auto", pacing="legacy"), 0.0)):
        method = bound(Minimax(**kwargs), net, targets, 0.05)
        method.setup(Loop(total_steps=100, steps_per_epoch=10))
        assert method.engine.lr_log_z == pytest.approx(lr_log_z / method.compress_steps)
        assert method.engine.lr_z == pytest.approx(5.0 / method.compress_steps)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(lr_log_z=-1.0), "method option lr_log_z must be a finite number >= 0"),
    (dict(lr_log_z=float("inf")), "method option lr_log_z must be a finite number >= 0"),
    (dict(lr_log_z="fast"), "method option lr_log_z must be 'auto' or a finite number >= 0, got 'fast'"),
    (dict(lr_log_z=12.0, pacing="legacy"), "method option lr_log_z needs pacing: auto"),
])
def test_lr_log_z_is_validated(kwargs, needle):
    with pytest.raises(UserError) as info:
        Minimax(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)
