"""What the spiking layers do while a network trains: firing-rate constraints with their own duals, and criticality.

A *spiking layer* is a module whose output is spikes: rccsnn's multi-step :class:`~rccsnn.snn.LIF` (output
``[T, B, ...]``), or an snntorch neuron (any ``snntorch.SpikingNeuron``: ``Leaky``, ``Synaptic``, ``RLeaky``,
``RSynaptic``, ``Alpha``, ``Lapicque``) used directly, as snntorch's tutorials write models (called once per time
step, output ``spk`` or a tuple whose first element is ``spk``). An snntorch neuron inside a LIF is part of that LIF.

Activity constraints (docs/method.md, "Activity constraints")
--------------------------------------------------------
A layer that stops firing kills every layer after it: the surrogate gradient of a neuron far below threshold is
tiny and nothing recovers (the loss sits at ln K). For every spiking layer l, with r_l its mean firing rate (spikes
per neuron per time step) on the current training batch and r_l^dense the dense model's rate on the validation
split (measured once, exactly, at the start)::

    g_l = rho_min * r_l^dense - r_l <= 0

It enters the Lagrangian like the budgets do, relative to its floor so that one step size fits every layer::

    L(W) + sum_l mu_l * g_hat_l ,    g_hat_l = g_l / (rho_min r_l^dense) = 1 - r_l / (rho_min r_l^dense)
    mu_l <- max(0, mu_l + (lr_mu / P) * g_hat_l)        after every optimizer step

P is the number of steps of the compression phase, so ``lr_mu`` is a step size *per phase* (as ``lr_z`` in
:mod:`rccsnn.methods.minimax`): a layer that stays silent for the whole phase raises its dual by ``lr_mu``. The
gradient of ``mu_l * g_hat_l`` reaches the weights through the surrogate gradient of the spikes, the same path the
task loss takes; a layer whose dense rate is 0 has no constraint. :class:`ActivityRecorder` keeps r_l of the current
forward *with* its autograd graph (forward hooks, no extra forward pass: one sum per spiking layer and call).

Criticality (arXiv 2311.16141)
------------------------------
Chen et al., "Brain-Inspired Efficient Pruning: Exploiting Criticality in Spiking Neural Networks": "We firstly
explain criticality in SNNs from the perspective of maximizing feature information entropy. Second, We propose a
low-cost metric for assess neuron criticality in feature transmission and design a pruning-regeneration method that
incorporates this criticality into the pruning process." (abstract, v3); "we re-rank the pruned structures after
pruning and regenerate those with higher criticality to obtain the critical network" (abstract, v1). The metric
rates a neuron by how close its membrane potential stays to the firing threshold; arXiv 2606.30676 reads it as the
surrogate gradient's value there, averaged over time steps and samples, and so does :class:`CriticalityMeter`::

    C_j = mean over samples b, time steps t (and positions, for a conv channel) of  sigma'(U_j[b, t] - theta)

with sigma' the derivative of the neuron's own surrogate spike function (large near threshold, vanishing far from
it). Only the papers' abstracts could be read here; the equation is the reading above, not a quotation.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from snntorch import SpikingNeuron
from torch import Tensor, nn

from rccsnn import distributed
from rccsnn.errors import UserError
from rccsnn.masks import Target
from rccsnn.snn import spiking_layers, spikes_of  # noqa: F401 (spiking_layers: part of this module's API)


# ----------------------------------------------------------------------------------------------- discovery
def neuron_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every single-step snntorch neuron (a LIF's inner ``Leaky`` included): the modules
    that hold a membrane potential ``mem`` and a ``threshold``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingNeuron)]


def layer_tag(name: str) -> str:
    """A layer's name as a TensorBoard tag suffix (the root module, named ``""``, is ``net``)."""
    return name or "net"


# ----------------------------------------------------------------------------------------------- rates
class ActivityRecorder:
    """The mean firing rate of each spiking layer over the forward passes since :meth:`arm`, with autograd graph.

    Forward hooks add each call's spike sum (``s.sum()``, part of the graph) and element count; :meth:`rates` is
    their ratio, so for a multi-step LIF it is the mean over time steps, samples and neurons, and for an snntorch
    neuron called once per step the same mean over all its calls. Nothing is recorded unless armed, so evaluation
    passes are not counted. Inside :meth:`measuring` the sums are exact float64 counts without a graph instead.

    Args:
        model: the network.
        layers: the spiking layers to watch (default :func:`spiking_layers`).
    """

    def __init__(self, model: nn.Module, layers: Optional[Sequence[Tuple[str, nn.Module]]] = None) -> None:
        self.layers = list(spiking_layers(model) if layers is None else layers)
        self.names = [name for name, _ in self.layers]
        self.armed = False
        self._exact = False
        self._sum: List[Optional[Tensor]] = [None] * len(self.layers)
        self._count = [0] * len(self.layers)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.armed:
                return
            s = spikes_of(output)
            if s is None:
                return
            total = s.detach().sum(dtype=torch.float64) if self._exact else s.sum(dtype=torch.float32)
            self._sum[i] = total if self._sum[i] is None else self._sum[i] + total
            self._count[i] += s.numel()

        return hook

    def arm(self) -> None:
        """Start a fresh record (before the forward pass whose rates are wanted)."""
        self.clear()
        self.armed = True

    def disarm(self) -> None:
        """Stop recording and drop the record (and with it the graph it holds)."""
        self.armed = False
        self.clear()

    def clear(self) -> None:
        self._sum = [None] * len(self.layers)
        self._count = [0] * len(self.layers)

    def seen(self) -> bool:
        return any(c > 0 for c in self._count)

    def rates(self) -> Optional[Tensor]:
        """``[L]`` spikes per neuron per time step since :meth:`arm` (a layer not called: 0, no graph); None if
        no layer was called. Differentiable in training mode."""
        first = next((s for s in self._sum if s is not None), None)
        if first is None:
            return None
        zero = torch.zeros((), dtype=first.dtype, device=first.device)
        return torch.stack([s / c if s is not None else zero for s, c in zip(self._sum, self._count)])

    @contextlib.contextmanager
    def measuring(self) -> Iterator[List[Tensor]]:
        """Exact rates over every forward pass inside the block (any mode, no graph), all processes' counts added
        up in a distributed run; the list yielded holds the ``[L]`` float64 result once the block ends."""
        result: List[Tensor] = []
        was = self.armed
        self.clear()
        self.armed, self._exact = True, True
        try:
            yield result
            sums = torch.tensor([float(s) if s is not None else 0.0 for s in self._sum], dtype=torch.float64)
            counts = torch.tensor(self._count, dtype=torch.float64)
            if distributed.active():
                both = distributed.all_reduce_sum(torch.stack([sums, counts]))
                sums, counts = both[0].cpu(), both[1].cpu()
            result.append(torch.where(counts > 0, sums / counts.clamp_min(1.0), torch.zeros_like(sums)))
        finally:
            self._exact = False
            self.armed = was
            self.clear()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class ActivityConstraints:
    """``rate_l >= rho_min * dense rate_l`` for every spiking layer, each with a dual ``mu_l`` (module docstring).

    Plugs into a method through its hooks (none costs an extra forward pass)::

        constraints = ActivityConstraints(net, rho_min=0.1)
        constraints.calibrate(problem.measure_stats)   # once: the dense rates, exactly, on the validation split
        constraints.start(steps=P)                     # P: steps of the compression phase (per-phase step size)
        # each training step:
        constraints.before_forward(step)               # arm the recorder
        extra = constraints.loss_term(step)            # sum_l mu_l * g_hat_l, added to the task loss before backward
        constraints.after_step(step)                   # dual ascent on this batch's violation

    ``scalars()`` gives ``dual/mu_<layer>`` and ``activity/<layer>`` (an EMA of the training rate) for TensorBoard.
    The duals stay on the network's device; nothing synchronises with the host during a step (in a distributed run
    the violations are averaged across processes once per step, so every process holds the same duals).

    Args:
        model: the network.
        rho_min: the floor as a fraction of each layer's dense rate, in [0, 1] (0 turns every constraint off).
        lr_mu: step size of the duals per compression phase (>= 0).
        mu0: initial duals (>= 0).
        momentum: of the training-rate EMA that is logged (in [0, 1)).
        layers: the spiking layers (default :func:`spiking_layers`).
    """

    def __init__(self, model: nn.Module, *, rho_min: float = 0.1, lr_mu: float = 5.0, mu0: float = 0.0,
                 momentum: float = 0.9, layers: Optional[Sequence[Tuple[str, nn.Module]]] = None) -> None:
        check_fraction("rho_min", rho_min)
        check_nonnegative("lr_mu", lr_mu)
        check_nonnegative("mu0", mu0)
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"method option momentum must be in [0, 1), got {momentum}")
        self.recorder = ActivityRecorder(model, layers)
        self.names = self.recorder.names
        self.rho_min, self.lr_mu, self.momentum = float(rho_min), float(lr_mu), float(momentum)
        L = len(self.names)
        self.dense: Optional[Tensor] = None  # [L] float64, CPU
        self.mu = torch.full((L,), float(mu0))  # [L] float32, moved to the network's device on first use
        self.rate = torch.full((L,), float("nan"))  # [L] EMA of the training rate (nan: not seen yet)
        self.steps = 1
        self._floor: Optional[Tensor] = None
        self._last: Optional[Tensor] = None

    # ------------------------------------------------------------------------------------------- setting up
    def calibrate(self, run: Callable[[], Any]) -> Tensor:
        """Measure the dense rates exactly over the forward passes ``run()`` makes (a pass over the validation
        split, e.g. ``problem.measure_stats``); returns and keeps them, ``[L]`` float64."""
        with self.recorder.measuring() as result:
            run()
        self.set_dense(result[0])
        return self.dense

    def set_dense(self, rates: Tensor) -> None:
        """Set the dense rates ``[L]`` (spikes per neuron per time step) directly."""
        rates = torch.as_tensor(rates, dtype=torch.float64).flatten().cpu()
        if rates.numel() != len(self.names):
            raise ValueError(f"{rates.numel()} dense rates for {len(self.names)} spiking layers")
        self.dense = rates
        self._floor = None

    def start(self, steps: int) -> None:
        """The length P of the compression phase in steps: the duals move by ``lr_mu / P`` per unit violation."""
        self.steps = max(int(steps), 1)

    def floor(self, device: torch.device) -> Tensor:
        """``[L]`` float32 ``rho_min * r^dense`` on ``device``."""
        if self._floor is None or self._floor.device != device:
            self._floor = (self.rho_min * self.dense).float().to(device)
        return self._floor

    def violation(self, rates: Tensor) -> Tensor:
        """``[L]`` ``g_hat = 1 - r / (rho_min r^dense)`` (differentiable in ``rates``); 0 where the floor is 0."""
        floor = self.floor(rates.device)
        active = floor > 0
        return torch.where(active, 1.0 - rates / torch.where(active, floor, torch.ones_like(floor)),
                           torch.zeros_like(rates))

    # ------------------------------------------------------------------------------------------- hooks
    def before_forward(self, step: int) -> None:
        if self.dense is not None and self.rho_min > 0:
            self.recorder.arm()

    def loss_term(self, step: int) -> Optional[Tensor]:
        """``sum_l mu_l * g_hat_l`` for this forward (a scalar with graph), or None when nothing was recorded."""
        rates = self.recorder.rates() if self.recorder.armed else None
        if rates is None:
            return None
        self._last = rates.detach()
        self.mu = self.mu.to(rates.device)
        return (self.mu * self.violation(rates)).sum()

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Dual ascent on this step's violation, projected onto ``mu >= 0``; releases the recorded graph."""
        rates = self._last
        if rates is None and self.recorder.armed:
            rates = self.recorder.rates()  # loss_term was not called: ascend anyway
            rates = rates.detach() if rates is not None else None
        self._last = None
        self.recorder.disarm()
        if rates is None:
            return
        g = self.violation(rates)
        if distributed.active():
            both = distributed.all_reduce_mean(torch.stack([g, rates]))
            g, rates = both[0], both[1]
        self.mu = (self.mu.to(g.device) + (self.lr_mu / self.steps) * g).clamp_min(0.0)
        self.rate = self.rate.to(rates.device)
        self.rate = torch.where(torch.isnan(self.rate), rates,
                                self.momentum * self.rate + (1.0 - self.momentum) * rates)

    # ------------------------------------------------------------------------------------------- reporting
    def scalars(self) -> Dict[str, float]:
        """``dual/mu_<layer>``, ``activity/<layer>`` (training-rate EMA) and ``activity_floor/<layer>``."""
        out: Dict[str, float] = {}
        floor = (self.rho_min * self.dense).tolist() if self.dense is not None else [0.0] * len(self.names)
        for name, mu, rate, f in zip(self.names, self.mu.tolist(), self.rate.tolist(), floor):
            tag = layer_tag(name)
            out[f"dual/mu_{tag}"] = mu
            if not math.isnan(rate):
                out[f"activity/{tag}"] = rate
            out[f"activity_floor/{tag}"] = f
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"names": list(self.names), "dense": None if self.dense is None else self.dense.clone(),
                "mu": self.mu.detach().cpu().clone(), "rate": self.rate.detach().cpu().clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"activity constraints of layers {list(state['names'])}, this network has {self.names}")
        if state["dense"] is not None:
            self.set_dense(state["dense"])
        device = self.mu.device
        self.mu = state["mu"].float().to(device)
        self.rate = state["rate"].float().to(device)

    def close(self) -> None:
        self.recorder.close()


# ----------------------------------------------------------------------------------------------- criticality
def surrogate_derivative(neuron: nn.Module, mem: Tensor) -> Tensor:
    """``sigma'(mem - threshold)`` elementwise, from the neuron's own surrogate spike function (``spike_grad``).

    Any surrogate works (snntorch's closures, rccsnn's :class:`~rccsnn.snn.SurrogateSpike`): the derivative is
    taken by autograd on a detached copy, so the training graph is untouched. Shape of ``mem``, float.
    """
    threshold = neuron.threshold
    threshold = threshold.detach() if isinstance(threshold, Tensor) else torch.tensor(float(threshold))
    with torch.enable_grad():
        u = (mem.detach().float() - threshold.to(mem.device).float()).requires_grad_(True)
        s = neuron.spike_grad(u)
        (d,) = torch.autograd.grad(s, u, torch.ones_like(s))
    return d


def units_of(target: Target) -> Tuple[int, int]:
    """``(units, dim)``: the output units a target feeds (out channels / out features) and where they sit in the
    single-step activation of the neuron after it (``1`` for a conv's ``[B, C, ...]``, ``-1`` for a linear's)."""
    return int(target.shape[0]), (-1 if isinstance(target.module, nn.Linear) else 1)


class CriticalityMeter:
    """Per output unit of each target, an EMA over training batches of the criticality of the neurons it feeds.

    For target l (a Conv/Linear weight ``[units, ...]``) the neurons it feeds are those of the first snntorch neuron
    (a LIF's inner ``Leaky`` included) called after it in the forward pass whose activation has ``units`` entries
    along the unit axis (channels of a conv, features of a linear); the map is found once, on the first recorded
    forward. A target whose output reaches no such neuron (a non-spiking readout) has no score: :meth:`score` is
    None and a user of the meter should treat its units as equally critical.

    Per neuron call the meter takes ``sigma'(U - theta)`` (:func:`surrogate_derivative`) at the membrane potential
    the neuron holds after the step (``module.mem``; with snntorch's default ``reset_delay=True`` that is the
    potential at which it fired, before the reset) and averages it over samples and positions per unit; per batch
    over the calls (time steps); then :meth:`fold` mixes the batch into the EMA. Nothing is recorded unless
    :attr:`recording` is on and the module is in training mode with gradients enabled (never in evaluation).

    Args:
        model: the network.
        targets: the weight layers whose units are scored.
        momentum: weight of the old estimate per folded batch, in [0, 1).
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"method option momentum must be in [0, 1), got {momentum}")
        self.targets = list(targets)
        self.momentum = float(momentum)
        self.neurons = neuron_modules(model)
        self.units = [units_of(t) for t in self.targets]
        self.owner: List[Optional[int]] = [None] * len(self.targets)  # neuron index per target
        self.mapped = False
        self.recording = True
        self.scores: List[Optional[Tensor]] = [None] * len(self.targets)  # [units] float32 EMA per target
        self._sum: List[Optional[Tensor]] = [None] * len(self.targets)
        self._calls = [0] * len(self.targets)
        self._pending: List[int] = []
        self._discovered = False  # a recorded forward has run the targets (the map is fixed at the next fold)
        self._owned: Dict[int, List[int]] = {}
        self._handles = [m.register_forward_hook(self._neuron_hook(i)) for i, (_, m) in enumerate(self.neurons)]
        self._target_handles = [t.module.register_forward_hook(self._target_hook(l))
                                for l, t in enumerate(self.targets)]

    def _active(self, module: nn.Module) -> bool:
        return self.recording and module.training and torch.is_grad_enabled()

    def _target_hook(self, l: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._active(module) and not self.mapped:
                self._discovered = True
                if l not in self._pending:
                    self._pending.append(l)

        return hook

    def _neuron_hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active(module):
                return
            mem = getattr(module, "mem", None)
            if not isinstance(mem, Tensor) or mem.dim() == 0 or mem.numel() == 0:
                return
            if self._pending:
                for l in self._pending:
                    units, dim = self.units[l]
                    if self.owner[l] is None and mem.dim() >= 2 and mem.shape[dim] == units:
                        self.owner[l] = i
                        self._owned.setdefault(i, []).append(l)
                self._pending = []
            owned = self._owned.get(i)
            if not owned:
                return
            d = surrogate_derivative(module, mem)
            for l in owned:
                units, dim = self.units[l]
                per_unit = d.movedim(dim, 0).reshape(units, -1).mean(1)
                self._sum[l] = per_unit if self._sum[l] is None else self._sum[l] + per_unit
                self._calls[l] += 1

        return hook

    @torch.no_grad()
    def fold(self) -> None:
        """Mix the batch recorded since the last fold into the EMA (call once per training step, after the
        forward). The first recorded batch also fixes the target -> neuron map."""
        if self._discovered:
            self._finish_mapping()
        for l, (total, calls) in enumerate(zip(self._sum, self._calls)):
            if not calls:
                continue
            batch = total / calls
            old = self.scores[l]
            self.scores[l] = batch if old is None else self.momentum * old.to(batch.device) + (1 - self.momentum) * batch
        self._sum = [None] * len(self.targets)
        self._calls = [0] * len(self.targets)

    def _finish_mapping(self) -> None:
        if self.mapped:
            return
        self.mapped = True
        self._pending = []
        for h in self._target_handles:
            h.remove()
        self._target_handles.clear()

    def score(self, l: int) -> Optional[Tensor]:
        """``[units]`` criticality of the units target ``l`` feeds (None: not seen, or no neuron after it)."""
        return self.scores[l]

    def feeds(self) -> Dict[str, Optional[str]]:
        """Target name -> name of the neuron module its units feed (None where none was found)."""
        return {t.name: (self.neurons[o][0] if o is not None else None) for t, o in zip(self.targets, self.owner)}

    def state_dict(self) -> Dict[str, Any]:
        return {"scores": [None if s is None else s.detach().cpu().clone() for s in self.scores]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        scores = list(state["scores"])
        if len(scores) != len(self.targets):
            raise ValueError(f"criticality of {len(scores)} targets, this network has {len(self.targets)}")
        device = self.targets[0].weight.device if self.targets else torch.device("cpu")
        self.scores = [None if s is None else s.float().to(device) for s in scores]

    def close(self) -> None:
        for h in self._handles + self._target_handles:
            h.remove()
        self._handles.clear()
        self._target_handles.clear()


# ----------------------------------------------------------------------------------------------- checks
def check_fraction(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"method option {key} must be in [0, 1], got {value!r}")


def check_nonnegative(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
        raise UserError(f"method option {key} must be a finite number >= 0, got {value!r}")
