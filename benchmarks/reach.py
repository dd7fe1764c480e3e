"""Do the minimax defaults reach the budget on every model of the zoo? (scale-freeness check)

For each zoo model at full size (random Kaiming-initialised weights, no task loss: the sequential schedule's
compression phase in its purest form), run MinimaxEngine for a phase of P steps and report the fraction of the
phase after which every budget holds on the hard masks. The engine's step sizes are per phase, so the same
defaults should land well inside the phase from 1e4 to 4e7 weights.

``--pacing auto`` (the default, as minimax's) gives the engine the log-space trust region (a decade of density in
``DESCENT_SHARE`` of the phase over log10(1 / budget) decades) and z's step in log space (``lr_log_z = LOG_LR_Z``);
``--pacing legacy`` the linear trust region and the additive z step alone. No nodes, no task loss: squared
magnitudes rank the weights (``importance: w2``; the Fisher needs gradients).

    python benchmarks/reach.py [--steps 100] [--models convsnn cifar10net ...] [--budgets 0.25 0.05 0.0073]
"""
from __future__ import annotations

import argparse
import time

import torch

from rccsnn.masks import attach_masks, find_targets
from rccsnn.methods.base import kept_counts, resource_values
from rccsnn.methods.minimax import DEFAULTS, LOG_LR_Z, MinimaxEngine, decade_steps
from rccsnn.models import build_model
from rccsnn.resources import RESOURCES, LayerStats, stats_from_monitor
from rccsnn.snn import NeuronConfig, SpikeMonitor, simulate

SHAPES = {"convsnn": ((1, 8, 8), {"channels": [64, 128], "hidden": 512}), "cifar10net": ((3, 32, 32), {}),
          "vgg16": ((3, 32, 32), {}), "resnet19": ((3, 32, 32), {})}


def stats_for(net, targets, shape) -> LayerStats:
    with torch.no_grad(), SpikeMonitor(net, 1) as mon:
        simulate(net.eval(), torch.rand(2, *shape), 1)
    return stats_from_monitor(mon, targets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--models", nargs="+", default=list(SHAPES))
    p.add_argument("--resources", nargs="+", default=["params", "macs"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.05, 0.0073])
    p.add_argument("--lr-z", type=float, default=None, help="override the default lr_z")
    p.add_argument("--pacing", choices=("auto", "legacy"), default="auto", help="minimax's pacing (default auto)")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"{'model':<11} {'weights':>10} {'resource':<8} {'budget':>7} {'reached at':>10} {'final R':>9} {'s/step':>7}")
    for name in args.models:
        shape, kw = SHAPES[name]
        for resource in args.resources:
            for budget in args.budgets:
                net = build_model(name, shape, 10, NeuronConfig(), kw)
                targets = find_targets(net)
                stats = stats_for(net, targets, shape)
                attach_masks(targets)
                model = RESOURCES.create(resource)
                costs = model.coefficients(targets, stats)[None, :]
                dense = (costs * torch.tensor([t.n for t in targets], dtype=torch.float64)).sum(1)
                allocation = "global" if resource == "params" else "layerwise"
                hyper = dict(DEFAULTS, **({} if args.lr_z is None else {"lr_z": args.lr_z}))
                if args.pacing == "auto":  # as Minimax.plan() sets it for a run without nodes
                    hyper.update(decade_steps=decade_steps(args.steps, budget), lr_log_z=LOG_LR_Z)
                engine = MinimaxEngine(targets, 1, allocation=allocation, steps=args.steps,
                                       s_max=1.0 - 0.5 * budget, **hyper)
                engine.set_masks()
                reached, t0 = None, time.perf_counter()
                for step in range(args.steps):
                    engine.step(costs, dense, torch.tensor([budget], dtype=torch.float64), lr_w=1e-3)
                    R = float(resource_values(costs, dense, kept_counts(targets))[0])
                    if R <= budget and engine.exact:  # as Minimax freezes: on exact masks only
                        reached = (step + 1) / args.steps
                        break
                per_step = (time.perf_counter() - t0) / (step + 1)
                where = f"{reached:.2f}" if reached else "never"
                print(f"{name:<11} {sum(t.n for t in targets):>10} {resource:<8} {budget:>7g} {where:>10} {R:>9.5f} "
                      f"{per_step:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
