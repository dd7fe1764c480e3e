"""What quality.py and energy.py share: run a generated sweep through ``rccsnn sweep``'s runner, publish a report."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Tuple

import yaml

from rccsnn.sweep import Sweep, SweepOutcome, load_sweep, run_sweep, write_results


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
