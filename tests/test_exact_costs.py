"""Exact operation counts: every layer's SynOps, effective MACs, MACs and dense operations, as ``rccsnn report``
counts them (:func:`rccsnn.metrics.layer_report`, from :mod:`rccsnn.resources`), equal the independent count of
``tests/exact_count.py`` (NeuroBench's definition: ``layer(input != 0)`` with ``weight != 0``, summed over steps, per
sample) within 0.5 %, on every zoo model, on snntorch-style user models (a CSNN with and without padding, an MLP),
on random convolutions (padding, stride, dilation, groups) and, with the optional ``neurobench`` extra installed,
against NeuroBench's own ``SynapticOperations`` and ``ConnectionSparsity`` on a compressed shipped model.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import snntorch as snn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import REPO_ROOT
from exact_count import exact_counts
from rccsnn.data import load_data
from rccsnn.masks import find_targets
from rccsnn.metrics import layer_report, report
from rccsnn.models import MODELS, build_model
from rccsnn.models.checkpoint import load_checkpoint
from rccsnn.resources import RESOURCES, create_resource, op_energy, stats_from_monitor
from rccsnn.snn import LIF, NeuronConfig, PerStep, SpikeMonitor, simulate, weight_layers

REL = 5e-3  # the acceptance tolerance, 0.5 % per layer
T = 3

#: Small instances of every zoo architecture (input shape, arguments).
ZOO = {
    "convsnn": ((1, 8, 8), {"channels": (6, 8), "hidden": 16}),
    "cifar10net": ((3, 16, 16), {"channels": 8, "hidden": 16}),
    "vgg16": ((3, 16, 16), {"width": 0.0625, "fc": (16,)}),
    "resnet19": ((3, 16, 16), {"widths": (4, 8, 8), "blocks": (1, 1, 1), "hidden": 8}),
}


def prune_randomly(net: nn.Module, keep: float, seed: int = 0) -> None:
    """Zero a random share ``1 - keep`` of every weight layer (so the nonzero-weight side of the count matters), and
    make three in four of the others positive: an untrained network pruned at random falls silent, and a silent
    layer counts nothing, so agreeing on it would prove nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in weight_layers(net):
            sign = torch.where(torch.rand(m.weight.shape, generator=g) < 0.75, 1.0, -1.0)
            m.weight.copy_(m.weight.abs() * sign * (torch.rand(m.weight.shape, generator=g) < keep))


def library_counts(net: nn.Module, x: torch.Tensor, steps: int):
    """Per layer what the report counts (the same function), over one pass of ``x``."""
    with torch.no_grad(), SpikeMonitor(net, steps) as mon:
        simulate(net, x, steps)
    return {name: layer_report(mon, name, m) for name, m in weight_layers(net) if name in mon.positions}, mon


def assert_layers_agree(net: nn.Module, x: torch.Tensor, steps: int = T) -> dict:
    """The report's counts equal the judge's, per layer and within 0.5 %; returns the judge's counts."""
    net.eval()
    ours, mon = library_counts(net, x, steps)
    judged = exact_counts(net, lambda: simulate(net, x, steps), x.shape[0])
    assert set(ours) == set(judged) and ours
    for name, c in ours.items():
        j = judged[name]
        effective = c["effective_macs"] if mon.analog_input[name] else c["synops"]
        other = c["synops"] if mon.analog_input[name] else c["effective_macs"]
        assert effective == pytest.approx(j["effective"], rel=REL, abs=1e-9), name
        assert other == 0.0, name  # an operation is an AC (spike input) or a MAC (analog input), never both
        assert c["macs"] == pytest.approx(j["macs"], rel=REL, abs=1e-9), name
        assert c["dense_ops"] == pytest.approx(j["dense"], rel=REL, abs=1e-9), name
    return judged


def spiking_input(shape, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 3.0)


# ------------------------------------------------------------------------------------------------ the zoo
def test_every_registered_model_has_a_case():
    assert set(MODELS.names()) <= set(ZOO), "add the new architecture to ZOO"


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_models_count_exactly(name):
    torch.manual_seed(0)
    shape, args = ZOO[name]
    net = build_model(name, shape, 10, NeuronConfig(threshold=0.5), args)
    prune_randomly(net, keep=0.5)
    judged = assert_layers_agree(net, spiking_input((4, *shape)))
    # Not a vacuous agreement: the spiking layers did count operations (most of them), and padding made MACs fall
    # short of positions x T x nonzero weights for some conv (what the old mean-field count reported).
    spiking = list(judged.values())[1:]
    assert sum(c["effective"] > 0 for c in spiking) >= len(spiking) / 2
    ours, mon = library_counts(net, spiking_input((4, *shape)), T)
    naive = {n: mon.positions[n] * T * int(torch.count_nonzero(m.weight)) for n, m in weight_layers(net)}
    assert any(ours[n]["macs"] < 0.99 * naive[n] for n in ours)


# ------------------------------------------------------------------------------------------------ snntorch users
class CSNN(nn.Module):
    """snntorch tutorial 6's convolutional SNN, single-step with ``init_hidden``, run over time by its own loop;
    ``padding`` 0 is the tutorial's (on 16x16: conv 12, pool 6, conv 2, pool 1), 2 keeps the size (8 -> 4 -> 2)."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        grad = snn.surrogate.fast_sigmoid(slope=25)
        side = 16 if padding == 0 else 8
        out = ((side - 4) // 2 - 4) // 2 if padding == 0 else side // 4
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=padding), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
            nn.Conv2d(6, 8, 5, padding=padding), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
            nn.Flatten(), nn.Linear(8 * out * out, 10), snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True, output=True),
        )

    def forward(self, x):
        for m in self.net.modules():
            if isinstance(m, snn.SpikingNeuron):
                m.reset_mem()
        return torch.stack([self.net(x[t])[0] for t in range(x.shape[0])])


class MLP(nn.Module):
    """snntorch tutorial 5's fully connected SNN with its own time loop."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(64, 32), snn.Leaky(beta=0.9)
        self.fc2, self.lif2 = nn.Linear(32, 10), snn.Leaky(beta=0.9)

    def forward(self, x):
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        out = []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t].flatten(1)), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)


@pytest.mark.parametrize("padding", [0, 2])
def test_snntorch_csnn_counts_exactly(padding):
    torch.manual_seed(0)
    net = CSNN(padding)
    prune_randomly(net, keep=0.3)
    side = 16 if padding == 0 else 8
    judged = assert_layers_agree(net, spiking_input((5, 1, side, side)), steps=4)
    assert judged["net.3"]["effective"] > 0


def test_snntorch_mlp_counts_exactly():
    torch.manual_seed(0)
    net = MLP()
    prune_randomly(net, keep=0.2)
    judged = assert_layers_agree(net, spiking_input((6, 1, 8, 8)), steps=5)
    assert judged["fc2"]["effective"] > 0


def test_panel_models_written_as_snntorch_users_write_them_count_exactly(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from benchmarks.panel_models import fc, tutorial_conv

    for factory in (fc, tutorial_conv):
        torch.manual_seed(0)
        net = factory()
        prune_randomly(net, keep=0.3)
        assert_layers_agree(net, spiking_input((4, 1, 8, 8)), steps=4)


# ------------------------------------------------------------------------------------------------ random convs
@settings(max_examples=12, deadline=None)
@given(
    kernel=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 3), dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]), side=st.integers(5, 9), keep=st.floats(0.1, 1.0), seed=st.integers(0, 10 ** 6),
    mode=st.sampled_from(["zeros", "circular"]),
)
def test_random_convs_count_exactly(kernel, stride, padding, dilation, groups, side, keep, seed, mode):
    torch.manual_seed(seed)
    if (kernel - 1) * dilation + 1 > side + 2 * padding or (mode == "circular" and padding > side):
        return  # no output position: not a network
    net = nn.Sequential(
        PerStep(nn.Conv2d(2, 4, 3, padding=1)), LIF(NeuronConfig(threshold=0.3)),
        PerStep(nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          padding_mode=mode)), LIF(NeuronConfig(threshold=0.3)),
        PerStep(nn.Flatten(), nn.LazyLinear(5)), LIF(NeuronConfig()),
    )
    net(torch.zeros(1, 1, 2, side, side))  # materialise the lazy layer
    prune_randomly(net, keep=keep, seed=seed)
    assert_layers_agree(net, spiking_input((3, 2, side, side), seed), steps=2)


# ------------------------------------------------------------------------------------------------ the resources
def test_resources_measure_what_the_judge_counts():
    """``synops``, ``macs`` and ``energy`` of the targets (the budgets' quantities) are the judge's sums."""
    torch.manual_seed(0)
    shape, args = ZOO["convsnn"]
    net = build_model("convsnn", shape, 10, NeuronConfig(threshold=0.5), args).eval()
    prune_randomly(net, keep=0.3)
    x = spiking_input((4, *shape))
    targets = find_targets(net)
    with torch.no_grad(), SpikeMonitor(net, T) as mon:
        simulate(net, x, T)
    stats = stats_from_monitor(mon, targets)
    judged = exact_counts(net, lambda: simulate(net, x, T), x.shape[0])
    synops = sum(judged[t.name]["effective"] for t in targets)  # every target has spike inputs here
    assert create_resource("synops").absolute(targets, stats) == pytest.approx(synops, rel=1e-9)
    assert create_resource("macs").absolute(targets, stats) == pytest.approx(
        sum(judged[t.name]["macs"] for t in targets), rel=1e-9)
    assert create_resource("macs").dense(targets, stats) == pytest.approx(
        sum(judged[t.name]["dense"] for t in targets), rel=1e-9)
    assert create_resource("energy", {"energy": {"e_ac": 0.5}}).absolute(targets, stats) == pytest.approx(
        0.5 * synops, rel=1e-9)
    # bit widths: bitops is SynOps x b; energy prices each layer's operations at its bits (op_energy)
    bits = [4 + 2 * l for l in range(len(targets))]
    at_bits = stats.with_bits(bits)
    assert create_resource("bitops").absolute(targets, at_bits) == pytest.approx(
        sum(b * judged[t.name]["effective"] for t, b in zip(targets, bits)), rel=1e-9)
    assert create_resource("energy").absolute(targets, at_bits) == pytest.approx(
        sum(op_energy(b)[1] * judged[t.name]["effective"] for t, b in zip(targets, bits)), rel=1e-9)
    # memory: the bits of the entries the compact export writes for the targets (values, index, scales)
    from rccsnn.formats.compact import encode_weight, entry_nbytes

    for at, widths in ((stats, [None] * len(targets)), (at_bits, bits)):
        written = sum(8 * entry_nbytes(encode_weight(t.module.weight, bits=b)) for t, b in zip(targets, widths))
        assert create_resource("memory").absolute(targets, at) == written
    assert create_resource("memory").dense(targets, stats) == 32 * sum(t.n for t in targets)
    assert set(RESOURCES.names()) == {"params", "macs", "synops", "energy", "bitops", "memory"}


def test_energy_skip_zero_inputs_prices_effective_macs():
    """With ``skip_zero_inputs`` an analog-input layer pays E_MAC per effective MAC (its input nonzero), else per MAC."""
    torch.manual_seed(0)
    net = nn.Sequential(PerStep(nn.Conv2d(1, 3, 3, padding=1)), LIF(NeuronConfig(threshold=0.3))).eval()
    x = torch.rand(4, 1, 6, 6) * (torch.rand(4, 1, 6, 6) < 0.3)  # analog, mostly zeros
    targets = find_targets(net, exclude_first=False)
    with torch.no_grad(), SpikeMonitor(net, 2) as mon:
        simulate(net, x, 2)
    stats = stats_from_monitor(mon, targets)
    judged = exact_counts(net, lambda: simulate(net, x, 2), 4)["0.0"]
    assert bool(stats.analog[0]) and judged["effective"] < 0.5 * judged["macs"]
    every = create_resource("energy", {"energy": {"e_mac": 2.0}}).absolute(targets, stats)
    skipping = create_resource("energy", {"energy": {"e_mac": 2.0, "skip_zero_inputs": True}}).absolute(targets, stats)
    assert every == pytest.approx(2.0 * judged["macs"], rel=1e-9)
    assert skipping == pytest.approx(2.0 * judged["effective"], rel=1e-9)


# ------------------------------------------------------------------------------------------------ NeuroBench
SHIPPED = Path(REPO_ROOT) / "checkpoints" / "digits_convsnn.pt"


def test_neurobench_agrees_on_a_compressed_shipped_model():
    """NeuroBench's own Effective_ACs / Effective_MACs / ConnectionSparsity equal the report's totals within 0.5 %
    (the optional extra: ``pip install -e ".[neurobench]"``)."""
    pytest.importorskip("neurobench", reason="the optional extra 'neurobench' is not installed")
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel

    loaded = load_checkpoint(SHIPPED)
    with torch.no_grad():  # compressed: global magnitude pruning to 10 % of the prunable weights
        targets = find_targets(loaded.net)
        w = torch.cat([t.weight.detach().abs().flatten() for t in targets])
        cut = torch.kthvalue(w, int(0.9 * w.numel())).values
        for t in targets:
            t.weight.mul_((t.weight.abs() > cut).to(t.weight.dtype))
    data = load_data("digits")
    ours = report(loaded, data, "val", torch.device("cpu"))

    class Encoded(nn.Module):  # NeuroBench feeds [B, ...]; rccsnn's networks take the encoded [T, B, ...]
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return simulate(self.net, x, loaded.spec.T, loaded.spec.encoding)

    loader = torch.utils.data.DataLoader(data.val, batch_size=512, shuffle=False)
    bench = Benchmark(TorchModel(Encoded(loaded.net)), loader, [], [], [[ConnectionSparsity], [SynapticOperations]])
    theirs = bench.run(quiet=True)
    total = ours["total"]
    assert total["synops"] > 0 and total["effective_macs"] > 0
    assert total["synops"] == pytest.approx(theirs["SynapticOperations"]["Effective_ACs"], rel=REL)
    assert total["effective_macs"] == pytest.approx(theirs["SynapticOperations"]["Effective_MACs"], rel=REL)
    assert total["connection_sparsity"] == pytest.approx(theirs["ConnectionSparsity"], rel=REL, abs=1e-4)
