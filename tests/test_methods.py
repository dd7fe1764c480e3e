"""Compression methods: the exact projection, the minimax update rules on toy problems whose behaviour is known
(docs/method.md, Steps 1-5 of a training step), gmp's cubic schedule, magnitude's one-shot pruning, the
sequential schedule's gradient switch and the methods' option checks.

No task loss anywhere here: the weights are fixed except for what the methods themselves do to them, and the
Trainer is replaced by a stub with the three attributes the methods use (total_steps, step, lr).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rccsnn.errors import UserError
from rccsnn.masks import attach_masks, find_targets
from rccsnn.methods import METHODS, Constraint, Problem
from rccsnn.methods.base import kept_counts, project, resource_values
from rccsnn.methods.gmp import GMP, cubic_budget
from rccsnn.methods.magnitude import Magnitude
from rccsnn.methods.minimax import Minimax, MinimaxEngine, auto_nodes
from rccsnn.resources import LayerStats, MACs, Params, SynOps

f64 = torch.float64


def masked_linears(*weights):
    """One masked ``Linear`` target per weight matrix (in order), all masks dense."""
    layers = []
    for w in weights:
        w = torch.as_tensor(w, dtype=torch.float32)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
    targets = find_targets(nn.Sequential(*layers), exclude_first=False)
    attach_masks(targets)
    return targets


def masks(targets):
    return [t.mask.mask.flatten().tolist() for t in targets]


# A: w^2 = [0.01, 0.25, 0.1024, 4.0]      B: w^2 = [1.44, 0.09, 0.0036, 0.49]     (all distinct)
A = [[0.1, -0.5], [0.32, 2.0]]
B = [[1.2, 0.3], [-0.06, 0.7]]


# ------------------------------------------------------------------------------------------------ project
def test_project_params_prunes_the_smallest_squares_across_layers():
    targets = masked_linears(A, B)
    # 8 kept, limit 5.5: the three smallest w^2 overall go (B[2] 0.0036, A[0] 0.01, B[1] 0.09)
    assert project(targets, torch.tensor([[1.0, 1.0]], dtype=f64), [5.5]) == 3
    assert masks(targets) == [[0, 1, 1, 1], [1, 0, 0, 1]]
    assert kept_counts(targets).tolist() == [3.0, 2.0]


def test_project_weighs_by_cost():
    targets = masked_linears(A, B)
    # A's weights cost 4, B's 1: scores w^2 / c are A: [.0025, .0625, .0256, 1.0], B: [1.44, .09, .0036, .49].
    # Dense cost 20, limit 12.5: A[0] (4), B[2] (1), A[2] (4) cover the excess of 7.5.
    pruned = project(targets, torch.tensor([[4.0, 1.0]], dtype=f64), [12.5])
    assert pruned == 3
    assert masks(targets) == [[0, 1, 0, 1], [1, 1, 0, 1]]
    assert float((torch.tensor([4.0, 1.0], dtype=f64) * kept_counts(targets)).sum()) == 11.0


def test_project_scale_divides_the_scores_per_layer():
    targets = masked_linears(A, B)
    # B's squares in units of 100: B's three smallest scores (.000036, .0009, .0049) come before A's .01
    project(targets, torch.tensor([[1.0, 1.0]], dtype=f64), [5.5], scale=torch.tensor([1.0, 100.0], dtype=f64))
    assert masks(targets) == [[1, 1, 1, 1], [1, 0, 0, 0]]


def test_project_does_nothing_when_the_limits_hold():
    targets = masked_linears(A, B)
    assert project(targets, torch.tensor([[1.0, 1.0], [4.0, 1.0]], dtype=f64), [8.5, 20.5]) == 0
    assert masks(targets) == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_project_keeps_the_floors_while_it_can_then_drops_them():
    targets = masked_linears(A, B)
    costs = torch.tensor([[4.0, 1.0]], dtype=f64)
    # Floors 3 and 1 leave A[0] (cost 4) and B's three smallest (cost 1 each) as candidates: 7 < the excess 7.5, so
    # all four go; then every layer is at its floor and the limit still fails, so the floors drop and the smallest
    # score left, A[2] (.1024 / 4), goes too.
    assert project(targets, costs, [12.5], floors=[3, 1]) == 5
    assert masks(targets) == [[0, 1, 0, 1], [1, 0, 0, 0]]
    targets = masked_linears(A, B)
    # Floors that leave enough: without them A would keep 1 and B 2 (the five smallest squares go); with A's floor
    # of 2, A loses only its two smallest and B's 0.49 goes instead of A's 0.25.
    assert project(targets, torch.tensor([[1.0, 1.0]], dtype=f64), [3.5], floors=[2, 0]) == 5
    assert masks(targets) == [[0, 1, 0, 1], [1, 0, 0, 0]]


def test_project_never_unprunes():
    targets = masked_linears(A, B)
    targets[0].mask.mask.view(-1)[3] = 0.0  # the largest weight, already pruned
    assert project(targets, torch.tensor([[1.0, 1.0]], dtype=f64), [5.5]) == 2  # 7 kept -> 5
    assert masks(targets) == [[0, 1, 1, 0], [1, 1, 0, 1]]
    # the stored weights are not touched: masks only
    assert targets[0].weight.flatten().tolist() == pytest.approx([0.1, -0.5, 0.32, 2.0])


def test_project_several_constraints_all_hold():
    targets = masked_linears(A, B)
    costs = torch.tensor([[1.0, 1.0], [4.0, 1.0]], dtype=f64)
    # the weighted constraint is the more violated (7.5 / 12.5 > 3.5 / 4.5) and prunes A[0], B[2], A[2];
    # the params constraint still has 5 > 4.5 and prunes the smallest kept square, B[1] (0.09)
    assert project(targets, costs, [4.5, 12.5]) == 4
    assert masks(targets) == [[0, 1, 0, 1], [1, 0, 0, 1]]
    kept = kept_counts(targets)
    assert (costs * kept).sum(1).tolist() == [4.0, 10.0]


def test_project_skips_layers_that_cost_nothing():
    targets = masked_linears(A, B)
    # B costs nothing under this resource (e.g. a silent input under synops): only A's weights are pruned
    project(targets, torch.tensor([[1.0, 0.0]], dtype=f64), [1.5])
    assert masks(targets) == [[0, 0, 0, 1], [1, 1, 1, 1]]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    num_constraints=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    premasked=st.floats(0.0, 0.5),
)
def test_project_property(sizes, num_constraints, seed, fractions, premasked):
    g = torch.Generator().manual_seed(seed)
    targets = masked_linears(*[torch.randn(n, 1, generator=g) for n in sizes])
    for t in targets:
        t.mask.mask.copy_((torch.rand(t.shape, generator=g) >= premasked).float())
    before = [t.mask.mask.clone() for t in targets]
    costs = (torch.rand(num_constraints, len(sizes), generator=g, dtype=f64) * 5).round(decimals=1)
    limits = [f * float((c * kept_counts(targets)).sum()) for f, c in zip(fractions, costs)]
    pruned = project(targets, costs, limits)

    kept = kept_counts(targets)
    assert ((costs * kept).sum(1) <= torch.tensor(limits, dtype=f64)).all()
    for t, m in zip(targets, before):
        assert (t.mask.mask <= m).all()  # never un-prunes
    assert pruned == int(sum(float(m.sum()) for m in before) - float(kept.sum()))

    if num_constraints == 1 and pruned:
        # exactly the cheapest prefix: the pruned weights are the lowest w^2 / c among those that cost something,
        # and putting back the last of them would break the limit
        c = costs[0]
        scores, was_pruned, cost = [], [], []
        for l, (t, m) in enumerate(zip(targets, before)):
            if c[l] <= 0:
                assert torch.equal(t.mask.mask, m)
                continue
            keep = m.flatten() > 0
            scores.append(t.weight.detach().flatten()[keep].double() ** 2 / c[l])
            was_pruned.append(t.mask.mask.flatten()[keep] == 0)
            cost.append(torch.full((int(keep.sum()),), float(c[l]), dtype=f64))
        scores, was_pruned, cost = torch.cat(scores), torch.cat(was_pruned), torch.cat(cost)
        assert scores[was_pruned].max() <= scores[~was_pruned].min() if (~was_pruned).any() else True
        last = int(torch.argmax(torch.where(was_pruned, scores, torch.tensor(-1.0, dtype=f64))))
        assert float((c * kept).sum()) + float(cost[last]) > limits[0] * (1 - 1e-12)


def test_resource_values():
    costs = torch.tensor([[1.0, 1.0], [4.0, 1.0]], dtype=f64)
    dense = torch.tensor([8.0, 20.0], dtype=f64)
    assert resource_values(costs, dense, torch.tensor([3.0, 2.0], dtype=f64)).tolist() == [5 / 8, 14 / 20]


# ------------------------------------------------------------------------------------------------ minimax engine
def toy_layer(n=100, seed=0):
    """One masked Linear(10 -> 10) whose |w| are 0.01, 0.02, ..., 1.00 in a random order with random signs."""
    g = torch.Generator().manual_seed(seed)
    magnitudes = torch.arange(1, n + 1, dtype=f64) / n
    signs = torch.where(torch.rand(n, generator=g) > 0.5, 1.0, -1.0).double()
    w = (magnitudes[torch.randperm(n, generator=g)] * signs).reshape(10, n // 10)
    return masked_linears(w)


def engine_for(targets, budget, steps=50, **kw):
    hyper = dict(allocation="layerwise", steps=steps, lr_s=1.0, lr_y=1.0, lr_z=20.0, y0=1.0, z0=1.0,
                 s_max=1.0 - 0.5 * budget)  # the Minimax defaults
    hyper.update(kw)
    return MinimaxEngine(targets, 1, **hyper)


def run_toy(budget, steps_run, P=50, lr_w=0.1, **kw):
    """Engine steps on the toy layer with a params constraint; returns per-step records."""
    targets = toy_layer()
    engine = engine_for(targets, budget, steps=P, **kw)
    engine.set_masks()
    costs = torch.ones(1, 1, dtype=f64)
    dense = torch.tensor([100.0], dtype=f64)
    records = []
    for _ in range(steps_run):
        R = float(kept_counts(targets)[0]) / 100  # the hard masks this step ranks with
        z, s, y = float(engine.z[0]), float(engine.s[0]), engine.y
        engine.step(costs, dense, torch.tensor([budget], dtype=f64), lr_w)
        records.append(dict(R=R, z=z, z_next=float(engine.z[0]), s=s, s_next=float(engine.s[0]), y=y,
                            y_next=engine.y, penalty=engine.penalty))
    return targets, engine, records


def test_tight_budget_z_rises_every_step_while_violated_and_s_rises():
    _, engine, records = run_toy(0.3, 60)
    assert records[0]["R"] == 1.0 and records[0]["s"] == 0.0
    violated = [r for r in records if r["R"] > 0.3]
    assert len(violated) >= 10
    for r in violated:
        assert r["z_next"] > r["z"]
        assert r["s_next"] > r["s"] or r["s_next"] == engine.s_max
    # the budget is reached within the phase
    assert any(r["R"] <= 0.3 for r in records)


def test_duals_are_projected_at_zero_and_y_never_falls():
    _, _, records = run_toy(0.3, 150)
    assert all(r["z_next"] >= 0.0 for r in records)
    assert all(r["y_next"] >= r["y"] for r in records)
    assert all(r["y_next"] == pytest.approx(r["y"] + 1.0 / 50 * r["penalty"], rel=1e-12) for r in records)


def test_slack_budget_z_falls_monotonically_to_exactly_zero_and_stays():
    _, engine, records = run_toy(1.0, 150)
    zs = [records[0]["z"]] + [r["z_next"] for r in records]
    assert zs[0] == 1.0
    assert all(b <= a for a, b in zip(zs, zs[1:]))
    first_zero = zs.index(0.0)
    assert first_zero < 60
    assert all(z == 0.0 for z in zs[first_zero:])
    assert all(r["R"] <= 1.0 for r in records)


def test_penalty_vanishes_once_the_pruned_weights_are_shrunk():
    targets, engine, records = run_toy(0.3, 150)
    peak = max(r["penalty"] for r in records)
    assert peak > 1e-2
    assert records[-1]["penalty"] < 1e-12 * peak
    # the solution: every pruned weight is (numerically) zero, and the proximal step touched nothing else
    t = targets[0]
    w = t.weight.detach().flatten()
    original = toy_layer()[0].weight.detach().flatten()
    pruned = t.mask.mask.flatten() == 0
    assert int(pruned.sum()) >= 70
    assert w[pruned].abs().max() < 1e-6
    untouched = w == original
    assert bool((untouched | (w.abs() < 1e-5)).all())
    assert int(untouched.sum()) >= 100 - round(engine.s_max * 100)


def test_one_engine_step_follows_the_update_rules_exactly():
    """Steps 2-5 of docs/method.md in the scale-free units of minimax.py, two layers, two constraints."""
    g = torch.Generator().manual_seed(4)
    wa = torch.randn(3, 2, generator=g)  # n = 6
    wb = torch.randn(2, 2, generator=g) * 3  # n = 4, another scale
    targets = masked_linears(wa, wb)
    P, lr_s, lr_y, lr_z, y0, s_max, s_rate, lr_w = 4, 0.8, 2.0, 20.0, 1.5, 0.9, 2.0, 0.05
    engine = MinimaxEngine(targets, 2, allocation="layerwise", steps=P, lr_s=lr_s, lr_y=lr_y, lr_z=lr_z, y0=y0,
                           z0=1.0, s_max=s_max, s_rate=s_rate)
    engine.z = torch.tensor([0.7, 1.3], dtype=f64)
    engine.s = torch.tensor([0.3, 0.5], dtype=f64)
    engine.set_masks()
    costs = torch.tensor([[1.0, 1.0], [3.0, 0.5]], dtype=f64)
    n = torch.tensor([6.0, 4.0], dtype=f64)
    dense = (costs * n).sum(1)
    budgets = torch.tensor([0.5, 0.4], dtype=f64)

    w = [wa.double().flatten(), wb.double().flatten()]
    e = torch.stack([x.pow(2).mean() for x in w])
    assert torch.allclose(engine.layer_energy, e.float().double(), rtol=1e-6)
    e = engine.layer_energy
    k = [2, 2]  # ceil(0.3 * 6), ceil(0.5 * 4)
    S, v, pruned = [], [], []
    for x, el, kl in zip(w, e, k):
        w2 = x.pow(2) / el
        order = torch.argsort(w2)
        pruned.append(order[:kl])
        S.append(float(w2[order[:kl]].sum()))
        v.append(float(w2[order[kl]]))
    assert [int((t.mask.mask == 0).sum()) for t in targets] == k

    out = engine.step(costs, dense, budgets, lr_w)

    # 2. proximal step on the pruned sets with the pre-update y
    for t, x, p, el in zip(targets, w, pruned, e):
        expected = x.clone()
        expected[p] = x[p] / (1.0 + 2.0 * (lr_w / float(el.sqrt())) * y0)
        assert torch.allclose(t.weight.detach().flatten().double(), expected, rtol=1e-6, atol=0)
    # 3. s descends on y * v - sum_j z_j c_hat_jl, c_hat = c * N / sum_l c n_l, within the trust region s_rate / P
    c_hat = costs * 10.0 / dense[:, None]
    grad = y0 * torch.tensor(v, dtype=f64) - (torch.tensor([0.7, 1.3], dtype=f64)[:, None] * c_hat).sum(0)
    ds = engine.s - torch.tensor([0.3, 0.5], dtype=f64)
    assert (grad != 0).all()
    for d, gr in zip(ds.tolist(), grad.tolist()):
        assert d == 0.0 or math.copysign(1.0, d) == -math.copysign(1.0, gr)
        assert abs(d) <= s_rate / P + 1e-12
    assert bool((engine.s >= 0).all()) and bool((engine.s <= s_max).all())
    # 4. duals: y ascends on the penalty S = sum_l S_l / N; z_j moves with the sign of R_j - B_j, projected at 0
    penalty = sum(S) / 10.0
    assert out["penalty"] == engine.penalty == pytest.approx(penalty, rel=1e-6)
    assert out["y"] == engine.y == pytest.approx(y0 + lr_y / P * penalty, rel=1e-6)
    kept = n - torch.tensor(k, dtype=f64)
    R = (costs * kept).sum(1) / dense
    assert R.tolist() == pytest.approx([0.6, 13 / 20])  # both violated
    assert out["z0"] > 0.7 and out["z1"] > 1.3
    assert engine.z.tolist() == [out["z0"], out["z1"]]
    # 5. masks from the new s and the shrunk weights: k = ceil(s * n) smallest w^2
    for t, s_l in zip(targets, engine.s.tolist()):
        kl = math.ceil(s_l * t.n - 1e-9)
        w2 = t.weight.detach().flatten().double().pow(2)
        expected = torch.ones(t.n)
        expected[torch.argsort(w2)[:kl]] = 0.0
        assert torch.equal(t.mask.mask.flatten(), expected)


def test_trust_region_and_s_max_clip_s():
    targets = toy_layer()
    engine = engine_for(targets, 0.3, steps=10, z0=1000.0, s_max=0.35)
    costs, dense, budget = torch.ones(1, 1, dtype=f64), torch.tensor([100.0], dtype=f64), torch.tensor([0.3], dtype=f64)
    engine.step(costs, dense, budget, 0.01)
    assert float(engine.s[0]) == pytest.approx(2.0 / 10)  # s_rate / P, however hard z pulls
    engine.step(costs, dense, budget, 0.01)
    assert float(engine.s[0]) == 0.35  # s_max
    assert int((targets[0].mask.mask == 0).sum()) == 35


@pytest.mark.parametrize("s, expected", [(0.0, 0), (0.001, 1), (0.01, 1), (0.011, 2), (0.25, 25), (0.999, 100),
                                         (1.0, 100), (0.07, 7), (0.29, 29), (0.57, 57)])
def test_layerwise_masks_prune_ceil_s_n_smallest_squares(s, expected):
    targets = toy_layer()
    engine = engine_for(targets, 0.5)
    engine.s = torch.tensor([s], dtype=f64)
    assert engine.k().tolist() == [float(expected)]
    engine.set_masks()
    mags = targets[0].weight.detach().abs().flatten()
    pruned = targets[0].mask.mask.flatten() == 0
    assert int(pruned.sum()) == expected
    # the pruned weights are exactly the `expected` smallest magnitudes 0.01 .. expected / 100
    assert sorted(round(float(m) * 100) for m in mags[pruned]) == list(range(1, expected + 1))


def two_layers():
    g = torch.Generator().manual_seed(9)
    big = torch.randn(6, 5, generator=g) * 4.0  # n = 30, large weights
    small = torch.randn(4, 5, generator=g) * 0.25  # n = 20, small weights
    return masked_linears(big, small)


def test_layerwise_allocation_has_one_s_per_target():
    targets = two_layers()
    engine = engine_for(targets, 0.5)
    assert engine.s.shape == (2,)
    engine.s = torch.tensor([0.1, 0.5], dtype=f64)
    engine.set_masks()
    for t, k in zip(targets, (3, 10)):
        w2 = t.weight.detach().flatten().pow(2)
        expected = torch.ones(t.n)
        expected[torch.argsort(w2)[:k]] = 0.0
        assert torch.equal(t.mask.mask.flatten(), expected)


@pytest.mark.parametrize("normalize", ["global", "layer"])
def test_global_allocation_ranks_all_weights_together(normalize):
    targets = two_layers()
    engine = engine_for(targets, 0.5, allocation="global", normalize=normalize)
    assert engine.s.shape == (1,)
    engine.s = torch.tensor([0.4], dtype=f64)
    assert engine.k().tolist() == [20.0]  # ceil(0.4 * 50)
    engine.set_masks()
    # the unit of w^2: one constant for all ("global": raw magnitudes), or each layer's own mean square
    units = [t.weight.detach().pow(2).mean() if normalize == "layer" else 1.0 for t in targets]
    scores = torch.cat([t.weight.detach().flatten().pow(2) / u for t, u in zip(targets, units)])
    expected = torch.ones(50)
    expected[torch.argsort(scores)[:20]] = 0.0
    got = torch.cat([t.mask.mask.flatten() for t in targets])
    assert torch.equal(got, expected)
    if normalize == "global":
        # raw magnitudes: the small layer goes first (all 20 of its weights are below the big layer's)
        assert int((targets[1].mask.mask == 0).sum()) > int((targets[0].mask.mask == 0).sum())


def test_engine_state_dict_round_trip():
    targets = toy_layer()
    engine = engine_for(targets, 0.3)
    for _ in range(5):
        engine.step(torch.ones(1, 1, dtype=f64), torch.tensor([100.0], dtype=f64), torch.tensor([0.3], dtype=f64), 0.1)
    other = engine_for(toy_layer(), 0.3)
    other.load_state_dict(engine.state_dict())
    assert torch.equal(other.s, engine.s) and torch.equal(other.z, engine.z)
    assert (other.y, other.penalty) == (engine.y, engine.penalty)


def big_layers(seed=0):
    """Two masked layers of 20,000 and 5,000 weights with different scales (bigger than a small sample)."""
    g = torch.Generator().manual_seed(seed)
    return masked_linears(torch.randn(200, 100, generator=g), torch.randn(50, 100, generator=g) * 0.1)


@pytest.mark.parametrize("allocation", ["global", "layerwise"])
def test_sampled_thresholds_prune_about_k_and_exact_ones_exactly_k(allocation):
    targets = big_layers()
    engine = engine_for(targets, 0.5, allocation=allocation, sample_size=1024)
    engine.s = torch.full_like(engine.s, 0.7)
    k = engine.k()
    engine.set_masks(exact=True)
    pruned = [t.n - int(t.mask.mask.sum()) for t in targets]
    assert (sum(pruned) if allocation == "global" else pruned) == (int(k[0]) if allocation == "global"
                                                                  else [int(x) for x in k])
    assert engine.kept.tolist() == [float(t.mask.mask.sum()) for t in targets]
    # A threshold from a sample of m candidates misses its quantile by about sqrt(q (1 - q) / m) of the weights.
    engine.set_masks(exact=False)
    pruned = sum(t.n - int(t.mask.mask.sum()) for t in targets)
    assert engine.kept.tolist() == [float(t.mask.mask.sum()) for t in targets]
    sigma = math.sqrt(0.7 * 0.3 / 1024) * 25_000
    assert abs(pruned - 0.7 * 25_000) < 5 * sigma
    assert pruned != int(k.sum())  # it really was a sample (exact k by chance is unlikely at sigma ~ 360)


def test_sampled_masks_are_a_function_of_the_step_count():
    """Same weights, same step count -> the same sample and the same masks (resume and every rank agree)."""
    one, two = big_layers(), big_layers()
    engines = [engine_for(t, 0.2, sample_size=512, allocation="global") for t in (one, two)]
    args = (torch.ones(1, 2, dtype=f64), torch.tensor([25_000.0], dtype=f64), torch.tensor([0.2], dtype=f64), 0.05)
    for _ in range(3):
        engines[0].step(*args)
    state = engines[0].state_dict()
    engines[1].load_state_dict(state)
    for a, b in zip(one, two):  # the weights and masks a resumed run gets back from the checkpoint
        with torch.no_grad():
            b.weight.copy_(a.weight)
            b.mask.mask.copy_(a.mask.mask)
    for _ in range(4):
        outs = [e.step(*args) for e in engines]
        assert outs[0] == outs[1]
        assert all(torch.equal(a.mask.mask, b.mask.mask) for a, b in zip(one, two))


def test_the_step_that_lands_on_the_budget_writes_exact_masks():
    targets = big_layers()
    budget = 0.3
    engine = engine_for(targets, budget, steps=20, sample_size=256, allocation="global")
    engine.set_masks()
    costs, dense = torch.ones(1, 2, dtype=f64), torch.tensor([25_000.0], dtype=f64)
    for _ in range(40):
        engine.step(costs, dense, torch.tensor([budget], dtype=f64), 0.05)
        kept = float(kept_counts(targets).sum())
        if engine.exact:
            break
    assert kept <= budget * 25_000
    assert kept == 25_000 - float(engine.k()[0])  # exactly ceil(s N) pruned, not a sampled count
    assert kept == pytest.approx(budget * 25_000, abs=1.0)  # landed on the budget, not a step past it


def test_landing_with_two_constraints_stops_where_the_later_one_first_holds():
    targets = two_layers()  # n = 30 and 20
    engine = engine_for(targets, 0.5, allocation="layerwise")
    costs = torch.tensor([[1.0, 1.0], [1.0, 4.0]], dtype=f64)  # params, and a resource where layer 2 costs 4x
    dense = (costs * engine.n).sum(1)
    budgets = torch.tensor([0.6, 0.5], dtype=f64)
    old, new = torch.zeros(2, dtype=f64), torch.tensor([0.8, 0.8], dtype=f64)
    landed = engine._land(old, new, costs, dense, budgets)
    R = engine._resources(landed, costs, dense)
    assert bool((R <= budgets).all())
    # one count less on either layer would break a budget: the step stopped at the first feasible point
    before = engine._resources(landed - 1.0 / engine.n * 1.0001, costs, dense)
    assert bool((before > budgets).any())
    assert float(landed[0] / new[0]) == pytest.approx(float(landed[1] / new[1]))  # along the step's direction


def test_a_target_with_nothing_kept_has_its_own_threshold_as_marginal_value():
    targets = two_layers()
    engine = engine_for(targets, 0.5)  # layerwise
    cands = engine._candidates([None, None])
    thr = [float(cands[0].median()), float(cands[1].max())]  # the second target: every weight pruned
    S, v = engine._penalty(cands, thr)
    assert float(v[1]) == pytest.approx(thr[1])
    assert float(v[0]) == float(cands[0][cands[0] > thr[0]].min())
    assert float(S[1]) == pytest.approx(float(cands[1].sum()), rel=1e-6)


def test_sample_size_must_not_be_negative():
    with pytest.raises(UserError, match="sample_size"):
        Minimax(sample_size=-1)


# ------------------------------------------------------------------------------------------------ gmp
@pytest.mark.parametrize("budget", [0.001, 0.05, 0.3, 1.0])
def test_cubic_budget(budget):
    b = torch.tensor([budget], dtype=f64)
    assert cubic_budget(b, 0.0).tolist() == [1.0]
    assert cubic_budget(b, 1.0).tolist() == [budget]
    assert cubic_budget(b, -0.5).tolist() == [1.0] and cubic_budget(b, 2.0).tolist() == [budget]
    assert float(cubic_budget(b, 0.5)) == pytest.approx(budget + (1 - budget) * 0.125, rel=1e-15)
    values = [float(cubic_budget(b, p / 100)) for p in range(101)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    if budget < 1:
        assert all(later < earlier for earlier, later in zip(values, values[1:]))


# ------------------------------------------------------------------------------------------------ methods on a stub trainer
class StubTrainer:
    """What the methods use of the Trainer: total_steps, step, lr and restart_schedule()."""

    def __init__(self, total_steps: int, lr: float = 0.05) -> None:
        self.total_steps, self.step, self.lr, self.epoch = total_steps, 0, lr, 0
        self.restarts = []

    def restart_schedule(self, steps: int) -> None:
        self.restarts.append((self.step, steps))


def params_stats(targets):
    L = len(targets)
    return LayerStats(torch.ones(L, dtype=f64), torch.ones(L, dtype=f64), torch.zeros(L, dtype=f64), T=1)


def bound(method, targets, budgets, resources=None, stats=None):
    stats = stats or params_stats(targets)
    constraints = []
    for name, budget in budgets.items():
        model = (resources or {}).get(name) or {"params": Params(), "macs": MACs(), "synops": SynOps()}[name]
        constraints.append(Constraint(resource=model, budget=budget, dense=model.dense(targets, stats)))
    net = nn.ModuleList(t.module for t in targets)
    method.bind(Problem(net=net, targets=list(targets), constraints=constraints, stats=stats,
                        measure_stats=lambda: stats))
    return method


def drive(method, trainer, steps):
    for step in range(steps):
        trainer.step = step
        method.before_forward(step)
        method.after_backward(step)
        method.after_step(step)
        if method.phase != "compress":
            return step
    return None


@pytest.mark.parametrize("resource, allocation", [("params", "global"), ("macs", "layerwise")])
def test_minimax_default_unit_of_w2_is_each_layers_mean_square(resource, allocation):
    targets = two_layers()  # weights of very different scales
    method = bound(Minimax(), targets, {resource: 0.5})
    method.setup(StubTrainer(total_steps=100))
    assert method.engine.allocation == allocation
    mean_squares = [float(t.weight.detach().double().pow(2).mean()) for t in targets]
    assert method.engine.scale.tolist() == pytest.approx(mean_squares, rel=1e-6)


def test_minimax_freezes_as_soon_as_the_budget_holds():
    targets = toy_layer()
    method = bound(Minimax(compress_fraction=0.5), targets, {"params": 0.3})
    trainer = StubTrainer(total_steps=100)
    method.setup(trainer)
    assert method.compress_steps == 50 and method.engine.allocation == "global"  # auto: params only -> global
    assert method.selectable() is False
    frozen_at = drive(method, trainer, 100)
    assert frozen_at is not None and frozen_at < 49  # reached before the phase ends: no projection
    assert method.projected == 0
    assert method.phase == "finetune" and method.selectable()
    # frozen on the first step where the budget holds: at most one trust-region step of s (0.04 x 100) past it
    assert 30 - 4 <= float(kept_counts(targets)[0]) <= 30
    t = targets[0]
    assert t.mask.straight_through is False
    assert bool((t.weight.detach()[t.mask.mask == 0] == 0).all())  # pruned stored weights zeroed at the freeze
    assert trainer.restarts == [(frozen_at, 100 - frozen_at - 1)]
    assert any(e.startswith("masks frozen at step") for e in method.events)


def test_minimax_projects_when_the_phase_ends_before_the_budget_holds():
    targets = toy_layer()
    # s barely moves (lr_s tiny), so three compression steps cannot reach the budget
    method = bound(Minimax(compress_fraction=0.03, lr_s=1e-6), targets, {"params": 0.05})
    trainer = StubTrainer(total_steps=100)
    method.setup(trainer)
    assert method.compress_steps == 3
    assert drive(method, trainer, 100) == 2
    assert float(kept_counts(targets)[0]) <= 5
    assert method.projected >= 90
    assert any("projection pruned" in e for e in method.events)
    assert method.phase == "finetune"


def test_magnitude_prunes_once_to_the_budget_before_training():
    targets = two_layers()
    method = bound(Magnitude(), targets, {"params": 0.41})
    trainer = StubTrainer(total_steps=10)
    before = torch.cat([t.weight.detach().flatten() for t in targets])
    method.setup(trainer)
    assert method.phase == "finetune" and method.selectable()
    kept = torch.cat([t.mask.mask.flatten() for t in targets])
    assert int(kept.sum()) == 20  # floor(0.41 * 50)
    # global smallest |w|
    expected = torch.zeros(50)
    expected[torch.argsort(before.abs(), descending=True)[:20]] = 1.0
    assert torch.equal(kept, expected)
    after = torch.cat([t.weight.detach().flatten() for t in targets])
    assert torch.equal(after, before * expected)  # pruned stored weights are zero
    assert all(t.mask.straight_through is False for t in targets)
    assert trainer.restarts == [(0, 9)]


def test_magnitude_weighs_by_cost_for_other_resources():
    targets = two_layers()
    stats = LayerStats(torch.tensor([10.0, 1.0], dtype=f64), torch.ones(2, dtype=f64), torch.zeros(2, dtype=f64),
                       T=2)
    method = bound(Magnitude(), targets, {"macs": 0.5}, stats=stats)
    method.setup(StubTrainer(total_steps=10))
    costs = torch.tensor([20.0, 2.0], dtype=f64)
    assert float((costs * kept_counts(targets)).sum()) <= 0.5 * float((costs * torch.tensor([30.0, 20.0])).sum())
    w = [t.weight.detach().flatten() for t in targets]
    kept = [t.mask.mask.flatten() > 0 for t in targets]
    # the lowest w^2 / c went first: every pruned score is below every kept score
    scores = [x.double() ** 2 / c for x, c in zip(w, costs)]
    pruned_max = max(float(s[~k].max()) for s, k in zip(scores, kept) if (~k).any())
    kept_min = min(float(s[k].min()) for s, k in zip(scores, kept) if k.any())
    assert pruned_max <= kept_min


def test_gmp_follows_the_cubic_schedule_then_freezes():
    targets = toy_layer()
    method = bound(GMP(compress_fraction=0.5, updates=5), targets, {"params": 0.1})
    trainer = StubTrainer(total_steps=40)
    method.setup(trainer)
    assert method.compress_steps == 20
    history = []
    for step in range(40):
        trainer.step = step
        method.after_step(step)
        history.append(float(kept_counts(targets)[0]))
    # a pruning event every 20 // 5 = 4 steps, to the cubic schedule (exact projection: within one weight)
    for step in range(20):
        if (step + 1) % 4 == 0:
            allowed = float(cubic_budget(torch.tensor([0.1], dtype=f64), (step + 1) / 20)) * 100
            assert allowed - 1 - 1e-9 <= history[step] <= allowed, step
        elif step > 0:
            assert history[step] == history[step - 1], step
    assert all(b <= a for a, b in zip(history, history[1:]))  # masks only shrink
    assert history[-1] <= 10 and method.phase == "finetune"
    assert method.projected == 0
    assert history[19] == history[-1]  # nothing moves while finetuning


@pytest.mark.parametrize("name", ["minimax", "gmp"])
def test_sequential_drops_the_task_gradient_of_targets_while_compressing(name):
    targets = toy_layer()
    other = nn.Parameter(torch.ones(3))
    method = bound(METHODS.create(name, schedule="sequential"), targets, {"params": 0.3})
    method.setup(StubTrainer(total_steps=100))
    targets[0].weight.grad = torch.ones(targets[0].shape)
    other.grad = torch.ones(3)
    method.after_backward(0)
    assert targets[0].weight.grad is None
    assert torch.equal(other.grad, torch.ones(3))
    method.phase = "finetune"
    targets[0].weight.grad = torch.ones(targets[0].shape)
    method.after_backward(1)
    assert torch.equal(targets[0].weight.grad, torch.ones(targets[0].shape))


def test_joint_keeps_the_task_gradient():
    targets = toy_layer()
    method = bound(Minimax(schedule="joint"), targets, {"params": 0.3})
    method.setup(StubTrainer(total_steps=100))
    targets[0].weight.grad = torch.ones(targets[0].shape)
    method.after_backward(0)
    assert torch.equal(targets[0].weight.grad, torch.ones(targets[0].shape))


# ------------------------------------------------------------------------------------------------ option checks
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(allocation="uniform"), "unknown allocation 'uniform'"),
        (dict(nodes=[0.1, 0.2]), "nodes must be 'auto' or decreasing"),
        (dict(nodes=[0.0]), "nodes must be 'auto' or decreasing fractions in (0, 1]"),
        (dict(nodes=[1.5, 0.5]), "nodes must be 'auto' or decreasing fractions in (0, 1]"),
        (dict(nodes=[-0.1]), "nodes must be 'auto' or decreasing"),
        (dict(nodes="staged"), "nodes must be 'auto' or a list of decreasing fractions in (0, 1], got 'staged'"),
        (dict(nodes=0.5), "nodes must be 'auto' or decreasing fractions in (0, 1], got 0.5"),
        (dict(nodes=["a"]), "nodes must be 'auto' or decreasing"),
        (dict(normalize="batch"), "unknown normalize 'batch'"),
        (dict(schedule="alternating"), "unknown schedule 'alternating'"),
    ],
)
def test_minimax_rejects_bad_options(kwargs, needle):
    with pytest.raises(UserError) as info:
        Minimax(**kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["gmp", "magnitude"])
def test_other_methods_reject_an_unknown_schedule(name):
    with pytest.raises(UserError, match="unknown schedule 'nope'"):
        METHODS.create(name, schedule="nope")


def test_good_nodes_are_accepted():
    assert Minimax(nodes=[0.25, 0.12, 0.05]).nodes == [0.25, 0.12, 0.05]


@pytest.mark.parametrize("budget, nodes", [(0.01, [0.05, 0.02]), (0.3, [0.6]), (0.5, []), (1.0, [])])
def test_auto_nodes_are_five_and_two_times_the_budget_below_dense(budget, nodes):
    assert auto_nodes(budget) == pytest.approx(nodes)


def test_minimax_stages_by_default_at_the_auto_nodes_of_the_tightest_budget():
    targets = [masked_linears(torch.randn(40, 50, dtype=f64))[0]]
    method = bound(Minimax(node_fraction=0.05), targets, {"params": 0.04, "macs": 0.5})
    trainer = StubTrainer(total_steps=400)
    method.setup(trainer)
    assert method.nodes == pytest.approx([0.2, 0.08])  # from the tightest budget (0.04), not the MACs one
    frozen_at = drive(method, trainer, 400)
    reached = [e for e in method.events if e.startswith("reached node")]
    assert [e.split()[2] for e in reached] == ["0.2", "0.08"]
    assert frozen_at is not None and method.projected == 0 and method.feasible()
    assert float(kept_counts(targets)[0]) <= 0.04 * 2000


def test_minimax_holds_at_nodes_extend_the_compression_phase():
    targets = toy_layer()
    # Holding half the phase at 0.6 leaves the descent to 0.3 too few of the 50 phase steps; the hold is added to
    # the phase (deadline 75), so the budget is reached by the engine, not by the projection at step 50.
    method = bound(Minimax(nodes=[0.6], node_fraction=0.5, s_rate=1.0, compress_fraction=0.5), targets, {"params": 0.3})
    trainer = StubTrainer(total_steps=100)
    method.setup(trainer)
    assert method.deadline() == 50
    frozen_at = drive(method, trainer, 100)
    assert any(e.startswith("reached node 0.6") for e in method.events)
    assert method.hold_steps() == 25 and method.deadline() == 75
    assert 50 <= frozen_at < 75 and method.projected == 0
    assert float(kept_counts(targets)[0]) <= 30


def test_minimax_deadline_never_passes_the_end_of_the_run():
    method = bound(Minimax(nodes=[0.6], compress_fraction=1.0), toy_layer(), {"params": 0.3})
    method.setup(StubTrainer(total_steps=100))
    method.stage = 1  # one hold of 10 steps taken
    assert method.deadline() == 100


def test_minimax_projection_floors_are_the_engines_s_max():
    targets = two_layers()
    method = bound(Minimax(min_density=0.5), targets, {"params": 0.1})
    method.setup(StubTrainer(total_steps=100))
    assert method.floors() == [math.ceil(0.05 * t.n) for t in targets]


def test_z_ascends_by_the_violation_relative_to_the_final_budget_at_a_node():
    grads = []
    for final in (None, torch.tensor([0.1], dtype=f64)):
        targets = toy_layer()
        engine = engine_for(targets, 0.1, lr_s=0.0)  # s stays 0: R = 1 on both steps
        engine.step(torch.ones(1, 1, dtype=f64), torch.tensor([100.0], dtype=f64), torch.tensor([0.5], dtype=f64),
                    0.01, final=final)
        grads.append(float(engine.z[0]) - 1.0)
    assert grads[0] == pytest.approx(20.0 / 50 * (1 - 0.5) / 0.5)
    assert grads[1] == pytest.approx(20.0 / 50 * (1 - 0.5) / 0.1)


def test_minimax_empty_nodes_go_straight_to_the_budget():
    targets = [masked_linears(torch.randn(40, 50, dtype=f64))[0]]
    method = bound(Minimax(nodes=[]), targets, {"params": 0.04})
    trainer = StubTrainer(total_steps=400)
    method.setup(trainer)
    assert drive(method, trainer, 400) is not None and method.feasible()
    assert not any(e.startswith("reached node") for e in method.events)


@pytest.mark.parametrize("resource", ["synops", "macs"])
def test_global_allocation_needs_params_only_constraints(resource):
    targets = two_layers()
    method = bound(Minimax(allocation="global"), targets, {"params": 0.5, resource: 0.5})
    with pytest.raises(UserError, match="allocation 'global'"):
        method.setup(StubTrainer(total_steps=10))


def test_auto_allocation_is_layerwise_for_weighted_resources():
    targets = two_layers()
    method = bound(Minimax(), targets, {"synops": 0.5})
    method.setup(StubTrainer(total_steps=10))
    assert method.engine.allocation == "layerwise" and method.engine.s.shape == (2,)
    assert method.tracker is not None  # synops is data dependent: firing rates are tracked
    method.tracker.close()


def test_registry_holds_the_four_methods():
    assert METHODS.names() == ["criticality", "gmp", "magnitude", "minimax"]
