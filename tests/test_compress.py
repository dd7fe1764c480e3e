"""``rccsnn compress`` end to end on a tiny digits model: summary.json, the saved checkpoint, evaluate on it, the
schedules, several constraints, YAML + flags, THE GUARANTEE (a hypothesis property over random networks, budgets,
resources, methods and schedules, measured independently on the saved weights) and one-line errors for bad input.

The tiny model (trained once per session, 2 epochs): convsnn channels [4, 8], hidden 16 on digits (1x8x8), T = 2::

    features.0.0  Conv2d 1 -> 4, 3x3    36 weights, 8x8 = 64 positions   (the first layer: not a target by default)
    features.3.0  Conv2d 4 -> 8, 3x3   288 weights, 4x4 = 16 positions
    classifier.0.1  Linear 32 -> 16    512 weights, 1 position
    classifier.2.0  Linear 16 -> 10    160 weights, 1 position
"""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import snntorch
import torch
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader


from helpers import cli, one_line, tiny_recipe, train_tiny
from rccsnn.compression import compress
from rccsnn.config import CompressConfig, DataConfig, MethodConfig, OptimConfig, TargetsConfig
from rccsnn.data import load_data
from rccsnn.masks import find_targets
from rccsnn.models import build_model
from rccsnn.models.checkpoint import load_checkpoint
from rccsnn.provenance import code_version
from rccsnn.resources import RESOURCES, create_resource, measure_stats
from rccsnn.snn import NeuronConfig
from rccsnn.version import __version__

T = 2
TARGET_WEIGHTS = {"features.3.0": 288, "classifier.0.1": 512, "classifier.2.0": 160}
# MACs of a 3x3 conv with padding 1 on an S x S input: kernel row kh reads inside the input at S - |kh - 1| output
# rows (the border rows read padding), so one (out, in) channel pair does (3S - 2)^2 MACs per step, not 9 S^2.
FIRST_LAYER_MACS = 4 * 1 * (3 * 8 - 2) ** 2 * T  # 3872
DENSE_PARAMS = sum(TARGET_WEIGHTS.values())  # 960
DENSE_MACS = 8 * 4 * (3 * 4 - 2) ** 2 * T + (512 + 160) * T  # 7744
SUMMARY_KEYS = {"method", "schedule", "budgets", "resources", "accuracy", "loss", "epochs", "wall_seconds",
                "checkpoint", "events", "decisions", "code", "environment"}

RECIPE = tiny_recipe(epochs=2)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny digits model: (checkpoint path, its raw checkpoint dict)."""
    ckpt = train_tiny(tmp_path_factory.mktemp("tiny"), RECIPE)
    return ckpt, torch.load(ckpt, weights_only=True)


def compress_cli(ckpt, out, *extra):
    code, stdout, err = cli("compress", ckpt, "--out", out, "--no-progress", "--device", "cpu", *extra)
    assert code == 0, err
    return json.loads((Path(out) / "summary.json").read_text()), stdout


def rebuild(ckpt):
    """The plain architecture with the saved weights, loaded with weights_only=True (no parametrizations)."""
    raw = torch.load(ckpt, weights_only=True)
    assert not any("parametrizations" in k or k.endswith(".mask") for k in raw["state_dict"])
    net = build_model(raw["arch"], raw["data"]["input_shape"], raw["data"]["num_classes"],
                      NeuronConfig(**raw["neuron"]), raw["arch_args"])
    net.load_state_dict(raw["state_dict"], strict=True)
    return net.eval(), raw


def independent(ckpt, data, exclude_first=True):
    """Measure the saved model: nonzero weights and MACs by hand, every resource with measure_stats on val."""
    net, raw = rebuild(ckpt)
    targets = find_targets(net, exclude_first=exclude_first)
    stats = measure_stats(net, targets, DataLoader(data.val, batch_size=512, shuffle=False), raw["T"],
                          raw["encoding"], torch.device("cpu"))
    absolute = {name: create_resource(name).absolute(targets, stats) for name in RESOURCES.names()}
    channels = raw["arch_args"]["channels"]
    side = raw["data"]["input_shape"][1]
    positions = {f"features.{3 * i}.0": (side >> i) ** 2 for i in range(len(channels))}
    by_hand = {"params": 0, "macs": 0, "dense_params": 0, "dense_macs": 0}
    state = raw["state_dict"]
    for t in targets:
        w = state[f"{t.name}.weight"]
        if t.name in positions:  # a 3x3 conv with padding 1: tap (kh, kw) reads inside at (S - |kh-1|)(S - |kw-1|)
            S = int(positions[t.name] ** 0.5)
            inside = torch.tensor([S - abs(k - 1) for k in range(3)], dtype=torch.float64)
            per_tap = (inside[:, None] * inside[None, :]).expand(w.shape)
        else:
            per_tap = torch.ones(w.shape, dtype=torch.float64)
        by_hand["params"] += int(torch.count_nonzero(w))
        by_hand["dense_params"] += w.numel()
        by_hand["macs"] += raw["T"] * float((per_tap * (w != 0)).sum())
        by_hand["dense_macs"] += raw["T"] * float(per_tap.sum())
    return absolute, by_hand


def dense_costs(ckpt, data, exclude_first, names):
    net, raw = rebuild(ckpt)
    targets = find_targets(net, exclude_first=exclude_first)
    stats = measure_stats(net, targets, DataLoader(data.val, batch_size=512, shuffle=False), raw["T"],
                          raw["encoding"], torch.device("cpu"))
    return [create_resource(name).dense(targets, stats) for name in names]


def check_guarantee(summary, budgets, absolute, by_hand):
    res = summary["resources"]
    assert set(res) == {"params", "macs", "synops", "energy", "bitops", "memory"}
    for name, r in res.items():
        assert set(r) == {"dense", "compressed", "ratio"}
        ratio = absolute[name] / r["dense"] if r["dense"] > 0 else 0.0
        assert r["compressed"] == pytest.approx(absolute[name], rel=1e-9, abs=1e-12), name
        assert r["ratio"] == pytest.approx(ratio, rel=1e-9, abs=1e-12), name
        if name in budgets:
            assert ratio <= budgets[name], (name, ratio, budgets[name])  # THE GUARANTEE, on the saved weights
            assert r["ratio"] <= budgets[name]
    # params and MACs counted by hand from the state_dict
    assert res["params"]["dense"] == by_hand["dense_params"] and res["params"]["compressed"] == by_hand["params"]
    assert res["macs"]["dense"] == by_hand["dense_macs"] and res["macs"]["compressed"] == by_hand["macs"]


# ------------------------------------------------------------------------------------------------ one full run
@pytest.fixture(scope="module")
def joint_run(tiny, tmp_path_factory):
    ckpt, _ = tiny
    out = tmp_path_factory.mktemp("joint") / "run"
    summary, stdout = compress_cli(ckpt, out, "--budget", "0.3", "--epochs", "2")
    return out, summary, stdout


def test_summary_json_has_exactly_the_documented_keys(joint_run, tiny):
    out, summary, stdout = joint_run
    assert set(summary) == SUMMARY_KEYS
    assert summary["method"] == "minimax" and summary["schedule"] == "joint"
    assert summary["budgets"] == {"params": 0.3}
    assert summary["epochs"] == 2
    assert summary["checkpoint"] == str(out / "model.pt")
    assert summary["wall_seconds"] > 0
    assert set(summary["accuracy"]) == {"dense", "compressed"}
    assert 0.0 <= summary["accuracy"]["compressed"] <= 1.0
    # the dense accuracy is the pretrained model's test accuracy, evaluated the same way
    assert summary["accuracy"]["dense"] == tiny[1]["metrics"]["test_accuracy"]
    assert set(summary["loss"]) == {"dense", "compressed"} and summary["loss"]["compressed"] > 0
    assert summary["loss"]["dense"] == pytest.approx(tiny[1]["metrics"]["test_loss"], rel=1e-6)
    # the code that ran (from a git checkout: its commit; tests/test_provenance.py checks that on a checkout of its own)
    assert set(summary["code"]) == {"rccsnn", "commit", "modified"} and summary["code"]["rccsnn"] == __version__
    assert summary["code"]["commit"] == code_version()["commit"]
    # and what it ran on: the thread count changes the order of float sums, so a run is repeated exactly with it
    assert summary["environment"] == {"python": platform.python_version(), "torch": torch.__version__,
                                      "snntorch": snntorch.__version__, "numpy": np.__version__,
                                      "threads": torch.get_num_threads(), "device": "cpu", "processes": 1}
    assert isinstance(summary["events"], list) and all(isinstance(e, str) for e in summary["events"])
    assert any(e.startswith("masks frozen") for e in summary["events"])
    res = summary["resources"]
    assert set(res) == {"params", "macs", "synops", "energy", "bitops", "memory"}
    for r in res.values():
        assert set(r) == {"dense", "compressed", "ratio"}
        assert r["ratio"] == pytest.approx(r["compressed"] / r["dense"], rel=1e-12)
    assert res["params"]["dense"] == DENSE_PARAMS and res["macs"]["dense"] == DENSE_MACS
    assert res["params"]["ratio"] <= 0.3
    # energy = 0.9 pJ x synops when no target sees analog input
    assert res["energy"]["dense"] == pytest.approx(0.9 * res["synops"]["dense"], rel=1e-12)
    assert "compressed model:" in stdout and "params" in stdout
    for name in ("model.pt", "config.yaml", "state.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())


def test_saved_checkpoint_is_plain_weights_that_meet_the_budget(joint_run):
    out, summary, _ = joint_run
    net, raw = rebuild(out / "model.pt")
    assert raw["compression"]["budgets"] == {"params": 0.3}
    assert raw["compression"]["method"] == "minimax"
    assert raw["compression"]["resources"] == summary["resources"]
    assert raw["metrics"]["test_accuracy"] == summary["accuracy"]["compressed"]
    assert raw["data"] == {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10}
    nonzero = sum(int(torch.count_nonzero(raw["state_dict"][f"{n}.weight"])) for n in TARGET_WEIGHTS)
    assert nonzero == summary["resources"]["params"]["compressed"] <= math.floor(0.3 * DENSE_PARAMS)
    # the first layer is not a target: it stays dense
    assert int(torch.count_nonzero(raw["state_dict"]["features.0.0.weight"])) == 36
    absolute, by_hand = independent(out / "model.pt", load_data("digits"))
    check_guarantee(summary, {"params": 0.3}, absolute, by_hand)
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.compression["budgets"] == {"params": 0.3}


def test_evaluate_loads_the_compressed_checkpoint(joint_run, tmp_path, capsys):
    out, summary, _ = joint_run
    code, stdout, err = cli("evaluate", out / "model.pt", "--json", tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["accuracy"] == summary["accuracy"]["compressed"]
    assert result["weights"] == DENSE_PARAMS + 36
    assert result["nonzero_weights"] == summary["resources"]["params"]["compressed"] + 36
    assert result["dense_macs"] == DENSE_MACS + FIRST_LAYER_MACS
    assert result["macs"] == summary["resources"]["macs"]["compressed"] + FIRST_LAYER_MACS


# ------------------------------------------------------------------------------------------------ methods x schedules
@pytest.mark.parametrize("method", ["minimax", "magnitude", "gmp"])
@pytest.mark.parametrize("schedule", ["joint", "sequential"])
def test_every_method_and_schedule_runs_from_the_cli(method, schedule, tiny, tmp_path):
    ckpt, _ = tiny
    out = tmp_path / "run"
    summary, _ = compress_cli(ckpt, out, "--method", method, "--schedule", schedule, "--resource", "synops",
                              "--budget", "0.2", "--epochs", "2")
    assert summary["method"] == method and summary["schedule"] == schedule
    assert summary["budgets"] == {"synops": 0.2}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"]["name"] == method and config["method"]["schedule"] == schedule
    absolute, by_hand = independent(out / "model.pt", load_data("digits"))
    check_guarantee(summary, {"synops": 0.2}, absolute, by_hand)


def test_several_constraints_at_once_all_hold(tiny, tmp_path):
    ckpt, _ = tiny
    budgets = {"params": 0.5, "synops": 0.15, "macs": 0.3, "energy": 0.2}
    extra = [a for name, b in budgets.items() if name != "params" for a in ("--constraint", f"{name}={b}")]
    summary, _ = compress_cli(ckpt, tmp_path / "run", "--budget", "0.5", *extra, "--epochs", "2")
    assert summary["budgets"] == budgets
    absolute, by_hand = independent(tmp_path / "run" / "model.pt", load_data("digits"))
    check_guarantee(summary, budgets, absolute, by_hand)


def test_config_yaml_with_flags_on_top(tiny, tmp_path):
    ckpt, _ = tiny
    config = tmp_path / "compress.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(ckpt),
        "budgets": {"params": 0.6},
        "method": {"name": "gmp", "schedule": "sequential", "options": {"updates": 4}},
        "optim": {"epochs": 2, "lr": 0.002},
        "out": str(tmp_path / "from-yaml"),
        "seed": 3,
    }))
    code, _, err = cli("compress", "--config", config, "--budget", "0.25", "--epochs", "1",
                       "--out", tmp_path / "from-flags", "--set", "method.options.compress_fraction=0.4",
                       "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert not (tmp_path / "from-yaml").exists()
    out = tmp_path / "from-flags"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "gmp" and summary["schedule"] == "sequential"  # from the YAML
    assert summary["budgets"] == {"params": 0.25}  # the flag wins
    assert summary["epochs"] == 1
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["optim"]["lr"] == 0.002 and resolved["optim"]["epochs"] == 1 and resolved["seed"] == 3
    assert resolved["method"]["options"] == {"updates": 4, "compress_fraction": 0.4}
    assert resolved["out"] == str(out) and resolved["model"] == str(ckpt)
    assert summary["resources"]["params"]["compressed"] <= 0.25 * DENSE_PARAMS


def test_compress_api_returns_the_summary(tiny, tmp_path):
    ckpt, _ = tiny
    cfg = CompressConfig(model=str(ckpt), budgets={"macs": 0.4}, method=MethodConfig(name="magnitude"),
                         optim=OptimConfig(epochs=1), out=str(tmp_path / "api"), device="cpu")
    result = compress(cfg, load_checkpoint(ckpt), progress=False)
    summary = json.loads((tmp_path / "api" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary()))
    assert result.resources["macs"]["ratio"] <= 0.4


# ------------------------------------------------------------------------------------------------ THE GUARANTEE
@pytest.fixture(scope="session")
def small_digits(tmp_path_factory):
    """300 digits in an .npz (train / val / test carved 70 / 15 / 15 %) and a cache of dense models on it."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("small")
    bunch = load_digits()
    idx = np.random.default_rng(0).permutation(len(bunch.target))[:300]
    path = root / "digits300.npz"
    np.savez(path, x=(bunch.data[idx].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32),
             y=bunch.target[idx].astype(np.int64))
    models = {}

    def dense_model(channels, hidden):
        key = (tuple(channels), hidden)
        if key not in models:
            d = root / f"dense-{'-'.join(map(str, channels))}-{hidden}"
            d.mkdir()
            (d / "r.yaml").write_text(yaml.safe_dump({
                "data": {"name": "npz", "path": str(path), "batch_size": 32},
                "model": {"arch": "convsnn", "args": {"channels": list(channels), "hidden": hidden}, "T": 2},
                "optim": {"lr": 0.02, "epochs": 1}, "seed": 0}))
            code, _, err = cli("train", d / "r.yaml", "--out", d / "run", "--no-progress", "--device", "cpu")
            assert code == 0, err
            models[key] = d / "run" / "model.pt"
        return models[key]

    return path, load_data("npz", path=str(path)), dense_model, root


RESOURCE_NAMES = ["params", "macs", "synops", "energy"]


# No shrinking: every example trains, and the first failing example says enough.
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    channels=st.lists(st.integers(2, 6), min_size=1, max_size=2),
    hidden=st.integers(4, 16),
    exclude_first=st.booleans(),
    resources=st.lists(st.sampled_from(RESOURCE_NAMES), min_size=1, max_size=2, unique=True),
    budgets=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=2),
    method=st.sampled_from(["minimax", "magnitude", "gmp"]),
    schedule=st.sampled_from(["joint", "sequential"]),
    epochs=st.integers(1, 2),
    seed=st.integers(0, 3),
)
def test_the_budget_is_a_guarantee(small_digits, channels, hidden, exclude_first, resources, budgets, method,
                                   schedule, epochs, seed):
    path, data, dense_model, root = small_digits
    ckpt = dense_model(channels, hidden)
    wanted = dict(zip(resources, budgets))
    # A dense model whose targets never see a spike costs 0 SynOps: that case has its own test below
    # (test_a_model_silent_at_every_target_is_not_a_traceback); here every constrained resource costs something.
    assume(all(d > 0 for d in dense_costs(ckpt, data, exclude_first, resources)))
    out = Path(root) / f"run-{len(list(Path(root).glob('run-*')))}"
    cfg = CompressConfig(model=str(ckpt), budgets=wanted, method=MethodConfig(name=method, schedule=schedule),
                         targets=TargetsConfig(exclude_first=exclude_first),
                         data=DataConfig(name="npz", path=str(path)), optim=OptimConfig(epochs=epochs),
                         seed=seed, out=str(out), device="cpu")
    compress(cfg, load_checkpoint(ckpt), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budgets"] == wanted
    assert (summary["method"], summary["schedule"], summary["epochs"]) == (method, schedule, epochs)
    absolute, by_hand = independent(out / "model.pt", data, exclude_first=exclude_first)
    check_guarantee(summary, wanted, absolute, by_hand)


# ------------------------------------------------------------------------------------------------ bad input
BAD_COMPRESS = {
    "budget not a number": (["--budget", "abc"], ["--budget", "'abc'"]),
    "budget zero": (["--budget", "0"], ["--budget", "(0, 1]"]),
    "budget negative": (["--budget", "-0.5"], ["--budget", "(0, 1]"]),
    "budget above one": (["--budget", "1.5"], ["--budget", "(0, 1]", "1.5"]),
    "budget nan": (["--budget", "nan"], ["--budget", "(0, 1]"]),
    "budget inf": (["--budget", "inf"], ["--budget", "(0, 1]"]),
    "unknown resource": (["--resource", "flops", "--budget", "0.1"], ["unknown resource 'flops'", "synops"]),
    "unknown method": (["--budget", "0.1", "--method", "obd"], ["unknown method 'obd'", "minimax", "gmp"]),
    "unknown schedule": (["--budget", "0.1", "--schedule", "alternate"], ["unknown schedule 'alternate'", "joint"]),
    "constraint without =": (["--constraint", "synops"], ["--constraint expects RESOURCE=FRACTION", "'synops'"]),
    "constraint without value": (["--constraint", "synops="], ["--constraint expects RESOURCE=FRACTION"]),
    "constraint without name": (["--constraint", "=0.1"], ["--constraint expects RESOURCE=FRACTION"]),
    "constraint value not a number": (["--constraint", "synops=abc"], ["(0, 1]", "'abc'"]),
    "constraint value too large": (["--constraint", "synops=2"], ["(0, 1]"]),
    "constraint unknown resource": (["--constraint", "flops=0.1"], ["unknown resource 'flops'"]),
    "resource without budget": (["--resource", "synops"], ["--resource needs --budget"]),
    "no budget at all": ([], ["no budget"]),
    "bad method option": (["--budget", "0.1", "--set", "method.options.nope=1"], ["nope"]),
    "bad option for another method": (["--budget", "0.1", "--method", "magnitude", "--set",
                                       "method.options.lr_z=3"], ["lr_z"]),
    "bad minimax allocation": (["--budget", "0.1", "--set", "method.options.allocation=uniform"],
                               ["unknown allocation 'uniform'"]),
    "bad minimax nodes": (["--budget", "0.1", "--set", "method.options.nodes=[0.1, 0.5]"], ["nodes"]),
    "empty target selection": (["--budget", "0.1", "--set", "targets.include=[nothing]"], ["no prunable layers"]),
    "unknown resource constant": (["--resource", "energy", "--budget", "0.1", "--set", "resources.energy.e_fma=1"],
                                  ["resources.energy", "e_fma"]),
    "unknown data set": (["--budget", "0.1", "--data", "imagenet"], ["unknown data set 'imagenet'"]),
    "epochs zero": (["--budget", "0.1", "--epochs", "0"], ["positive integer"]),
}

# Found by these tests: user mistakes that are only noticed after the run directory exists, or not at all and end in a
# traceback (exit code 1). Same contract as above (DESIGN.md house rules; compress.py: "Everything a user can get
# wrong ... is checked before the output directory is created").
BAD_COMPRESS_CHECKED_LATE = {
    "global allocation with synops": (["--resource", "synops", "--budget", "0.1", "--set",
                                       "method.options.allocation=global"], ["allocation 'global'"]),
    "method option of the wrong type (gmp)": (["--budget", "0.1", "--method", "gmp", "--set",
                                               "method.options.updates=abc"], ["updates"]),
    "method option of the wrong type (minimax)": (["--budget", "0.1", "--set", "method.options.s_max=abc"],
                                                  ["s_max"]),
    "resource constant of the wrong type": (["--resource", "energy", "--budget", "0.1", "--set",
                                             "resources.energy.e_mac=abc"], ["e_mac"]),
}


def assert_bad_compress(case_table, case, ckpt, tmp_path, capsys):
    argv, needles = case_table[case]
    out = tmp_path / "run"
    # "--epochs 1" first: a later "--epochs" in argv wins
    code, stdout, err = cli("compress", ckpt, "--out", out, "--epochs", "1", "--no-progress", "--device",
                            "cpu", *argv)
    assert code == 2, (code, stdout, err[-3000:])
    line = one_line(err)
    assert line.startswith("rccsnn compress: error: "), line
    for needle in needles:
        assert needle in line, line
    assert not out.exists(), "a run directory was created for a bad run"


@pytest.mark.parametrize("case", list(BAD_COMPRESS))
def test_bad_compress_input_is_one_line_exit_2_and_creates_nothing(case, tiny, tmp_path, capsys):
    assert_bad_compress(BAD_COMPRESS, case, tiny[0], tmp_path, capsys)


@pytest.mark.parametrize("case", list(BAD_COMPRESS_CHECKED_LATE))
def test_bad_options_checked_late_are_one_line_exit_2_and_create_nothing(case, tiny, tmp_path, capsys):
    assert_bad_compress(BAD_COMPRESS_CHECKED_LATE, case, tiny[0], tmp_path, capsys)


def test_data_of_another_shape(tiny, tmp_path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / "mnist-like.npz"
    np.savez(npz, x=rng.integers(0, 256, size=(60, 28, 28), dtype=np.uint8), y=np.arange(60) % 10)
    out = tmp_path / "run"
    code, stdout, err = cli("compress", tiny[0], "--budget", "0.1", "--data", "npz", "--data-path", npz,
                            "--out", out, "--epochs", "1", "--no-progress", "--device", "cpu")
    assert code == 2, (code, stdout, err)
    line = one_line(err)
    assert "(1, 28, 28)" in line and "(1, 8, 8)" in line
    assert not out.exists()


@pytest.mark.parametrize("text, needles", [
    ("budgets: {params: 0.2}\nmethod: {nmae: gmp}\n", ("unknown key 'method.nmae'", "did you mean 'method.name'")),
    ("budgets: {synops: 1.5}\n", ("budget for synops",)),
])
def test_bad_config_yaml(tiny, tmp_path, capsys, text, needles):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny[0]}\n{text}")
    out = tmp_path / "run"
    code, stdout, err = cli("compress", "--config", config, "--out", out, "--no-progress")
    assert code == 2, (code, stdout, err)
    line = one_line(err)
    assert all(needle in line for needle in needles), line
    assert not out.exists()


def test_a_model_silent_at_every_target_is_not_a_traceback(tiny, tmp_path, capsys):
    """A network whose target layers never see a spike has zero dense SynOps. Compressing it under a SynOps budget
    must either succeed (nothing to prune: the ratio is 0) or be a one-line user error, never a traceback."""
    raw = torch.load(tiny[0], weights_only=True)
    state = raw["state_dict"]
    for key in ("features.0.0.weight", "features.0.1.bias", "features.0.1.running_mean", "features.3.1.bias",
                "features.3.1.running_mean", "classifier.0.1.bias"):
        state[key].zero_()
    silent = tmp_path / "silent.pt"
    torch.save(raw, silent)
    out = tmp_path / "run"
    code, stdout, err = cli("compress", silent, "--resource", "synops", "--budget", "0.5", "--out", out,
                            "--epochs", "1", "--no-progress", "--device", "cpu")
    assert code in (0, 2), (code, err[-2000:])
    if code == 2:
        one_line(err)
    else:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["resources"]["synops"]["dense"] == 0.0
        assert summary["resources"]["synops"]["ratio"] == 0.0
