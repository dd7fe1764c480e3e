"""What each axis of the joint space buys under a whole-network energy budget: sparsity, bit widths, time steps (issue 17).

For each energy budget (a fraction of the dense float32 model's energy per inference, every conv/linear layer
counted, the dense first layer included) and seed it compresses the model five ways with minimax, through the code
of ``rccsnn sweep`` (resumable, one ``rccsnn compress`` per run):

* ``all``: ``--decide sparsity,bits,timesteps``: masks, every layer's bit width and T, one optimiser;
* ``joint``: ``--decide sparsity,bits``: masks and every layer's bit width, whole-network costs;
* ``bits``: ``--decide bits``: bit widths alone (nothing pruned unless the widths cannot meet the budget);
* ``timesteps``: ``--decide timesteps``: T alone, float32 (nothing pruned unless T cannot meet the budget);
* ``sparsity``: the default minimax, float32, its energy budget on the pruned layers (the only costs it sees);

and adds ``sparsity+int8``: the sparsity model with every layer quantized to 8 bits after training (uniform
post-training quantization, symmetric per output channel, no finetuning). Every model is measured by
:func:`rccsnn.metrics.report` on the test split, each layer at its recorded width; the table gives test accuracy and
whole-network energy over the dense float32 model's, mean +- std over seeds, and whether that energy is within the
budget. It writes ``decisions.md`` in the output directory.

    python benchmarks/decisions.py --jobs 2              # the shipped digits convsnn, budgets 0.1 0.03 0.01 0.005, 3 seeds
    python benchmarks/decisions.py --quick               # one budget, one seed, 2 epochs: a smoke run
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from benchsweep import grid_arguments, publish, run_grid
from rccsnn.data import DataSplits, load_data
from rccsnn.errors import UserError
from rccsnn.loading import load_model
from rccsnn.masks import bake
from rccsnn.metrics import report
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.quant import bits_of, set_bits
from rccsnn.rundir import RunDir
from rccsnn.snn import weight_layers
from rccsnn.sweep import collect_results

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "checkpoints" / "digits_convsnn.pt"
#: (label, sweep settings) of the runs, in table order; ``sparsity+int8`` is derived from ``sparsity``'s models.
VARIANTS: List[Tuple[str, Dict[str, object]]] = [
    ("all", {"method.options": {"decide": "sparsity,bits,timesteps"}}),
    ("joint", {"method.options": {"decide": "sparsity,bits"}}),
    ("bits", {"method.options": {"decide": "bits"}}),
    ("sparsity", {"method.options": {"decide": "sparsity"}}),
    ("timesteps", {"method.options": {"decide": "timesteps"}}),
]
LABELS = ["all", "joint", "bits", "timesteps", "sparsity", "sparsity+int8"]


def measure(loaded: LoadedModel, data: DataSplits) -> Tuple[float, float]:
    """Test accuracy and whole-network energy (pJ per inference, each layer at its width) of ``loaded``."""
    costs = report(loaded, data, "test", torch.device("cpu"))
    return costs["accuracy"], float(costs["total"]["energy_pj"])


def int8(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with every conv/linear layer quantized to 8 bits after training (no finetuning)."""
    set_bits(loaded.net, {name: 8 for name, _ in weight_layers(loaded.net)})
    loaded.spec.bits = bits_of(loaded.net)
    bake(loaded.net)
    return loaded


def label_of(row: Dict[str, object]) -> str:
    """The variant of a results row (its ``method.options`` column holds the options as JSON)."""
    options = row.get("method.options") or {}
    if isinstance(options, str):
        options = json.loads(options) if options else {}
    decide = str(options.get("decide", "sparsity"))
    return {"sparsity,bits,timesteps": "all", "sparsity,bits": "joint"}.get(decide, decide)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = grid_arguments(argv, __doc__.splitlines()[0], "decisions", DEFAULT_MODEL, [0.1, 0.03, 0.01, 0.005], 3,
                          0.03)
    out = args.out
    try:
        doc = {"name": "decisions",
               "base": {"model": str(Path(args.model).resolve()), "optim": {"epochs": args.epochs}},
               "grid": {"resource": ["energy"], "budget": args.budgets,
                        "variant": [dict(s) for _, s in VARIANTS], "seed": list(range(args.seeds))}}
        sweep, outcome = run_grid(doc, out, args.jobs, not args.no_progress)
        data = load_data(load_model(args.model).spec.data)
        dense_acc, dense_energy = measure(load_model(args.model), data)
        cells: Dict[Tuple[float, str], List[Tuple[float, float]]] = {}
        steps: Dict[Tuple[float, str], List[int]] = {}  # the T each run decided
        for r in collect_results(sweep):
            if r["status"] != "ok":
                continue
            budget, label = float(r["budget_energy"]), label_of(r)
            path = str(RunDir(r["run_dir"]).model)
            model = load_model(path)
            acc, energy = measure(model, data)
            cells.setdefault((budget, label), []).append((100 * acc, energy / dense_energy))
            steps.setdefault((budget, label), []).append(int(model.spec.T))
            if label == "sparsity":
                acc, energy = measure(int8(load_model(path)), data)
                cells.setdefault((budget, "sparsity+int8"), []).append((100 * acc, energy / dense_energy))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows, verdicts = [], []
    for b in args.budgets:
        parts = []
        for label in LABELS:
            runs = cells.get((b, label), [])
            within = sum(e <= b for _, e in runs)
            parts.append(f"{mean_std([a for a, _ in runs])} | {mean_std([100 * e for _, e in runs])} | "
                         f"{within}/{len(runs)}")
        rows.append(f"| {b:g} | " + " | ".join(parts) + " |")
        joint = [a for a, e in cells.get((b, "all"), [])]
        for other in ("joint", "sparsity", "sparsity+int8", "bits", "timesteps"):
            reach = [a for a, e in cells.get((b, other), []) if e <= b]
            if reach and joint:
                verdicts.append(f"* {b:g}: all {statistics.mean(joint):.2f} % against {other} "
                                f"{statistics.mean(reach):.2f} % (its runs within the budget): "
                                f"{'ahead' if statistics.mean(joint) > statistics.mean(reach) else 'NOT ahead'}")
            elif not reach:
                verdicts.append(f"* {b:g}: {other} reaches the budget in none of its runs")
    header = " | ".join(f"{label} acc % | {label} E % | within" for label in LABELS)
    lines = [
        f"Whole-network energy budgets on {Path(args.model).name}: test accuracy and energy per inference (every "
        f"conv/linear layer at its width, 45 nm table) as % of the dense float32 model, mean ± std over "
        f"{args.seeds} seed(s); minimax, {args.epochs} epochs. Dense: {100 * dense_acc:.2f} %, "
        f"{dense_energy / 1e6:.3f} µJ. `within`: runs whose whole-network energy is within the budget.",
        "",
        f"| budget | {header} |",
        "|---:|" + "---:|" * (3 * len(LABELS)),
        *rows,
        "",
        "T chosen (per seed, the model's own T = " + f"{load_model(args.model).spec.T}): " + "; ".join(
            f"{b:g}: " + ", ".join(f"{label} {sorted(steps.get((b, label), []))}" for label in ("all", "timesteps"))
            for b in args.budgets),
        "",
        *verdicts,
    ]
    return publish("\n".join(lines) + "\n", out / "decisions.md", outcome)


if __name__ == "__main__":
    raise SystemExit(main())
