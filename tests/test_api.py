"""The library calls (``rccsnn.train/compress/evaluate/report/export``) give what the CLI commands print."""
from __future__ import annotations

import json

import pytest
import torch

import rccsnn
from helpers import cli
from rccsnn.compression import RunResult
from rccsnn.config import TrainConfig
from rccsnn.formats import ExportResult
from rccsnn.loading import load_model

RECIPE = {
    "data": {"name": "digits", "batch_size": 64},
    "model": {"arch": "convsnn", "args": {"channels": [4, 8], "hidden": 16}, "T": 2},
    "optim": {"lr": 0.02, "epochs": 1},
    "seed": 0,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    result = rccsnn.train(RECIPE, settings={"out": str(out / "train"), "device": "cpu"}, progress=False)
    return result


def test_train_takes_a_dict_with_dotted_settings_on_top(trained, tmp_path):
    assert trained.spec.arch == "convsnn" and trained.spec.T == 2
    assert 0.0 <= trained.metrics["test_accuracy"] <= 1.0 and trained.metrics["epochs"] == 1
    raw = torch.load(trained.checkpoint, weights_only=True)
    assert raw["metrics"]["test_accuracy"] == trained.metrics["test_accuracy"]


def test_compress_then_evaluate_report_export(trained, tmp_path):
    result = rccsnn.compress(trained.checkpoint, {"params": 0.3}, progress=False,
                             settings={"optim.epochs": 1, "out": str(tmp_path / "run"), "device": "cpu"})
    assert isinstance(result, RunResult) and result.budgets == {"params": 0.3}
    assert result.resources["params"]["ratio"] <= 0.3
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == result.summary()

    evaluated = rccsnn.evaluate(result.checkpoint, device="cpu")
    assert evaluated["accuracy"] == pytest.approx(result.accuracy["compressed"], abs=1e-12)
    # the summary's test loss is the saved model's, measured again from the file
    assert evaluated["loss"] == pytest.approx(result.loss["compressed"], rel=1e-6)
    assert result.loss["dense"] == pytest.approx(rccsnn.evaluate(trained.checkpoint, device="cpu")["loss"], rel=1e-6)
    assert evaluated["nonzero_weights"] < evaluated["weights"]

    costs = rccsnn.report(result.checkpoint, device="cpu")
    code, out, err = cli("report", result.checkpoint, "--json", tmp_path / "report.json", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(costs))

    exported = rccsnn.export(result.checkpoint, tmp_path / "m.compact.pt", device="cpu")
    assert isinstance(exported, ExportResult)
    back = load_model(tmp_path / "m.compact.pt")
    for key, value in load_model(result.checkpoint).net.state_dict().items():
        assert torch.equal(back.net.state_dict()[key], value), key


def test_config_objects_and_bad_settings(trained, tmp_path):
    cfg = TrainConfig()
    assert rccsnn.api._config(TrainConfig, cfg, None) is not cfg  # a copy: settings never change the caller's
    with pytest.raises(rccsnn.errors.UserError, match="optim.epochz"):
        rccsnn.compress(trained.checkpoint, {"params": 0.3}, settings={"optim.epochz": 1}, progress=False)
