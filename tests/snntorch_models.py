"""SNNs written the way snntorch's tutorials write them, for digits (``[1, 8, 8]`` inputs, 10 classes): what a user
brings to rccsnn, with no rccsnn code inside. Named by ``--model snntorch_models:FACTORY`` (the tests directory is
on ``sys.path``, see conftest.py).

* single-step ``nn.Sequential`` with ``init_hidden=True`` neurons, the last with ``output=True`` (tutorials 6/7,
  NeuroBench's ``SNNTorchModel``): :func:`csnn`, :func:`mlp`, and one per neuron kind (:func:`synaptic`,
  :func:`alpha`, :func:`lapicque`, :func:`rleaky`, :func:`rsynaptic`);
* a module with its own time loop returning ``(spk_rec, mem_rec)`` (tutorial 5): :func:`own_loop`;
* :class:`HandWrapped`, the multi-step wrapper a user had to write before (the reference for the automatic path).
"""
from __future__ import annotations

import snntorch as snn
import torch
from snntorch import surrogate
from torch import nn

BETA = 0.9
GRAD = surrogate.atan()


def csnn() -> nn.Module:
    """Tutorial 7's convolutional SNN, scaled to 8x8: conv-pool-Leaky twice, then a Leaky readout."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2),
        snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True),
        nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2),
        snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
        snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True),
    )


def mlp() -> nn.Module:
    """A fully connected single-step SNN: 64-48-10 with Leaky neurons."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 48), snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True),
        nn.Linear(48, 10), snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True),
    )


def _mlp_with(hidden: nn.Module, out: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), hidden, nn.Linear(48, 10), out)


def synaptic() -> nn.Module:
    """Synaptic (current-based) neurons: the readout returns ``(spk, syn, mem)``."""
    return _mlp_with(snn.Synaptic(alpha=0.8, beta=BETA, spike_grad=GRAD, init_hidden=True),
                     snn.Synaptic(alpha=0.8, beta=BETA, spike_grad=GRAD, init_hidden=True, output=True))


def alpha() -> nn.Module:
    """Alpha neurons (alpha > beta): the readout returns ``(spk, syn_exc, syn_inh, mem)``."""
    return _mlp_with(snn.Alpha(alpha=0.9, beta=0.8, spike_grad=GRAD, init_hidden=True),
                     snn.Alpha(alpha=0.9, beta=0.8, spike_grad=GRAD, init_hidden=True, output=True))


def lapicque() -> nn.Module:
    """Lapicque (RC) neurons."""
    return _mlp_with(snn.Lapicque(beta=BETA, spike_grad=GRAD, init_hidden=True),
                     snn.Lapicque(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True))


def rleaky() -> nn.Module:
    """A recurrent hidden layer: RLeaky with all-to-all recurrent weights (``1.recurrent``, a Linear 48x48)."""
    return _mlp_with(snn.RLeaky(beta=BETA, linear_features=48, spike_grad=GRAD, init_hidden=True),
                     snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True))


def rsynaptic() -> nn.Module:
    """A recurrent Synaptic hidden layer (all-to-all recurrent weights)."""
    return _mlp_with(snn.RSynaptic(alpha=0.8, beta=BETA, linear_features=48, spike_grad=GRAD, init_hidden=True),
                     snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True))


class OwnLoop(nn.Module):
    """Tutorial 5: the time loop inside ``forward``, state passed explicitly, ``(spk_rec, mem_rec)`` returned.

    Shape: ``[T, B, 1, 8, 8]`` -> ``([T, B, 10], [T, B, 10])``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.lif1 = snn.Leaky(beta=BETA, spike_grad=GRAD)
        self.fc2 = nn.Linear(48, 10)
        self.lif2 = snn.Leaky(beta=BETA, spike_grad=GRAD)

    def forward(self, x: torch.Tensor):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[step].flatten(1)), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


def own_loop() -> nn.Module:
    return OwnLoop()


class HandWrapped(nn.Module):
    """The multi-step wrapper a user wrote by hand around a single-step network: ``[T, B, ...] -> [T, B, K]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net.modules():
            if isinstance(m, snn.SpikingNeuron) and m.init_hidden:
                m.reset_mem()
        out = torch.stack([self.net(x[t])[0] for t in range(x.shape[0])])
        for m in self.net.modules():
            if isinstance(m, snn.SpikingNeuron) and m.init_hidden:
                m.reset_mem()
        return out


def wrapped_csnn() -> nn.Module:
    return HandWrapped(csnn())


SINGLE_STEP = ("csnn", "mlp", "synaptic", "alpha", "lapicque", "rleaky", "rsynaptic")


def nmnist_csnn() -> nn.Module:
    """Tutorial 7's N-MNIST network, scaled down: frames ``[2, 34, 34]`` per step -> 10 classes."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 5, stride=2), nn.MaxPool2d(2),
        snn.Leaky(beta=0.5, spike_grad=GRAD, init_hidden=True),
        nn.Flatten(), nn.Linear(4 * 7 * 7, 10),
        snn.Leaky(beta=0.5, spike_grad=GRAD, init_hidden=True, output=True),
    )


class Dict(nn.Module):
    """Returns a dict: fits neither contract."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor):
        return {"out": self.fc(x.flatten(-3))}


def returns_dict() -> nn.Module:
    return Dict()


class StatefulLoop(nn.Module):
    """Multi-step, but its neurons keep their own state (``init_hidden=True``): ``forward(x [T, B, ...])`` resets
    them and loops over ``x[t]`` itself. Handed one step ``[B, ...]`` it would loop over the batch as over time."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 48), snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True),
            nn.Linear(48, 10), snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True))

    def forward(self, x: torch.Tensor):
        for m in self.net.modules():
            if isinstance(m, snn.SpikingNeuron):
                m.reset_mem()
        spk, mem = zip(*[self.net(x[t]) for t in range(x.shape[0])])
        return torch.stack(spk), torch.stack(mem)


def stateful_loop() -> nn.Module:
    return StatefulLoop()


class KeywordCall(nn.Module):
    """A single-step module that calls its neurons by keyword, ``lif(input_=...)`` (snntorch's argument name)."""

    def __init__(self) -> None:
        super().__init__()
        self.flat, self.fc1, self.fc2 = nn.Flatten(), nn.Linear(64, 48), nn.Linear(48, 10)
        self.lif1 = snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True)
        self.lif2 = snn.Leaky(beta=BETA, spike_grad=GRAD, init_hidden=True, output=True)

    def forward(self, x: torch.Tensor):
        return self.lif2(input_=self.fc2(self.lif1(input_=self.fc1(self.flat(x)))))


def keyword_call() -> nn.Module:
    return KeywordCall()
