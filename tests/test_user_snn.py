"""The user's snntorch SNN as it is written (issue: compress the user's model as written): both model contracts,
every snntorch neuron, snntorch.functional's losses, the CLI on state_dict files, the Python API on module objects
and DataLoaders, event data through tonic, and the one-line errors.

The models are in tests/snntorch_models.py, written as snntorch's tutorials write them; no rccsnn code inside.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import snntorch.functional as SF
import torch
from torch.utils.data import DataLoader, TensorDataset

import rccsnn
from helpers import assert_user_error, cli
from rccsnn.contracts import Readout, detect_steps, run
from rccsnn.errors import UserError
from rccsnn.snn import LOSSES, SpikeMonitor, forward

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def models(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    import snntorch_models

    return snntorch_models


@pytest.fixture(scope="module")
def digits():
    """Digits as a user loads them: ``x [N, 1, 8, 8]`` in [0, 1], ``y [N]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)


def loaders(digits, n_train=600, n_val=300):
    x, y = digits
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[n_train:n_train + n_val], y[n_train:n_train + n_val]), batch_size=128)
    return train, val


# ------------------------------------------------------------------------------------------------ contracts
KINDS = ("csnn", "mlp", "synaptic", "alpha", "lapicque", "rleaky", "rsynaptic", "own_loop")


@pytest.mark.parametrize("name", KINDS)
def test_every_snntorch_neuron_runs_as_written(models, name):
    """Detected contract, spikes and membrane [T, B, K], and no state carried from one batch into the next."""
    torch.manual_seed(0)
    net = getattr(models, name)().eval()
    x = torch.rand(5, 1, 8, 8) * 3
    steps = detect_steps(net, x.unsqueeze(0).expand(4, *x.shape))
    assert steps == ("multi" if name == "own_loop" else "single")
    with torch.no_grad():
        first = forward(net, x, 4, "direct", steps)
        forward(net, torch.rand(3, 1, 8, 8) * 3, 4, "direct", steps)  # another batch, another batch size
        again = forward(net, x, 4, "direct", steps)
    assert first.spikes.shape == first.mem.shape == (4, 5, 10)
    assert torch.equal(first.spikes, again.spikes) and torch.equal(first.mem, again.mem)
    assert set(first.spikes.unique().tolist()) <= {0.0, 1.0}


def test_single_step_run_equals_the_users_own_time_loop(models):
    """rccsnn's T calls reproduce the loop snntorch's tutorial 7 writes (reset, then net(data[step]) per step)."""
    import snntorch.utils

    torch.manual_seed(0)
    net = models.csnn().eval()
    data = torch.rand(4, 6, 1, 8, 8) * 3
    with torch.no_grad():
        snntorch.utils.reset(net)
        spk, mem = zip(*[net(data[step]) for step in range(4)])
        ours = run(net, data, "single")
    assert torch.equal(ours.spikes, torch.stack(spk)) and torch.equal(ours.mem, torch.stack(mem))


def test_recurrent_weights_are_targets_and_their_synops_are_counted(models):
    from rccsnn.masks import find_targets
    from rccsnn.resources import stats_from_monitor

    torch.manual_seed(0)
    net = models.rleaky().eval()
    targets = find_targets(net, exclude_first=True)
    assert [t.name for t in targets] == ["2.recurrent", "3"]
    with torch.no_grad(), SpikeMonitor(net, 4) as mon:
        spikes = forward(net, torch.rand(8, 1, 8, 8) * 3, 4, "direct", "single").spikes
    stats = stats_from_monitor(mon, targets)
    assert not mon.analog_input["2.recurrent"]          # it reads the layer's own spikes
    assert float(mon.tap_reads("2.recurrent").sum()) > 0  # and they are counted as synaptic operations
    assert mon.firing_rates()["2"] > 0 and spikes.shape == (4, 8, 10) and stats.T == 4


def test_a_multi_step_loop_over_init_hidden_neurons_is_not_taken_for_single_step(models):
    """Handed one step, such a model loops over the batch as over time (its later samples depend on the earlier
    ones); the probe sees that and takes the multi-step contract, whose output then matches the model's own loop."""
    torch.manual_seed(0)
    net = models.stateful_loop().eval()
    x = torch.rand(4, 3, 1, 8, 8) * 3
    assert detect_steps(net, x) == "multi"
    with torch.no_grad():
        spk, mem = net(x)
        out = run(net, x, "multi")
    assert torch.equal(out.spikes, spk) and torch.equal(out.mem, mem)


def test_a_module_on_another_device_is_probed_there(models, digits):
    """The probes are built on the module's own device (here the meta device stands in for a GPU: the forward
    reaches the module, which a CPU probe would not)."""
    from rccsnn.contracts import probe_input

    net = models.mlp().to("meta")
    assert probe_input(net, (1, 8, 8), 4).device.type == "meta"


def test_output_that_fits_neither_contract_is_one_line(models):
    net = models.returns_dict()
    with pytest.raises(UserError) as err:
        detect_steps(net, torch.rand(4, 2, 1, 8, 8))
    message = str(err.value)
    assert "\n" not in message and "fits neither contract" in message and "dict" in message
    assert "multi-step: net(x [T, B, ...])" in message and "single-step: net(x_t [B, ...])" in message


# ------------------------------------------------------------------------------------------------ losses
def test_losses_are_snntorch_functional():
    torch.manual_seed(0)
    spikes = (torch.rand(6, 5, 10) > 0.6).float()
    mem = torch.randn(6, 5, 10)
    y = torch.randint(0, 10, (5,))
    out = Readout(spikes, mem)
    assert torch.equal(LOSSES.get("ce")(out, y), torch.nn.functional.cross_entropy(spikes.sum(0), y))
    assert torch.allclose(LOSSES.get("rate_ce")(out, y), SF.ce_rate_loss()(spikes, y).reshape(()))
    assert torch.allclose(LOSSES.get("count_mse")(out, y), SF.mse_count_loss(0.8, 0.2)(spikes, y))
    tutorial5 = sum(torch.nn.functional.cross_entropy(mem[t], y) for t in range(6)) / 6
    assert torch.allclose(LOSSES.get("mem_ce")(out, y), tutorial5)
    assert torch.allclose(LOSSES.get("mem_max_ce")(out, y), torch.nn.functional.cross_entropy(mem.max(0).values, y))
    with pytest.raises(UserError, match="trains on the output membrane"):
        LOSSES.get("mem_ce")(Readout(spikes), y)


# ------------------------------------------------------------------------------------------------ the CLI
def _state_file(models, name: str, path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(getattr(models, name)().state_dict(), path)
    return path


def _compress(models, tmp_path, name, budget_args, *extra, out="run"):
    state = _state_file(models, name, tmp_path / f"{name}.pt")
    code, stdout, err = cli("compress", state, "--model", f"snntorch_models:{name}", "--T", "2", *budget_args,
                            "--epochs", "1", "--no-progress", "--device", "cpu", "--out", tmp_path / out, *extra)
    return code, stdout, err, tmp_path / out


@pytest.mark.parametrize("name,node", [("mlp", "LIF"), ("synaptic", "CubaLIF")])
def test_nir_export_of_a_tutorial_model_runs_back_in_snntorch(models, tmp_path, name, node):
    """A single-step ``nn.Sequential`` of ``init_hidden=True`` neurons (``Leaky``, ``Synaptic``), exported to NIR,
    read back with ``nir.read`` and run by snntorch's own NIR importer, spikes the same as the user's network at
    every step (run with NIR's semantics: reset to zero, no reset delay)."""
    import nir
    import nirtorch
    import snntorch as snn
    from snntorch.import_nir import _nir_to_snntorch_module

    from rccsnn.contracts import reset_state

    torch.manual_seed(0)
    net = getattr(models, name)()
    with torch.no_grad():
        net[1].weight.mul_(4.0)  # enough input current that both layers spike on random inputs
    state = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), state)
    code, out, err = cli("export", state, "--model", f"snntorch_models:{name}", "--T", "4", "--format", "nir",
                         "--out", tmp_path / f"{name}.nir", "--device", "cpu")
    assert code == 0, err
    assert "resets to v_reset = 0" in out  # the tutorial's neurons subtract: said, not hidden
    graph = nir.read(tmp_path / f"{name}.nir")
    chain = ["input", "0", "1", "2", "3", "4", "output"]
    assert sorted(graph.nodes) == sorted(chain) and [tuple(e) for e in graph.edges] == list(zip(chain, chain[1:]))
    assert [type(graph.nodes[k]).__name__ for k in chain] == ["Input", "Flatten", "Affine", node, "Affine", node,
                                                              "Output"]
    weights = net.state_dict()
    for layer in ("1", "3"):
        assert np.array_equal(graph.nodes[layer].weight, weights[f"{layer}.weight"].numpy())
        assert np.array_equal(graph.nodes[layer].bias, weights[f"{layer}.bias"].numpy())
    for layer, size in (("2", 48), ("4", 10)):
        lif = graph.nodes[layer]
        tau = lif.tau if node == "LIF" else lif.tau_mem
        assert tau.shape == (size,) and np.allclose(tau, 1e-3) and np.allclose(lif.r, 10.0)  # beta 0.9
        if node == "CubaLIF":  # alpha 0.8
            assert np.allclose(lif.tau_syn, 5e-4) and np.allclose(lif.w_in, 5.0)
        assert (lif.v_threshold == 1.0).all() and (lif.v_reset == 0).all()

    snntorch_node = lambda n: _nir_to_snntorch_module(n, init_hidden=True)  # noqa: E731
    imported = nirtorch.nir_to_torch(graph, {
        nir.Affine: snntorch_node, nir.LIF: snntorch_node, nir.CubaLIF: snntorch_node,
        nir.Flatten: lambda n: torch.nn.Flatten(n.start_dim + 1, n.end_dim + 1 if n.end_dim >= 0 else n.end_dim)})
    for neuron in (net[2], net[4]):
        assert type(neuron) is {"LIF": snn.Leaky, "CubaLIF": snn.Synaptic}[node]
        neuron.reset_mechanism, neuron.reset_delay = "zero", False
    ours, theirs = {"2": [], "4": []}, {"2": [], "4": []}
    handles = [net[int(k)].register_forward_hook(lambda m, i, o, k=k: ours[k].append(
        o[0] if isinstance(o, tuple) else o)) for k in ours]
    handles += [imported.get_submodule(k).register_forward_hook(lambda m, i, o, k=k: theirs[k].append(
        o[0] if isinstance(o, tuple) else o)) for k in theirs]
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reset_state(net)
        carried = None
        for _ in range(4):
            net(x)
            _, carried = imported(x, carried)
    for h in handles:
        h.remove()
    for k in ours:
        assert float(torch.stack(ours[k]).sum()) > 0, k  # every layer spikes: the comparison is not trivial
        assert torch.equal(torch.stack(theirs[k]), torch.stack(ours[k])), k


def test_nir_export_reads_neurons_called_by_keyword(models, tmp_path):
    import nir

    state = _state_file(models, "keyword_call", tmp_path / "kw.pt")
    code, out, err = cli("export", state, "--model", "snntorch_models:keyword_call", "--T", "2", "--format", "nir",
                         "--out", tmp_path / "kw.nir", "--device", "cpu")
    assert code == 0, err
    graph = nir.read(tmp_path / "kw.nir")
    chain = ["input", "flat", "fc1", "lif1", "fc2", "lif2", "output"]
    assert [tuple(e) for e in graph.edges] == list(zip(chain, chain[1:]))
    assert type(graph.nodes["lif2"]).__name__ == "LIF"


def test_nir_neuron_parameters_per_neuron_if_and_mixed():
    """beta and threshold per neuron are written per neuron; beta = 1 everywhere is NIR's IF; a layer mixing
    beta = 1 and beta < 1 is a one-line error."""
    import nir
    import snntorch as snn

    from rccsnn.formats.nir import _leaky_node

    beta = torch.tensor([0.5, 0.9, 0.75])
    node = _leaky_node(nir, snn.Leaky(beta=beta, threshold=torch.tensor([1.0, 2.0, 0.5])), (3,), "x")
    assert isinstance(node, nir.LIF)
    assert np.allclose(node.tau, 1e-4 / (1 - beta.double().numpy())) and np.allclose(node.r, 1 / (1 - beta.numpy()))
    assert node.v_threshold.tolist() == [1.0, 2.0, 0.5]
    assert isinstance(_leaky_node(nir, snn.Leaky(beta=1.0), (2, 2), "x"), nir.IF)
    with pytest.raises(UserError, match="'x' mixes beta = 1"):
        _leaky_node(nir, snn.Leaky(beta=torch.tensor([1.0, 0.5])), (2,), "x")
    with pytest.raises(UserError, match="does not fit its output shape"):
        _leaky_node(nir, snn.Leaky(beta=torch.tensor([0.5, 0.5])), (3,), "x")


def test_nir_export_refuses_what_nir_cannot_say_in_one_line(models, tmp_path):
    """Tutorial 7's csnn pools the convolution's analog output, and NIR has no Alpha neuron: one line each, no
    traceback, no file."""
    for name, why in (("csnn", "max-pooling '1' acts on analog values"),
                      ("alpha", "(Alpha) is not supported; the supported spiking layers are snntorch's Leaky")):
        state = _state_file(models, name, tmp_path / f"{name}.pt")
        line = assert_user_error(*cli("export", state, "--model", f"snntorch_models:{name}", "--T", "2", "--format",
                                      "nir", "--out", tmp_path / f"{name}.nir", "--device", "cpu"), why)
        assert "NIR export" in line and not (tmp_path / f"{name}.nir").exists()

@pytest.mark.parametrize("name,budget", [("csnn", ("--budget", "0.05")),
                                         ("own_loop", ("--resource", "synops", "--budget", "0.1"))])
def test_cli_compresses_the_model_unwrapped_and_its_state_loads_strict(models, tmp_path, name, budget):
    code, _, err, out = _compress(models, tmp_path, name, budget)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    resource, fraction = ("params", 0.05) if budget[-1] == "0.05" else ("synops", 0.1)
    assert summary["resources"][resource]["ratio"] <= fraction
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["steps"] == ("multi" if name == "own_loop" else "single")
    assert raw["neuron"] is None and raw["loss"] == "ce" and raw["arch"] == f"snntorch_models:{name}"
    net = getattr(models, name)()
    net.load_state_dict(raw["state_dict"], strict=True)
    # evaluate --json and report --json list the user model's firing rates and per-layer SynOps
    code, _, err = cli("evaluate", out / "model.pt", "--model", f"snntorch_models:{name}", "--json",
                       tmp_path / "e.json", "--device", "cpu")
    assert code == 0, err
    rates = json.loads((tmp_path / "e.json").read_text())["firing_rates"]
    assert set(rates) == ({"lif1", "lif2"} if name == "own_loop" else {"2", "5", "8"})
    code, _, err = cli("report", out / "model.pt", "--model", f"snntorch_models:{name}", "--json",
                       tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["firing_rates"]) == set(rates)
    assert report["total"]["synops"] == pytest.approx(sum(layer["synops"] for layer in report["layers"]))


@pytest.mark.parametrize("name", ["csnn", "mlp", "own_loop", "synaptic", "rleaky"])
@pytest.mark.parametrize("resource,fraction", [("params", 0.05), ("synops", 0.1)])
def test_cli_compresses_every_tutorial_model_to_its_budget(models, tmp_path, name, resource, fraction):
    code, _, err, out = _compress(models, tmp_path, name, ("--resource", resource, "--budget", str(fraction)))
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["resources"][resource]["ratio"] <= fraction
    getattr(models, name)().load_state_dict(torch.load(out / "model.pt", weights_only=True)["state_dict"],
                                            strict=True)


def test_automatic_path_equals_the_hand_wrapped_model_bit_for_bit(models, tmp_path):
    """The same single-step network, run unwrapped and inside the multi-step wrapper a user used to write: same
    seed, same weights after compression, to the bit."""
    code, _, err, auto = _compress(models, tmp_path, "csnn", ("--budget", "0.1"), out="auto")
    assert code == 0, err
    torch.manual_seed(0)
    torch.save(models.HandWrapped(models.csnn()).state_dict(), tmp_path / "wrapped.pt")
    code, _, err = cli("compress", tmp_path / "wrapped.pt", "--model", "snntorch_models:wrapped_csnn", "--T", "2",
                       "--budget", "0.1", "--epochs", "1", "--no-progress", "--device", "cpu", "--out",
                       tmp_path / "hand")
    assert code == 0, err
    a = torch.load(auto / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "hand" / "model.pt", weights_only=True)["state_dict"]
    assert {f"net.{k}" for k in a} == set(b)
    assert all(torch.equal(a[k], b[f"net.{k}"]) for k in a)


def test_membrane_loss_trains_the_tutorial5_model(models, tmp_path):
    code, _, err, out = _compress(models, tmp_path, "own_loop", ("--budget", "0.2"), "--loss", "mem_ce")
    assert code == 0, err
    assert torch.load(out / "model.pt", weights_only=True)["loss"] == "mem_ce"


@pytest.mark.parametrize("case", ["neither", "forced", "unknown_loss", "no_membrane"])
def test_bad_model_or_loss_is_one_line_and_writes_nothing(models, tmp_path, case):
    name, extra, needle = {
        "neither": ("returns_dict", (), "fits neither contract"),
        "forced": ("csnn", ("--model-steps", "multi"), "cannot run"),
        "unknown_loss": ("csnn", ("--loss", "hinge"), "unknown loss 'hinge'"),
        "no_membrane": ("wrapped_csnn", ("--loss", "mem_ce"), "trains on the output membrane"),
    }[case]
    code, out, err, run_dir = _compress(models, tmp_path, name, ("--budget", "0.1"), *extra)
    assert_user_error(code, out, err, needle)
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------------------ the Python API
def test_api_compresses_a_module_object_on_dataloaders(models, digits):
    train, val = loaders(digits)
    torch.manual_seed(0)
    net = models.mlp()
    trained = rccsnn.train(net, train, val, T=4, epochs=3, lr=5e-3, progress=False)
    assert trained.model is net and trained.summary["val_accuracy"] > 0.5
    assert set(trained.summary) == {"val_accuracy", "test_accuracy", "test_loss", "best_epoch", "epochs"}
    assert trained.summary["test_loss"] > 0
    result = rccsnn.compress(net, train, val, budget=0.1, resource="synops", T=4, epochs=2, progress=False)
    assert result.model is net and result.checkpoint is None
    assert result.summary["resources"]["synops"]["ratio"] <= 0.1
    assert not any("parametrizations" in name for name, _ in net.named_modules())
    models.mlp().load_state_dict(net.state_dict(), strict=True)
    report = rccsnn.report(net, val, T=4)
    assert report["total"]["synops"] == pytest.approx(result.summary["resources"]["synops"]["compressed"],
                                                      rel=1e-6)
    assert set(rccsnn.evaluate(net, val, T=4)["firing_rates"]) == {"2", "4"}


def test_api_writes_the_run_directory_when_asked(models, digits, tmp_path):
    train, val = loaders(digits, 200, 100)
    torch.manual_seed(0)
    result = rccsnn.compress(models.own_loop(), train, val, budget=0.2, T=2, epochs=1, progress=False,
                             loss="mem_ce", out=str(tmp_path / "run"))
    assert result.checkpoint == str(tmp_path / "run" / "model.pt")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["accuracy"] == result.summary["accuracy"]


@pytest.mark.parametrize("case", ["not_time_major", "not_pairs", "not_a_loader"])
def test_api_bad_loaders_are_one_line_errors(models, digits, case):
    train, val = loaders(digits, 100, 50)
    x, y = digits
    kwargs = {"T": 4}
    if case == "not_time_major":  # encoding none takes [T, B, ...]; this yields [B, T, ...]
        seq = x[:64].unsqueeze(1).expand(64, 4, 1, 8, 8)
        train = val = DataLoader(TensorDataset(seq, y[:64]), batch_size=16)
        kwargs["encoding"] = "none"
    elif case == "not_pairs":
        train = val = DataLoader(TensorDataset(x[:64]), batch_size=16)
    else:
        train = [(x[:16], y[:16])]
    with pytest.raises(UserError) as err:
        rccsnn.compress(models.mlp(), train, val, budget=0.1, epochs=1, progress=False, **kwargs)
    assert "\n" not in str(err.value)


def test_readme_python_example_runs(monkeypatch, tmp_path):
    """The README's Python example, as written there, on a model object and DataLoaders."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its marked Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.summary["resources"]["synops"]["ratio"] <= 0.1
    assert result.model is namespace["net"]


# ------------------------------------------------------------------------------------------------ event data
def test_event_data_nmnist_format_through_tonic_compressed_with_no_encoding(models, tmp_path):
    """A generated N-MNIST set in its real on-disk format, read by tonic, binned to frames, compressed from the CLI
    with ``encoding none`` (time-major [T, B, 2, 34, 34] batches straight into the single-step model)."""
    pytest.importorskip("tonic")
    from test_events import _nmnist

    _nmnist(tmp_path / "data")
    state = _state_file(models, "nmnist_csnn", tmp_path / "n.pt")
    code, _, err = cli("compress", state, "--model", "snntorch_models:nmnist_csnn", "--data", "nmnist",
                       "--data-root", tmp_path / "data", "--budget", "0.2", "--epochs", "1", "--no-progress",
                       "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert raw["encoding"] == "none" and raw["T"] == 16 and raw["steps"] == "single"
    assert raw["data"]["input_shape"] == [2, 34, 34]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resources"]["params"]["ratio"] <= 0.2
    # time steps are not decided for event data, binned at its own T: one line, nothing written
    code, out, err = cli("compress", state, "--model", "snntorch_models:nmnist_csnn", "--data", "nmnist",
                         "--data-root", tmp_path / "data", "--resource", "synops", "--budget", "0.2",
                         "--decide", "sparsity,timesteps", "--epochs", "1", "--no-progress", "--device", "cpu",
                         "--out", tmp_path / "refused")
    assert_user_error(code, out, err, "event data (encoding none)")
    assert not (tmp_path / "refused").exists()


def test_api_takes_time_major_event_loaders_with_no_encoding(models, digits):
    """A user's loader of event tensors, batched time-major by its own collate_fn (as tonic's
    ``PadTensors(batch_first=False)`` does): ``encoding="none"``, T from the data."""
    from rccsnn.data.base import time_major

    x, y = digits
    events = (x[:400].unsqueeze(1).expand(400, 3, 1, 8, 8) > torch.rand(400, 3, 1, 8, 8)).float()  # [N, T, ...]
    train = DataLoader(TensorDataset(events[:300], y[:300]), batch_size=50, shuffle=True, collate_fn=time_major)
    val = DataLoader(TensorDataset(events[300:], y[300:400]), batch_size=100, collate_fn=time_major)
    torch.manual_seed(0)
    result = rccsnn.compress(models.mlp(), train, val, budget=0.2, T=3, encoding="none", epochs=1, progress=False)
    assert result.summary["resources"]["params"]["ratio"] <= 0.2
    with pytest.raises(UserError, match=r"val_loader: .* with T = 5, got a batch of shape \[3, 100, 1, 8, 8\]"):
        rccsnn.compress(models.mlp(), train, val, budget=0.2, T=5, encoding="none", epochs=1, progress=False)


def test_event_model_files_remember_their_data_root_and_frames(models, tmp_path, monkeypatch):
    """A model compressed on an event set under --data-root with data.frames: evaluate and report of it need
    neither again (they would bin at another T otherwise); compressing it again finds them too."""
    pytest.importorskip("tonic")
    from test_events import _nmnist

    _nmnist(tmp_path / "events")
    state = _state_file(models, "nmnist_csnn", tmp_path / "n.pt")
    code, _, err = cli("compress", state, "--model", "snntorch_models:nmnist_csnn", "--data", "nmnist",
                       "--data-root", tmp_path / "events", "--set", "data.frames={n_time_bins: 6}", "--T", "6",
                       "--budget", "0.3", "--epochs", "1", "--no-progress", "--device", "cpu", "--out",
                       tmp_path / "run")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)  # "data", the default root, holds nothing here
    code, _, err = cli("evaluate", tmp_path / "run" / "model.pt", "--model", "snntorch_models:nmnist_csnn",
                       "--json", tmp_path / "e.json", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["samples"] == 6  # the test split of the generated set
    code, _, err = cli("compress", tmp_path / "run" / "model.pt", "--model", "snntorch_models:nmnist_csnn",
                       "--budget", "0.2", "--epochs", "1", "--no-progress", "--device", "cpu", "--out",
                       tmp_path / "again")
    assert code == 0, err
    recipe = torch.load(tmp_path / "again" / "model.pt", weights_only=True)["recipe"]["data"]
    assert recipe["frames"] == {"n_time_bins": 6} and recipe["root"] == str(tmp_path / "events")
