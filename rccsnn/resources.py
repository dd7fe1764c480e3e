"""Resource models: what each kept weight costs per inference, and the cost of a model as a fraction of dense.

    R(model) = sum_i c_i [w_i != 0] / sum_i c_i          (dense = 1.0; sums over the weights of the prunable targets)

| name    | c_i, the cost of weight i per inference                                                                  |
|---------|-----------------------------------------------------------------------------------------------------------|
| params  | 1                                                                                                         |
| macs    | the tap's MACs: T x the output positions at which it reads inside the input (padding, stride, dilation)   |
| synops  | the input spikes the tap reads (NeuroBench's effective ACs); a layer with analog input counts its MACs     |
| energy  | E_MAC(b) x MACs for analog-input layers (x effective MACs with ``skip_zero_inputs``), E_AC(b) x SynOps    |
|         | otherwise, at the layer's weight bit width b (:func:`op_energy`; float32 unless quantized)               |
| bitops  | SynOps x b (LitE-SNN's bit-weighted synaptic operations; MACs x b for an analog-input layer)              |

A conv tap ``(c_out, c_in, k)`` reads the same inputs whatever its output channel, so a layer's costs are a tensor
``[G, 1, C_in / G, *kernel]`` (G the conv's groups; ``[1, 1, F]`` for a linear layer), broadcastable against the weight
viewed as ``[G, C_out / G, C_in / G, *kernel]`` (:func:`grouped`); they come from one pass of the
:class:`~rccsnn.snn.SpikeMonitor` over the data (:func:`measure_stats`). Only weights that are really nonzero are
counted, and an operation is counted when its input is nonzero too: this is NeuroBench's count (``layer(input != 0)``
with ``weight != 0``, summed over time steps and samples), per inference. This module is the only place that knows
these formulas and the energy constants; the report, the methods and the benchmarks ask it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rccsnn import distributed
from rccsnn.errors import UserError
from rccsnn.masks import Target
from rccsnn.registry import Registry
from rccsnn.snn import SpikeMonitor, simulate
from rccsnn.storage import weight_nbytes


@dataclass
class LayerStats:
    """Per-target quantities the cost models need, in target order.

    Attributes:
        positions: ``[L]`` float64, output positions per time step and sample (H_out * W_out for Conv2d, 1 for Linear).
        input_rate: ``[L]`` float64, mean input per element per time step (the input firing rate for spiking inputs).
        analog: ``[L]`` float64, 1.0 where the layer's input is analog (not spikes), else 0.0.
        T: time steps per inference.
        taps: per target, each tap's MACs per inference (``[G, 1, C_in / G, *kernel]``, :meth:`SpikeMonitor.tap_macs`);
            None: every tap is read at every position (``positions x T``), the mean-field count without borders.
        reads: per target, the nonzero inputs each tap reads per inference (:meth:`SpikeMonitor.tap_reads`), measured
            at ``measured_rate``; None: ``taps x input_rate`` (the mean-field estimate).
        measured_rate: ``[L]`` the input rates at which ``reads`` was measured (None: ``input_rate``).
        bits: ``[L]`` float64 weight bit width of each target (32: float32); None: every target float32.
    """

    positions: Tensor
    input_rate: Tensor
    analog: Tensor
    T: int
    taps: Optional[List[Tensor]] = None
    reads: Optional[List[Tensor]] = None
    measured_rate: Optional[Tensor] = None
    bits: Optional[Tensor] = None

    def bits_of(self, l: int) -> int:
        """Weight bit width of target ``l`` (32: float32)."""
        return 32 if self.bits is None else int(self.bits[l])

    def with_bits(self, bits: Sequence[int]) -> "LayerStats":
        """The same layers with weights of ``bits`` (``[L]``, 32 = float32)."""
        return replace(self, bits=torch.tensor([float(b) for b in bits], dtype=torch.float64))

    def at_steps(self, T: int) -> "LayerStats":
        """The same layers run for ``T`` time steps per inference: every per-inference count (each tap's MACs and
        reads) scales by ``T / self.T`` at the same rates per step (SNN costs are sums over the steps; a network
        whose time steps are cut keeps its per-step firing pattern to first order, and the final measurement at the
        chosen T is exact)."""
        if int(T) == self.T:
            return self
        f = float(T) / float(self.T)
        return replace(self, T=int(T), taps=None if self.taps is None else [t * f for t in self.taps],
                       reads=None if self.reads is None else [r * f for r in self.reads])

    def with_rates(self, rates: Tensor) -> "LayerStats":
        """The same layers at other input rates (a moving average of training batches): each tap's reads are the
        measured ones scaled by the layer's rate against the measured rate, so the pattern of which inputs are
        active stays the last exact measurement's and the level follows the rates."""
        measured = self.input_rate if self.measured_rate is None else self.measured_rate
        return replace(self, input_rate=rates.to(torch.float64), measured_rate=measured)

    def taps_of(self, l: int) -> Tensor:
        """MACs per tap of target ``l`` per inference (0-d where every tap costs the same)."""
        if self.taps is None:
            return (self.positions[l] * self.T).reshape(())
        return self.taps[l]

    def reads_of(self, l: int) -> Tensor:
        """Nonzero inputs read per tap of target ``l`` per inference, at the current ``input_rate``."""
        rate = self.input_rate[l]
        if self.reads is None:
            return self.taps_of(l) * rate
        measured = self.input_rate[l] if self.measured_rate is None else self.measured_rate[l]
        if measured > 0:
            return self.reads[l] if bool(rate == measured) else self.reads[l] * (rate / measured)
        return self.taps_of(l) * rate  # nothing read when measured: no pattern to scale, the uniform estimate


def groups_of(target: Target) -> int:
    """The conv's groups (1 for a linear layer)."""
    return int(getattr(target.module, "groups", 1))


def grouped(target: Target, tensor: Tensor) -> Tensor:
    """A weight-shaped tensor viewed as ``[G, C_out / G, *shape[1:]]``, the shape costs broadcast against."""
    g = groups_of(target)
    return tensor.reshape(g, target.shape[0] // g, *target.shape[1:])


def cost_sum(target: Target, cost: Tensor, keep: Optional[Tensor] = None) -> Tensor:
    """0-d float64: the summed cost of ``target``'s weights where ``keep`` (weight-shaped, nonzero = kept; all where
    None). One pass over ``keep``: counts per tap summed over output channels, then one dot with ``cost``."""
    if keep is None:
        count = torch.full((), float(target.shape[0] // groups_of(target)), dtype=torch.float64)
        per_tap = torch.ones((groups_of(target), 1, *target.shape[1:]), dtype=torch.float64) * count
    else:
        per_tap = (grouped(target, keep) != 0).sum(1, keepdim=True, dtype=torch.float64)
    return (per_tap * cost.to(per_tap.device)).sum().cpu()


def per_weight(target: Target, cost: Tensor) -> Tensor:
    """``[n]`` float64: the cost of every weight of ``target``, in the weight's flat order."""
    full = torch.empty((groups_of(target), target.shape[0] // groups_of(target), *target.shape[1:]),
                       dtype=torch.float64)
    full.copy_(cost.expand(full.shape))
    return full.reshape(-1)


def stats_from_monitor(mon: SpikeMonitor, targets: Sequence[Target]) -> LayerStats:
    """:class:`LayerStats` of ``targets`` from a monitor that watched some forward passes."""
    names = [t.name for t in targets]
    rates = mon.input_rates()
    return LayerStats(
        positions=torch.tensor([float(mon.positions[n]) for n in names], dtype=torch.float64),
        input_rate=torch.tensor([rates[n] for n in names], dtype=torch.float64),
        analog=torch.tensor([float(mon.analog_input[n]) for n in names], dtype=torch.float64),
        T=mon.T,
        taps=[mon.tap_macs(n) for n in names],
        reads=[mon.tap_reads(n) for n in names],
    )


@torch.no_grad()
def measure_stats(net: nn.Module, targets: Sequence[Target], loader: DataLoader, T: int, encoding: str,
                  device: torch.device, max_batches: int | None = None, across_ranks: bool = False,
                  steps: str = "multi") -> LayerStats:
    """Run ``net`` in eval mode over ``loader`` (all of it unless ``max_batches``) and collect :class:`LayerStats`,
    the per-tap counts included (exact: every input element seen).

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
            simulate(net, x.to(device), T, encoding, steps)
    net.train(was_training)
    if across_ranks:
        mon.all_reduce()
    return stats_from_monitor(mon, targets)


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
    """Base class: the cost of every weight per inference, and measurement as a fraction of dense.

    A subclass implements :meth:`tap_costs`, one target's cost per tap; everything else follows from it."""

    name = "resource"
    unit = ""
    data_dependent = False

    def tap_costs(self, stats: LayerStats, l: int) -> Tensor:
        """Cost of one kept weight of target ``l`` per inference (in :attr:`unit`), per tap: ``[G, 1, C_in / G,
        *kernel]`` float64, or 0-d where every weight of the target costs the same."""
        raise NotImplementedError

    def weight_costs(self, targets: Sequence[Target], stats: LayerStats) -> List[Tensor]:
        """Per target its :meth:`tap_costs` (broadcastable against the weight viewed by :func:`grouped`)."""
        return [self.tap_costs(stats, l) for l in range(len(targets))]

    def coefficients(self, targets: Sequence[Target], stats: LayerStats) -> Tensor:
        """``[L]`` float64 mean cost of one weight of each target (so ``coefficients x n`` is the dense cost)."""
        n = torch.tensor([t.n for t in targets], dtype=torch.float64)
        totals = torch.stack([cost_sum(t, c) for t, c in zip(targets, self.weight_costs(targets, stats))])
        return totals / n

    def dense(self, targets: Sequence[Target], stats: LayerStats) -> float:
        """Cost of the dense targets per inference."""
        return float(sum(cost_sum(t, c) for t, c in zip(targets, self.weight_costs(targets, stats))))

    def absolute(self, targets: Sequence[Target], stats: LayerStats) -> float:
        """Cost of the targets' nonzero weights per inference."""
        with torch.no_grad():
            return float(sum(cost_sum(t, c, t.module.weight)
                             for t, c in zip(targets, self.weight_costs(targets, stats))))

    def unpriced(self, targets: Sequence[Target], stats: LayerStats) -> float:
        """What :meth:`absolute` counts beyond the per-weight costs of the nonzero weights, which a projection takes
        off its limit: 0 here, where :meth:`absolute` is exactly their sum."""
        return 0.0

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


def op_energy(bits: int, e_mac_fp32: float = ENERGY_PJ["fp32"]["e_mac"],
              e_ac_fp32: float = ENERGY_PJ["fp32"]["e_ac"]) -> Tuple[float, float]:
    """``(E_MAC, E_AC)`` in pJ of one operation with ``bits``-bit integer weights (45 nm, Horowitz 2014).

    float32 (32 bits) costs ``e_mac_fp32``/``e_ac_fp32`` (:data:`ENERGY_PJ`'s fp32 by default; a user's
    ``resources.energy`` constants set these only: the integer figures stay the 45 nm table's). Below that the
    integer operations scale from :data:`ENERGY_PJ`'s int8 figures as the circuits do: an adder's energy grows with
    its width, a multiplier's with the product of its input widths, so ``E_AC(b) = 0.03 x b / 8`` and ``E_MAC(b) =
    0.2 x (b / 8)^2`` (16 bits: 0.06 and 0.8 pJ; Horowitz's own 32-bit integer figures, 0.1 and 3.1 pJ, are within 20
    % of this rule).
    """
    if bits >= 32:
        return e_mac_fp32, e_ac_fp32
    int8 = ENERGY_PJ["int8"]
    return int8["e_mac"] * (bits / 8.0) ** 2, int8["e_ac"] * bits / 8.0


def tap_energy(taps: Tensor, reads: Tensor, analog: bool, e_mac: float, e_ac: float,
               skip_zero_inputs: bool = False) -> Tensor:
    """Energy per tap in pJ: E_MAC per MAC on an analog input (per effective MAC, one whose input is nonzero, with
    ``skip_zero_inputs``), E_AC per accumulate, one per input spike, otherwise."""
    if analog:
        return e_mac * (reads if skip_zero_inputs else taps)
    return e_ac * reads


def layer_costs(target: Target, taps: Tensor, reads: Tensor, analog: bool,
                skip_zero_inputs: bool = False, bits: int = 32) -> Dict[str, float]:
    """What one layer costs per inference with its current nonzero weights, in NeuroBench's vocabulary.

    Args:
        target: the layer (its weight as the forward pass sees it).
        taps, reads: per tap, MACs and nonzero inputs read per inference (:meth:`SpikeMonitor.tap_macs`,
            :meth:`SpikeMonitor.tap_reads`).
        analog: whether the layer's input is analog (not spikes).
        skip_zero_inputs: analog-input energy counts effective MACs rather than every MAC.
        bits: the layer's weight bit width (32: float32).

    Returns:
        ``macs`` (every tap reading inside the input, with a nonzero weight), ``dense_ops`` (the same with every
        weight), ``effective_macs`` (analog input: the MACs whose input is nonzero; 0 for a spiking layer, whose
        operations are ACs), ``synops`` (spiking input: the input spikes read by nonzero weights, NeuroBench's
        effective ACs; 0 for an analog-input layer), per format of :data:`ENERGY_PJ` ``energy_pj_<format>``, and at
        the layer's own ``bits``: ``energy_pj`` (:func:`op_energy`) and ``bitops`` (its operations x bits).
    """
    with torch.no_grad():
        weight = target.module.weight
        macs, dense_ops = float(cost_sum(target, taps, weight)), float(cost_sum(target, taps))
        effective = float(cost_sum(target, reads, weight))
        out: Dict[str, float] = {"macs": macs, "effective_macs": effective if analog else 0.0,
                                 "synops": 0.0 if analog else effective, "dense_ops": dense_ops}
        for fmt, e in ENERGY_PJ.items():
            energy = tap_energy(taps, reads, analog, e["e_mac"], e["e_ac"], skip_zero_inputs)
            out[f"energy_pj_{fmt}"] = float(cost_sum(target, energy, weight))
        e_mac, e_ac = op_energy(bits)
        out["energy_pj"] = float(cost_sum(target, tap_energy(taps, reads, analog, e_mac, e_ac, skip_zero_inputs),
                                          weight))
        out["bitops"] = bits * (macs if analog else effective)
    return out


@RESOURCES.register("params")
class Params(ResourceModel):
    """Number of nonzero weights."""

    name, unit = "params", "weights"

    def tap_costs(self, stats, l):
        return torch.ones((), dtype=torch.float64)


@RESOURCES.register("macs")
class MACs(ResourceModel):
    """Multiply-accumulates per inference with nonzero weights (ANN-style count: every step, every tap that reads
    inside the input, whatever the input's value)."""

    name, unit = "macs", "MACs"

    def tap_costs(self, stats, l):
        return stats.taps_of(l)


@RESOURCES.register("synops")
class SynOps(ResourceModel):
    """Synaptic operations per inference: a weight is used once per input spike it reads (analog inputs: every
    MAC, as for the energy of such a layer)."""

    name, unit, data_dependent = "synops", "SynOps", True

    def tap_costs(self, stats, l):
        return stats.taps_of(l) if bool(stats.analog[l] > 0) else stats.reads_of(l)


@RESOURCES.register("energy")
class Energy(ResourceModel):
    """Energy per inference in pJ: E_MAC per MAC on analog inputs, E_AC per accumulate on spikes.

    Args:
        e_mac: energy of one multiply-accumulate (pJ; default :data:`ENERGY_PJ`'s fp32, 4.6 at 45 nm).
        e_ac: energy of one accumulate (pJ; default fp32, 0.9 at 45 nm).
        skip_zero_inputs: analog-input layers pay only for their effective MACs (those whose input is nonzero), as
            hardware that skips zero activations does; default false (every MAC is paid).
    """

    name, unit, data_dependent = "energy", "pJ", True

    def __init__(self, e_mac: float = ENERGY_PJ["fp32"]["e_mac"], e_ac: float = ENERGY_PJ["fp32"]["e_ac"],
                 skip_zero_inputs: bool = False) -> None:
        for key, value in (("e_mac", e_mac), ("e_ac", e_ac)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
                raise UserError(f"resources.energy.{key} must be a positive number of pJ, got {value!r}")
        if not isinstance(skip_zero_inputs, bool):
            raise UserError(f"resources.energy.skip_zero_inputs must be true or false, got {skip_zero_inputs!r}")
        self.e_mac, self.e_ac, self.skip_zero_inputs = float(e_mac), float(e_ac), skip_zero_inputs

    def tap_costs(self, stats, l):
        e_mac, e_ac = op_energy(stats.bits_of(l), self.e_mac, self.e_ac)
        return tap_energy(stats.taps_of(l), stats.reads_of(l), bool(stats.analog[l] > 0), e_mac, e_ac,
                          self.skip_zero_inputs)


@RESOURCES.register("bitops")
class BitOps(ResourceModel):
    """Bit-weighted synaptic operations per inference (LitE-SNN's measure of computation): every synaptic operation
    (every MAC on an analog input) times the bit width of its weight (32 for float32)."""

    name, unit, data_dependent = "bitops", "bit-ops", True

    def tap_costs(self, stats, l):
        ops = stats.taps_of(l) if bool(stats.analog[l] > 0) else stats.reads_of(l)
        return ops * float(stats.bits_of(l))


#: ``memory``: bits a kept weight's index costs in the linear model (one uint8 gap code of the compact format).
INDEX_BITS = 8.0


@RESOURCES.register("memory")
class Memory(ResourceModel):
    """Bits of storage of the weights as the compact export writes them (``rccsnn export``): every stored value at
    its layer's bit width (float32 unless quantized), the index of the nonzeros (a bitmask or gap codes, whichever is
    smaller; none for a layer stored dense) and a quantized layer's float32 scale per output channel.

    The dense reference is every weight stored dense at the width the model came with (float32: 32 bits each, no
    index). A layer of ``n`` weights at ``b`` bits keeping ``k`` costs about ``min(n b, k b + n, k (b + 8))`` bits
    (stored dense; a bitmask; one gap byte per kept weight), which is not linear in ``k``: the methods price each
    kept weight at the layer's current average, ``b + min(n / k, 8, (n - k) b / k)`` (:meth:`weight_costs`, read
    again at every step, as the firing rates are), so that price x kept is the layer's cost now. :meth:`absolute`
    is the export's exact count (:func:`rccsnn.storage.weight_nbytes`); what it holds beyond the prices (the
    scales, byte rounding, escape codes of a layer sparser than 1 in 255) comes off the limit of the guarantee's
    projections (:meth:`ResourceModel.unpriced`).
    """

    name, unit = "memory", "bits"

    def tap_costs(self, stats, l):
        """The most a kept weight costs: its value and one gap byte (:meth:`weight_costs` prices the current one)."""
        return torch.tensor(float(stats.bits_of(l)) + INDEX_BITS, dtype=torch.float64)

    def weight_costs(self, targets: Sequence[Target], stats: LayerStats) -> List[Tensor]:
        out = []
        with torch.no_grad():
            for l, t in enumerate(targets):
                b, n = float(stats.bits_of(l)), float(t.n)
                held = t.mask.mask if t.mask is not None else t.module.weight
                k = max(float(held.count_nonzero()), 1.0)
                out.append(torch.tensor(b + min(n / k, INDEX_BITS, (n - k) * b / k), dtype=torch.float64))
        return out

    def dense(self, targets: Sequence[Target], stats: LayerStats) -> float:
        return float(sum(t.n * stats.bits_of(l) for l, t in enumerate(targets)))

    def absolute(self, targets: Sequence[Target], stats: LayerStats) -> float:
        return float(sum(8 * weight_nbytes(t.module.weight, stats.bits_of(l)) for l, t in enumerate(targets)))

    def unpriced(self, targets: Sequence[Target], stats: LayerStats) -> float:
        priced = ResourceModel.absolute(self, targets, stats)  # the linear price of the nonzero weights
        return max(self.absolute(targets, stats) - priced, 0.0)


def create_resource(name: str, options: Dict[str, Dict[str, float]] | None = None) -> ResourceModel:
    """Build a registered resource model; ``options[name]`` holds its constants (e.g. ``energy: {e_ac: 0.9}``)."""
    return RESOURCES.create(name, **(options or {}).get(name, {}))
