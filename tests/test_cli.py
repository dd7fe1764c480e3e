"""The command line, in-process: a tiny train -> evaluate round trip, resume, and one line on stderr with exit
code 2 for every mistake a user can make."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rccsnn.version import __version__
from rccsnn.cli import main

import helpers
from helpers import assert_user_error, cli, one_line

REPO_ROOT = Path(__file__).resolve().parents[1]

# convsnn channels [4], hidden 8 on digits (1x8x8, 10 classes), T = 2:
#   conv 1->4 3x3 (36) + BN (8); pool 8x8 -> 4x4; FC 64 -> 8 (512 + 8); FC 8 -> 10 (80 + 10)
TINY_RECIPE = helpers.TINY_RECIPE + "out: runs/should-not-be-used\n"
TINY_PARAMS = 36 + 8 + 512 + 8 + 80 + 10
TINY_WEIGHTS = {"features.0.0": 36, "classifier.0.1": 512, "classifier.2.0": 80}
TINY_POSITIONS = {"features.0.0": 8 * 8, "classifier.0.1": 1, "classifier.2.0": 1}


def tap_macs(name, shape):
    """MACs per step of each weight: a linear weight one, a tap (kh, kw) of the 3x3 conv with padding 1 on 8x8 inputs
    (S - |kh - 1|)(S - |kw - 1|), the output positions at which it reads inside the input."""
    if name != "features.0.0":
        return torch.ones(shape, dtype=torch.float64)
    inside = torch.tensor([8 - abs(k - 1) for k in range(3)], dtype=torch.float64)
    return (inside[:, None] * inside[None, :]).expand(shape)
DIGITS_TEST_SAMPLES = 1797 - round(0.7 * 1797) - round(0.15 * 1797)  # 269


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the evaluate tests: (recipe, run dir, checkpoint, train stdout)."""
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out, ckpt = root / "run", root / "ckpt" / "tiny.pt"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", str(recipe), "--out", str(out), "--checkpoint", str(ckpt), "--no-progress",
                     "--device", "cpu"])
    assert code == 0, stderr.getvalue()
    return recipe, out, ckpt, stdout.getvalue()


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


# ------------------------------------------------------------------------------------------------ train
def test_train_writes_checkpoint_config_and_state(trained):
    recipe, out, ckpt, stdout = trained
    assert ckpt.is_file()
    assert not (out / "model.pt").exists()  # --checkpoint puts the model elsewhere
    assert (out / "state.pt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert f"checkpoint: {ckpt}" in stdout
    raw = torch.load(ckpt, weights_only=True)
    assert raw["arch"] == "convsnn" and raw["arch_args"] == {"channels": [4], "hidden": 8}
    assert raw["T"] == 2 and raw["data"] == {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10}
    assert set(raw["metrics"]) == {"val_accuracy", "test_accuracy", "test_loss", "best_epoch", "epochs"}
    assert raw["metrics"]["epochs"] == 1 and raw["metrics"]["best_epoch"] == 1
    assert raw["recipe"]["out"] == str(out)  # the flag wins over the recipe's `out`

    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["out"] == str(out) and config["checkpoint"] == str(ckpt)
    assert config["optim"]["epochs"] == 1 and config["optim"]["lr"] == 0.02
    assert config["model"]["args"] == {"channels": [4], "hidden": 8}
    assert config["model"]["neuron"] == {"beta": 0.5, "threshold": 1.0, "reset": "subtract", "surrogate": "atan",
                                         "surrogate_alpha": 2.0}


def test_evaluate_json_matches_training(trained, tmp_path, capsys):
    _, _, ckpt, train_stdout = trained
    code, out, err = cli("evaluate", ckpt, "--json", tmp_path / "eval" / "result.json", "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert set(result) == {"accuracy", "loss", "split", "samples", "params", "nonzero_params", "weights",
                           "nonzero_weights", "macs", "dense_macs", "firing_rates"}
    raw = torch.load(ckpt, weights_only=True)
    test_accuracy = raw["metrics"]["test_accuracy"]
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == test_accuracy
    assert f"test_accuracy  {test_accuracy:.4g}" in train_stdout
    assert result["loss"] == pytest.approx(raw["metrics"]["test_loss"], rel=1e-6) and result["loss"] > 0
    assert result["accuracy"] * DIGITS_TEST_SAMPLES == pytest.approx(round(result["accuracy"] * DIGITS_TEST_SAMPLES))
    assert result["split"] == "test" and result["samples"] == DIGITS_TEST_SAMPLES
    assert result["params"] == TINY_PARAMS
    state = raw["state_dict"]
    params = [k for k in state if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
              and ".neuron." not in k]
    assert result["nonzero_params"] == sum(int(torch.count_nonzero(state[k])) for k in params)
    assert result["weights"] == sum(TINY_WEIGHTS.values())
    nonzero = {n: int(torch.count_nonzero(state[f"{n}.weight"])) for n in TINY_WEIGHTS}
    assert result["nonzero_weights"] == sum(nonzero.values())
    weights = {n: state[f"{n}.weight"] for n in TINY_WEIGHTS}
    assert result["dense_macs"] == sum(2 * float(tap_macs(n, w.shape).sum()) for n, w in weights.items())  # T = 2
    assert result["macs"] == sum(2 * float((tap_macs(n, w.shape) * (w != 0)).sum()) for n, w in weights.items())
    assert set(result["firing_rates"]) == {"features.1", "classifier.1", "classifier.3"}
    assert all(0.0 <= v <= 1.0 for v in result["firing_rates"].values())
    assert "accuracy" in out and "features.1" in out
    assert err == ""


def test_evaluate_other_split(trained, tmp_path, capsys):
    _, _, ckpt, _ = trained
    code, _, err = cli("evaluate", ckpt, "--split", "val", "--json", tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["split"] == "val" and result["samples"] == round(0.15 * 1797)
    assert result["accuracy"] == torch.load(ckpt, weights_only=True)["metrics"]["val_accuracy"]


def test_resume_after_a_finished_run_says_it_is_finished(trained, tmp_path, capsys):
    """Issue 18: --resume on a run that ran all its epochs is a one-line error, and the run is left as it was."""
    recipe, out, _, _ = trained
    run_dir = tmp_path / "run"
    shutil.copytree(out, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, stdout, err = cli("train", recipe, "--out", run_dir, "--resume", "--no-progress", "--device", "cpu")
    assert_user_error(code, stdout, err, f"{run_dir} holds a finished run (all its 1 epochs", "nothing to resume",
                      "--overwrite")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_resume_continues_with_more_epochs(trained, tmp_path, capsys):
    recipe, out, _, _ = trained
    run_dir = tmp_path / "run"
    shutil.copytree(out, run_dir)
    assert torch.load(run_dir / "state.pt", weights_only=True)["next_epoch"] == 1
    code, _, err = cli("train", recipe, "--out", run_dir, "--resume", "--epochs", 2, "--no-progress",
                       "--device", "cpu")
    assert code == 0, err
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["next_epoch"] == 2
    metrics = torch.load(run_dir / "model.pt", weights_only=True)["metrics"]
    assert metrics["epochs"] == 2 and metrics["best_epoch"] in (1, 2)


def test_resume_without_state_is_a_user_error(recipe, tmp_path, capsys):
    code, out, err = cli("train", recipe, "--out", tmp_path / "fresh", "--resume", "--no-progress")
    assert_user_error(code, out, err, "nothing to resume", "state.pt")


# ------------------------------------------------------------------------------------------------ train errors
BAD_TRAIN = {
    "missing recipe": (None, [], ["config file not found", "missing.yaml"]),
    "yaml syntax": ("data:\n  name: digits\n   batch_size: 3\n", [], ["recipe.yaml:3:", "YAML syntax error"]),
    "unknown key": ("optim: {epoch: 1}\n", [], ["unknown key 'optim.epoch'", "did you mean 'optim.epochs'"]),
    "wrong type": ("optim: {lr: fast}\n", [], ["'optim.lr' must be a number"]),
    "unknown data set": (TINY_RECIPE, ["--data", "mnsit"], ["unknown data set 'mnsit'", "did you mean 'mnist'",
                                                              "choices:", "digits", "npz", "cifar10"]),
    "unknown architecture": (TINY_RECIPE, ["--set", "model.arch=convnet"],
                             ["unknown architecture 'convnet'", "choices:", "convsnn", "resnet19", "vgg16"]),
    "bad arch args": (TINY_RECIPE, ["--set", "model.args={chanels: [4]}"], ["architecture 'convsnn': bad arguments"]),
    "bad --set": (TINY_RECIPE, ["--set", "model.T"], ["--set expects KEY=VALUE, got 'model.T'"]),
    "bad --set value": (TINY_RECIPE, ["--set", "model.args={a: [1"], ["--set model.args: cannot parse value"]),
    "unknown --set key": (TINY_RECIPE, ["--set", "modle.T=3"], ["unknown key 'modle'", "did you mean 'model'"]),
    "unknown encoding": (TINY_RECIPE, ["--set", "model.encoding=poisson"], ["unknown encoding 'poisson'"]),
    "unknown loss": (TINY_RECIPE, ["--set", "model.loss=hinge"], ["unknown loss 'hinge'"]),
    "bad neuron": (TINY_RECIPE, ["--set", "model.neuron.reset=soft"], ["neuron.reset must be one of"]),
    "bad epochs in recipe": ("optim: {epochs: 0}\n", [], ["optim.epochs must be at least 1, got 0"]),
    "npz without path": (TINY_RECIPE, ["--data", "npz"], ["needs --data-path"]),
    "unknown device": (TINY_RECIPE, ["--device", "tpu"], ["unknown device 'tpu'"]),
    "device that is not there": (TINY_RECIPE, ["--device", "cuda:99"], ["cuda:99"]),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_train_user_errors_are_one_line_and_create_nothing(case, tmp_path, capsys):
    text, extra, needles = BAD_TRAIN[case]
    path = tmp_path / ("missing.yaml" if text is None else "recipe.yaml")
    if text is not None:
        path.write_text(text)
    out_dir = tmp_path / "run"
    code, out, err = cli("train", path, "--out", out_dir, "--no-progress", *extra)
    line = assert_user_error(code, out, err, *needles)
    assert line.startswith("rccsnn train: error: ")
    assert not out_dir.exists(), "a run directory was created for a bad run"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "r.yaml", "--bogus"], "unrecognized arguments: --bogus"),
        (["train"], "the following arguments are required: recipe"),
        (["train", "r.yaml", "--epochs", "0"], "expected a positive integer, got '0'"),
        (["train", "r.yaml", "--lr", "fast"], "invalid float value: 'fast'"),
        (["evaluate", "m.pt", "--split", "dev"], "invalid choice: 'dev'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_argparse_errors_are_one_line(argv, needle, capsys):
    code, out, err = cli(*argv)
    assert_user_error(code, out, err, needle)


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, err = cli()
    assert code == 2 and "train" in out and "evaluate" in out


# ------------------------------------------------------------------------------------------------ evaluate errors
def test_evaluate_missing_file(tmp_path, capsys):
    code, out, err = cli("evaluate", tmp_path / "nope.pt")
    assert_user_error(code, out, err, "rccsnn evaluate: error: no such file", "nope.pt")


@pytest.mark.parametrize("kind", ["text", "npz", "truncated", "directory", "empty"])
def test_evaluate_non_checkpoint_file(kind, trained, tmp_path, capsys):
    path = tmp_path / f"model-{kind}"
    if kind == "text":
        path.write_text("hello world\n")
    elif kind == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, x=np.zeros(3))
    elif kind == "truncated":
        data = trained[2].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"")
    code, out, err = cli("evaluate", path)
    assert_user_error(code, out, err, str(path))


def test_evaluate_pickled_module_needs_trust(tmp_path, capsys, user_models):
    torch.save(user_models.PickledNet(), tmp_path / "whole.pt")
    code, out, err = cli("evaluate", tmp_path / "whole.pt")
    assert_user_error(code, out, err, "--trust-checkpoint")

    code, out, err = cli("evaluate", tmp_path / "whole.pt", "--trust-checkpoint", "--T", 2,
                         "--json", tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["params"] == 64 * 10 + 10 and result["samples"] == DIGITS_TEST_SAMPLES
    assert result["dense_macs"] == 64 * 10 * 2 and result["firing_rates"] == {}


def test_evaluate_state_dict_with_model(tmp_path, capsys, user_models):
    torch.save(user_models.tiny_net().state_dict(), tmp_path / "sd.pt")
    code, out, err = cli("evaluate", tmp_path / "sd.pt")
    assert_user_error(code, out, err, "--model")
    code, out, err = cli("evaluate", tmp_path / "sd.pt", "--model", "user_models:tiny_net",
                         "--json", tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["params"] == 64 * 10 + 10


def test_evaluate_malicious_pickle_runs_no_code(tmp_path, capsys, user_models):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": user_models.Evil(str(marker))}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(user_models.Evil(str(marker))))
    for name in ("evil.pt", "evil.pkl"):
        for extra in ([], ["--model", "user_models:tiny_net"]):
            code, out, err = cli("evaluate", tmp_path / name, *extra)
            assert_user_error(code, out, err, "--trust-checkpoint")
            assert not marker.exists(), f"evaluate {name} {extra} ran code from the file"


@pytest.mark.slow
def test_evaluate_malicious_pickle_in_a_real_process(tmp_path, user_models):
    # Out of process, so that warnings printed by torch.load count as stderr lines too.
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(user_models.Evil(str(marker))))
    proc = subprocess.run([sys.executable, "-m", "rccsnn", "evaluate", str(tmp_path / "evil.pkl")],
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--trust-checkpoint" in one_line(proc.stderr)


def test_evaluate_data_of_another_shape(trained, tmp_path, capsys):
    _, _, ckpt, _ = trained
    rng = np.random.default_rng(0)
    npz = tmp_path / "mnist-like.npz"
    np.savez(npz, x=rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8), y=np.arange(40) % 10)
    code, out, err = cli("evaluate", ckpt, "--data", "npz", "--data-path", npz)
    assert_user_error(code, out, err, "(1, 28, 28)", "(1, 8, 8)", "--data")


def test_evaluate_unknown_data_set(trained, capsys):
    code, out, err = cli("evaluate", trained[2], "--data", "imagenet")
    assert_user_error(code, out, err, "unknown data set 'imagenet'", "choices:", "digits")


def test_evaluate_unknown_encoding(trained, capsys):
    code, out, err = cli("evaluate", trained[2], "--encoding", "poisson")
    assert_user_error(code, out, err, "unknown encoding 'poisson'")


def test_evaluate_unwritable_json(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = cli("evaluate", trained[2], "--json", blocker / "r.json", "--device", "cpu")
    assert_user_error(code, out, err, "cannot write")


# ------------------------------------------------------------------------------------------------ entry point
@pytest.mark.slow
def test_version_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "rccsnn", "--version"], cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"rccsnn {__version__}\n"


@pytest.mark.parametrize("argv, expected", [
    # --set alone: no flag the user did not pass may undo it.
    (["--set", "method.schedule=sequential", "--set", "optim.lr=0.05", "--set", "optim.epochs=3",
      "--set", "data.name=mnist", "--set", "budgets.synops=0.2"],
     {"schedule": "sequential", "lr": 0.05, "epochs": 3, "data": "mnist", "budgets": {"synops": 0.2}}),
    # The flags alone (no data set named: the model file's own).
    (["--schedule", "sequential", "--lr", "0.02", "--epochs", "4", "--budget", "0.1"],
     {"schedule": "sequential", "lr": 0.02, "epochs": 4, "data": None, "budgets": {"params": 0.1}}),
    # Both: --set is applied last, and a --set budget adds to the --budget flag.
    (["--lr", "0.02", "--set", "optim.lr=0.07", "--budget", "0.1", "--set", "budgets.synops=0.3"],
     {"schedule": "joint", "lr": 0.07, "epochs": 30, "data": None, "budgets": {"params": 0.1, "synops": 0.3}}),
])
def test_compress_overrides_keep_set_values(argv, expected):
    """A ``--set`` key is not overwritten by a flag the user left out (the flags default to None)."""
    from rccsnn.cli import build_parser, compress_overrides
    from rccsnn.config import CompressConfig, load_config

    cfg = load_config(CompressConfig, None, compress_overrides(build_parser().parse_args(["compress", "model.pt", *argv])))
    assert cfg.model == "model.pt"
    assert cfg.method.schedule == expected["schedule"]
    assert cfg.optim.lr == pytest.approx(expected["lr"])
    assert cfg.optim.epochs == expected["epochs"]
    assert cfg.data.name == expected["data"]
    assert dict(cfg.budgets) == expected["budgets"]


def test_train_set_values_survive_absent_flags(tmp_path):
    from rccsnn.cli import build_parser, config_overrides

    args = build_parser().parse_args(["train", "recipe.yaml", "--set", "optim.lr=0.3", "--set", "seed=7"])
    overrides = config_overrides(args, {"optim.lr": args.lr, "seed": args.seed, "out": args.out})
    assert overrides == {"optim.lr": 0.3, "seed": 7}


def test_evaluate_finds_the_data_file_the_model_recorded(tmp_path, monkeypatch, capsys):
    """A model trained on an npz records its path: evaluate needs no --data-path, from the directory it was trained
    in or after the run directory and the data moved together; --data-path still wins."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    work = tmp_path / "work"
    work.mkdir()
    np.savez(work / "d.npz", x=(bunch.data[:200].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32),
             y=bunch.target[:200].astype(np.int64))
    np.savez(work / "other.npz", x=(bunch.data[200:290].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32),
             y=bunch.target[200:290].astype(np.int64))
    monkeypatch.chdir(work)
    (work / "r.yaml").write_text(helpers.TINY_RECIPE.replace("{name: digits,", "{name: npz, path: d.npz,"))
    code, _, err = cli("train", "r.yaml", "--out", "run", "--no-progress", "--device", "cpu")
    assert code == 0, err

    def samples(*extra):
        code, _, err = cli("evaluate", "run/model.pt", "--split", "val", "--json", "e.json", *extra)
        assert code == 0, err
        return json.loads((work / "e.json").read_text())["samples"]

    assert samples() == 30  # 15 % of the 200 samples of d.npz, with no --data-path
    assert samples("--data-path", "other.npz") == 14  # the user's file wins (15 % of 90)
    # compress too, and the compressed file records the file again.
    code, _, err = cli("compress", "run/model.pt", "--budget", "0.5", "--epochs", "1", "--out", "c", "--no-progress",
                       "--device", "cpu")
    assert code == 0, err
    assert torch.load(work / "c" / "model.pt", weights_only=True)["recipe"]["data"]["path"] == "d.npz"
    code, _, err = cli("evaluate", "c/model.pt", "--split", "val", "--json", "c.json")
    assert code == 0, err
    assert json.loads((work / "c.json").read_text())["samples"] == 30
    # The library calls do the same.
    import rccsnn

    assert rccsnn.evaluate("run/model.pt", split="val", device="cpu")["samples"] == 30
    rccsnn.compress("run/model.pt", {"params": 0.5}, settings={"optim.epochs": 1, "out": "c2", "device": "cpu"},
                    progress=False)
    assert torch.load(work / "c2" / "model.pt", weights_only=True)["recipe"]["data"]["path"] == "d.npz"
    # The run directory and its data move together: the recorded relative path resolves beside the model file.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(work / "run"), moved / "run")
    shutil.move(str(work / "d.npz"), moved / "run" / "d.npz")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("evaluate", moved / "run" / "model.pt", "--split", "val", "--json", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["samples"] == 30


@pytest.mark.parametrize("recipe", [{}, {"data": "digits"}, {"data": None}, {"data": {"name": "npz"}}])
def test_recorded_data_ignores_recipes_that_record_no_file(recipe):
    """A recipe is free-form (benchmarks record ``"data": "digits"``): no data file recorded, nothing filled in."""
    from rccsnn.loading import DataSource, recorded_data
    from rccsnn.models.checkpoint import LoadedModel, ModelSpec

    loaded = LoadedModel(net=torch.nn.Linear(1, 1), recipe=recipe,
                         spec=ModelSpec(arch="x", input_shape=(1,), num_classes=2, data="npz", T=1))
    assert recorded_data(loaded, "m.pt", DataSource()) == DataSource()
