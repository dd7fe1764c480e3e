"""benchmarks/quality.py's panel report on runs made up here (no training): which cells it compares joint minimax
with its sequential ablation in, and how the verdicts on the paper's claim read the paired differences."""
from __future__ import annotations

import importlib.util
import re
import sys
from typing import Dict, List

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def quality():
    bench = str(REPO_ROOT / "benchmarks")
    spec = importlib.util.spec_from_file_location("quality", REPO_ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, bench)  # as when run as a script: its helpers (benchsweep) sit beside it
    sys.modules["quality"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    yield module
    sys.modules.pop("quality", None)


def runs_of(quality, diffs: Dict[float, List[float]], loss_diffs: Dict[float, List[float]]) -> list:
    """fc at 10 epochs: per budget, joint and sequential runs whose paired differences (joint - sequential) are
    ``diffs`` (points) and ``loss_diffs`` (nan: the joint run recorded no loss), seed by seed."""
    runs = []
    for b, ds in diffs.items():
        for seed, (d, dl) in enumerate(zip(ds, loss_diffs[b])):
            for method, acc, loss in (("minimax", 50.0 + d, 1.0 + dl), ("sequential", 50.0, 1.0)):
                runs.append(quality.Run(model="fc", epochs=10, budget=b, method=method, seed=seed, status="ok",
                                        name=f"{method}-{b}-{seed}", accuracy=acc, loss=loss, ratio=b * 0.99,
                                        min_rate=0.05))
    return runs


def report(quality, runs, budgets) -> str:
    return quality.panel_report(runs, ["fc"], ["minimax", "sequential"], budgets, [10], 3,
                                {"fc": {"test": 0.9, "val": 0.9, "weights": 1000}}, [])


def verdict(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_the_sequential_ablation_runs_at_every_budget_up_to_the_claims(quality):
    assert [b for b in (0.05, 0.01, 0.005, 0.002) if quality.runs_at("sequential", b)] == [0.01, 0.005, 0.002]
    assert [b for b in (0.05, 0.01, 0.005) if quality.runs_at("magnitude", b)] == [0.01]
    assert all(quality.runs_at("minimax", b) for b in (0.05, 0.01, 0.002))


def test_a_clear_pooled_lead_is_ok_and_the_cell_behind_is_named(quality):
    diffs = {0.01: [-1.0, -1.0, -1.0], 0.005: [5.0, 6.0, 7.0], 0.002: [5.0, 6.0, 7.0]}
    loss = {0.01: [-0.01] * 3, 0.005: [-0.1] * 3, 0.002: [-0.2, -0.1, 0.05]}
    text = report(quality, runs_of(quality, diffs, loss), [0.05, 0.01, 0.005, 0.002])
    # pooled over 9 pairs: mean 3.67, standard error 1.19 (ahead by more than two)
    acc = verdict(text, "* minimax joint > sequential in accuracy")
    assert "+3.67 ± 1.19 over 9 pairs" in acc and acc.endswith(": ok")
    assert verdict(text, "* cells where joint's mean accuracy") == (
        "* cells where joint's mean accuracy is above sequential's: 2 of 3; not: fc 10 ep 0.01: -1.00 ± 0.00")
    assert verdict(text, "* minimax joint < sequential in test loss").endswith(": ok")
    assert verdict(text, "* cells where joint's mean test loss").endswith("below sequential's: 3 of 3")
    # the table: one row per cell at <= 0.01 and the pooled row
    rows = [line for line in text.splitlines() if re.match(r"\| (fc|all) \| (10)? *\| [0-9.]* *\| \d+ \|", line)]
    assert [r.split("|")[3].strip() for r in rows] == ["0.01", "0.005", "0.002", ""]
    assert "| 9 | +3.67 ± 1.19 | 6 / 0 / 3 |" in rows[-1]


def test_a_lead_within_two_standard_errors_fails(quality):
    diffs = {0.01: [3.0, -2.0, 1.0], 0.005: [-1.0, 2.0, 0.0]}  # mean 0.5, standard error 0.76
    loss = {0.01: [0.01, -0.01, 0.0], 0.005: [0.0, 0.0, 0.0]}
    text = report(quality, runs_of(quality, diffs, loss), [0.01, 0.005])
    acc = verdict(text, "* minimax joint > sequential in accuracy")
    assert "+0.50 ± 0.76 over 6 pairs" in acc and acc.endswith(": FAIL")
    assert verdict(text, "* minimax joint < sequential in test loss").endswith(": FAIL")
    assert "above sequential's: 2 of 2" in verdict(text, "* cells where joint's mean accuracy")


@pytest.mark.parametrize("mean, ok", [(1.5, False), (2.5, True)])
def test_the_line_is_two_standard_errors(quality, mean, ok):
    # three pairs at mean + a and three at mean - a: standard error a / sqrt(5) = 1.00 for a = sqrt(5)
    a = 5 ** 0.5
    diffs = {0.01: [mean + a, mean - a, mean + a], 0.005: [mean - a, mean + a, mean - a]}
    loss = {b: [-0.1] * 3 for b in diffs}
    text = report(quality, runs_of(quality, diffs, loss), [0.01, 0.005])
    acc = verdict(text, "* minimax joint > sequential in accuracy")
    assert f"+{mean:.2f} ± 1.00 over 6 pairs" in acc and acc.endswith(": ok" if ok else ": FAIL")


def test_only_budgets_up_to_the_claims_are_compared_and_missing_losses_are_left_out(quality):
    diffs = {0.05: [-20.0] * 3, 0.01: [2.0, 3.0, 4.0], 0.005: [1.0, 2.0, 3.0]}  # 0.05 is outside the claim
    loss = {0.05: [0.5] * 3, 0.01: [-0.1, float("nan"), -0.2], 0.005: [-0.1, -0.2, float("nan")]}
    text = report(quality, runs_of(quality, diffs, loss), [0.05, 0.01, 0.005])
    assert "+2.50 ± 0.43 over 6 pairs" in verdict(text, "* minimax joint > sequential in accuracy")
    assert "-0.1500 ± 0.0289 over 4 pairs" in verdict(text, "* minimax joint < sequential in test loss")


def test_one_pair_or_none_is_not_judged(quality):
    one = report(quality, runs_of(quality, {0.01: [3.0]}, {0.01: [-0.1]}), [0.01])
    assert verdict(one, "* minimax joint > sequential in accuracy").endswith(
        ": +3.00 over 1 pair: too few pairs to judge")
    assert verdict(one, "* cells where joint's mean accuracy").endswith("above sequential's: 1 of 1")  # still counted
    none = report(quality, [r for r in runs_of(quality, {0.01: [3.0]}, {0.01: [-0.1]}) if r.method == "minimax"],
                  [0.01])
    assert verdict(none, "* minimax joint > sequential in accuracy").endswith(": not measured")
    assert verdict(none, "* minimax joint < sequential in test loss").endswith(": not measured")
    assert "* cells where" not in none
