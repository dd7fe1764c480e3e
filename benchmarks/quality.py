"""How accurate is minimax compression against its ablation and the baselines? Same model, data, epochs, seeds.

For each budget (fraction of the weights kept) it compresses the model with minimax joint, minimax sequential,
one-shot magnitude pruning and gradual magnitude pruning (gmp), on the same trainer with the same epochs, data
and seeds, through the code of ``rccsnn sweep`` (one ``rccsnn compress`` process per run, resumable: rerun the
same command to finish an interrupted benchmark). It then writes ``quality.md`` in the output directory: test
accuracy (mean +- std over seeds) per budget and method, the gap of joint over sequential and over the best
baseline, and whether the paper's claims hold.

    python benchmarks/quality.py                                   # the shipped digits model, 72 runs
    python benchmarks/quality.py MODEL.pt --budgets 0.1 0.01 --seeds 2 --jobs 2
    python benchmarks/quality.py --quick                           # 2 budgets, 1 seed, 2 epochs: a smoke run

Exit code 0 when it ran (whatever the figures say), 2 for bad input (one line).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from benchsweep import publish, run_grid
from rccsnn.errors import UserError
from rccsnn.sweep import collect_results

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "checkpoints" / "digits_convsnn.pt"
#: (label, sweep settings) of the compared methods, in table order.
METHODS: List[Tuple[str, Dict[str, str]]] = [
    ("joint", {"method": "minimax", "schedule": "joint"}),
    ("sequential", {"method": "minimax", "schedule": "sequential"}),
    ("magnitude", {"method": "magnitude"}),
    ("gmp", {"method": "gmp"}),
]
BASELINES = ("magnitude", "gmp")
QUICK = dict(budgets=[0.05, 0.01], seeds=1, epochs=2)


def sweep_document(model: str, budgets: Sequence[float], seeds: int, epochs: int,
                   settings: Dict[str, object]) -> dict:
    """The sweep file of the benchmark: budgets x methods x seeds on one model."""
    base: Dict[str, object] = {"model": model, "optim": {"epochs": epochs}}
    doc = {"name": "quality", "base": base,
           "grid": {"budget": list(budgets), "variant": [dict(s) for _, s in METHODS], "seed": list(range(seeds))}}
    for key, value in settings.items():  # --set a.b=c lands in base as nested mappings
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = value
    return doc


def mean_std(values: List[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def method_label(row: Dict[str, object]) -> str:
    for label, settings in METHODS:
        if row["method"] == settings["method"] and row["schedule"] == settings.get("schedule", row["schedule"]):
            return label
    return f"{row['method']}/{row['schedule']}"


def table(rows: List[Dict[str, object]], budgets: Sequence[float]) -> Tuple[str, List[str]]:
    """The markdown table (accuracy in %, mean +- std) and the verdicts on the claims."""
    acc: Dict[Tuple[float, str], List[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            acc.setdefault((float(r["budget_params"]), method_label(r)), []).append(100.0 * float(r["accuracy"]))
    labels = [label for label, _ in METHODS]
    lines = ["| budget | " + " | ".join(labels) + " | joint - sequential | joint - best baseline |",
             "|---:|" + "---:|" * (len(labels) + 2)]
    verdicts: List[str] = []
    for b in budgets:
        stats = {m: mean_std(acc[(b, m)]) for m in labels if (b, m) in acc}
        cells = [f"{stats[m][0]:.2f} ± {stats[m][1]:.2f} (n={len(acc[(b, m)])})" if m in stats else "-"
                 for m in labels]
        gap_seq = gap_base = "-"
        if "joint" in stats and "sequential" in stats:
            d = stats["joint"][0] - stats["sequential"][0]
            gap_seq = f"{d:+.2f}"
            if b <= 0.01:
                verdicts.append(f"budget {b:g}: joint {'>' if d > 0 else '<='} sequential ({d:+.2f} points)")
        best = max((m for m in BASELINES if m in stats), key=lambda m: stats[m][0], default=None)
        if "joint" in stats and best is not None:
            d = stats["joint"][0] - stats[best][0]
            gap_base = f"{d:+.2f} ({best})"
            if b <= 0.05:
                verdicts.append(f"budget {b:g}: joint {'>=' if d >= 0 else '<'} best baseline {best} ({d:+.2f} points)")
        lines.append(f"| {b:g} | " + " | ".join(cells) + f" | {gap_seq} | {gap_base} |")
    return "\n".join(lines), verdicts


def parse_set(items: Sequence[str]) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="checkpoint (default: the shipped digits SNN)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.2, 0.1, 0.05, 0.02, 0.01, 0.005])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30, help="epochs of every run (compression and finetuning)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of every run, e.g. data.batch_size=32 (repeatable)")
    p.add_argument("--out", default=None, help="benchmark directory (default runs/benchmarks/quality-<model>)")
    p.add_argument("--quick", action="store_true", help="budgets 0.05 0.01, one seed, 2 epochs (a smoke run)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.quick:
            args.budgets, args.seeds, args.epochs = QUICK["budgets"], QUICK["seeds"], QUICK["epochs"]
        if args.seeds < 1 or args.epochs < 1 or args.jobs < 1:
            raise UserError("--seeds, --epochs and --jobs must be at least 1")
        out = Path(args.out or Path("runs") / "benchmarks"
                   / (f"quality-{Path(args.model).stem}" + ("-quick" if args.quick else "")))
        doc = sweep_document(str(Path(args.model).resolve()), args.budgets, args.seeds, args.epochs,
                             parse_set(args.set))
        sweep, outcome = run_grid(doc, out, args.jobs, not args.no_progress)
        text, verdicts = table(collect_results(sweep), args.budgets)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = (f"Test accuracy (%) of {Path(args.model).name}, mean ± std over {args.seeds} seed(s), "
              f"{args.epochs} epochs per run; params budget (fraction of the weights kept).")
    report = "\n".join([header, "", text, "", *[f"* {v}" for v in verdicts]]) + "\n"
    return publish(report, out / "quality.md", outcome)


if __name__ == "__main__":
    raise SystemExit(main())
