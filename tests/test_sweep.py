"""``rccsnn sweep``: grid expansion and names, validation before anything runs, a tiny real sweep (results agree
with the runs' summary.json files), skip / resume / retry, a failing point, and the aggregation over seeds.

Tests that run points (``rccsnn compress`` subprocesses) are marked slow; the rest run in-process."""
from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import pytest


from helpers import cli as call, train_tiny
from rccsnn.config import TrainConfig, load_config, write_yaml
from rccsnn.rundir import RunDir
from rccsnn.sweep import (child_env, collect_results, load_sweep, point_command, point_status, threads_per_job,
                          write_results)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ("params", "macs", "synops", "energy")

TINY_RECIPE = """\
data: {name: digits, batch_size: 64}
model: {arch: convsnn, args: {channels: [4], hidden: 8}, T: 2}
optim: {lr: 0.02, epochs: 1}
seed: 0
"""


def read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mtimes(sweep_dir: Path, name: str):
    return {p.parent.name: p.stat().st_mtime_ns for p in sorted(sweep_dir.glob(f"*/{name}"))}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A convsnn with channels [4], hidden 8, T = 2, trained for one epoch on digits."""
    return train_tiny(tmp_path_factory.mktemp("tiny"), TINY_RECIPE, run="train")


def sweep_file(path: Path, model: Path, grid: str, extra: str = "") -> Path:
    path.write_text(f"base:\n  model: {model}\n  optim: {{epochs: 1}}\n  device: cpu\ngrid:\n{grid}{extra}")
    return path


# ------------------------------------------------------------------------------------------- expansion, names
def test_shipped_digits_sweep_has_72_named_points():
    sweep = load_sweep(REPO_ROOT / "experiments" / "digits_budgets.yaml", check_files=False)
    assert len(sweep.points) == 72
    names = [p.name for p in sweep.points]
    assert len(set(names)) == 72
    assert names[0] == "params0.5-minimax-joint-seed0"
    assert {"params0.05-minimax-joint-seed0", "params0.05-minimax-sequential-seed2",
            "params0.01-magnitude-joint-seed1", "params0.02-gmp-joint-seed0"} <= set(names)
    variants = {(p.config.method.name, p.config.method.schedule) for p in sweep.points}
    assert variants == {("minimax", "joint"), ("minimax", "sequential"), ("magnitude", "joint"), ("gmp", "joint")}
    assert sorted({p.config.budgets["params"] for p in sweep.points}) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    assert {p.config.seed for p in sweep.points} == {0, 1, 2}
    assert {p.config.optim.epochs for p in sweep.points} == {30}
    assert all(p.config.model == "checkpoints/digits_convsnn.pt" and p.resource == "params" for p in sweep.points)
    assert sweep.out == Path("runs/sweeps/digits_budgets")


def test_shipped_cifar_sweep_and_recipe():
    sweep = load_sweep(REPO_ROOT / "experiments" / "cifar10_cifar10net.yaml", check_files=False)
    assert len(sweep.points) == 5 * 4 * 3
    assert sorted({p.config.budgets["params"] for p in sweep.points}) == [0.0073, 0.0235, 0.05, 0.12, 0.25]
    cfg = sweep.points[0].config
    assert (cfg.data.name, cfg.data.batch_size, cfg.optim.lr) == ("cifar10", 16, 1e-4)
    recipe = load_config(TrainConfig, str(REPO_ROOT / "experiments" / "pretrain_cifar10.yaml"), {})
    assert (recipe.model.arch, recipe.model.T, recipe.model.loss) == ("cifar10net", 8, "mse")
    assert (recipe.model.neuron.beta, recipe.model.neuron.reset, recipe.model.neuron.surrogate) == (0.5, "zero", "atan")
    assert (recipe.optim.lr, recipe.data.batch_size, recipe.data.name) == (1e-4, 16, "cifar10")
    assert recipe.checkpoint == cfg.model


def test_shorthands_paths_groups_runs_and_unique_names(tmp_path, tiny_model):
    path = sweep_file(tmp_path / "s.yaml", tiny_model,
                      "  resource: [synops]\n  budget: [0.1, 0.05]\n  epochs: [1, 2]\n"
                      "  method.options.lr_z: [5, 40]\n",
                      "runs:\n"
                      "  - {budget: 0.1, resource: synops, epochs: 1, method.options.lr_z: 5}\n"  # a grid point again
                      "  - {budgets.params: 0.3, method: gmp, optim: {lr: 0.01}}\n"
                      "  - {budget: 0.2, model: a/m.pt}\n"
                      "  - {budget: 0.2, model: b/m.pt}\n")
    sweep = load_sweep(path, out=tmp_path / "sw", check_files=False)
    names = [p.name for p in sweep.points]
    assert len(names) == 2 * 2 * 2 + 3  # the repeated grid point runs once
    assert names[:2] == ["synops0.1-minimax-joint-seed0-epochs1-lr_z5", "synops0.1-minimax-joint-seed0-epochs1-lr_z40"]
    assert names[-3] == "params0.3-gmp-joint-seed0-lr0.01"
    assert names[-2:] == ["params0.2-minimax-joint-seed0-modelm", "params0.2-minimax-joint-seed0-modelm-2"]
    first = sweep.points[0]
    assert first.config.budgets == {"synops": 0.1} and first.resource == "synops"
    assert first.config.method.options == {"lr_z": 5} and first.config.optim.epochs == 1
    assert first.run_dir == tmp_path / "sw" / names[0]
    gmp = sweep.points[-3].config
    assert (gmp.method.name, gmp.optim.lr, gmp.optim.epochs, gmp.device) == ("gmp", 0.01, 1, "cpu")  # merged
    assert sweep.extra_keys == ["optim.epochs", "method.options.lr_z", "optim.lr", "model"]


def test_child_env_and_command(tmp_path, tiny_model):
    env = child_env(2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(max(1, threads_per_job(1) // 2))
    assert env["PYTHONUNBUFFERED"] == "1"
    sweep = load_sweep(sweep_file(tmp_path / "s.yaml", tiny_model, "  budget: [0.5]\n"), out=tmp_path / "sw")
    cmd = point_command(sweep.points[0], resume=True)
    assert cmd[1:4] == ["-m", "rccsnn", "compress"] and cmd[-2:] == ["--no-progress", "--resume"]
    assert str(RunDir(tmp_path / "sw" / "params0.5-minimax-joint-seed0").point) in cmd


def test_dry_run_runs_nothing(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path / "s.yaml", tiny_model, "  budget: [0.5, 0.2]\n  method: [minimax, gmp]\n")
    code, out, err = call("sweep", path, "--dry-run")
    assert code == 0, err
    assert "4 points (4 new)" in out and "params0.2-gmp-joint-seed0" in out
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- malformed files
MALFORMED = {
    "yaml": ("base: {model: MODEL\ngrid: [\n", ["YAML syntax error"]),
    "top-level": ("base: {model: MODEL}\ngrdi: {budget: [0.1]}\n", ["unknown top-level key 'grdi'", "'grid'"]),
    "base": ("base: {model: MODEL, optm: {epochs: 1}}\ngrid: {budget: [0.1]}\n",
             ["unknown key 'base.optm'", "did you mean 'base.optim'"]),
    "base-nested": ("base: {model: MODEL, optim: {epoch: 1}}\ngrid: {budget: [0.1]}\n",
                    ["unknown key 'base.optim.epoch'", "'base.optim.epochs'"]),
    "base-out": ("base: {model: MODEL, out: x}\ngrid: {budget: [0.1]}\n", ["base.out", "top-level 'out'"]),
    "grid-key": ("base: {model: MODEL}\ngrid: {budget: [0.1], sed: [0, 1]}\n",
                 ["unknown key 'sed'", "did you mean 'seed'"]),
    "grid-path": ("base: {model: MODEL}\ngrid: {budget: [0.1], optim.lrr: [0.1]}\n",
                  ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    "group-key": ("base: {model: MODEL}\ngrid: {budget: [0.1], v: [{method: gmp, shedule: joint}]}\n",
                  ["grid.v[0]", "unknown key 'shedule'", "'schedule'"]),
    "runs-key": ("base: {model: MODEL}\nruns: [{budget: 0.1, methd: gmp}]\n", ["runs[0]", "'method'"]),
    "empty": ("base: {model: MODEL}\ngrid: {budget: [0.1], seed: []}\n", ["grid.seed is an empty list"]),
    "budget-type": ("base: {model: MODEL}\ngrid: {budget: [0.1, abc]}\n", ["grid.budget[1]", "must be a number"]),
    "budget-range": ("base: {model: MODEL}\ngrid: {budget: [1.5]}\n", ["grid.budget[0]", "(0, 1]"]),
    "not-a-list": ("base: {model: MODEL}\ngrid: {budget: 0.1}\n", ["grid.budget must be a list"]),
    "seed-type": ("base: {model: MODEL}\ngrid: {budget: [0.1], seed: [0, 1.5]}\n",
                  ["grid.seed[1]", "'seed' must be an integer, got 1.5"]),
    "method": ("base: {model: MODEL}\ngrid: {budget: [0.1], method: [minmax]}\n",
               ["method=minmax", "unknown method 'minmax'", "'minimax'"]),
    "epochs": ("base: {model: MODEL}\ngrid: {budget: [0.1], epochs: [0]}\n", ["optim.epochs must be at least 1"]),
    "no-budget": ("base: {model: MODEL}\ngrid: {seed: [0]}\n", ["no budget"]),
    "conflict": ("base: {model: MODEL}\ngrid: {budget: [0.1], method: [gmp], v: [{method: minimax}]}\n",
                 ["both set 'method.name'"]),
    "no-model": ("base: {model: nowhere/model.pt}\ngrid: {budget: [0.1]}\n", ["model file not found"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sweep_is_one_line_exit_2_and_creates_nothing(case, tmp_path, tiny_model):
    text, needles = MALFORMED[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("MODEL", str(tiny_model)))
    code, out, err = call("sweep", path, "--out", tmp_path / "sweep")
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "sweep").exists()


# ------------------------------------------------------------------------------------------- a real tiny sweep
@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """2 budgets x 2 methods x 1 seed, one epoch each, two at a time: (sweep file, sweep dir, stdout)."""
    root = tmp_path_factory.mktemp("sweep")
    path = sweep_file(root / "tiny_sweep.yaml", tiny_model, "  budget: [0.5, 0.2]\n  method: [minimax, magnitude]\n")
    out = root / "out"
    code, stdout, err = call("sweep", path, "--out", out, "--jobs", 2, "--no-progress")
    assert code == 0, stdout + err
    return path, out, stdout


@pytest.mark.slow
def test_results_agree_with_summaries(finished):
    _, out, stdout = finished
    rows = read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == ["params0.5-minimax-joint-seed0", "params0.5-magnitude-joint-seed0",
                                         "params0.2-minimax-joint-seed0", "params0.2-magnitude-joint-seed0"]
    markdown = (out / "results.md").read_text()
    for row in rows:
        summary = json.loads(RunDir(row["run_dir"]).summary.read_text())
        assert row["status"] == "ok"
        assert (row["method"], row["schedule"]) == (summary["method"], summary["schedule"])
        assert float(row["budget_params"]) == summary["budgets"]["params"]
        assert row["resource"] == "params" and row["seed"] == "0" and row["epochs"] == "1"
        for r in RESOURCES:
            assert float(row[f"ratio_{r}"]) == summary["resources"][r]["ratio"]
        assert float(row["accuracy"]) == summary["accuracy"]["compressed"]
        assert float(row["dense_accuracy"]) == summary["accuracy"]["dense"]
        assert float(row["loss"]) == summary["loss"]["compressed"] > 0
        assert float(row["dense_loss"]) == summary["loss"]["dense"] > 0
        assert float(row["wall_seconds"]) == summary["wall_seconds"]
        assert summary["resources"]["params"]["ratio"] <= summary["budgets"]["params"] + 1e-12
        budget = f"params {float(row['budget_params']):g}"
        line = next(l for l in markdown.splitlines() if l.startswith(f"| {row['method']} | joint | {budget} |"))
        assert (f"| 1 | {summary['accuracy']['compressed']:.4f} | {summary['accuracy']['dense']:.4f} "
                f"| {summary['loss']['compressed']:.4f} |") in line
        assert f"{summary['resources']['synops']['ratio']:.4g}" in line
        assert (out / "hparams" / row["name"]).is_dir()
        assert any((out / "hparams" / row["name"]).rglob("events.out.tfevents.*"))
    assert "4 of 4 points finished" in markdown
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown.strip() in stdout and f"sweep directory: {out}" in stdout
    assert "2 at a time" in stdout


@pytest.mark.slow
def test_second_invocation_runs_nothing(finished, monkeypatch):
    path, out, _ = finished
    before, logs = mtimes(out, RunDir.SUMMARY), mtimes(out, RunDir.LOG)

    def no_process(*args, **kwargs):
        raise AssertionError(f"a finished sweep started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    code, stdout, err = call("sweep", path, "--out", out, "--no-progress")
    assert code == 0, err
    assert "4 finished, 0 to run" in stdout
    assert mtimes(out, RunDir.SUMMARY) == before and mtimes(out, RunDir.LOG) == logs
    assert len(read_csv(out / "results.csv")) == 4


@pytest.mark.slow
def test_interrupted_point_resumes_alone(finished):
    path, out, _ = finished
    victim = RunDir(out / "params0.2-minimax-joint-seed0")
    victim.summary.unlink()  # what a run stopped after its last saved epoch leaves: state.pt, no summary
    assert victim.state.is_file()
    code, dry, _ = call("sweep", path, "--out", out, "--dry-run")
    assert code == 0 and "3 done, 1 resume" in dry
    before = mtimes(out, RunDir.SUMMARY)
    code, stdout, err = call("sweep", path, "--out", out, "--no-progress")
    assert code == 0, stdout + err
    assert "1 to run (1 resume)" in stdout
    after = mtimes(out, RunDir.SUMMARY)
    assert set(after) == set(before) | {victim.root.name} and {k: after[k] for k in before} == before
    assert victim.log.read_text().splitlines()[-1] != ""
    assert "--resume" in [l for l in victim.log.read_text().splitlines() if l.startswith("===")][-1]
    assert all(r["status"] == "ok" for r in read_csv(out / "results.csv"))


@pytest.mark.slow
def test_failing_point_is_recorded_and_the_others_go_on(tmp_path, tiny_model):
    # Images of another shape pass the sweep's checks (it does not read data) and fail inside rccsnn compress.
    bad = tmp_path / "other.npz"
    np.savez(bad, x=np.zeros((40, 28, 28), np.uint8), y=np.arange(40) % 10)
    path = sweep_file(tmp_path / "s.yaml", tiny_model,
                      f"  budget: [0.5]\n  variant: [{{data.name: npz, data.path: {bad}}}, {{data.name: digits}}]\n")
    out = tmp_path / "out"
    code, stdout, err = call("sweep", path, "--out", out, "--jobs", 1, "--no-progress")
    assert code == 1, stdout + err
    assert "1 of 2 points failed" in err.splitlines()[-1]
    failed = RunDir(out / "params0.5-minimax-joint-seed0-namenpz-pathother")
    good = RunDir(out / "params0.5-minimax-joint-seed0-namedigits")
    assert good.summary.is_file() and not good.error.exists()  # ran after the failure
    error = failed.error.read_text()
    assert "rccsnn compress: error:" in error and "shape" in error and len(error.splitlines()) == 1
    rows = {r["name"]: r for r in read_csv(out / "results.csv")}
    assert rows[good.root.name]["status"] == "ok" and rows[failed.root.name]["status"] == "failed"
    assert rows[failed.root.name]["error"] == error.strip()
    assert "1 of 2 points finished, 1 failed" in (out / "results.md").read_text()

    # Rerunning retries the failed point only.
    before = mtimes(out, RunDir.SUMMARY)
    code, stdout, err = call("sweep", path, "--out", out, "--no-progress")
    assert code == 1, stdout + err
    assert "1 finished, 1 to run (1 failed)" in stdout
    assert mtimes(out, RunDir.SUMMARY) == before
    assert failed.error.read_text() == error
    assert failed.log.read_text().count("=== rccsnn sweep") == 2


# ------------------------------------------------------------------------------------------- aggregation
def fake_summary(point, accuracy: float, ratio: float, loss: Optional[float] = None,
                 code: Optional[dict] = None) -> dict:
    """A summary.json as a run writes it; without ``loss`` as runs wrote it before they recorded the test loss."""
    resources = {r: {"dense": 100.0, "compressed": 100.0 * ratio, "ratio": ratio} for r in RESOURCES}
    summary = {"method": point.config.method.name, "schedule": point.config.method.schedule,
               "budgets": point.config.budgets, "resources": resources,
               "accuracy": {"dense": 0.9, "compressed": accuracy}, "epochs": 1, "wall_seconds": 1.5,
               "checkpoint": str(RunDir(point.run_dir).model), "events": []}
    if loss is not None:
        summary["loss"] = {"dense": 0.25, "compressed": loss}
    if code is not None:
        summary["code"] = code
    return summary


def test_results_aggregate_over_seeds(tmp_path, tiny_model):
    """Made-up run directories: means and standard deviations over seeds, failed and missing points, stale runs."""
    path = sweep_file(tmp_path / "s.yaml", tiny_model, "  budget: [0.5, 0.2]\n  seed: [0, 1, 2]\n")
    sweep = load_sweep(path, out=tmp_path / "out")
    values, losses = {}, {}
    for i, point in enumerate(sweep.points):
        files = RunDir(point.run_dir)
        files.root.mkdir(parents=True)
        write_yaml(point.config, files.point)
        if point.config.seed == 2 and point.config.budgets["params"] == 0.2:
            files.error.write_text("boom\n")
            continue
        values[point.name] = (0.5 + 0.01 * i * i, point.config.budgets["params"] - 0.001 * i)
        # the 0.5 points recorded their test loss, the 0.2 points are older runs that did not
        losses[point.name] = 0.3 + 0.02 * i * i if point.config.budgets["params"] == 0.5 else None
        files.summary.write_text(json.dumps(fake_summary(point, *values[point.name], losses[point.name])))
    markdown = write_results(sweep)
    assert markdown == (sweep.out / "results.md").read_text()
    for budget, n in ((0.5, 3), (0.2, 2)):
        accs = [a for name, (a, _) in values.items() if name.startswith(f"params{budget:g}-")]
        ratios = [r for name, (_, r) in values.items() if name.startswith(f"params{budget:g}-")]
        assert len(accs) == n
        line = next(l for l in markdown.splitlines() if l.startswith(f"| minimax | joint | params {budget:g} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == str(n)
        assert cells[4] == f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}"
        assert cells[5] == "0.9000"
        given = [v for name, v in losses.items() if name.startswith(f"params{budget:g}-") and v is not None]
        assert cells[6] == (f"{statistics.mean(given):.4f} ± {statistics.stdev(given):.4f}" if given else "-")
        assert cells[7] == f"{statistics.mean(ratios):.4g} ± {statistics.stdev(ratios):.2g}"
    assert "5 of 6 points finished, 1 failed" in markdown and "params0.2-minimax-joint-seed2" in markdown
    rows = read_csv(sweep.out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "ok", "ok", "failed"]
    assert rows[-1]["error"] == "boom"
    assert [r["loss"] for r in rows[:3]] == [f"{losses[r['name']]}" for r in rows[:3]]
    assert [r["dense_loss"] for r in rows[:3]] == ["0.25"] * 3 and [r["loss"] for r in rows[3:]] == [""] * 3
    assert (sweep.out / "pareto.png").stat().st_size > 1000
    # these summaries record no code (as runs did before they recorded it): one version, no note
    assert {r["code"] for r in rows[:5]} == {"unknown"} and "run by different code" not in markdown

    # A run directory whose settings differ from the sweep's is stale: not counted, and rerun afresh.
    stale = sweep.points[0]
    write_yaml({**stale.config_dict(), "seed": 7}, RunDir(stale.run_dir).point)
    assert point_status(stale) == "changed"
    assert collect_results(sweep)[0]["status"] == "missing"
    # A key the config gained since the run, at its default, is not a change (data.frames was added so, and every
    # finished sweep point would have rerun); a point.yaml the loader refuses is.
    old = stale.config_dict()
    del old["data"]["frames"]
    write_yaml(old, RunDir(stale.run_dir).point)
    assert point_status(stale) == "done"
    write_yaml({**old, "data": {**old["data"], "nonsense": 1}}, RunDir(stale.run_dir).point)
    assert point_status(stale) == "changed"
    write_yaml({**old, "seed": "seven"}, RunDir(stale.run_dir).point)  # a value of the wrong type
    assert point_status(stale) == "changed"
    write_yaml(stale.config_dict(), RunDir(stale.run_dir).point)
    # Moving the sweep directory changes nothing.
    moved = load_sweep(path, out=tmp_path / "elsewhere")
    shutil.copytree(sweep.out, moved.out)
    assert [point_status(p) for p in moved.points][1:] == ["done"] * 4 + ["failed"]


def test_shipped_joint_energy_sweep_decides_every_axis():
    sweep = load_sweep(REPO_ROOT / "experiments" / "digits_joint_energy.yaml", check_files=False)
    assert len(sweep.points) == 4 * 5 * 3 and len({p.name for p in sweep.points}) == 60
    decided = {p.config.method.options["decide"] for p in sweep.points}
    assert decided == {"sparsity,bits,timesteps", "sparsity,bits", "bits", "timesteps", "sparsity"}
    assert all(p.resource == "energy" for p in sweep.points)
    assert sorted({p.config.budgets["energy"] for p in sweep.points}) == [0.005, 0.01, 0.03, 0.1]
    assert {p.config.method.options.get("min_T") for p in sweep.points} == {None, 1}


def test_results_say_when_finished_points_come_from_different_code(tmp_path, tiny_model):
    """A finished point counts as done by its settings alone; the results name the code that ran each one."""
    path = sweep_file(tmp_path / "s.yaml", tiny_model, "  budget: [0.5]\n  seed: [0, 1, 2]\n")
    sweep = load_sweep(path, out=tmp_path / "out")
    old = {"rccsnn": "0.1.0", "commit": "a" * 40, "modified": False}
    new = {"rccsnn": "0.1.0", "commit": "b" * 40, "modified": True}
    for point, code in zip(sweep.points, (old, new, new)):
        files = RunDir(point.run_dir)
        files.root.mkdir(parents=True)
        write_yaml(point.config, files.point)
        files.summary.write_text(json.dumps(fake_summary(point, 0.5, 0.4, code=code)))
    markdown = write_results(sweep)
    assert [r["code"] for r in read_csv(sweep.out / "results.csv")] == [
        "0.1.0+aaaaaaa", "0.1.0+bbbbbbb.modified", "0.1.0+bbbbbbb.modified"]
    assert "run by different code (rccsnn version+commit: points): 0.1.0+aaaaaaa: 1, 0.1.0+bbbbbbb.modified: 2" \
        in markdown
    assert all(point_status(p) == "done" for p in sweep.points)  # noted, not rerun
    # a hand-edited summary whose loss or code is not a mapping still reads (those cells empty / unknown)
    summary = fake_summary(sweep.points[0], 0.5, 0.4)
    summary.update(loss=None, code="0.1.0")
    RunDir(sweep.points[0].run_dir).summary.write_text(json.dumps(summary))
    row = collect_results(sweep)[0]
    assert (row["status"], row["loss"], row["code"]) == ("ok", "", "unknown")
