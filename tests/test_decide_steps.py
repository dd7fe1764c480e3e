"""``--decide timesteps``: minimax lowers the number of time steps T beside the masks and the bit widths, under
whole-network budgets relative to the dense float32 model at its own T (issue 17).

The exact-count guarantee at the decided T and widths is tests/test_decide_bits.py's Hypothesis test (its decisions
include timesteps); here: the cost model's scaling in T, the decision rule against a probe whose answers the test
sets, the records (summary, checkpoint, report), ``--min-T``, the one-line errors and resume.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from helpers import assert_user_error, cli, whole_and_resumed
from rccsnn.errors import UserError
from rccsnn.masks import find_targets
from rccsnn.methods.base import Constraint, Problem, TimeSteps
from rccsnn.methods.minimax import Minimax
from rccsnn.resources import create_resource, measure_stats
from rccsnn.snn import LIF, NeuronConfig, PerStep

SHIPPED = REPO_ROOT / "checkpoints" / "digits_convsnn.pt"


def small_net() -> nn.Module:
    torch.manual_seed(0)
    lif = NeuronConfig(threshold=0.3)
    return nn.Sequential(PerStep(nn.Linear(12, 16)), LIF(lif), PerStep(nn.Linear(16, 16)), LIF(lif),
                         PerStep(nn.Linear(16, 4)), LIF(lif))


def stats_of(net, T: int):
    x = torch.rand(32, 12)
    targets = find_targets(net, exclude_first=False)
    return targets, measure_stats(net, targets, [(x, torch.zeros(32, dtype=torch.long))], T, "direct",
                                  torch.device("cpu"))


@pytest.mark.parametrize("resource", ["energy", "synops", "macs", "bitops", "params"])
def test_every_data_dependent_cost_is_linear_in_the_time_steps(resource):
    """The costs minimax prices T with, at T - 1, are those measured at T times (T - 1) / T for every resource
    counted per inference (operations, energy), and unchanged for params."""
    net = small_net()
    targets, stats = stats_of(net, 4)
    model = create_resource(resource, {})
    at_4, at_3 = model.absolute(targets, stats), model.absolute(targets, stats.at_steps(3))
    factor = 1.0 if resource == "params" else 0.75
    assert at_3 == pytest.approx(at_4 * factor, rel=1e-12)
    assert stats.at_steps(4) is stats


def bound_minimax(net, budget: float, probe, decide: str = "sparsity,timesteps", T: int = 4,
                  budgets: Optional[Dict[str, float]] = None) -> Minimax:
    """A Minimax bound to ``net`` under an energy budget (or ``budgets``), its time steps held by a spec whose loss
    ``probe`` answers, started (its engine built), as compress() would leave it after setup."""
    targets, stats = stats_of(net, T)
    constraints = []
    for name, b in (budgets or {"energy": budget}).items():
        model = create_resource(name, {})
        constraints.append(Constraint(model, b, model.dense(targets, stats)))
    spec = SimpleNamespace(T=T, encoding="direct")
    method = Minimax(decide=decide)
    problem = Problem(net=net, targets=targets, constraints=constraints, stats=stats, measure_stats=lambda: stats,
                      time=TimeSteps(spec=spec, probe_loss=probe))
    method.bind(problem)
    method.loop = SimpleNamespace(steps_per_epoch=10, total_steps=100, step=0, lr=1e-3)
    method.compress_steps = 70
    method.tracker = None
    method.start()
    return method


@pytest.mark.parametrize("per_masked,expect", [(1.0, 3), (1e-6, 4)])
def test_fewer_steps_win_only_when_they_cost_less_than_pruning_as_much_of_the_budget(per_masked, expect):
    """The probe's loss is 0.1 at T = 4 and 0.3 at T = 3, plus ``per_masked`` per masked weight: at 1.0, masking
    the weights worth a quarter of the budget costs far more than 0.2, so T falls; at 1e-6 pruning is nearly free and
    T stays. Either way the masks are restored after the probe, bit for bit."""
    net = small_net()
    holder = {}

    def probe(T: int) -> float:
        m = holder["method"]
        masked = sum(float((t.mask.mask == 0).sum()) for t in m.targets)
        return {4: 0.1, 3: 0.3, 2: 1e6}[T] + per_masked * masked

    method = bound_minimax(net, 0.01, probe)
    holder["method"] = method
    for t in method.targets:  # a Fisher history, so every weight has a saliency
        t.weight.grad = torch.randn_like(t.weight)
    method.engine.accumulate()
    before = [t.mask.mask.clone() for t in method.targets]
    assert method.decide_steps() == expect
    assert method.problem.time.spec.T == expect
    assert all(torch.equal(a, t.mask.mask) for a, t in zip(before, method.targets))
    if expect == 3:
        assert "time steps 4 -> 3" in method.events[-1] and "+0.2" in method.events[-1]


def test_without_sparsity_the_steps_fall_to_min_T_and_no_lower():
    net = small_net()
    method = bound_minimax(net, 0.01, lambda T: 0.0, decide="timesteps")
    method.min_T = 2
    assert [method.decide_steps() for _ in range(4)] == [2, 2, 2, 2]  # half of T at once, none below min_T


def test_event_data_and_a_min_T_above_T_are_one_line_errors():
    net = small_net()
    with pytest.raises(UserError, match="min_T \\(5\\) exceeds the model's T \\(4\\)"):
        method = Minimax(decide="timesteps", min_T=5)
        targets, stats = stats_of(net, 4)
        method.problem = Problem(net=net, targets=targets, constraints=[], stats=stats, measure_stats=lambda: stats,
                                 time=TimeSteps(spec=SimpleNamespace(T=4, encoding="direct"), probe_loss=None))
        method.check_steps()
    method.problem.time.spec = SimpleNamespace(T=4, encoding="none")
    method.min_T = 1
    with pytest.raises(UserError, match="event data"):
        method.check_steps()
    with pytest.raises(UserError, match="min_T must be an integer >= 1"):
        Minimax(decide="timesteps", min_T=0)


def test_decide_timesteps_alone_from_the_cli_records_and_reports_T(tmp_path):
    """T reduction alone on the shipped convsnn (T = 4) at 0.6 of the whole-network energy, 3 epochs: T falls to 2
    (3 steps cost 0.75); the summary, the checkpoint and ``report --json`` say T = 2, and the report's energy at T = 2
    over the dense model's at T = 4 is within the budget."""
    code, _, err = cli("compress", SHIPPED, "--resource", "energy", "--budget", "0.6", "--decide", "timesteps",
                       "--epochs", "3", "--no-progress", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert summary["decisions"]["T"] == raw["T"] == 2
    assert [e for e in summary["events"] if e.startswith("time steps")] == ["time steps 4 -> 2"]  # meets it at once
    for model, name in ((SHIPPED, "dense.json"), (tmp_path / "run" / "model.pt", "small.json")):
        code, _, err = cli("report", model, "--json", tmp_path / name, "--device", "cpu")
        assert code == 0, err
    dense = json.loads((tmp_path / "dense.json").read_text())
    small = json.loads((tmp_path / "small.json").read_text())
    assert (dense["T"], small["T"]) == (4, 2)
    assert small["total"]["energy_pj"] / dense["total"]["energy_pj_fp32"] <= 0.6
    assert small["accuracy"] > 0.8


def test_min_T_holds_and_the_budget_is_still_met(tmp_path):
    code, _, err = cli("compress", SHIPPED, "--resource", "energy", "--budget", "0.6", "--decide", "sparsity,timesteps",
                       "--min-T", "3", "--epochs", "3", "--no-progress", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["decisions"]["T"] >= 3
    assert summary["resources"]["energy"]["ratio"] <= 0.6


@pytest.mark.parametrize("options,message", [(["--min-T", "9"], "exceeds the model's T (4)"),
                                             (["--min-T", "0"], "--min-T")])
def test_bad_time_step_options_are_one_line(tmp_path, options, message):
    code, out, err = cli("compress", SHIPPED, "--resource", "energy", "--budget", "0.5", "--decide", "timesteps",
                         *options, "--epochs", "1", "--no-progress", "--out", tmp_path / "run")
    assert_user_error(code, out, err, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("decide,budget,first", [("sparsity,bits", 0.05, "bits "),
                                                  ("sparsity,timesteps", 0.01, "time steps 4 -> ")])
def test_an_interrupted_decision_run_resumes_to_the_same_model(tmp_path, monkeypatch, decide, budget, first):
    """SIGINT after the second epoch (the widths or T decided once by then), resume: the same weights, widths, T and
    events as the uninterrupted run."""
    from rccsnn.compression import compress
    from rccsnn.config import CompressConfig, MethodConfig, OptimConfig
    from rccsnn.models.checkpoint import load_checkpoint

    def run(out, resume=False):
        cfg = CompressConfig(model=str(SHIPPED), budgets={"energy": budget},
                             method=MethodConfig(name="minimax", options={"decide": decide}),
                             optim=OptimConfig(lr=1e-3, epochs=4), out=str(tmp_path / out), device="cpu")
        return compress(cfg, load_checkpoint(SHIPPED), resume=resume, progress=False)

    whole, resumed = whole_and_resumed(run, Minimax, 1, monkeypatch)
    assert any(e.startswith(first) for e in whole.events[:3])
    a = torch.load(whole.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert (a["T"], a["bits"]) == (b["T"], b["bits"]) and whole.decisions == resumed.decisions
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert resumed.events == whole.events and resumed.accuracy == whole.accuracy


def test_the_nir_graph_of_a_decided_model_has_its_T_and_its_dequantized_weights(tmp_path):
    """``--decide sparsity,bits,timesteps`` at 1 % of the energy, then ``export --format nir``: the graph's metadata
    has the decided T, and each linear layer's weight is the saved (dequantized: codes x scale) weight, zeros kept."""
    nir = pytest.importorskip("nir")  # the nir extra; the test extra installs it where Python >= 3.10
    import numpy as np

    # A ladder of 8 and 32 bits: once at 8 bits no width can go lower, and T is then weighed against pruning alone
    code, _, err = cli("compress", SHIPPED, "--resource", "energy", "--budget", "0.01", "--decide",
                       "sparsity,bits,timesteps", "--bits-ladder", "8,32", "--epochs", "3", "--no-progress",
                       "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert raw["T"] < 4 and raw["bits"]
    code, _, err = cli("export", tmp_path / "run" / "model.pt", "--format", "nir", "--out", tmp_path / "m.nir",
                       "--device", "cpu")
    assert code == 0, err
    graph = nir.read(tmp_path / "m.nir")
    assert int(graph.metadata["T"]) == raw["T"]
    for fc in ("classifier.0.1", "classifier.2.0"):
        assert np.array_equal(graph.nodes[fc].weight, raw["state_dict"][f"{fc}.weight"].numpy())
        assert len(np.unique(graph.nodes[fc].weight[0])) <= 2 ** raw["bits"][fc]  # on the layer's grid


@pytest.mark.parametrize("per_lower_layer,expect", [(0.0, 4), (10.0, 2)])
def test_with_bits_decided_fewer_steps_must_also_beat_a_rung_less_of_every_width(per_lower_layer, expect):
    """Pruning is dear here (1.0 per masked weight); a rung less of every width (float32 -> 16 bits) costs
    ``per_lower_layer`` per layer below float32: free, it saves the budget more cheaply than T, and T stays; dear,
    T falls. The widths are restored after the probe."""
    from rccsnn.quant import target_bits

    net = small_net()
    holder = {}

    def probe(T: int) -> float:
        m = holder["method"]
        masked = sum(float((t.mask.mask == 0).sum()) for t in m.targets)
        lowered = sum(b < 32 for b in target_bits(m.targets))
        return 0.1 + 0.2 * (4 - T) + masked + per_lower_layer * lowered

    method = bound_minimax(net, 0.01, probe, decide="sparsity,bits,timesteps")
    holder["method"] = method
    for t in method.targets:
        t.weight.grad = torch.randn_like(t.weight)
    method.engine.accumulate()
    assert method.decide_steps() == expect
    assert target_bits(method.targets) == [32, 32, 32]


@pytest.mark.parametrize("per_step,expect", [(lambda T: 0.001 * (16 - T), 8), (lambda T: 0.0 if T >= 12 else 1e6, 12),
                                            (lambda T: 0.0 if T >= 15 else 1e6, 15)])
def test_half_of_T_is_weighed_first_then_a_quarter_then_one(per_step, expect):
    """T0 = 16, pruning dear: when dropping 8 steps costs the loss little, T falls to 8 in one decision; when only 4
    are cheap, to 12; when only a single step is, to 15."""
    net = small_net()
    holder = {}

    def probe(T: int) -> float:
        m = holder["method"]
        return per_step(T) + sum(float((t.mask.mask == 0).sum()) for t in m.targets)

    method = bound_minimax(net, 0.01, probe, T=16)
    holder["method"] = method
    for t in method.targets:
        t.weight.grad = torch.randn_like(t.weight)
    method.engine.accumulate()
    assert method.decide_steps() == expect


def test_T_falls_only_for_an_exceeded_budget_it_lowers():
    """T alone, energy within its budget and params over it: fewer steps would lower the energy, which needs nothing,
    and not the params, which do: T stays."""
    net = small_net()
    method = bound_minimax(net, 0.0, lambda T: 0.0, decide="timesteps", budgets={"energy": 1.0, "params": 0.5})
    assert method.decide_steps() == 4 and not method.events


def test_the_probe_leaves_the_runs_random_stream_alone(tmp_path):
    """The first probe (which loads its samples) and every later one leave the global random state as it was, and
    two probes of the same network agree (rate encoding: the draws are the probe's own)."""
    from rccsnn.data import load_data
    from rccsnn.models.checkpoint import load_checkpoint
    from rccsnn.trainer import probe_loss

    loaded = load_checkpoint(SHIPPED)
    loaded.spec.encoding = "rate"
    probe = probe_loss(loaded.net, load_data("digits"), loaded.spec, torch.device("cpu"), samples=64, batch_size=32)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = probe(4)
    assert torch.equal(torch.get_rng_state(), state)
    assert probe(4) == first and torch.equal(torch.get_rng_state(), state)
    assert probe(3) != first


def _decide_in_process(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: the same network and firing-rate tracker, a probe whose loss for T 8 -> 6 differs
    between the processes (cheap on process 0, dear on process 1); writes the T it decided."""
    import datetime
    import os

    import torch.distributed as dist

    from rccsnn.resources import RateTracker

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    torch.set_num_threads(1)
    holder = {}

    def probe(T: int) -> float:
        masked = sum(float((t.mask.mask == 0).sum()) for t in holder["m"].targets)
        return {8: 0.1, 7: 0.11, 6: 0.12 if rank == 0 else 5.0, 4: 1e6}[T] + 1e-3 * masked

    method = bound_minimax(small_net(), 0.01, probe, T=8)
    holder["m"] = method
    method.tracker = RateTracker(method.targets, method.stats.input_rate)  # its rates are averaged: a collective
    for t in method.targets:
        t.weight.grad = torch.randn_like(t.weight)
    method.engine.accumulate()
    T = method.decide_steps()
    Path(out, f"rank{rank}").write_text(str(T))
    dist.destroy_process_group()


@pytest.mark.slow
def test_processes_whose_probes_differ_still_decide_the_same_T(tmp_path):
    """The probe losses are averaged over the processes before the decision branches on them: with T 8 -> 6 cheap on
    one process and dear on the other, both decide alike (before, one went on probing and the other to the
    broadcast, and the run hung)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_decide_in_process, args=(port, str(tmp_path)), nprocs=2, join=True)
    decided = {(tmp_path / f"rank{r}").read_text() for r in (0, 1)}
    assert len(decided) == 1 and int(decided.pop()) in (6, 7, 8)  # the same, whichever it is
