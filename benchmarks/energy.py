"""What a params budget and a SynOps budget buy on hardware: params, MACs, SynOps and energy, dense and compressed.

For each budget it compresses the model twice with minimax (joint), once under a params budget and once under a
SynOps budget (through the code of ``rccsnn sweep``: resumable, one ``rccsnn compress`` per run), then measures
every model - the dense one too - with ``rccsnn report``'s :func:`report` on the test split: nonzero weights,
MACs, SynOps (input spikes times nonzero fan-out) and energy per inference (45 nm fp32 constants), over *all*
conv/linear layers, the unpruned first layer included. It writes ``energy.md`` in the output directory.

    python benchmarks/energy.py                                  # the shipped digits model, budgets 0.2 0.05 0.01
    python benchmarks/energy.py MODEL.pt --budgets 0.1 --seeds 2
    python benchmarks/energy.py --quick                          # one budget, 2 epochs: a smoke run
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from benchsweep import grid_arguments, publish, run_grid
from rccsnn.data import DataSplits, load_data
from rccsnn.errors import UserError
from rccsnn.loading import load_model
from rccsnn.metrics import report
from rccsnn.rundir import RunDir
from rccsnn.sweep import collect_results

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "checkpoints" / "digits_convsnn.pt"
RESOURCES = ("params", "synops")
COLUMNS = ("nonzero", "macs", "synops", "energy_pj_fp32")


def measure(path: str, data: DataSplits) -> Dict[str, float]:
    """Test accuracy and the totals of :func:`report` (all conv/linear layers) of one model file on ``data``."""
    loaded = load_model(path)
    costs = report(loaded, data, "test", torch.device("cpu"))
    return {"accuracy": costs["accuracy"], **{k: float(costs["total"][k]) for k in COLUMNS}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = grid_arguments(argv, __doc__.splitlines()[0], "energy", DEFAULT_MODEL, [0.2, 0.05, 0.01], 1, 0.05)
    out = args.out
    try:
        doc = {"name": "energy", "base": {"model": str(Path(args.model).resolve()), "optim": {"epochs": args.epochs}},
               "grid": {"resource": list(RESOURCES), "budget": args.budgets, "seed": list(range(args.seeds))}}
        sweep, outcome = run_grid(doc, out, args.jobs, not args.no_progress)
        data = load_data(load_model(args.model).spec.data)  # once: every compressed model keeps the dense one's
        dense = measure(args.model, data)
        rows: List[str] = []
        for r in collect_results(sweep):
            if r["status"] != "ok":
                continue
            m = measure(str(RunDir(r["run_dir"]).model), data)
            ratios = " | ".join(f"{m[k] / dense[k]:.4f}" for k in COLUMNS)
            budget = float(r["budget_" + r["resource"]])
            held = float(r["ratio_" + r["resource"]])
            rows.append(f"| {r['resource']} {budget:g} | {r['seed']} | {held:.4f} | {100 * m['accuracy']:.2f} "
                        f"| {ratios} | {m['energy_pj_fp32'] / 1e6:.3f} |")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = [
        f"Costs per inference of {Path(args.model).name} on the test split, all conv/linear layers (the unpruned "
        f"first layer included), as fractions of the dense model; minimax joint, {args.epochs} epochs.",
        "The third column is what the budget bounds: the constrained resource over the pruned (target) layers on the "
        "validation split, from the run's summary.json.",
        "",
        f"Dense: {100 * dense['accuracy']:.2f} % test accuracy, {dense['nonzero']:,.0f} weights, "
        f"{dense['macs']:,.0f} MACs, {dense['synops']:,.0f} SynOps, {dense['energy_pj_fp32'] / 1e6:.3f} µJ.",
        "",
        "| constrained | seed | constrained resource, target layers (val) | test acc (%) | weights | MACs | SynOps "
        "| energy | energy (µJ) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    return publish(text, out / "energy.md", outcome)


if __name__ == "__main__":
    raise SystemExit(main())
