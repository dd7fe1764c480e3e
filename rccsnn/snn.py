"""The spiking runtime: input encoders, multi-step neurons, the time loop, decoding, losses, SpikeMonitor.

Every rccsnn network runs in *multi-step* mode: it takes the whole encoded input ``[T, B, ...]`` at once and
returns output spikes ``[T, B, K]``. Stateless layers (convolutions, BatchNorm, pooling, linear) are wrapped in
:class:`PerStep`, which folds time into the batch so that one kernel call serves all T steps; only the neurons
(:class:`LIF`) iterate over time. The membrane state lives in local variables of :meth:`LIF.forward` and starts
at zero on every call, so no state can leak from one batch to the next.

    x [B, ...] --encode--> [T, B, ...] --net--> spikes [T, B, K] --decode--> counts [B, K] --loss--> scalar
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
import snntorch.functional as SF
from snntorch import Leaky, SpikingNeuron, surrogate
from torch import Tensor, nn

from rccsnn.contracts import Readout, run
from rccsnn.errors import UserError
from rccsnn.registry import Registry

class SurrogateSpike:
    """Heaviside spike with a surrogate gradient: ``function.apply(x, alpha)`` of an snntorch autograd Function.

    The same computation as the closures of ``snntorch.surrogate.atan(alpha)`` / ``fast_sigmoid(slope)`` /
    ``sigmoid(slope)``, but a module-level class, so a network that holds one can be pickled whole
    (``torch.save(net)``); snntorch's closures are local functions and cannot.
    """

    def __init__(self, function: type, alpha: float) -> None:
        self.function = function
        self.alpha = alpha

    def __call__(self, x: Tensor) -> Tensor:
        return self.function.apply(x, self.alpha)

    def __repr__(self) -> str:
        return f"SurrogateSpike({self.function.__name__}, alpha={self.alpha})"


def atan_surrogate(alpha: float = 2.0) -> SurrogateSpike:
    """As ``snntorch.surrogate.atan(alpha)``."""
    return SurrogateSpike(surrogate.ATan, alpha)


def fast_sigmoid_surrogate(alpha: float = 25.0) -> SurrogateSpike:
    """As ``snntorch.surrogate.fast_sigmoid(slope=alpha)``."""
    return SurrogateSpike(surrogate.FastSigmoid, alpha)


def sigmoid_surrogate(alpha: float = 25.0) -> SurrogateSpike:
    """As ``snntorch.surrogate.sigmoid(slope=alpha)``."""
    return SurrogateSpike(surrogate.Sigmoid, alpha)


SURROGATES: Registry[Callable] = Registry("surrogate")
SURROGATES.register("atan")(atan_surrogate)
SURROGATES.register("fast_sigmoid")(fast_sigmoid_surrogate)
SURROGATES.register("sigmoid")(sigmoid_surrogate)

RESET_MECHANISMS = ("subtract", "zero", "none")


@dataclass
class NeuronConfig:
    """Leaky integrate-and-fire settings shared by every spiking layer of a network.

    Dynamics (snntorch ``Leaky``, reset applied one step late as in snntorch)::

        U[t] = beta * U[t-1] + I[t] - R[t] ;   S[t] = H(U[t] - threshold)

    with ``R[t] = S[t-1] * threshold`` for ``subtract``, ``S[t-1] * beta * U[t-1]`` for ``zero`` and ``0`` for ``none``.

    Attributes:
        beta: membrane decay per time step, ``1 - 1/tau`` (0.5 for tau = 2). Dimensionless, in [0, 1].
        threshold: firing threshold, in the units of the layer input.
        reset: ``subtract``, ``zero`` (hard reset) or ``none``.
        surrogate: name of the surrogate gradient of H (``atan``, ``fast_sigmoid``, ``sigmoid``).
        surrogate_alpha: its sharpness (alpha of atan, slope of the sigmoids).
    """

    beta: float = 0.5
    threshold: float = 1.0
    reset: str = "subtract"
    surrogate: str = "atan"
    surrogate_alpha: float = 2.0

    def validate(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise UserError(f"neuron.beta must be in [0, 1], got {self.beta}")
        if not self.threshold > 0:
            raise UserError(f"neuron.threshold must be positive, got {self.threshold}")
        if self.reset not in RESET_MECHANISMS:
            raise UserError(f"neuron.reset must be one of {', '.join(RESET_MECHANISMS)}, got '{self.reset}'")
        SURROGATES.get(self.surrogate)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


class LIF(nn.Module):
    """Multi-step leaky integrate-and-fire layer around ``snntorch.Leaky``.

    Args:
        neuron: the neuron settings.

    Shape:
        input ``[T, B, ...]`` (currents), output ``[T, B, ...]`` (spikes in {0, 1}).

    Example::

        >>> lif = LIF(NeuronConfig(beta=0.5, threshold=1.0))
        >>> lif(torch.tensor([[0.6], [0.6], [0.6]])).flatten().tolist()   # U = 0.6, 0.9, 1.05
        [0.0, 0.0, 1.0]
    """

    def __init__(self, neuron: NeuronConfig) -> None:
        super().__init__()
        neuron.validate()
        self.neuron = Leaky(
            beta=neuron.beta,
            threshold=neuron.threshold,
            spike_grad=SURROGATES.create(neuron.surrogate, alpha=neuron.surrogate_alpha),
            reset_mechanism=neuron.reset,
        )

    def forward(self, x: Tensor) -> Tensor:
        # The state is passed explicitly from zero each call: snntorch otherwise keeps `mem` between calls
        # whenever the shape matches, which would leak state from one batch into the next.
        mem = torch.zeros_like(x[0])
        spikes = []
        for t in range(x.shape[0]):
            spk, mem = self.neuron(x[t], mem)
            spikes.append(spk)
        self.neuron.mem = torch.zeros(0)  # drop the reference to the last step's graph
        return torch.stack(spikes)


def spiking_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every spiking layer of ``model`` in registration order: each :class:`LIF`, and each
    snntorch ``SpikingNeuron`` that is not inside one (a LIF's inner neuron is part of the LIF)."""
    found: List[Tuple[str, nn.Module]] = []
    inside: set = set()
    for name, module in model.named_modules():
        if id(module) in inside:
            continue
        if isinstance(module, (LIF, SpikingNeuron)):
            found.append((name, module))
            inside.update(id(m) for m in module.modules())
    return found



def spikes_of(output: Any) -> Optional[Tensor]:
    """The spike tensor of a spiking layer's output: the tensor itself, or the first element of a tuple."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class PerStep(nn.Sequential):
    """Applies stateless layers to every time step at once by folding time into the batch.

    Shape: input ``[T, B, ...]``, output ``[T, B, ...']``.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        T, B = x.shape[:2]
        y = super().forward(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])


class SeqDropout(nn.Module):
    """Dropout whose mask is shared by all time steps (a dropped neuron stays silent for the whole sample).

    Shape: input and output ``[T, B, ...]``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x[0]).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------------------------- encoders
ENCODERS: Registry[Callable[[Tensor, int], Tensor]] = Registry("encoding")


@ENCODERS.register("direct")
def direct_encoding(x: Tensor, T: int) -> Tensor:
    """The analog input repeated every step: ``[B, ...] -> [T, B, ...]`` (a view, no copy)."""
    return x.unsqueeze(0).expand(T, *x.shape)


@ENCODERS.register("none")
def no_encoding(x: Tensor, T: int) -> Tensor:
    """Input that is already time-major, ``[T, B, ...]`` (event data), passed through as it is."""
    if x.dim() < 2 or x.shape[0] != T:
        raise UserError(f"encoding 'none' takes time-major input [T, B, ...] with T = {T}, got a batch of shape "
                        f"{list(x.shape)}")
    return x


@ENCODERS.register("rate")
def rate_encoding(x: Tensor, T: int) -> Tensor:
    """Bernoulli spikes with probability ``clamp(x, 0, 1)`` per step: ``[B, ...] -> [T, B, ...]`` in {0, 1}."""
    p = x.clamp(0.0, 1.0)
    return torch.bernoulli(p.unsqueeze(0).expand(T, *x.shape))


# ----------------------------------------------------------------------------------------------- losses
#: Training losses, by name: ``loss(readout, target [B]) -> scalar``. All but ``mse`` are snntorch.functional's own
#: criteria, applied as snntorch's tutorials apply them; ``mse`` is the minimax reference's rate loss.
LOSSES: Registry[Callable[[Readout, Tensor], Tensor]] = Registry("loss")


@LOSSES.register("ce")
def count_cross_entropy(out: Readout, target: Tensor) -> Tensor:
    """Cross-entropy with the output spike counts ``[B, K]`` as logits (``snntorch.functional.ce_count_loss``)."""
    return SF.ce_count_loss()(out.spikes, target)


@LOSSES.register("rate_ce")
def rate_cross_entropy(out: Readout, target: Tensor) -> Tensor:
    """Cross-entropy with each step's spikes as logits, averaged over the T steps (``ce_rate_loss``)."""
    return SF.ce_rate_loss()(out.spikes, target).reshape(())


@LOSSES.register("count_mse")
def count_mse(out: Readout, target: Tensor) -> Tensor:
    """Mean squared error of the spike counts against 0.8 T for the target class and 0.2 T for the others
    (``mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)``, as snntorch's tutorials 6 and 7 train)."""
    return SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)(out.spikes, target)


@LOSSES.register("mse")
def rate_mse(out: Readout, target: Tensor) -> Tensor:
    """Mean squared error between firing rates ``counts / T`` and the one-hot target (the minimax reference's loss)."""
    counts = out.counts
    return F.mse_loss(counts / out.T, F.one_hot(target, counts.shape[-1]).to(counts.dtype))


def _membrane(out: Readout, loss: str) -> Tensor:
    if out.mem is None:
        raise UserError(f"loss '{loss}' trains on the output membrane, but the model returns spikes only "
                        f"[T, B, K]; return (spk, mem) (e.g. the last neuron with output=True) or choose --loss ce")
    return out.mem


@LOSSES.register("mem_ce")
def membrane_cross_entropy(out: Readout, target: Tensor) -> Tensor:
    """Cross-entropy with each step's output membrane as logits, averaged over the T steps (``ce_rate_loss`` on
    the membrane: snntorch tutorial 5's loss, which sums over the steps, divided by T)."""
    return SF.ce_rate_loss()(_membrane(out, "mem_ce"), target).reshape(())


@LOSSES.register("mem_max_ce")
def max_membrane_cross_entropy(out: Readout, target: Tensor) -> Tensor:
    """Cross-entropy with the output membrane's maximum over time as logits (``ce_max_membrane_loss``)."""
    return SF.ce_max_membrane_loss()(_membrane(out, "mem_max_ce"), target)


def forward(net: nn.Module, x: Tensor, T: int, encoding: str = "direct", steps: str = "multi") -> Readout:
    """Encode ``x`` (``[B, ...]``, or ``[T, B, ...]`` for ``encoding="none"``) and run ``net`` for ``T`` steps under
    its contract ``steps`` (:mod:`rccsnn.contracts`).

    Returns:
        the :class:`~rccsnn.contracts.Readout`: output spikes ``[T, B, K]`` and, if the net returns it, membrane.
    """
    return run(net, ENCODERS.get(encoding)(x, T), steps)


def simulate(net: nn.Module, x: Tensor, T: int, encoding: str = "direct", steps: str = "multi") -> Tensor:
    """:func:`forward`, decoded by spike count.

    Returns:
        ``[B, K]`` output spike counts (in [0, T] for spiking outputs), usable as logits.
    """
    return forward(net, x, T, encoding, steps).counts


# ----------------------------------------------------------------------------------------------- monitor
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _Running:
    """Sum and element count of a tensor stream, kept on the tensor's device (no host sync per batch)."""

    __slots__ = ("total", "count")

    def __init__(self) -> None:
        self.total: Optional[Tensor] = None
        self.count = 0

    def add(self, x: Tensor) -> None:
        s = x.detach().sum(dtype=torch.float64)
        self.total = s if self.total is None else self.total + s
        self.count += x.numel()

    def mean(self) -> float:
        return float(self.total) / self.count if self.count else 0.0


class SpikeMonitor:
    """Exact firing statistics through forward hooks; use as a context manager around forward passes.

    For every spiking layer (:func:`spiking_layers`: each :class:`LIF` and each snntorch neuron outside one, so a
    model written with snntorch's own neurons is watched too) it records the output firing rate (spikes per neuron
    per time step; an snntorch neuron called once per step adds every call); for every
    weight layer (Conv1d/2d/3d, Linear) the mean value of its input (the input firing rate when the input is
    spikes), whether that input is analog (anything other than 0/1 in any call seen), the number of
    output positions per time step and sample (H_out * W_out for Conv2d, 1 for Linear on ``[N, F]``) and, per
    input element, how often it was nonzero (summed over samples and time steps), from which :meth:`tap_reads`
    gives every tap's exact operation count. Rates are exact ratios of sums over every element seen, not means of
    batch means.

    The leading dimension of a weight layer's input counts samples x time steps (``[T * B, ...]`` when time is
    folded into the batch, ``[B, ...]`` once per step in a model with its own time loop), so a layer's samples are
    its input rows / T.

    Args:
        model: the network to watch.
        T: time steps per inference, used to convert per-step counts to per-inference MACs.
    """

    def __init__(self, model: nn.Module, T: int) -> None:
        self.model = model
        self.T = T
        self._handles: List = []
        self._out: Dict[str, _Running] = {}
        self._inp: Dict[str, _Running] = {}
        self._nonzero: Dict[str, Tensor] = {}   # per input element (one sample's shape): times it was nonzero
        self._rows: Dict[str, int] = {}         # input rows seen (samples x time steps)
        self._modules: Dict[str, nn.Module] = {}
        self._analog: Dict[str, Tensor] = {}    # per layer, on the input's device: any input other than 0 or 1
        self.positions: Dict[str, int] = {}
        self.weights: Dict[str, int] = {}

    def __enter__(self) -> "SpikeMonitor":
        spiking = {id(m) for _, m in spiking_layers(self.model)}
        for name, module in self.model.named_modules():
            if id(module) in spiking:
                self._out[name] = _Running()
                self._handles.append(module.register_forward_hook(self._spike_hook(name)))
            elif isinstance(module, WEIGHT_LAYERS):
                self._inp[name] = _Running()
                self.weights[name] = module.weight.numel()
                self._modules[name] = module
                self._handles.append(module.register_forward_hook(self._input_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _spike_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Any) -> None:
            spikes = spikes_of(output)  # an snntorch neuron may return (spk, mem) or (spk, syn, mem)
            if spikes is not None:
                self._out[name].add(spikes)

        return hook

    def _input_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            x = inputs[0].detach()
            self._inp[name].add(x)
            # A linear layer reads its last dimension at every position of the others; a conv its whole sample.
            dims = tuple(range(x.dim() - 1)) if isinstance(module, nn.Linear) else (0,)
            nonzero = (x != 0).sum(dim=dims, dtype=torch.float64)
            previous = self._nonzero.get(name)
            self._nonzero[name] = nonzero if previous is None else previous + nonzero
            self._rows[name] = self._rows.get(name, 0) + x.shape[0]
            # Every call, not just the first: in a model with its own time loop a call is one time step, and a layer
            # behind spiking neurons often sees only zeros at the first step (an average-pooled layer is analog later).
            analog = ((x != 0) & (x != 1)).any()
            previous = self._analog.get(name)
            self._analog[name] = analog if previous is None else previous | analog.to(previous.device)
            if name not in self.positions:
                spatial = output.shape[2:] if not isinstance(module, nn.Linear) else output.shape[1:-1]
                self.positions[name] = int(torch.Size(spatial).numel())

        return hook

    def all_reduce(self) -> "SpikeMonitor":
        """Add up the sums and counts of every process of a distributed run (each saw its own shard of the data).

        Afterwards the rates are those of the whole split, as one process would have measured them. Nothing
        happens without a process group. Every process must call it (it is a collective).
        """
        from rccsnn import distributed

        if not distributed.active():
            return self
        runs = list(self._out.values()) + list(self._inp.values())
        packed = torch.tensor([v for r in runs for v in (float(r.total) if r.total is not None else 0.0,
                                                         float(r.count))], dtype=torch.float64)
        packed = distributed.all_reduce_sum(packed).view(-1, 2)
        for r, (total, count) in zip(runs, packed):
            r.total, r.count = total.clone(), int(count)
        names = sorted(self._nonzero)
        if names:
            flat = torch.cat([self._nonzero[n].flatten().cpu() for n in names]
                             + [torch.tensor([float(self._rows[n]) for n in names], dtype=torch.float64)])
            flat = distributed.all_reduce_sum(flat)
            offset = 0
            for n in names:
                size = self._nonzero[n].numel()
                self._nonzero[n] = flat[offset: offset + size].view_as(self._nonzero[n]).clone()
                offset += size
            for n, rows in zip(names, flat[offset:].tolist()):
                self._rows[n] = int(rows)
        kinds = sorted(self._analog)
        if kinds:  # a layer is analog if any process saw an analog input
            flags = torch.stack([self._analog[n].to(torch.float64).cpu() for n in kinds])
            for n, flag in zip(kinds, distributed.all_reduce_sum(flags)):
                self._analog[n] = flag > 0
        return self

    @property
    def analog_input(self) -> Dict[str, bool]:
        """Per weight layer whether its input held anything other than 0 and 1 (analog, not spikes) in any call."""
        return {name: bool(flag) for name, flag in self._analog.items()}

    def firing_rates(self) -> Dict[str, float]:
        """Spikes per neuron per time step of each spiking layer (LIF or snntorch neuron), by module name."""
        return {name: r.mean() for name, r in self._out.items() if r.count}

    def activation_sparsity(self) -> Optional[float]:
        """1 - spikes / (neurons x time steps) over every spiking layer together (None when none was called)."""
        runs = [r for r in self._out.values() if r.count]
        if not runs:
            return None
        return 1.0 - sum(float(r.total) for r in runs) / sum(r.count for r in runs)

    def input_rates(self) -> Dict[str, float]:
        """Mean input value of each weight layer (its input firing rate for spike inputs), by module name."""
        return {name: r.mean() for name, r in self._inp.items() if r.count}

    def samples(self, name: str) -> float:
        """Inferences layer ``name`` saw (its input rows / T)."""
        return self._rows.get(name, 0) / self.T

    def tap_reads(self, name: str) -> Tensor:
        """Per tap of layer ``name``'s weight, the nonzero inputs it read per inference (averaged over samples).

        For a tap of a spiking-input layer this is its synaptic operations (NeuroBench's effective ACs), for an
        analog-input layer its effective MACs. Shape ``[G, 1, C_in / G, *kernel]`` (G the conv's groups, 1 for a
        linear layer, whose taps are its inputs), float64, on the CPU: broadcastable against the weight viewed as
        ``[G, C_out / G, C_in / G, *kernel]``.
        """
        samples = self.samples(name)
        counts = self._nonzero[name].cpu() / samples if samples else self._nonzero[name].cpu() * 0.0
        return reads_per_tap(self._modules[name], counts)

    def tap_macs(self, name: str) -> Tensor:
        """Per tap of layer ``name``'s weight, the input positions it reads per inference, zero or not: its MACs,
        T x the output positions at which it falls inside the input (padding, stride, dilation). Shape as
        :meth:`tap_reads`."""
        every = torch.full_like(self._nonzero[name].cpu(), float(self.T))
        if isinstance(self._modules[name], nn.Linear):
            every *= self.positions[name]
        return reads_per_tap(self._modules[name], every)


def reads_per_tap(module: nn.Module, counts: Tensor) -> Tensor:
    """Sum, for every tap of ``module``'s weight, of ``counts`` over the input elements that tap reads.

    Args:
        module: a Conv1d/2d/3d or Linear layer.
        counts: per input element of one sample, ``[C_in, *spatial]`` for a conv, ``[F]`` for a linear layer
            (whose every output position reads every input, so its per-tap sum is the count itself).

    Returns:
        ``[G, 1, C_in / G, *kernel]`` float64 (``[1, 1, F]`` for a linear layer).

    A conv tap (c_in, k) reads input c_in at ``stride * p - padding + dilation * k`` for each output position p, when
    that falls inside the input. The sum over p is the gradient, with respect to a kernel of ones, of the summed output
    of a depthwise conv of ``counts`` with that kernel: one call that honours padding (and its mode), stride and
    dilation for any number of spatial dimensions.
    """
    counts = counts.to(torch.float64)
    if isinstance(module, nn.Linear):
        return counts.reshape(1, 1, -1)
    channels, kernel = counts.shape[0], tuple(module.kernel_size)
    ones = torch.ones(channels, 1, *kernel, dtype=torch.float64, requires_grad=True)
    x, padding = counts.unsqueeze(0), module.padding
    if module.padding_mode != "zeros":  # a reflected or circular border reads real inputs: pad with them first
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    with torch.enable_grad():
        out = conv(x, ones, None, module.stride, padding, module.dilation, channels)
        (per_tap,) = torch.autograd.grad(out.sum(), ones)
    groups = module.groups
    return per_tap.reshape(groups, 1, channels // groups, *kernel)


def weight_layers(model: nn.Module) -> Iterable[tuple]:
    """``(name, module)`` for every Conv1d/2d/3d and Linear layer, in registration order."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS))
