"""``criticality``: criticality-guided pruning-regeneration (Chen et al., arXiv 2311.16141) on the same trainer.

The paper (abstract, v1): "we propose a regeneration mechanism based on the neuron criticality for SNN pruning to
enhance feature extraction and accelerate the pruning process. Firstly, we propose a low-cost metric for the
criticality in SNNs. Then, we re-rank the pruned structures after pruning and regenerate those with higher
criticality to obtain the critical network." The criticality of a neuron is how close its membrane potential stays
to the threshold, read as the surrogate gradient's value there averaged over time steps and samples
(:class:`rccsnn.activity.CriticalityMeter`; only the abstracts could be read here, see :mod:`rccsnn.activity`).

The method, as a baseline on the same trainer as ``gmp``:

* **Prune** on gmp's cubic schedule (:func:`rccsnn.methods.gmp.cubic_budget`, :func:`rccsnn.methods.base.project`):
  every ``1 / updates`` of the compression phase the smallest ``w^2 / c_l`` among the kept weights go until
  ``R_t = B + (1 - B)(1 - t/t_n)^3`` holds.
* **Regenerate** right after each pruning event, budget-neutrally, within each layer: regrow the pruned
  connections with the largest gradient magnitude (an EMA of ``|dL/dW|``, which the straight-through backward
  gives pruned weights too) among the inputs of the layer's most critical units, and drop as many of the layer's
  kept weights with the smallest ``|w|``. The share swapped decays with a half cosine over the phase (as RigL and
  GraNet decay theirs), so the masks settle before they freeze; the last event swaps nothing.
* Then the masks freeze and the remaining epochs finetune; the budget guarantee of :class:`PruningMethod` holds.

**Why the swap never raises a resource.** Every resource model prices all weights of one layer the same per
inference (``c_l``: 1, positions x T, x the layer's input rate, x an energy constant), and a swap regrows exactly as
many weights in a layer as it drops there, so the kept count of every layer, and with it every resource on the hard
masks (params, macs, synops, energy with the current rate estimates), is unchanged. Swaps never cross layers. (If
costs ever become per weight, as docs/method.md's "Exact costs per weight" (not yet implemented) plans, the drop
must cover the regrown cost.)
Firing rates move as the weights train, as they do under every method; the final measurement and the guarantee
rounds of :meth:`PruningMethod.finalize` take care of that.

Reusable regeneration (minimax's ``regrow: criticality`` calls it)::

    regrowth = CriticalityRegrowth(net, targets, fraction=0.1, critical_fraction=0.25, momentum=0.9)
    regrowth.record(True)            # before a forward whose neurons should be scored (off: hooks return at once)
    ...forward, loss.backward()...
    regrowth.observe()               # after backward, before optimizer.step() and before any hook drops the grads
    swapped = regrowth.regenerate()  # at an event: weights regrown (= weights dropped) over all layers
    regrowth.regenerate(targets=[t], fraction=0.05)   # a subset of the layers, another share
    state = regrowth.state_dict(); regrowth.load_state_dict(state)   # tensors and plain data (weights_only)
    regrowth.close()                 # remove the hooks

``regenerate`` changes only mask buffers (never weights, never counts per layer), is deterministic given the
recorded statistics, and in a distributed run averages the criticality scores across processes first (the gradient
EMAs are already identical: DDP averages the gradients), so every process writes the same masks.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from rccsnn import distributed
from rccsnn.activity import ActivityConstraints, CriticalityMeter, check_fraction, check_nonnegative
from rccsnn.errors import UserError
from rccsnn.masks import Target
from rccsnn.methods.base import METHODS, PruningMethod, TrainingLoop, project
from rccsnn.methods.gmp import cubic_budget


class CriticalityRegrowth:
    """Budget-neutral criticality-guided regeneration of pruned weights, layer by layer (module docstring).

    Args:
        net: the network (its snntorch neurons, inside LIFs or not, are scored).
        targets: the masked layers.
        fraction: default share of each layer's kept weights swapped per :meth:`regenerate`, in [0, 1].
        critical_fraction: share of each layer's output units (channels / features) counted as its most critical;
            only their pruned inputs may regrow (at least one unit). 1: every unit, gradient magnitude alone.
        momentum: of the EMAs of criticality and of ``|dL/dW|`` per recorded step, in [0, 1).

    Memory: the gradient EMA is one float32 per target weight (on the weights' device, and in the state for resume),
    as much as one of Adam's moments; the criticality EMA one float per output unit.
    """

    def __init__(self, net: nn.Module, targets: Sequence[Target], *, fraction: float = 0.1,
                 critical_fraction: float = 0.25, momentum: float = 0.9) -> None:
        check_fraction("regrow", fraction)
        check_fraction("critical_fraction", critical_fraction)
        if critical_fraction == 0:
            raise UserError("method option critical_fraction must be in (0, 1], got 0")
        self.targets = list(targets)
        self.fraction, self.critical_fraction, self.momentum = float(fraction), float(critical_fraction), momentum
        self.meter = CriticalityMeter(net, self.targets, momentum)
        self.grad: List[Optional[Tensor]] = [None] * len(self.targets)  # EMA of |dL/dW|, the weight's shape
        self._index = {id(t): l for l, t in enumerate(self.targets)}

    def record(self, on: bool) -> None:
        """Whether the following training forwards are scored."""
        self.meter.recording = bool(on)

    @torch.no_grad()
    def observe(self) -> None:
        """After ``loss.backward()``: fold the forward's criticality into its EMA and ``|grad|`` into the gradient
        EMA of every target (pruned weights included: the straight-through mask passes them the full gradient)."""
        self.meter.fold()
        m = self.momentum
        for l, t in enumerate(self.targets):
            g = t.weight.grad
            if g is None:
                continue
            a = g.detach().abs().float()
            old = self.grad[l]
            self.grad[l] = a.clone() if old is None else old.mul_(m).add_(a, alpha=1.0 - m)

    def critical_units(self, l: int) -> Optional[Tensor]:
        """``[units]`` bool: the most critical units of target ``l`` (None: no score, every unit counts)."""
        score = self.meter.score(l)
        if score is None:
            return None
        units = score.numel()
        top = max(1, math.ceil(self.critical_fraction * units - 1e-9))
        chosen = torch.zeros(units, dtype=torch.bool, device=score.device)
        chosen[torch.topk(score, min(top, units)).indices] = True
        return chosen

    def _sync(self) -> None:
        if not distributed.active():
            return
        for l, s in enumerate(self.meter.scores):
            if s is not None:
                self.meter.scores[l] = distributed.all_reduce_mean(s)

    @torch.no_grad()
    def regenerate(self, targets: Optional[Sequence[Target]] = None, fraction: Optional[float] = None) -> int:
        """Swap, in each layer, ``r = min(ceil(fraction * kept), candidates, kept)`` weights: regrow the ``r``
        pruned inputs of the most critical units with the largest ``|grad|`` EMA, drop the ``r`` kept weights with
        the smallest ``|w|``. Regrown weights keep their stored value (the straight-through gradient kept training
        it). A layer with no gradient seen yet, or fully kept or fully pruned, is left alone.

        Args:
            targets: the layers to regenerate (default all; must be among the constructor's).
            fraction: share of kept weights to swap (default :attr:`fraction`).

        Returns:
            the number of weights regrown, which equals the number dropped.
        """
        share = self.fraction if fraction is None else float(fraction)
        if share <= 0:
            return 0
        chosen = range(len(self.targets)) if targets is None else [self._index[id(t)] for t in targets]
        self._sync()
        swapped = 0
        for l in chosen:
            t, g = self.targets[l], self.grad[l]
            if t.mask is None or g is None:
                continue
            mask = t.mask.mask.view(-1)
            kept = mask > 0
            n_kept = int(kept.sum())
            if n_kept == 0 or n_kept == t.n:
                continue
            candidates = ~kept
            critical = self.critical_units(l)
            if critical is not None:
                candidates = candidates & critical.to(mask.device).repeat_interleave(t.n // critical.numel())
            r = min(math.ceil(share * n_kept - 1e-9), int(candidates.sum()), n_kept)
            if r <= 0:
                continue
            grow = torch.topk(torch.where(candidates, g.reshape(-1).to(mask.device), -torch.inf), r).indices
            w2 = t.weight.detach().reshape(-1).float().pow(2)
            drop = torch.topk(torch.where(kept, w2, torch.inf), r, largest=False).indices
            mask[drop] = 0.0
            mask[grow] = 1.0
            swapped += r
        return swapped

    def state_dict(self) -> Dict[str, Any]:
        return {"meter": self.meter.state_dict(),
                "grad": [None if g is None else g.detach().cpu().clone() for g in self.grad]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.meter.load_state_dict(state["meter"])
        grads = list(state["grad"])
        if len(grads) != len(self.targets):
            raise ValueError(f"gradient statistics of {len(grads)} targets, this network has {len(self.targets)}")
        self.grad = [None if g is None else g.float().to(t.weight.device) for g, t in zip(grads, self.targets)]

    def close(self) -> None:
        self.meter.close()


@METHODS.register("criticality")
class Criticality(PruningMethod):
    """Gradual magnitude pruning with criticality-guided, budget-neutral regeneration after every pruning event.

    Args:
        schedule: ``joint`` or ``sequential`` (the weights' task update off while pruning; regeneration still
            ranks by the task gradient, which is observed before it is dropped).
        compress_fraction: share of the run over which pruning ramps up (as gmp).
        updates: pruning events over the phase, each followed by a regeneration (as gmp's).
        regrow: share of each layer's kept weights swapped at the first event, in [0, 1]; it decays with a half
            cosine to 0 at the end of the phase. 0.1 swaps a tenth of the survivors early on, gently (RigL starts
            at 0.3 with 100 steps between updates; here events come every few steps on small data).
        critical_fraction: share of each layer's units whose pruned inputs may regrow, in (0, 1]. 0.25: the most
            critical quarter; the gradient decides among their inputs.
        window: steps before each event in which criticality and gradients are recorded (0: every step of the
            phase). 20 steps of EMA (momentum 0.9 averages about 10 batches) for a fraction of the recording cost.
        momentum: EMA momentum of criticality and gradient magnitude, in [0, 1).
        rho_min: activity floor as a fraction of each spiking layer's dense rate (:class:`ActivityConstraints`);
            0 (the default, the paper's method as published) adds no constraint.
        lr_mu: step size of the activity duals per compression phase.
        guarantee_rounds: see :class:`PruningMethod`.
    """

    name = "criticality"

    def __init__(self, schedule: str = "joint", compress_fraction: float = 0.5, updates: int = 20,
                 regrow: float = 0.1, critical_fraction: float = 0.25, window: int = 20, momentum: float = 0.9,
                 rho_min: float = 0.0, lr_mu: float = 5.0, guarantee_rounds: int = 3) -> None:
        super().__init__(schedule=schedule, compress_fraction=compress_fraction, guarantee_rounds=guarantee_rounds)
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 1:
            raise UserError(f"method option updates must be an integer >= 1, got {updates!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise UserError(f"method option window must be an integer >= 0 (0: every step), got {window!r}")
        check_fraction("regrow", regrow)
        check_fraction("critical_fraction", critical_fraction)
        if critical_fraction == 0:
            raise UserError("method option critical_fraction must be in (0, 1], got 0")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise UserError(f"method option momentum must be in [0, 1), got {momentum!r}")
        check_fraction("rho_min", rho_min)
        check_nonnegative("lr_mu", lr_mu)
        self.updates, self.regrow, self.critical_fraction = updates, float(regrow), float(critical_fraction)
        self.window, self.momentum, self.rho_min, self.lr_mu = window, float(momentum), float(rho_min), float(lr_mu)
        self.regrown = 0  # weights regrown (= dropped) over the run
        self.activity: Optional[ActivityConstraints] = None

    # --------------------------------------------------------------------------------------------- setup
    def start(self) -> None:
        self.interval = max(self.compress_steps // self.updates, 1)
        self.regrowth = CriticalityRegrowth(self.problem.net, self.targets, fraction=self.regrow,
                                            critical_fraction=self.critical_fraction, momentum=self.momentum)
        self.regrowth.record(False)
        if self.rho_min > 0:
            self.activity = ActivityConstraints(self.problem.net, rho_min=self.rho_min, lr_mu=self.lr_mu)
            # Run at setup, before any state is loaded, so the weights are the dense model's here.
            self.activity.calibrate(self.measure_stats)
            self.activity.start(self.compress_steps)

    def recording(self, step: int) -> bool:
        """Whether step ``step`` informs the next regeneration: in the phase, within ``window`` steps of an event."""
        if self.phase != "compress":
            return False
        return self.window == 0 or self.interval - 1 - (step % self.interval) < self.window

    def share(self, step: int) -> float:
        """Share of kept weights swapped at the event ending step ``step``: ``regrow`` decayed by a half cosine."""
        progress = min((step + 1) / max(self.compress_steps, 1), 1.0)
        return self.regrow * 0.5 * (1.0 + math.cos(math.pi * progress))

    # --------------------------------------------------------------------------------------------- hooks
    def before_forward(self, step: int) -> None:
        self.regrowth.record(self.recording(step))
        if self.activity:
            self.activity.before_forward(step)

    def loss_term(self, step: int) -> Optional[Tensor]:
        return self.activity.loss_term(step) if self.activity else None

    def after_backward(self, step: int) -> None:
        if self.recording(step):
            self.regrowth.observe()  # before the sequential schedule drops the targets' gradients
        super().after_backward(step)

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if self.activity:
            self.activity.after_step(step)

    def compress_step(self, step: int) -> None:
        if (step + 1) % self.interval:
            return
        budgets = cubic_budget(self.budgets, (step + 1) / self.compress_steps)
        project(self.targets, self.weight_costs(), (budgets * self.dense).tolist())
        self.regrown += self.regrowth.regenerate(fraction=self.share(step))

    def freeze(self) -> None:
        self.regrowth.record(False)
        super().freeze()
        self.say(f"regeneration swapped {self.regrown} weights over the phase")

    # --------------------------------------------------------------------------------------------- reporting
    def epoch_end(self, epoch: int, loop: TrainingLoop) -> Dict[str, float]:
        scalars = super().epoch_end(epoch, loop)
        scalars["regrown/total"] = float(self.regrown)
        for t, score in zip(self.targets, self.regrowth.meter.scores):
            if score is not None:
                scalars[f"criticality/{t.name}"] = float(score.mean())
        if self.activity:
            scalars.update(self.activity.scalars())
        return scalars

    def finalize(self, loop: TrainingLoop) -> None:
        super().finalize(loop)
        self.regrowth.close()
        if self.activity:
            self.activity.close()

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "regrown": self.regrown, "regrowth": self.regrowth.state_dict(),
                "activity": self.activity.state_dict() if self.activity else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.regrown = int(state["regrown"])
        self.regrowth.load_state_dict(state["regrowth"])
        if self.activity and state.get("activity") is not None:
            self.activity.load_state_dict(state["activity"])
