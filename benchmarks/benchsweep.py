"""What quality.py and energy.py share: run a generated sweep through ``rccsnn sweep``'s runner, publish a report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import yaml

from rccsnn.sweep import Sweep, SweepOutcome, load_sweep, run_sweep, write_results


def grid_arguments(argv: Optional[Sequence[str]], description: str, name: str, model: Path,
                   budgets: Sequence[float], seeds: int, quick_budget: float) -> argparse.Namespace:
    """The options every one-model grid benchmark takes (model, budgets, seeds, epochs, jobs, out, quick,
    no-progress), parsed; ``--quick`` is ``quick_budget``, one seed, 2 epochs, and ``out`` defaults to
    ``runs/benchmarks/<name>-<model>[-quick]``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("model", nargs="?", default=str(model))
    p.add_argument("--budgets", nargs="+", type=float, default=list(budgets))
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default=None, help=f"benchmark directory (default runs/benchmarks/{name}-<model>)")
    p.add_argument("--quick", action="store_true", help=f"budget {quick_budget:g}, one seed, 2 epochs (a smoke run)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.epochs, args.seeds = [quick_budget], 2, 1
    args.out = Path(args.out or Path("runs") / "benchmarks"
                    / (f"{name}-{Path(args.model).stem}" + ("-quick" if args.quick else "")))
    return args


def run_grid(doc: dict, out: Path, jobs: int, progress: bool) -> Tuple[Sweep, SweepOutcome]:
    """Write ``doc`` as ``out/<name>.yaml`` and run it in ``out`` (finished runs are skipped: rerun to resume)."""
    out.mkdir(parents=True, exist_ok=True)
    sweep_file = out / f"{doc['name']}.yaml"
    sweep_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    sweep = load_sweep(sweep_file, out=out)
    outcome = run_sweep(sweep, jobs=jobs, progress=progress)
    write_results(sweep)
    return sweep, outcome


def publish(report: str, path: Path, outcome: SweepOutcome) -> int:
    """Write and print ``report``; the exit code: 130 when interrupted, else 0 (failed runs are named)."""
    path.write_text(report)
    print(report)
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed: see {path.parent}/results.md", file=sys.stderr)
    return 130 if outcome.interrupted else 0
