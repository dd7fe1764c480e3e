"""The contract between a compression method, ``compress()`` and the training loop.

A method is handed its problem once (:meth:`CompressionMethod.bind`, a :class:`Problem`: the network, the layers it
may change, the budgets and how to measure the network), then acts through hooks that the training loop calls at
fixed points. One training step, exactly as :class:`rccsnn.trainer.Trainer` runs it::

    method.before_forward(step)
    loss = task_loss(simulate(net, x))        # forward with the method's parametrizations (W * M, quantizers...)
    extra = method.loss_term(step)            # after the forward, before backward: added to the loss if not None
    (loss + extra).backward()
    method.after_backward(step)               # after loss.backward(), before optimizer.step(): edit gradients
    optimizer.step()
    method.after_step(step)                   # after optimizer.step(): proximal steps, duals, masks

and once per epoch, before validation: ``method.epoch_end(epoch, loop)``, whose returned scalars are logged.
``method.selectable()`` says whether the current weights may be chosen as the run's best model (a compressed
model may only be chosen once it satisfies its budget). ``method.finalize(loop)`` runs after the last epoch.

A method sees the loop only through :class:`TrainingLoop`, a typed Protocol defined here, on the methods' side:
methods never import the trainer, and the Trainer never asks which method is running. Pruning
(:class:`PruningMethod`) is one kind of method; one that decides bit widths, quantizers or the number of time
steps plugs in the same way. The base class does nothing, which is dense training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rccsnn.errors import UserError
from rccsnn.masks import Target, apply_masks, attach_masks, set_straight_through
from rccsnn.quant import FLOAT_BITS, set_bits, target_bits
from rccsnn.registry import Registry
from rccsnn.resources import LayerStats, RateTracker, ResourceModel, cost_sum, grouped, per_weight

METHODS: Registry["CompressionMethod"] = Registry("method")
SCHEDULES = ("joint", "sequential")


@runtime_checkable
class TrainingLoop(Protocol):
    """What a method may ask of the loop that trains the network (:class:`rccsnn.trainer.Trainer` is one).

    ``step`` counts training steps over the whole run (0-based; during a hook, the step being taken), ``epoch`` the
    current epoch (0-based), ``total_steps`` = ``steps_per_epoch`` x epochs, ``lr`` the weights' current step size.
    """

    step: int
    epoch: int
    total_steps: int
    steps_per_epoch: int

    @property
    def lr(self) -> float: ...

    def restart_schedule(self, steps: int) -> None:
        """Start a fresh learning-rate decay of ``steps`` steps from the current step."""

    def train_epoch(self, epoch: int, desc: Optional[str] = None) -> Dict[str, float]:
        """One more pass over the training split, with the method's hooks."""


@dataclass
class Constraint:
    """``resource(model) <= budget``, the budget a fraction of the dense cost in (0, 1]."""

    resource: ResourceModel
    budget: float
    dense: float  # the dense model's cost per inference, in the resource's unit (fixed at the start)


@dataclass
class Problem:
    """What ``compress()`` hands a method: the network, the layers it may change, the budgets, the measurements.

    Attributes:
        net: the multi-step network being compressed (``[T, B, ...] -> [T, B, K]``).
        targets: the weight layers the method may change (their order indexes every per-layer tensor).
        constraints: the budgets, one per constrained resource.
        stats: the dense network's layer statistics on the validation split (firing rates, positions, T).
        measure_stats: measures exact statistics on the validation split with the current weights.
        fixed: names of targets the method should not prune (they are targets so that their costs count and their
            other decisions, such as bit widths, can be made: a method that decides bits sees the whole network, the
            first layer included); only a last-resort projection that cannot meet a budget otherwise prunes them.
        time: the run's time steps, for a method that decides them (None: T stays ``stats.T``).
    """

    net: nn.Module
    targets: List[Target]
    constraints: List[Constraint]
    stats: LayerStats
    measure_stats: Callable[[], LayerStats]
    fixed: Tuple[str, ...] = ()
    time: Optional[TimeSteps] = None


@dataclass
class TimeSteps:
    """The number of time steps the network runs per inference, which a method may lower (``decide: timesteps``).

    Attributes:
        spec: what the run runs the network at: every forward pass of the run (training, validation, the
            measurements) reads its ``T``, so a method lowers T there.
        probe_loss: ``probe_loss(T)``, the task loss (mean per sample) of the network as it is now, run for ``T``
            steps on a fixed probe set of the validation split, in evaluation mode, with the encoding's random draws
            seeded: two calls differ only by what changed in between (the weights, masks or T), not by the draw.
    """

    spec: Any
    probe_loss: Callable[[int], float]


class CompressionMethod:
    """The contract ``compress()`` and the Trainer rely on; the hooks do nothing here (dense training).

    Args:
        schedule: ``joint`` (compression and finetuning together) or ``sequential`` (the ablation: compress first
            without the task loss updating what is being compressed, then finetune); a method that has no such
            choice accepts ``joint``.
    """

    name = "dense"
    #: whether compress() should hand the method every weight layer as a target (costs of the whole network; the
    #: layers targets.exclude_first and the patterns leave out come as ``Problem.fixed``)
    whole_network = False

    def __init__(self, schedule: str = "joint") -> None:
        if schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{schedule}'; choices: {', '.join(SCHEDULES)}")
        self.schedule = schedule
        self.events: List[str] = []  # what the run should report (summary.json's "events")

    # --------------------------------------------------------------------------------------------- binding
    def check(self, constraints: Sequence[Constraint]) -> None:
        """Reject constraints this method cannot serve (a one-line :class:`UserError`), before any output."""

    def bind(self, problem: Problem) -> None:
        """Receive the problem, once, before :meth:`setup` (a method that reparametrizes the network does it here)."""
        self.problem = problem

    def say(self, message: str) -> None:
        """Record an event of the run (summary.json) and print it above the progress bar."""
        self.events.append(message)
        tqdm.write(f"[{self.name}] {message}")

    # --------------------------------------------------------------------------------------------- hooks
    def setup(self, loop: TrainingLoop) -> None:
        """Called once before the first epoch (and again after resuming, before loading state)."""

    def before_forward(self, step: int) -> None:
        """Before the forward pass of training step ``step`` (0-based, counted over the whole run)."""

    def loss_term(self, step: int) -> Optional[Tensor]:
        """After the forward pass of ``step``, before backward: a scalar added to the task loss (None: nothing)."""
        return None

    def after_backward(self, step: int) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``."""

    def after_step(self, step: int) -> None:
        """After ``optimizer.step()``."""

    def epoch_end(self, epoch: int, loop: TrainingLoop) -> Dict[str, float]:
        """At the end of epoch ``epoch`` (0-based), before validation; returns scalars to log (tag -> value)."""
        return {}

    def progress(self) -> Dict[str, str]:
        """Short strings for the progress bar."""
        return {}

    def selectable(self) -> bool:
        """Whether the current weights may be selected as the best model of the run."""
        return True

    def finalize(self, loop: TrainingLoop) -> None:
        """After the last epoch, once the best weights are restored."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (tensors and plain data only: it is loaded with weights_only=True)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


# ================================================================================================ pruning
def kept_counts(targets: Sequence[Target]) -> Tensor:
    """``[L]`` float64: weights each target's mask keeps."""
    return torch.tensor([float(t.mask.mask.sum()) if t.mask is not None else float(t.n) for t in targets],
                        dtype=torch.float64)


def resource_values(costs: Tensor, dense: Tensor, kept: Tensor) -> Tensor:
    """``[J]`` fractions of dense: ``sum_l c_jl kept_l / D_j`` for costs ``[J, L]`` and dense costs ``D`` ``[J]``."""
    return (costs * kept).sum(1) / dense.clamp_min(1e-300)


@torch.no_grad()
def kept_mean_costs(targets: Sequence[Target], weight_costs: Sequence[Sequence[Tensor]]) -> Tensor:
    """``[J, L]`` the mean cost of the weights each target's mask keeps (the mean over all its weights where it keeps
    none), so that ``sum_l c_jl kept_l`` is the exact cost of the kept weights, each priced by its own cost.

    Args:
        weight_costs: per resource j and target l the cost per tap (:meth:`ResourceModel.weight_costs`).
    """
    out = torch.zeros(len(weight_costs), len(targets), dtype=torch.float64)
    for l, t in enumerate(targets):
        per_tap = None  # kept weights per tap (summed over output channels): one pass over the mask, shared by all j
        for j, costs in enumerate(weight_costs):
            c = costs[l]
            if c.dim() == 0:  # every weight costs the same: the mean is that cost
                out[j, l] = c
                continue
            if per_tap is None and t.mask is not None:
                per_tap = grouped(t, t.mask.mask).sum(1, keepdim=True, dtype=torch.float64).cpu()
            kept = float(per_tap.sum()) if per_tap is not None else 0.0
            out[j, l] = (per_tap * c).sum() / kept if kept > 0 else cost_sum(t, c) / t.n
    return out


@torch.no_grad()
def prune_cheapest(targets: Sequence[Target], where: Sequence[tuple], scores: Sequence[Tensor],
                   cost: Sequence[Tensor], excess: float) -> int:
    """Prune the candidates with the lowest scores until their summed cost covers ``excess``; returns how many.

    Args:
        targets: layers with masks attached.
        where: per candidate group ``(l, idx)``: target l and the flat indices of its candidates ``[m]``.
        scores, cost: per group ``[m]`` the candidates' scores (lowest pruned first) and costs.
        excess: the cost to remove, in the resource's unit.
    """
    order = torch.argsort(torch.cat(list(scores)))
    cum = torch.cumsum(torch.cat(list(cost))[order], 0)
    cut = min(int(torch.searchsorted(cum, excess)) + 1, len(order))
    chosen = order[:cut]
    offsets = torch.cumsum(torch.tensor([0] + [len(i) for _, i in where]), 0)
    for (l, idx), lo, hi in zip(where, offsets[:-1], offsets[1:]):
        sel = chosen[(chosen >= lo) & (chosen < hi)] - lo
        if len(sel):
            mask = targets[l].mask.mask
            mask.view(-1)[idx[sel].to(mask.device)] = 0.0
    return cut


@torch.no_grad()
def project(targets: Sequence[Target], costs: Sequence[Sequence[Tensor]], limits: Sequence[float],
            scale: Optional[Tensor] = None, floors: Optional[Sequence[int]] = None) -> int:
    """Prune further, lowest ``w^2 / (scale_l * c_i)`` first (``c_i`` weight i's own cost), until every
    ``sum_i c_ji kept_i <= limit_j`` on the hard masks.

    Exact: for the most violated constraint it sorts the kept weights that cost something under that resource and
    removes the shortest prefix whose summed cost covers the excess; repeats until all hold (pruning never raises
    any resource, so this ends). Returns the number of weights pruned.

    Args:
        targets: layers with masks attached.
        costs: per resource j and target l the cost of each kept weight per tap (:meth:`ResourceModel.weight_costs`).
        limits: ``[J]`` largest allowed cost per inference (budget x dense cost), in each resource's unit.
        scale: ``[L]`` unit of w^2 per layer (default 1: raw magnitudes, as in global magnitude pruning).
        floors: ``[L]`` weights each layer keeps (its most valuable per cost) while the limits can be met otherwise;
            when every layer that costs something is at its floor and a limit still fails, the floors are dropped.
            Without them the cheapest scores are often a whole costly layer, and an empty layer kills the network.
    """
    # The tiny slack keeps float rounding from leaving R a hair above B when measured as a ratio.
    limit = torch.tensor(list(limits), dtype=torch.float64) * (1.0 - 1e-12)
    pruned = 0
    for _ in range(100 * len(limit) + 100):
        spent = torch.tensor([[float(cost_sum(t, c[l], t.mask.mask)) for l, t in enumerate(targets)] for c in costs],
                             dtype=torch.float64).reshape(len(costs), len(targets))
        excess = spent.sum(1) - limit
        if bool((excess <= 0).all()):
            return pruned
        j = int(torch.argmax(excess / limit.abs().clamp_min(1e-300)))
        scores, cost, where = [], [], []
        for l, t in enumerate(targets):
            idx = torch.nonzero(t.mask.mask.flatten(), as_tuple=False).flatten().cpu()
            price = per_weight(t, costs[j][l])[idx]
            idx, price = idx[price > 0], price[price > 0]  # pruning a weight that costs nothing here helps nothing
            if not len(idx):
                continue
            w2 = t.weight.detach().flatten().cpu()[idx].double() ** 2
            score = w2 / (price * (1.0 if scale is None else float(scale[l])))
            if floors is not None:  # only the weights below the layer's floor are candidates
                spare = max(int(t.mask.mask.sum()) - int(floors[l]), 0)
                low = torch.argsort(score)[:spare]
                idx, price, score = idx[low], price[low], score[low]
            scores.append(score)
            cost.append(price)
            where.append((l, idx))
        if floors is not None and sum(len(x) for x in scores) == 0:
            floors = None  # every layer is at its floor: the limits come first
            continue
        if sum(len(x) for x in scores) == 0:
            return pruned  # nothing kept costs anything: what is left over the limit is no weight's (memory's scales)
        pruned += prune_cheapest(targets, where, scores, cost, excess[j].item())
    raise RuntimeError("projection did not converge")  # unreachable: each round prunes at least one weight


class PruningMethod(CompressionMethod):
    """What every pruning method shares: constraints, phases, the exact projection and the budget guarantee.

    The run has a compression phase (at most ``compress_fraction`` of all training steps) in which the subclass
    moves the masks (:meth:`compress_step`), then a finetuning phase with frozen masks and a fresh cosine
    schedule. If the compression phase ends before every constraint holds, :func:`project` prunes the rest.
    With ``schedule="sequential"`` the task-loss gradient of the target weights is dropped during compression.
    After the last epoch, :meth:`finalize` measures every constraint on the validation split with the final
    weights and, while one is exceeded (possible for data-dependent resources), prunes further and finetunes.

    Args:
        schedule: ``joint`` or ``sequential``.
        compress_fraction: the longest share of the run's steps spent compressing, in [0, 1].
        guarantee_rounds: prune-and-finetune rounds in :meth:`finalize` before pruning without finetuning.
    """

    def __init__(self, schedule: str = "joint", compress_fraction: float = 0.5, guarantee_rounds: int = 3) -> None:
        super().__init__(schedule=schedule)
        if not 0.0 <= compress_fraction <= 1.0:
            raise UserError(f"method option compress_fraction must be in [0, 1], got {compress_fraction}")
        if guarantee_rounds < 0:
            raise UserError(f"method option guarantee_rounds must be >= 0, got {guarantee_rounds}")
        self.compress_fraction = compress_fraction
        self.guarantee_rounds = guarantee_rounds
        self.phase = "compress"
        self.projected = 0
        self.scale: Optional[Tensor] = None  # per-target unit of w^2 in the projection (None: raw magnitude)

    # --------------------------------------------------------------------------------------------- binding
    def bind(self, problem: Problem) -> None:
        """Attach a mask to every target (dense at first) and keep the problem's parts at hand."""
        super().bind(problem)
        attach_masks(problem.targets)
        self.targets = list(problem.targets)
        self.constraints = list(problem.constraints)
        self.stats = problem.stats
        self.measure_stats = problem.measure_stats
        self.n = torch.tensor([t.n for t in self.targets], dtype=torch.float64)
        self.budgets = torch.tensor([c.budget for c in self.constraints], dtype=torch.float64)
        self.dense = torch.tensor([c.dense for c in self.constraints], dtype=torch.float64)
        self.data_dependent = any(c.resource.data_dependent for c in self.constraints)

    def current_stats(self) -> LayerStats:
        """The last exact measurement's statistics at the current firing-rate estimates (the moving averages)."""
        return self.stats.with_rates(self.tracker.rates()) if self.tracker else self.stats

    def steps(self) -> int:
        """The time steps the network runs now (the problem's :class:`TimeSteps`, else those of the statistics)."""
        time = getattr(self.problem, "time", None)
        return int(time.spec.T) if time is not None else int(self.stats.T)

    def weight_costs(self, T: Optional[int] = None) -> List[List[Tensor]]:
        """Per constraint j and target l the cost of each weight per tap (:meth:`ResourceModel.weight_costs`), with
        the current firing-rate estimates: the last exact measurement's pattern scaled to the moving-average rates,
        each layer at its current bit width, at ``T`` time steps (default: the current ones)."""
        stats = self.current_stats().with_bits(target_bits(self.targets))
        stats = stats.at_steps(self.steps() if T is None else T)
        return [c.resource.weight_costs(self.targets, stats) for c in self.constraints]

    def costs(self, T: Optional[int] = None) -> Tensor:
        """``[J, L]`` the mean cost of the weights each target keeps (:func:`kept_mean_costs`): ``costs x kept`` is
        the exact cost of the current masks, each weight priced by its own cost (at ``T`` steps; default: now)."""
        return kept_mean_costs(self.targets, self.weight_costs(T))

    def values(self) -> Tensor:
        """``[J]`` current resources on the hard masks, as fractions of dense."""
        return resource_values(self.costs(), self.dense, kept_counts(self.targets))

    def limits(self, margin: float = 0.0) -> Tensor:
        """``[J]`` allowed cost per inference in each resource's unit: ``budget x dense x (1 - margin)``."""
        return self.budgets * self.dense * (1.0 - margin)

    def limits_at(self, stats: LayerStats, margin: float = 0.0) -> Tensor:
        """:meth:`limits` less what each resource counts beyond the per-weight prices (:meth:`ResourceModel.unpriced`,
        e.g. the scales of a quantized layer in ``memory``) on the current weights: pruning to these limits by the
        per-weight prices meets the budgets as :meth:`ResourceModel.absolute` counts them."""
        gaps = torch.tensor([c.resource.unpriced(self.targets, stats) for c in self.constraints], dtype=torch.float64)
        return self.limits(margin) - gaps

    def feasible(self) -> bool:
        return bool((self.values() <= self.budgets).all())

    # --------------------------------------------------------------------------------------------- hooks
    def setup(self, loop: TrainingLoop) -> None:
        self.loop = loop
        self.compress_steps = int(round(self.compress_fraction * loop.total_steps))
        self.tracker: Optional[RateTracker] = (
            RateTracker(self.targets, self.stats.input_rate) if self.data_dependent else None
        )
        set_straight_through(self.targets, True)
        self.start()
        if self.phase == "compress" and self.compress_steps == 0:
            self.end_compression()

    def start(self) -> None:
        """Called once at setup, before any step (a one-shot method prunes here)."""

    def compress_step(self, step: int) -> None:
        """One update of the masks during the compression phase, after ``optimizer.step()``."""

    def after_backward(self, step: int) -> None:
        if self.phase == "compress" and self.schedule == "sequential":
            for t in self.targets:
                t.weight.grad = None

    def after_step(self, step: int) -> None:
        if self.phase != "compress":
            return
        self.compress_step(step)
        if self.phase == "compress" and step + 1 >= self.deadline():
            self.end_compression()

    def project(self, limits: Sequence[float], floors: Optional[Sequence[int]] = None) -> int:
        """Prune until every ``cost <= limit`` on the hard masks (:func:`project`, lowest ``w^2 / (scale c)`` first);
        a method that ranks weights otherwise overrides it, and every projection of the run (end of phase, the
        guarantee) ranks the same way. Returns the number of weights pruned."""
        return project(self.targets, self.weight_costs(), limits, self.scale, floors)

    def floors(self) -> Optional[List[int]]:
        """``[L]`` weights per target that the projections (at the end of the phase and in the guarantee rounds of
        :meth:`finalize`) keep while they can meet the limits otherwise (None: no floor)."""
        return None

    def deadline(self) -> int:
        """The step count at which the compression phase ends at the latest (``compress_steps``)."""
        return self.compress_steps

    def end_compression(self) -> None:
        """Make the budget hold (projection if needed), freeze the masks and start finetuning."""
        if not self.feasible():
            pruned = self.project(self.limits().tolist(), self.floors())
            self.projected += pruned
            self.say(f"compression phase ended before the budget held; projection pruned {pruned} more weights")
        self.freeze()

    def freeze(self) -> None:
        apply_masks(self.targets)
        set_straight_through(self.targets, False)
        self.phase = "finetune"
        remaining = self.loop.total_steps - self.loop.step - 1
        self.loop.restart_schedule(max(remaining, 1))
        self.say(f"masks frozen at step {self.loop.step + 1}: " + self.describe())

    def describe(self) -> str:
        return ", ".join(f"{c.resource.name}={v:.4f} (budget {c.budget:g})"
                         for c, v in zip(self.constraints, self.values().tolist()))

    def selectable(self) -> bool:
        return self.phase == "finetune"

    def epoch_end(self, epoch: int, loop: TrainingLoop) -> Dict[str, float]:
        scalars: Dict[str, float] = {}
        for c, v in zip(self.constraints, self.values().tolist()):
            scalars[f"resource/{c.resource.name}"] = v
            scalars[f"budget/{c.resource.name}"] = c.budget
        kept = kept_counts(self.targets)
        for t, k in zip(self.targets, (kept / self.n).tolist()):
            scalars[f"density/{t.name}"] = k
        if self.tracker:
            for t, r in zip(self.targets, self.tracker.rates().tolist()):
                scalars[f"input_rate/{t.name}"] = r
        scalars["phase/compressing"] = float(self.phase == "compress")
        return scalars

    def progress(self) -> Dict[str, str]:
        return {c.resource.name: f"{v:.3f}" for c, v in zip(self.constraints, self.values().tolist())}

    def finalize(self, loop: TrainingLoop) -> None:
        """Guarantee every budget on the validation split with the final weights."""
        for round_ in range(self.guarantee_rounds + 1):
            stats = self.measure_stats()
            measured = self.measured(stats)
            if any(m > c.budget for m, c in zip(measured, self.constraints)) and self.release_empty():
                # an emptied quantized layer's scales are paid for by no live weight: free them before pruning one
                stats = self.measure_stats()
                measured = self.measured(stats)
            if all(m <= c.budget for m, c in zip(measured, self.constraints)):
                return
            self.stats = stats  # price every weight by this exact measurement from now on
            if self.tracker:
                self.tracker.set(stats.input_rate)
            over = ", ".join(f"{c.resource.name}={m:.4f}>{c.budget:g}"
                             for m, c in zip(measured, self.constraints) if m > c.budget)
            if round_ == self.guarantee_rounds:
                break
            # Finetuning moves firing rates, so aim a little below the budget on each retry.
            pruned = self.project(self.limits_at(stats, margin=0.02 * (round_ + 1)).tolist(), self.floors())
            self.projected += pruned
            self.say(f"measured on validation: {over}; pruned {pruned} more weights and finetuning one epoch")
            apply_masks(self.targets)
            loop.restart_schedule(loop.steps_per_epoch)
            loop.train_epoch(loop.epoch, desc="guarantee finetune")
        # Last resort, without finetuning: prune, re-measure with the new weights, until everything holds.
        while True:
            stats = self.measure_stats()
            self.stats = stats
            if self.tracker:
                self.tracker.set(stats.input_rate)
            if all(m <= c.budget for m, c in zip(self.measured(stats), self.constraints)):
                return
            # Masks count kept weights that may be zero, measurement counts nonzeros: this always prunes.
            pruned = self.project(self.limits_at(stats).tolist(), self.floors())
            if pruned == 0 and self.release_empty():
                continue
            if pruned == 0:
                raise RuntimeError("budget exceeded on measurement but the projection found nothing to prune")
            self.projected += pruned
            apply_masks(self.targets)
            self.say(f"pruned {pruned} more weights without finetuning to meet the budget")

    def measured(self, stats: LayerStats) -> List[float]:
        """``[J]`` each constrained resource of the current weights as exactly counted on ``stats``, over dense."""
        return [c.resource.absolute(self.targets, stats) / c.dense for c in self.constraints]

    def release_empty(self) -> bool:
        """Put every quantized target whose mask keeps nothing back to float32, where it stores nothing (a quantized
        layer stores a scale per output channel, which ``memory`` counts whatever is pruned); its values, all zero,
        do not change. Returns whether any was. :meth:`finalize` calls it only while a budget is exceeded."""
        empty = {t.name: FLOAT_BITS for t, b in zip(self.targets, target_bits(self.targets))
                 if b < FLOAT_BITS and not bool(t.mask.mask.any())}  # the mask: a kept weight may be 0 for now
        if empty:
            set_bits(self.problem.net, empty)
            self.say(f"float32 again for {', '.join(empty)}: emptied, they store no scales")
        return bool(empty)

    def state_dict(self) -> Dict[str, Any]:
        return {"phase": self.phase, "projected": self.projected, "events": list(self.events),
                "rates": self.tracker.rates() if self.tracker else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.phase, self.projected, self.events = state["phase"], state["projected"], list(state["events"])
        if self.tracker and state.get("rates") is not None:
            self.tracker.set(state["rates"])
        set_straight_through(self.targets, self.phase == "compress")
