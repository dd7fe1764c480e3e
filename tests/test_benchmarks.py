"""The benchmarks' smoke runs (``--quick``): they run on the shipped model and their tables say what the runs did.

No timing is asserted here (timings on shared machines are noise); BENCHMARKS.md has the measured figures.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"


def run_benchmark(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def run_quick(name: str, out: Path) -> str:
    """Run ``benchmarks/NAME.py --quick`` into ``out``; its report file's text."""
    proc = run_benchmark(f"{name}.py", "--quick", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (out / f"{name}.md").read_text()


def table_rows(text: str, first_cell: str):
    """Cells of the markdown rows whose first cell matches the regex ``first_cell``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def test_overhead_quick_times_both_steps_and_the_selection():
    proc = run_benchmark("overhead.py", "--quick", "--rounds", "3", "--limit", "1000")
    assert proc.returncode == 0, proc.stderr
    (model,) = table_rows(proc.stdout, "convsnn")
    plain, minimax, ratio = (float(c) for c in model[4:7])
    assert plain > 0 and minimax > 0
    assert ratio == pytest.approx(minimax / plain, rel=1.0)  # a median of per-round ratios, near the ratio of medians
    sizes = table_rows(proc.stdout, r"[\d,]+")
    assert [int(r[0].replace(",", "")) for r in sizes] == [10_000, 100_000]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in sizes)
    assert f"worst ratio {ratio:.3f}" in proc.stdout


def test_overhead_exit_code_says_whether_the_limit_holds():
    proc = run_benchmark("overhead.py", "--quick", "--rounds", "1", "--limit", "0.0001")
    assert proc.returncode == 1 and "OVER" in proc.stdout


@pytest.mark.slow
def test_quality_quick_runs_the_panel_and_tables_the_runs_it_made(tmp_path):
    out = tmp_path / "quality"
    proc = run_benchmark("quality.py", "--quick", "--jobs", "2", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "quality.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model | epochs |"))
    labels = [c.strip() for c in header.strip().strip("|").split("|")]
    models = ["convsnn", "fc", "tutorial_conv", "recurrent", "synaptic_conv"]
    rows = {r[0]: r for r in table_rows(text, "|".join(models)) if r[1:3] == ["2", "0.01"]}
    assert sorted(rows) == sorted(models)
    for name, cells in rows.items():
        stem = "digits_convsnn" if name == "convsnn" else name
        for label in ("minimax", "gmp"):
            run = out / f"params0.01-{label}-joint-seed0-model{stem}-epochs2"
            summary = json.loads((run / "summary.json").read_text())
            mean = float(cells[labels.index(label)].split("±")[0])
            assert mean == pytest.approx(100 * summary["accuracy"]["compressed"], abs=0.006)
            assert summary["resources"]["params"]["ratio"] <= 0.01
        assert 0.0 <= float(cells[labels.index("min firing rate")]) <= 1.0
        assert float(cells[labels.index("max kept / budget")]) <= 1.0
    assert "* every run within its budget (params kept / dense <= budget): ok" in text
    finished = re.search(r"runs finished: (\d+) of (\d+)", text)
    assert finished and finished[1] == finished[2]
    # rerunning finds every run finished (and every model pretrained) and only rebuilds the tables
    again = run_benchmark("quality.py", "--quick", "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "0 to run" in again.stdout + again.stderr
    assert "pretraining" not in again.stdout


@pytest.mark.slow
def test_energy_quick_compares_a_params_and_a_synops_budget(tmp_path):
    text = run_quick("energy", tmp_path / "energy")
    rows = {r[0]: r for r in table_rows(text, r"(params|synops) 0\.05")}
    assert sorted(rows) == ["params 0.05", "synops 0.05"]
    for cells in rows.values():
        assert 0 < float(cells[2]) <= 0.05  # the budget holds where it is defined: the target layers
        ratios = [float(c) for c in cells[4:8]]
        assert all(0 < r <= 1 for r in ratios)
    # Over all layers (the dense first layer included) a 5 % weights budget keeps a little more than 5 %.
    assert 0.05 <= float(rows["params 0.05"][4]) < 0.06
