"""The benchmarks' smoke runs (``--quick``): they run on the shipped model and their tables say what the runs did.

No timing is asserted here (timings on shared machines are noise); BENCHMARKS.md has the measured figures. Every
test starts a benchmark in a subprocess, so all are slow.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from rccsnn.masks import find_targets
from rccsnn.models import build_model
from rccsnn.snn import NeuronConfig

BENCH = REPO_ROOT / "benchmarks"
pytestmark = pytest.mark.slow


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


def quick_convsnn_weights() -> int:
    """Prunable weights of the ``--quick`` convsnn (its first layer is excluded, as by default)."""
    spec = importlib.util.spec_from_file_location("overhead", BENCH / "overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    shape, kw, _, _ = overhead.QUICK["convsnn"]
    return sum(t.n for t in find_targets(build_model("convsnn", shape, 10, NeuronConfig(), kw)))


def ratio_bounds(plain: float, minimax: float, step_digits: int = 4, ratio_digits: int = 3):
    """The range of the printed ratio of one round, given the step times as printed: ``minimax / plain`` with
    each time anywhere within its rounding, then rounded to ``ratio_digits``."""
    h, r = 0.5 * 10.0 ** -step_digits, 0.5 * 10.0 ** -ratio_digits
    return (minimax - h) / (plain + h) - r, (minimax + h) / (plain - h) + r


def test_overhead_quick_times_both_steps_and_the_selection():
    # One round: the median of per-round ratios is then that round's minimax / plain, up to the printed rounding.
    proc = run_benchmark("overhead.py", "--quick", "--rounds", "1", "--limit", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "median of 1 rounds" in proc.stdout.splitlines()[0]
    (model,) = table_rows(proc.stdout, "convsnn")
    assert model[1:4] == [f"{quick_convsnn_weights():,}", "4", "64"]
    plain, minimax, ratio = (float(c) for c in model[4:7])
    assert plain >= 1e-3 and minimax >= 1e-3  # a training step is timed, not printed as a rounded-away zero
    low, high = ratio_bounds(plain, minimax)
    assert low <= ratio <= high, (plain, minimax, ratio)
    assert model[7] == "1"  # the rounds column
    sizes = table_rows(proc.stdout, r"[\d,]+")
    assert [int(r[0].replace(",", "")) for r in sizes] == [10_000, 100_000]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in sizes)
    assert proc.stdout.rstrip().splitlines()[-1] == f"worst ratio {ratio:.3f} (limit 1000.00): ok"


@pytest.mark.parametrize("seconds, rounds", [("0.0001", 5), ("10000", 200)])
def test_overhead_times_as_many_rounds_as_fit_in_the_time_given(seconds, rounds):
    # a step of the quick model takes milliseconds: none fits in 0.1 ms (the least, 5 rounds, are timed), and the
    # most, 200, fit in 10000 s
    proc = run_benchmark("overhead.py", "--quick", "--seconds", seconds, "--limit", "1000")
    assert proc.returncode == 0, proc.stderr
    assert f"median of the rounds that fit in {float(seconds):g} s per model (5 to 200)" in proc.stdout.splitlines()[0]
    (model,) = table_rows(proc.stdout, "convsnn")
    assert int(model[7]) == rounds


def test_overhead_exit_code_says_whether_the_limit_holds():
    proc = run_benchmark("overhead.py", "--quick", "--rounds", "1", "--limit", "0.0001")
    (model,) = table_rows(proc.stdout, "convsnn")
    ratio = float(model[6])
    assert ratio > 0.0001
    assert proc.returncode == 1
    assert proc.stdout.rstrip().splitlines()[-1] == f"worst ratio {ratio:.3f} (limit 0.00): OVER"


def test_quality_quick_runs_the_panel_and_tables_the_runs_it_made(tmp_path):
    out = tmp_path / "quality"
    proc = run_benchmark("quality.py", "--quick", "--jobs", "2", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "quality.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model | epochs |"))
    labels = [c.strip() for c in header.strip().strip("|").split("|")]
    models = ["convsnn", "fc", "tutorial_conv", "recurrent", "synaptic_conv"]
    rows = {r[0]: r for r in table_rows(text, "|".join(models)) if r[1:3] == ["2", "0.01"] and len(r) == len(labels)}
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
    # joint against its sequential ablation (every method runs on fc), paired by seed, from the runs' summaries
    joint, seq = (json.loads((out / f"params0.01-minimax-{s}-seed0-modelfc-epochs2" / "summary.json").read_text())
                  for s in ("joint", "sequential"))
    row = next(r for r in table_rows(text, "fc") if len(r) == 8 and "/" in r[5])
    assert row[1:4] == ["2", "0.01", "1"]
    acc = 100 * (joint["accuracy"]["compressed"] - seq["accuracy"]["compressed"])
    assert float(row[4].split("±")[0]) == pytest.approx(acc, abs=0.006)
    assert float(row[6].split("±")[0]) == pytest.approx(joint["loss"]["compressed"] - seq["loss"]["compressed"],
                                                        abs=6e-5)
    assert row[7] == ("1 / 0 / 0" if joint["loss"]["compressed"] > seq["loss"]["compressed"] else "0 / 0 / 1")
    pooled = next(r for r in table_rows(text, "all") if len(r) == 8)
    assert pooled[3] == "1" and pooled[4] == row[4] and pooled[6] == row[6]  # one pair: the pool is that pair
    loss_line = next(line for line in text.splitlines() if line.startswith("* minimax joint < sequential in test loss"))
    assert loss_line.endswith(f"{row[6]} over 1 pair: too few pairs to judge")  # one seed: no standard error
    cells_line = next(line for line in text.splitlines() if line.startswith("* cells where joint's mean accuracy"))
    assert "of 1" in cells_line
    finished = re.search(r"runs finished: (\d+) of (\d+)", text)
    assert finished and finished[1] == finished[2]
    # rerunning finds every run finished (and every model pretrained) and only rebuilds the tables
    again = run_benchmark("quality.py", "--quick", "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "0 to run" in again.stdout + again.stderr
    assert "pretraining" not in again.stdout


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


def test_decisions_quick_tables_each_axis_under_a_whole_network_energy_budget(tmp_path):
    text = run_quick("decisions", tmp_path / "decisions")
    (row,) = table_rows(text, r"0\.03")
    labels = ["all", "joint", "bits", "timesteps", "sparsity", "sparsity+int8"]
    cells = dict(zip(labels, [row[1 + 3 * i: 4 + 3 * i] for i in range(len(labels))]))
    for label, (acc, energy, within) in cells.items():
        assert 0 <= float(acc.split(" ± ")[0]) <= 100 and within in ("0/1", "1/1"), label
    # the decided widths (and time steps) meet the budget, and so does T alone, with the projection's pruning
    assert cells["all"][2] == cells["joint"][2] == cells["bits"][2] == cells["timesteps"][2] == "1/1"
    assert re.search(r"T chosen \(per seed, the model's own T = 4\): 0\.03: all \[[1-4]\], timesteps \[[1-4]\]", text)
    # float32 sparsity alone cannot: the dense first layer alone spends about a quarter of the energy
    assert cells["sparsity"][2] == "0/1" and float(cells["sparsity"][1].split(" ± ")[0]) > 3.0


def test_exact_costs_quick_sets_every_pruned_layer_against_the_exact_count(tmp_path):
    out = tmp_path / "exact"
    text = run_quick("exact_costs", out)
    rows = {r[0]: r for r in table_rows(text, r".*: (`[\w.]+`.*|whole pruned part)")}
    layers = {re.search(r": `([\w.]+)`", k)[1]: c for k, c in rows.items() if "whole pruned part" not in k}
    # the pruned layers of both models, the first (unpruned) layer of neither
    assert sorted(layers) == ["classifier.0.1", "classifier.2.0", "features.3.0", "net.3", "net.7"]
    assert len(rows) == 3 * 2 + 2 + 3  # convsnn's three layers in two runs, tutorial_conv's two, a whole per run
    for name, cells in rows.items():
        if "whole pruned part" in name:
            continue
        ours, exact = (float(c.replace(",", "")) for c in cells[4:6])
        assert ours == pytest.approx(exact, rel=5e-3, abs=1e-9), name
        # not a vacuous agreement on the shipped model (a 2-epoch tutorial_conv may leave its readout silent)
        assert exact > 0 or name.startswith("tutorial"), name
    # the figures are the 'before' columns; the after columns are this run's
    assert rows["shipped convsnn, 0.05 params: `features.3.0`"][1:4] == ["66,070", "47,837", "+38 %"]
    assert rows["shipped convsnn, 0.05 params: `classifier.2.0`"][1:4] == ["151", "416", "-64 %"]
    synops = rows["shipped convsnn, `--resource synops --budget 0.1`, 1 epoch: whole pruned part"]
    assert synops[1:4] == ["ratio 0.1000", "ratio 0.1094", "budget broken by 9.4 %"]
    held = json.loads((out / "convsnn-synops0.1" / "summary.json").read_text())["resources"]["synops"]["ratio"]
    assert synops[4] == f"ratio {held:.4f}"
    assert float(synops[5].split()[1]) <= 0.1 and synops[6] == "within budget 0.1"
    assert text.rstrip().endswith("every SynOps budget held on the exact count: ok")
    # rerunning finds the runs finished (and the panel model pretrained) and only measures again
    again = run_benchmark("exact_costs.py", "--quick", "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, reused") == 3 and "pretraining" not in again.stdout
    assert (out / "exact_costs.md").read_text() == text


def test_quality_quick_on_one_model_tables_joint_sequential_and_the_baselines(tmp_path):
    out = tmp_path / "one"
    proc = run_benchmark("quality.py", str(REPO_ROOT / "checkpoints" / "digits_convsnn.pt"), "--quick", "--jobs", "2",
                         "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "quality.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| budget |"))
    labels = [c.strip() for c in header.strip().strip("|").split("|")]
    rows = {r[0]: r for r in table_rows(text, r"0\.05|0\.01")}
    assert sorted(rows) == ["0.01", "0.05"]
    for budget, cells in rows.items():
        summaries = {s: json.loads((out / f"params{budget}-minimax-{s}-seed0" / "summary.json").read_text())
                     for s in ("joint", "sequential")}
        for s, summary in summaries.items():
            assert float(cells[labels.index(s)].split("±")[0]) == pytest.approx(
                100 * summary["accuracy"]["compressed"], abs=0.006)
            assert summary["resources"]["params"]["ratio"] <= float(budget)
        loss = summaries["joint"]["loss"]["compressed"] - summaries["sequential"]["loss"]["compressed"]
        assert float(cells[labels.index("test loss: joint - sequential")]) == pytest.approx(loss, abs=6e-5)
    assert "* budget 0.01: joint " in text


@pytest.mark.parametrize("pacing", ["auto", "legacy"])
def test_reach_lands_on_the_budget_in_about_half_the_phase(pacing):
    proc = run_benchmark("reach.py", "--models", "convsnn", "--steps", "60", "--budgets", "0.05", "--resources",
                         "params", "--pacing", pacing)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, weights, resource, budget, reached, final, _ = proc.stdout.strip().splitlines()[-1].split()
    assert (model, resource, float(budget)) == ("convsnn", "params", 0.05)
    # the trust region allows dense to the budget in half the phase at the fastest (either pacing)
    assert 0.4 <= float(reached) <= 0.7 and float(final) <= 0.05
