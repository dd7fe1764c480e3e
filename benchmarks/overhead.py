"""What does the minimax machinery cost per training step? Side by side, in one process.

For each zoo model (synthetic inputs, random weights, masks attached to every target), the time of one training
step of plain finetuning (forward with ``W * M``, backward, Adam) against one minimax step (the same, plus the
method's hooks: straight-through gradient, the engine's proximal step, s / y / z updates and new masks, the
resource values). The two kinds of step alternate, so drift of the machine's speed hits both alike; the ratio is
the median over rounds of (minimax step / plain step). By default each model gets as many rounds as fit in 30 s
(5 to 200): the shipped model's steps take about 20 ms, and five of them gave ratios from 1.07 to 1.13.

Then the selection work alone (the engine's ranking and thresholds, one ``MinimaxEngine.step`` without the
network) on one linear layer as its number of weights grows from 1e4 to 4e7.

    python benchmarks/overhead.py [--models convsnn cifar10net] [--batch B] [--rounds N | --seconds 30]
                                      [--sizes 1e4 ... 4e7]
    python benchmarks/overhead.py --quick     # small models and sizes: a smoke run of a few seconds
"""
from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from rccsnn.cli import positive_int
from rccsnn.masks import attach_masks, find_targets, set_straight_through
from rccsnn.methods.base import CompressionMethod, Constraint, Problem
from rccsnn.methods.minimax import Minimax, MinimaxEngine
from rccsnn.models import build_model
from rccsnn.resources import RESOURCES, LayerStats, stats_from_monitor
from rccsnn.snn import LOSSES, NeuronConfig, SpikeMonitor, forward, simulate

#: input shape, architecture arguments, T and batch of each zoo model as it is used: the shipped digits model with
#: rccsnn compress's default batch, the CIFAR-10 models with the paper's T = 8 (Cifar10Net) and batch 16.
ZOO: Dict[str, Tuple[Tuple[int, ...], dict, int, int]] = {
    "convsnn": ((1, 8, 8), {"channels": [64, 128], "hidden": 512}, 4, 64),
    "resnet19": ((3, 32, 32), {}, 4, 16),
    "vgg16": ((3, 32, 32), {}, 4, 16),
    "cifar10net": ((3, 32, 32), {}, 8, 16),
}
QUICK = {"convsnn": ((1, 8, 8), {"channels": [8, 16], "hidden": 32}, 4, 64)}
#: Rounds per model when --rounds is not given: as many as fit in --seconds, within these bounds.
MIN_ROUNDS, MAX_ROUNDS = 5, 200


def layer_stats(net: nn.Module, targets, shape: Sequence[int], T: int) -> LayerStats:
    """Each target's statistics on random inputs, per-tap costs included (what the cost models need)."""
    with torch.no_grad(), SpikeMonitor(net, T) as mon:
        simulate(net.eval(), torch.rand(2, *shape), T)
    net.train()
    return stats_from_monitor(mon, targets)


class Stepper:
    """One network, its optimizer and a method's hooks, stepped exactly as :meth:`Trainer.train_epoch` does."""

    def __init__(self, net: nn.Module, method: CompressionMethod, T: int, lr: float = 1e-3) -> None:
        self.net, self.method, self.T = net, method, T
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        self.loss_fn = LOSSES.get("ce")
        self.step_index = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Seconds for one training step (forward, backward, optimizer, the method's hooks)."""
        t0 = time.perf_counter()
        self.method.before_forward(self.step_index)
        loss = self.loss_fn(forward(self.net, x, self.T), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.after_backward(self.step_index)
        self.optimizer.step()
        self.method.after_step(self.step_index)
        float(loss.detach())  # the trainer reads the loss every few steps; force the step to finish here
        self.step_index += 1
        return time.perf_counter() - t0


def minimax_for(net: nn.Module, targets, stats: LayerStats, resource: str, budget: float) -> Minimax:
    """A bound minimax method in its compression phase (a long phase, so its masks never freeze here; no nodes,
    so that every step timed is an engine step, not a hold)."""
    model = RESOURCES.create(resource)
    dense = model.dense(targets, stats)
    method = Minimax(schedule="joint", compress_fraction=1.0, nodes=[])
    method.bind(Problem(net=net, targets=targets, constraints=[Constraint(resource=model, budget=budget, dense=dense)],
                        stats=stats, measure_stats=lambda: stats))
    trainer = SimpleNamespace(total_steps=10_000, step=0, lr=1e-3, restart_schedule=lambda steps: None)
    method.setup(trainer)
    return method


def model_overhead(name: str, spec: Tuple[Tuple[int, ...], dict, int, int], batch: Optional[int],
                   rounds: Optional[int], resource: str, budget: float, seconds: float = 30.0) -> Dict[str, float]:
    """Median step times (s) of plain finetuning and minimax on one zoo model, their ratio and the rounds timed.

    ``rounds`` None: as many as fit in about ``seconds`` (from the warm-up steps' times), at least
    :data:`MIN_ROUNDS` and at most :data:`MAX_ROUNDS`. A fast model's steps are short and the machine's noise is
    a large share of them: five rounds of the shipped model's 20 ms steps gave ratios from 1.07 to 1.13 on the same
    machine; 40 rounds gave 1.079 and 1.082."""
    shape, kw, T, default_batch = spec
    batch = batch or default_batch
    torch.manual_seed(0)
    base = build_model(name, shape, 10, NeuronConfig(), kw)
    plain_net, minimax_net = base, copy.deepcopy(base)
    plain_targets = find_targets(plain_net)
    attach_masks(plain_targets)
    set_straight_through(plain_targets, False)  # finetuning: frozen masks
    targets = find_targets(minimax_net)
    stats = layer_stats(minimax_net, targets, shape, T)
    attach_masks(targets)
    plain = Stepper(plain_net, CompressionMethod(), T)
    minimax = Stepper(minimax_net, minimax_for(minimax_net, targets, stats, resource, budget), T)
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    for stepper in (plain, minimax):  # warm-up: allocator, Adam state, first-call overheads
        stepper.step(x, y)
    # The rounds are sized on a second step of each kind: the first pays one-time costs.
    warm = sum(stepper.step(x, y) for stepper in (plain, minimax))
    if rounds is None:
        rounds = min(max(math.ceil(seconds / max(warm, 1e-6)), MIN_ROUNDS), MAX_ROUNDS)
    times: Dict[str, List[float]] = {"plain": [], "minimax": []}
    for i in range(rounds):
        order = (("plain", plain), ("minimax", minimax)) if i % 2 == 0 else (("minimax", minimax), ("plain", plain))
        for key, stepper in order:
            times[key].append(stepper.step(x, y))
    ratios = [m / p for m, p in zip(times["minimax"], times["plain"])]
    return {"weights": sum(t.n for t in targets), "batch": batch, "T": T, "plain": statistics.median(times["plain"]),
            "minimax": statistics.median(times["minimax"]), "ratio": statistics.median(ratios), "rounds": rounds}


def selection_time(n: int, allocation: str, repeats: int) -> float:
    """Median seconds of one engine step (ranking, proximal step, s/y/z, masks) on a linear layer of n weights."""
    torch.manual_seed(0)
    layer = nn.Linear(n // 100, 100, bias=False)
    net = nn.Sequential(layer)
    targets = find_targets(net, exclude_first=False)
    attach_masks(targets)
    costs = torch.ones(1, 1, dtype=torch.float64)
    dense = torch.tensor([float(targets[0].n)], dtype=torch.float64)
    engine = MinimaxEngine(targets, 1, allocation=allocation, steps=1000, lr_s=1.0, lr_y=1.0, lr_z=5.0,
                           y0=1.0, z0=1.0, s_max=0.99)
    engine.set_masks()
    budgets = torch.tensor([0.05], dtype=torch.float64)
    out = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        engine.step(costs, dense, budgets, lr_w=1e-3)
        out.append(time.perf_counter() - t0)
    return statistics.median(out[1:])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--batch", type=int, default=None, help="batch size of every model (default: 64 for convsnn, 16 "
                   "for the CIFAR-10 models)")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help=f"timed steps of each kind per model (default: as many as fit in --seconds, {MIN_ROUNDS} to "
                        f"{MAX_ROUNDS})")
    p.add_argument("--seconds", type=float, default=30.0, help="time per model that sets the rounds (default 30)")
    p.add_argument("--resource", default="params", choices=list(RESOURCES.names()))
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6, 1e7, 4e7],
                   help="weights of the layer in the selection timing")
    p.add_argument("--limit", type=float, default=1.10, help="ratio above which the exit code is 1 (default 1.10)")
    p.add_argument("--quick", action="store_true", help="a tiny model and small sizes (a smoke run)")
    args = p.parse_args(argv)
    zoo = QUICK if args.quick else {m: ZOO[m] for m in args.models}
    sizes = [1e4, 1e5] if args.quick else args.sizes
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"resource {args.resource}, budget {args.budget:g}, median of "
          + (f"{args.rounds} rounds" if args.rounds is not None
             else f"the rounds that fit in {args.seconds:g} s per model ({MIN_ROUNDS} to {MAX_ROUNDS})"))
    print("| model | weights | T | batch | plain step (s) | minimax step (s) | ratio | rounds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for name, spec in zoo.items():
        r = model_overhead(name, spec, args.batch, args.rounds, args.resource, args.budget, args.seconds)
        worst = max(worst, r["ratio"])
        print(f"| {name} | {r['weights']:,} | {r['T']} | {r['batch']} | {r['plain']:.4f} | {r['minimax']:.4f} "
              f"| {r['ratio']:.3f} | {r['rounds']} |", flush=True)
    print()
    print("| weights | engine step, global (s) | engine step, layerwise (s) |")
    print("|---:|---:|---:|")
    for n in sizes:
        g, l = (selection_time(int(n), a, repeats=3 if n >= 1e7 else 10) for a in ("global", "layerwise"))
        print(f"| {int(n):,} | {g:.4f} | {l:.4f} |", flush=True)
    print(f"\nworst ratio {worst:.3f} (limit {args.limit:.2f}): {'ok' if worst <= args.limit else 'OVER'}")
    return 0 if worst <= args.limit else 1


if __name__ == "__main__":
    raise SystemExit(main())
