"""The checkpoint format: exact round trips, plain-data files, one-line errors for every bad file, and no code
from a file runs unless the user trusts it."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from rccsnn.version import __version__
from rccsnn.errors import UserError
from rccsnn.models import build_model
from rccsnn.config import ModelConfig
from rccsnn.models.checkpoint import (FORMAT, FORMAT_VERSION, LoadedModel, ModelSpec, checkpoint_dict, load_checkpoint,
                                     save_checkpoint)
from rccsnn.snn import LIF, NeuronConfig, simulate

ARGS = {"channels": [4], "hidden": 8}
NEURON = NeuronConfig(beta=0.75, threshold=0.5, reset="zero", surrogate="sigmoid", surrogate_alpha=5.0)


def tiny_spec(**kw) -> ModelSpec:
    base = dict(arch="convsnn", args=dict(ARGS), input_shape=(1, 8, 8), num_classes=10, data="digits", T=3,
                encoding="direct", loss="mse", neuron=NEURON)
    base.update(kw)
    return ModelSpec(**base)


def trained_looking_net(spec: ModelSpec) -> nn.Module:
    """A tiny convsnn whose BatchNorm buffers differ from their defaults (so buffers must round-trip too)."""
    torch.manual_seed(0)
    net = build_model(spec.arch, spec.input_shape, spec.num_classes, spec.neuron, spec.args)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(spec.T, 16, *spec.input_shape))
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # enough drive that the outputs are not all zero
    return net.eval()


@pytest.fixture
def saved(tmp_path):
    spec = tiny_spec()
    net = trained_looking_net(spec)
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, spec, metrics={"test_accuracy": 0.5}, recipe={"seed": 3})
    return path, net, spec


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_gives_identical_outputs(saved):
    path, net, spec = saved
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.net.training
    x = torch.rand(5, *spec.input_shape, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        expected = net(x.unsqueeze(0).expand(spec.T, *x.shape))
        got = loaded.net(x.unsqueeze(0).expand(spec.T, *x.shape))
    assert expected.sum() > 0  # the comparison is not between two silent networks
    assert torch.equal(got, expected)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key
    assert loaded.spec == spec
    assert loaded.metrics == {"test_accuracy": 0.5}
    assert loaded.recipe == {"seed": 3}
    assert loaded.compression is None


def test_round_trip_keeps_the_neuron_settings(saved):
    path, _, _ = saved
    lifs = [m for m in load_checkpoint(path).net.modules() if isinstance(m, LIF)]
    assert len(lifs) == 3
    for lif in lifs:
        assert lif.neuron.beta.item() == 0.75
        assert lif.neuron.threshold.item() == 0.5
        assert lif.neuron.reset_mechanism == "zero"


def test_file_is_plain_data_with_the_documented_keys(saved):
    path, net, spec = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"format", "format_version", "rccsnn_version", "arch", "arch_args", "state_dict", "data",
                        "T", "encoding", "loss", "steps", "bits", "neuron", "metrics", "recipe"}
    assert raw["format"] == FORMAT == "rccsnn-checkpoint"
    assert raw["format_version"] == FORMAT_VERSION == 1
    assert raw["rccsnn_version"] == __version__
    assert raw["arch"] == "convsnn" and raw["arch_args"] == ARGS
    assert raw["data"] == {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10}
    assert (raw["T"], raw["encoding"], raw["loss"]) == (3, "direct", "mse")
    assert raw["neuron"] == {"beta": 0.75, "threshold": 0.5, "reset": "zero", "surrogate": "sigmoid",
                             "surrogate_alpha": 5.0}
    assert set(raw["state_dict"]) == set(net.state_dict())
    assert all(v.device.type == "cpu" and not v.requires_grad for v in raw["state_dict"].values())


def test_spec_is_the_recipes_model_settings_plus_what_the_data_fixes():
    """One schema: a spec is a ModelConfig (arch, args, T, encoding, loss, neuron) with the data set's facts."""
    config = ModelConfig(arch="convsnn", args=dict(ARGS), T=3, encoding="direct", loss="mse", neuron=NEURON)
    spec = ModelSpec.from_config(config, input_shape=[1, 8, 8], num_classes=10, data="digits")
    assert isinstance(spec, ModelConfig) and spec == tiny_spec()
    assert spec.input_shape == (1, 8, 8)
    old_name = ModelSpec(arch="convsnn", arch_args=dict(ARGS), input_shape=(1, 8, 8), num_classes=10)
    assert old_name.args == ARGS and old_name.arch_args is old_name.args  # the files' name of args
    with pytest.raises(TypeError, match="arch"):
        ModelSpec(input_shape=(1, 8, 8), num_classes=10)  # unlike a recipe, a spec names its architecture


def test_compact_file_is_the_checkpoint_dict_with_its_state_replaced(saved):
    """The compact writer builds on checkpoint_dict: every checkpoint key but the format's and the state is there,
    with the same value, in the same order."""
    from rccsnn.formats.compact import plan_compact

    path, _, _ = saved
    loaded = load_checkpoint(path)
    contents = plan_compact(loaded).contents
    raw = torch.load(path, map_location="cpu", weights_only=True)
    shared = [k for k in raw if k not in ("format", "format_version", "state_dict")]
    assert [k for k in contents if k in shared] == shared
    assert all(contents[k] == raw[k] for k in shared)
    assert contents["checkpoint_format_version"] == raw["format_version"]
    assert list(contents)[:2] == ["format", "format_version"] and contents["format"] == "rccsnn-compact"
    built = checkpoint_dict(loaded.spec, {}, metrics=loaded.metrics, recipe=loaded.recipe)
    assert {k: v for k, v in built.items() if k != "state_dict"} == {k: v for k, v in raw.items() if k != "state_dict"}


def test_compression_record_is_saved_only_when_given(tmp_path):
    spec = tiny_spec()
    net = build_model(spec.arch, spec.input_shape, spec.num_classes, spec.neuron, spec.args)
    save_checkpoint(tmp_path / "c.pt", net, spec, compression={"method": "magnitude", "budget": 0.25})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["compression"] == {"method": "magnitude", "budget": 0.25}
    assert load_checkpoint(tmp_path / "c.pt").compression == {"method": "magnitude", "budget": 0.25}


def test_save_leaves_no_temporary_files(saved):
    path, _, _ = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


# ------------------------------------------------------------------------------------------------ bad files
def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        load_checkpoint(tmp_path / "empty.pt")


def test_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


TEXT_FILES = ["hello world\n", "data:\n  name: digits\n", "x,y\n1,2\n"]


@pytest.mark.parametrize("text", TEXT_FILES)
@pytest.mark.parametrize("trust", [False, True])
def test_text_file_is_a_user_error(tmp_path, text, trust):
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_checkpoint(path, trust=trust)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text", TEXT_FILES[1:])
def test_text_file_error_does_not_suggest_trusting_it(tmp_path, text):
    # A text file holds no pickled objects: telling the user to pass --trust-checkpoint is wrong (and unsafe advice).
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert "trust" not in str(err.value)


def test_truncated_checkpoint(saved):
    path, _, _ = saved
    data = path.read_bytes()
    half = path.with_name("half.pt")
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(half)


def test_newer_format_version(tmp_path, saved):
    path, _, _ = saved
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(UserError, match="format version 2 is newer"):
        load_checkpoint(tmp_path / "new.pt")


def test_checkpoint_with_a_missing_field(tmp_path, saved):
    path, _, _ = saved
    raw = torch.load(path, weights_only=True)
    del raw["neuron"]
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(UserError, match="missing or has a malformed field"):
        load_checkpoint(tmp_path / "broken.pt")


def test_checkpoint_whose_state_does_not_fit_its_arch_args(tmp_path, saved):
    path, _, _ = saved
    raw = torch.load(path, weights_only=True)
    raw["arch_args"] = {"channels": [4], "hidden": 16}
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="state does not fit the architecture"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_a_saved_tensor_is_not_a_checkpoint(tmp_path):
    torch.save(torch.ones(3), tmp_path / "t.pt")
    with pytest.raises(UserError, match="holds a Tensor, not a checkpoint"):
        load_checkpoint(tmp_path / "t.pt")


def test_a_dict_of_non_tensors_is_not_a_state_dict(tmp_path):
    torch.save({"lr": 0.1}, tmp_path / "d.pt")
    with pytest.raises(UserError, match="neither an rccsnn checkpoint nor a state_dict"):
        load_checkpoint(tmp_path / "d.pt", model="user_models:tiny_net")


# ------------------------------------------------------------------------------------------------ user architectures
def test_bare_state_dict_needs_model(tmp_path, user_models):
    torch.save(user_models.tiny_net().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UserError, match="bare state_dict; pass --model package.module:factory"):
        load_checkpoint(tmp_path / "sd.pt")


@pytest.mark.parametrize("wrapped", [False, True])
def test_bare_state_dict_with_model_loads(tmp_path, user_models, wrapped):
    torch.manual_seed(0)
    net = user_models.tiny_net().eval()
    state = net.state_dict()
    torch.save({"state_dict": state} if wrapped else state, tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", model="user_models:tiny_net")
    assert loaded.spec.arch == "user_models:tiny_net"
    x = torch.rand(4, 1, 8, 8) * 4
    assert torch.equal(simulate(loaded.net, x, 3), simulate(net, x, 3))


def test_state_dict_that_does_not_fit_the_model(tmp_path, user_models):
    torch.save(user_models.tiny_net().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UserError, match="state does not fit the architecture"):
        load_checkpoint(tmp_path / "sd.pt", model="user_models:wide_net")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"missing \['0.1.weight'.*unexpected \['weight'"):
        load_checkpoint(tmp_path / "other.pt", model="user_models:tiny_net")


@pytest.mark.parametrize(
    "model, message",
    [
        ("user_models", "--model expects package.module:factory"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("user_models:missing", "'user_models' has no callable 'missing'"),
        ("user_models:not_a_module", "the factory returned int, not a torch.nn.Module"),
    ],
)
def test_bad_model_factory(tmp_path, user_models, model, message):
    torch.save(user_models.tiny_net().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "sd.pt", model=model)


def test_checkpoint_of_a_user_architecture_needs_model(tmp_path, user_models):
    net = user_models.tiny_net().eval()
    spec = tiny_spec(arch="user_models:tiny_net", args={})
    save_checkpoint(tmp_path / "u.pt", net, spec)
    with pytest.raises(UserError, match="pass --model user_models:tiny_net"):
        load_checkpoint(tmp_path / "u.pt")
    loaded = load_checkpoint(tmp_path / "u.pt", model="user_models:tiny_net")
    x = torch.rand(2, 1, 8, 8) * 4
    assert torch.equal(simulate(loaded.net, x, 3), simulate(net, x, 3))


# ------------------------------------------------------------------------------------------------ pickles
def test_pickled_module_needs_trust(tmp_path, user_models):
    torch.manual_seed(0)
    net = user_models.PickledNet().eval()
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_checkpoint(tmp_path / "whole.pt")
    loaded = load_checkpoint(tmp_path / "whole.pt", trust=True)
    assert isinstance(loaded.net, user_models.PickledNet)
    assert not loaded.net.training
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(simulate(loaded.net, x, 2), simulate(net, x, 2))


def test_pickled_module_built_from_rccsnn_layers_loads_with_trust(tmp_path):
    # A user's own network built from rccsnn's LIF, saved whole with torch.save (the documented second way).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(2), LIF(NeuronConfig())).eval()
    torch.save(net, tmp_path / "whole.pt")
    loaded = load_checkpoint(tmp_path / "whole.pt", trust=True)
    x = torch.rand(2, 4, 1, 2, 2) * 2
    assert torch.equal(loaded.net(x), net(x))


def evil_payloads(tmp_path, user_models):
    """The same code-running payload in torch's zip format and as a raw (legacy) pickle."""
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"state_dict": user_models.Evil(str(marker))}, zipped)
    raw.write_bytes(pickle.dumps(user_models.Evil(str(marker))))
    return marker, [zipped, raw]


def test_payload_really_runs_code_when_unpickled(tmp_path, user_models):
    # Positive control: without this, "the marker does not exist" below could pass for the wrong reason.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(user_models.Evil(str(marker))))
    assert marker.exists()


def test_malicious_pickle_does_not_run_without_trust(tmp_path, user_models):
    marker, files = evil_payloads(tmp_path, user_models)
    for path in files:
        with pytest.raises(UserError, match="--trust-checkpoint"):
            load_checkpoint(path)
        with pytest.raises(UserError, match="--trust-checkpoint"):
            load_checkpoint(path, model="user_models:tiny_net")
        assert not marker.exists(), f"loading {path.name} ran code from the file"


def test_model_factory_in_the_working_directory_imports(tmp_path, monkeypatch):
    """``--model mymodels:make`` finds ./mymodels.py although the rccsnn console script does not put the working
    directory on sys.path."""
    import sys

    from rccsnn.models.checkpoint import import_factory

    (tmp_path / "rccsnn_cwd_models.py").write_text("import torch\n\ndef make():\n    return torch.nn.Linear(2, 3)\n")
    monkeypatch.chdir(tmp_path)
    # What the console script sees: neither '' nor the directory on sys.path.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "rccsnn_cwd_models", raising=False)
    net = import_factory("rccsnn_cwd_models:make")()
    assert isinstance(net, torch.nn.Linear) and net.out_features == 3
