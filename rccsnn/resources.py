"""Resource models: what one kept weight costs per inference, and the cost of a model as a fraction of dense.

    R(model) = sum_l c_l * nonzero_l / sum_l c_l * n_l          (dense = 1.0; sums over the prunable targets)

| name    | c_l, the cost of one kept weight of target l per inference                                        |
|---------|----------------------------------------------------------------------------------------------------|
| params  | 1                                                                                                  |
| macs    | positions_l * T  (H_out * W_out per time step for a conv, 1 for a linear layer)                    |
| synops  | positions_l * T * input firing rate_l; a layer with analog input counts as MACs (rate 1)          |
| energy  | E_MAC * macs cost for analog-input layers, E_AC * synops cost otherwise (pJ; 4.6 and 0.9 default) |

Only weights that are really nonzero are counted. The data-dependent models (synops, energy) take the firing
rates from :class:`LayerStats`, measured with the SpikeMonitor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rccsnn import distributed
from rccsnn.errors import UserError
from rccsnn.masks import Target
from rccsnn.registry import Registry
from rccsnn.snn import SpikeMonitor, simulate


@dataclass
class LayerStats:
    """Per-target quantities the cost models need, each a float64 tensor ``[L]`` in target order.

    Attributes:
        positions: output positions per time step and sample (H_out * W_out for Conv2d, 1 for Linear).
        input_rate: mean input per element per time step (the input firing rate for spiking inputs).
        analog: 1.0 where the layer's input is analog (not spikes), else 0.0.
        T: time steps per inference.
    """

    positions: Tensor
    input_rate: Tensor
    analog: Tensor
    T: int

    def with_rates(self, rates: Tensor) -> "LayerStats":
        return LayerStats(self.positions, rates.to(torch.float64), self.analog, self.T)


@torch.no_grad()
def measure_stats(net: nn.Module, targets: Sequence[Target], loader: DataLoader, T: int, encoding: str,
                  device: torch.device, max_batches: int | None = None, across_ranks: bool = False) -> LayerStats:
    """Run ``net`` in eval mode over ``loader`` (all of it unless ``max_batches``) and collect :class:`LayerStats`.

    ``across_ranks``: ``loader`` holds this process's shard of the split (:func:`rccsnn.distributed.shard`); the
    spike counts of all processes are added up, so every process gets the statistics of the whole split (a
    collective: every process must call it). Without a process group it changes nothing.
    """
    was_training = net.training
    net.eval()
    with SpikeMonitor(net, T) as mon:
        for i, (x, _) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            simulate(net, x.to(device), T, encoding)
    net.train(was_training)
    if across_ranks:
        mon.all_reduce()
    names = [t.name for t in targets]
    rates = mon.input_rates()
    return LayerStats(
        positions=torch.tensor([float(mon.positions[n]) for n in names], dtype=torch.float64),
        input_rate=torch.tensor([rates[n] for n in names], dtype=torch.float64),
        analog=torch.tensor([float(mon.analog_input[n]) for n in names], dtype=torch.float64),
        T=T,
    )


class RateTracker:
    """Exponential moving average of each target's input rate over training batches (forward hooks).

    Sums stay on the device; nothing synchronises with the host until :meth:`rates` is read.

    In a distributed run each process's hooks see only its share of the global batch, so each keeps the EMA of
    its own batch means. The EMA is linear and every process's batch has the same size, so the mean of the
    processes' EMAs is the EMA of the global batch means, what one process with the whole batch would hold.
    :meth:`rates` therefore averages across processes (an all-reduce) and stores the average back, so every
    process holds the same estimate after every read. It is read at the same points on every process (each
    compression step, progress updates, epoch end, state saving), as a collective must be.

    Args:
        targets: the layers to watch.
        initial: starting rates ``[L]`` (from :func:`measure_stats`).
        momentum: weight of the old estimate per batch.
    """

    def __init__(self, targets: Sequence[Target], initial: Tensor, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self._rates: List[Tensor] = [r.clone() for r in initial.to(torch.float64)]
        self._handles = [t.module.register_forward_hook(self._hook(i)) for i, t in enumerate(targets)]

    def _hook(self, i: int):
        def hook(module, inputs, output) -> None:
            if module.training:
                m = inputs[0].detach().mean(dtype=torch.float64)
                self._rates[i] = self._rates[i].to(m.device) * self.momentum + m * (1.0 - self.momentum)

        return hook

    def rates(self) -> Tensor:
        """``[L]`` float64 current estimates (on the CPU); averaged across processes in a distributed run."""
        current = torch.stack([r.cpu() for r in self._rates])
        if distributed.active():
            current = distributed.all_reduce_mean(current)
            self._rates = [r.clone() for r in current]
        return current

    def set(self, rates: Tensor) -> None:
        self._rates = [r.clone() for r in rates.to(torch.float64)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class ResourceModel:
    """Base class: per-target costs of one kept weight, and measurement as a fraction of dense."""

    name = "resource"
    unit = ""
    data_dependent = False

    def coefficients(self, targets: Sequence[Target], stats: LayerStats) -> Tensor:
        """``[L]`` float64 cost of one kept weight of each target, per inference (in :attr:`unit`)."""
        raise NotImplementedError

    def dense(self, targets: Sequence[Target], stats: LayerStats) -> float:
        """Cost of the dense targets per inference."""
        n = torch.tensor([t.n for t in targets], dtype=torch.float64)
        return float((self.coefficients(targets, stats) * n).sum())

    def absolute(self, targets: Sequence[Target], stats: LayerStats) -> float:
        """Cost of the targets' nonzero weights per inference."""
        nz = torch.tensor([t.nonzero() for t in targets], dtype=torch.float64)
        return float((self.coefficients(targets, stats) * nz).sum())

    def measure(self, targets: Sequence[Target], stats: LayerStats) -> float:
        """Cost of the nonzero weights as a fraction of dense (dense = 1.0)."""
        dense = self.dense(targets, stats)
        return self.absolute(targets, stats) / dense if dense > 0 else 0.0


RESOURCES: Registry[ResourceModel] = Registry("resource")

#: Energy per operation in pJ at 45 nm (Horowitz, ISSCC 2014), per number format: ``e_mac`` a multiply-accumulate
#: (fp32: multiply 3.7 + add 0.9), ``e_ac`` an accumulate (an add). The one place these constants are written.
ENERGY_PJ: Dict[str, Dict[str, float]] = {
    "fp32": {"e_mac": 4.6, "e_ac": 0.9},
    "int8": {"e_mac": 0.2, "e_ac": 0.03},
}


def layer_costs(*, positions: int, T: int, weights: int, nonzero: int, input_rate: float,
                analog: bool) -> Dict[str, float]:
    """What one layer costs per inference, the formulas every resource model above uses, for whole layers.

    Args:
        positions: output positions per step and sample (H_out x W_out for a conv, 1 for a linear layer).
        T: time steps per inference.
        weights, nonzero: the layer's weights, and those that are nonzero.
        input_rate: mean input spikes per element per step (ignored for an analog input).
        analog: whether the layer's input is analog (not spikes): then every MAC is done.

    Returns:
        ``macs`` and ``dense_macs`` (positions x T x nonzero / weights), ``synops`` (MACs for analog inputs, else
        MACs x input rate) and, per format of :data:`ENERGY_PJ`, ``energy_pj_<format>`` (E_MAC x MACs for analog
        inputs, E_AC x SynOps otherwise).
    """
    macs = positions * T * nonzero
    synops = float(macs) if analog else positions * T * input_rate * nonzero
    out: Dict[str, float] = {"macs": macs, "dense_macs": positions * T * weights, "synops": synops}
    for fmt, e in ENERGY_PJ.items():
        out[f"energy_pj_{fmt}"] = e["e_mac"] * macs if analog else e["e_ac"] * synops
    return out


@RESOURCES.register("params")
class Params(ResourceModel):
    """Number of nonzero weights."""

    name, unit = "params", "weights"

    def coefficients(self, targets, stats):
        return torch.ones(len(targets), dtype=torch.float64)


@RESOURCES.register("macs")
class MACs(ResourceModel):
    """Multiply-accumulates per inference with nonzero weights (ANN-style count: every step, every weight)."""

    name, unit = "macs", "MACs"

    def coefficients(self, targets, stats):
        return stats.positions * stats.T


@RESOURCES.register("synops")
class SynOps(ResourceModel):
    """Synaptic operations per inference: a weight is used once per input spike (analog inputs: every step)."""

    name, unit, data_dependent = "synops", "SynOps", True

    def coefficients(self, targets, stats):
        rate = torch.where(stats.analog > 0, torch.ones_like(stats.input_rate), stats.input_rate)
        return stats.positions * stats.T * rate


@RESOURCES.register("energy")
class Energy(ResourceModel):
    """Energy per inference in pJ: E_MAC per MAC on analog inputs, E_AC per accumulate on spikes.

    Args:
        e_mac: energy of one multiply-accumulate (pJ; default :data:`ENERGY_PJ`'s fp32, 4.6 at 45 nm).
        e_ac: energy of one accumulate (pJ; default fp32, 0.9 at 45 nm).
    """

    name, unit, data_dependent = "energy", "pJ", True

    def __init__(self, e_mac: float = ENERGY_PJ["fp32"]["e_mac"], e_ac: float = ENERGY_PJ["fp32"]["e_ac"]) -> None:
        for key, value in (("e_mac", e_mac), ("e_ac", e_ac)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
                raise UserError(f"resources.energy.{key} must be a positive number of pJ, got {value!r}")
        self.e_mac, self.e_ac = float(e_mac), float(e_ac)

    def coefficients(self, targets, stats):
        macs = stats.positions * stats.T
        return torch.where(stats.analog > 0, self.e_mac * macs, self.e_ac * macs * stats.input_rate)


def create_resource(name: str, options: Dict[str, Dict[str, float]] | None = None) -> ResourceModel:
    """Build a registered resource model; ``options[name]`` holds its constants (e.g. ``energy: {e_ac: 0.9}``)."""
    return RESOURCES.create(name, **(options or {}).get(name, {}))
