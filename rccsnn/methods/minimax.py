"""``minimax``: budget-constrained sparse learning by primal-dual updates (METHOD.md).

    min_{W, s} max_{y >= 0, z >= 0}  L(W * M(s)) + y * sum_l S_l(W, k_l) + sum_j z_j (R_j(k) - B_j)

Scale-free parameterisation (so one set of defaults serves networks of 1e4 to 1e8 weights):

* ``s_l`` is the *fraction* of target l pruned, ``k_l = ceil(s_l * n_l)``. Updating fractions instead of counts
  rescales each layer's gradient by ``1 / n_l``, which changes the path but not the stationary points.
* ``w^2`` enters relative to ``e_l``, the mean squared weight of target l at the start (``normalize: layer``,
  the default; ``normalize: global`` uses one e for all targets, METHOD.md's raw magnitudes up to a constant):
  the penalty is ``S = sum_l S_l / (N * e_l)`` and the s-gradient is ``y * v_l / e_l - sum_j z_j * c_hat_jl``
  with ``c_hat_jl = c_jl * N / sum_l c_jl n_l`` (mean cost per weight = 1). Both terms are O(1) on any
  network. Per-layer units matter because a layer followed by BatchNorm has no meaningful weight scale.
* Step sizes are per compression phase: ``lr_s = 1`` lets s move by one gradient unit over the whole phase, so
  the phase length in steps drops out. The per-step rates are ``lr / P`` for a phase of P steps.
* The proximal shrink uses the weights' *relative* step size ``lr_w / sqrt(e_l)`` (Adam moves every weight by
  about ``lr_w`` per step whatever its gradient scale).

Pruned weights are masked in the forward pass and shrunk by the proximal step, but keep their stored values
during the compression phase, so the straight-through gradient can make them grow back; they are zeroed when
the masks freeze.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from rccsnn.errors import UserError
from rccsnn.masks import Target, apply_masks, set_straight_through
from rccsnn.methods.base import METHODS, PruningMethod, resource_values

ALLOCATIONS = ("auto", "global", "layerwise")

#: Default step sizes per compression phase and initial duals (see the module docstring).
DEFAULTS = dict(lr_s=1.0, lr_y=1.0, lr_z=5.0, y0=1.0, z0=1.0)


class MinimaxEngine:
    """The primal-dual state (``s``, ``y``, ``z``) and one update of METHOD.md's compression step.

    Args:
        targets: masked layers.
        num_constraints: J, one dual ``z_j`` each.
        allocation: ``global`` (one s over all weights ranked together) or ``layerwise`` (one s per target).
        steps: P, the number of steps of the compression phase (the per-step rates are ``lr / P``).
        lr_s, lr_y, lr_z: step sizes per phase of s, y and z.
        y0, z0: initial duals.
        s_max: largest fraction of a target that may be pruned.
        normalize: unit of w^2 per target, ``layer`` or ``global``.
        s_rate: the most any s may move per phase (a trust region: 2 means 0 -> 1 takes half the phase).
    """

    def __init__(self, targets: Sequence[Target], num_constraints: int, *, allocation: str, steps: int,
                 lr_s: float, lr_y: float, lr_z: float, y0: float, z0: float, s_max: float,
                 normalize: str = "layer", s_rate: float = 2.0) -> None:
        self.targets = list(targets)
        self.allocation = allocation
        self.n = torch.tensor([t.n for t in targets], dtype=torch.float64)
        self.N = float(self.n.sum())
        size = 1 if allocation == "global" else len(targets)
        self.s = torch.zeros(size, dtype=torch.float64)
        self.y = float(y0)
        self.z = torch.full((num_constraints,), float(z0), dtype=torch.float64)
        P = max(steps, 1)
        self.lr_s, self.lr_y, self.lr_z = lr_s / P, lr_y / P, lr_z / P
        self.max_ds = s_rate / P
        self.s_max = s_max
        with torch.no_grad():
            sq = [t.weight.detach().double().pow(2) for t in targets]
            self.layer_energy = torch.stack([q.mean() for q in sq]).clamp_min(1e-30)
            self.energy = float(sum(q.sum() for q in sq) / self.N) or 1e-30
        # The unit of w^2 per layer: its own mean square ("layer", robust to BatchNorm-rescaled layers) or the
        # mean square over all targets ("global", METHOD.md's raw magnitudes up to one constant).
        self.scale = self.layer_energy if normalize == "layer" else torch.full_like(self.layer_energy, self.energy)
        self.penalty = 0.0

    def k(self) -> Tensor:
        """``[L]`` weights to prune per target (global: the overall count, split later by the ranking)."""
        n = torch.tensor([self.N]) if self.allocation == "global" else self.n
        return torch.minimum(torch.ceil(self.s * n - 1e-9), n)

    @staticmethod
    def _select(w2: Tensor, k: int, marginal: bool = True) -> tuple:
        """Pruned set (w2 <= k-th smallest; ties pruned too), its sum, and v = the smallest kept value.

        One selection (``kthvalue``, linear time) per call; v is a masked minimum, not a second selection.
        """
        if k <= 0:
            return torch.zeros_like(w2, dtype=torch.bool), 0.0, float(w2.min()) if marginal else 0.0
        thr = torch.kthvalue(w2, k).values
        pruned = w2 <= thr
        if not marginal:
            return pruned, 0.0, 0.0
        v = float(w2.masked_fill(pruned, float("inf")).min()) if k < w2.numel() else float(thr)
        return pruned, float((w2 * pruned).sum()), v

    @torch.no_grad()
    def _rank(self, marginal: bool = True) -> tuple:
        """Pruned sets per target, penalty sums S_l ``[L]`` and marginal values v ``[L or 1]`` for the current s."""
        w2 = [t.weight.detach().flatten().pow(2) / float(e) for t, e in zip(self.targets, self.scale)]
        k = self.k()
        if self.allocation == "global":
            pruned_all, _, v = self._select(torch.cat(w2), int(k[0]), marginal)
            pruned = list(torch.split(pruned_all, [len(w) for w in w2]))
            S = torch.tensor([float((w * p).sum()) for w, p in zip(w2, pruned)] if marginal else [0.0] * len(w2),
                             dtype=torch.float64)
            return pruned, S, torch.tensor([v], dtype=torch.float64)
        out = [self._select(w, int(kl), marginal) for w, kl in zip(w2, k)]
        return ([o[0] for o in out], torch.tensor([o[1] for o in out], dtype=torch.float64),
                torch.tensor([o[2] for o in out], dtype=torch.float64))

    @torch.no_grad()
    def set_masks(self) -> None:
        """Step 5: masks from the current s and W."""
        pruned, _, _ = self._rank(marginal=False)
        for t, p in zip(self.targets, pruned):
            t.mask.mask.copy_((~p).reshape(t.shape).to(t.mask.mask.dtype))

    @torch.no_grad()
    def step(self, costs: Tensor, dense: Tensor, budgets: Tensor, lr_w: float) -> Dict[str, float]:
        """Steps 2-5 of METHOD.md after the optimizer step.

        Args:
            costs: ``[J, L]`` cost of one kept weight per target and resource.
            dense: ``[J]`` the dense model's cost per resource (the normaliser of R).
            budgets: ``[J]`` fractions of dense.
            lr_w: the weights' current step size.
        """
        pruned, S, v = self._rank()
        # 2. proximal step of the y-term on the pruned sets
        rho = lr_w / self.layer_energy.sqrt()
        for t, p, r in zip(self.targets, pruned, rho.tolist()):
            shrink = 1.0 / (1.0 + 2.0 * r * self.y)  # w <- w * shrink on the pruned set, 1 elsewhere
            t.weight.view(-1).mul_(p.to(t.weight.dtype).mul_(shrink - 1.0).add_(1.0))
        # R_j on the hard masks of this step
        kept = self.n - torch.tensor([float(p.sum()) for p in pruned], dtype=torch.float64)
        R = resource_values(costs, dense, kept)
        # 3. s descends
        dense = (costs * self.n).sum(1, keepdim=True).clamp_min(1e-300)
        c_hat = costs * self.N / dense                                        # [J, L], mean cost per weight 1
        pull = (self.z[:, None] * c_hat).sum(0)                               # [L]
        if self.allocation == "global":
            pull = (pull * self.n).sum(0, keepdim=True) / self.N
        grad = self.y * v - pull  # v is already in units of the layer's mean square
        # A trust region on s: no layer's pruned fraction moves faster than s_rate per phase, which leaves the
        # weights time to adapt (and firing-rate estimates time to follow) however hard the duals push.
        ds = (-self.lr_s * grad).clamp(-self.max_ds, self.max_ds)
        self.s = self._land(self.s, (self.s + ds).clamp(0.0, self.s_max), costs, dense, budgets)
        # 4. duals ascend, projected onto >= 0
        self.penalty = float(S.sum()) / self.N
        self.y = max(0.0, self.y + self.lr_y * self.penalty)
        # The violation enters relative to the budget, (R - B) / B, so that the dual's speed does not depend on
        # how small the budget is (R - B is tiny in absolute terms near a budget of 0.5 %).
        self.z = (self.z + self.lr_z * (R - budgets) / budgets).clamp_min(0.0)
        # 5. masks from the new s and W
        self.set_masks()
        return {"penalty": self.penalty, "y": self.y, **{f"z{j}": float(z) for j, z in enumerate(self.z)}}

    def _resources(self, s: Tensor, costs: Tensor, dense: Tensor) -> Tensor:
        """``[J]`` resources that the sparsity levels ``s`` would give, from the counts ``k = ceil(s n)``."""
        if self.allocation == "global":  # global is params-only: every weight costs the same
            kept = self.N - float(torch.minimum(torch.ceil(s * self.N - 1e-9), torch.tensor(self.N)))
            return costs[:, 0] * kept / dense.clamp_min(1e-300)
        kept = self.n - torch.minimum(torch.ceil(s * self.n - 1e-9), self.n)
        return resource_values(costs, dense, kept)

    def _land(self, old: Tensor, new: Tensor, costs: Tensor, dense: Tensor, budgets: Tensor) -> Tensor:
        """Shorten the step ``old -> new`` to the first point where every budget holds, if it gets there.

        Without this the last step before the masks freeze could overshoot the budget by a whole step of s,
        which near a small budget is a large share of the weights left.
        """
        if not bool((self._resources(new, costs, dense) <= budgets).all()):
            return new
        if bool((self._resources(old, costs, dense) <= budgets).all()):
            return new
        lo, hi = 0.0, 1.0  # infeasible at lo, feasible at hi
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if bool((self._resources(old + mid * (new - old), costs, dense) <= budgets).all()):
                hi = mid
            else:
                lo = mid
        return old + hi * (new - old)

    def state_dict(self) -> Dict[str, Any]:
        return {"s": self.s.clone(), "y": self.y, "z": self.z.clone(), "penalty": self.penalty}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.s, self.y, self.z, self.penalty = state["s"].double(), state["y"], state["z"].double(), state["penalty"]


@METHODS.register("minimax")
class Minimax(PruningMethod):
    """The primal-dual engine with optional staged ``nodes`` (see the module docstring for the scaling).

    Args:
        schedule: ``joint`` (task loss updates every weight while compressing) or ``sequential``.
        compress_fraction: longest share of the run spent compressing; the masks freeze as soon as every
            constraint holds on the hard masks.
        allocation: ``global`` (params only), ``layerwise``, or ``auto`` (global when every constraint is params).
        lr_s, lr_y, lr_z: step sizes of s, y, z per compression phase.
        y0, z0: initial duals.
        s_max: largest fraction of any target that may be pruned; by default ``1 - min_density * min_j B_j``,
            so no layer is cut below half the tightest budget (the magnitude ranking alone would otherwise empty
            a layer whose weights cost much more than the rest, killing the network).
        min_density: see ``s_max``.
        s_rate: trust region of s per compression phase (2: a layer goes from dense to empty in half a phase).
        nodes: intermediate budgets (fractions, decreasing, e.g. [0.25, 0.12]); at each the masks are held for
            ``node_fraction`` of the compression phase while the weights finetune.
        node_fraction: share of the compression phase spent at each node.
        normalize: unit of w^2 per target: ``layer`` (its own mean square) or ``global``.
        guarantee_rounds: see :class:`PruningMethod`.
    """

    name = "minimax"

    def __init__(self, schedule: str = "joint", compress_fraction: float = 0.5, allocation: str = "auto",
                 lr_s: float = 1.0, lr_y: float = 1.0, lr_z: float = 5.0, y0: float = 1.0, z0: float = 1.0,
                 s_max: Optional[float] = None, min_density: float = 0.5, s_rate: float = 2.0,
                 nodes: Sequence[float] = (), node_fraction: float = 0.1, normalize: str = "layer",
                 guarantee_rounds: int = 3) -> None:
        super().__init__(schedule=schedule, compress_fraction=compress_fraction, guarantee_rounds=guarantee_rounds)
        if allocation not in ALLOCATIONS:
            raise UserError(f"unknown allocation '{allocation}'; choices: {', '.join(ALLOCATIONS)}")
        if any(not 0 < b <= 1 for b in nodes) or list(nodes) != sorted(nodes, reverse=True):
            raise UserError(f"nodes must be decreasing fractions in (0, 1], got {list(nodes)}")
        self.allocation = allocation
        for key, value in (("lr_s", lr_s), ("lr_y", lr_y), ("lr_z", lr_z), ("y0", y0), ("z0", z0),
                           ("s_rate", s_rate), ("node_fraction", node_fraction)):
            if not (value >= 0 and math.isfinite(value)):
                raise UserError(f"method option {key} must be a finite number >= 0, got {value}")
        if s_max is not None and not 0.0 <= s_max <= 1.0:
            raise UserError(f"method option s_max must be in [0, 1], got {s_max}")
        if not 0.0 <= min_density <= 1.0:
            raise UserError(f"method option min_density must be in [0, 1], got {min_density}")
        if normalize not in ("layer", "global"):
            raise UserError(f"unknown normalize '{normalize}'; choices: layer, global")
        self.hyper = dict(lr_s=lr_s, lr_y=lr_y, lr_z=lr_z, y0=y0, z0=z0, normalize=normalize, s_rate=s_rate)
        self.s_max, self.min_density = s_max, min_density
        self.nodes: List[float] = list(nodes)
        self.node_fraction = node_fraction
        self.stage = 0
        self.hold = 0

    def check(self, constraints) -> None:
        if self.allocation == "global" and any(c.resource.name != "params" for c in constraints):
            raise UserError("allocation 'global' ranks all weights as equals, so it needs params-only "
                            "constraints; use allocation layerwise for weighted resources")

    def start(self) -> None:
        self.check(self.constraints)
        allocation = self.allocation
        if allocation == "auto":
            allocation = "global" if all(c.resource.name == "params" for c in self.constraints) else "layerwise"
        s_max = self.s_max if self.s_max is not None else 1.0 - self.min_density * float(self.budgets.min())
        self.engine = MinimaxEngine(self.targets, len(self.constraints), allocation=allocation,
                                    steps=self.compress_steps, s_max=s_max, **self.hyper)
        self.engine.set_masks()
        self.scale = self.engine.scale
    def stage_budgets(self) -> torch.Tensor:
        """Budgets of the current stage: the node where one is pending, never below the final budgets."""
        if self.stage < len(self.nodes):
            return torch.clamp(self.budgets, min=self.nodes[self.stage])
        return self.budgets

    def compress_step(self, step: int) -> None:
        if self.hold > 0:  # finetuning at a node with masks held
            self.hold -= 1
            if self.hold == 0:
                set_straight_through(self.targets, True)
            return
        budgets = self.stage_budgets()
        self.last = self.engine.step(self.costs(), self.dense, budgets, self.trainer.lr)
        if not bool((self.values() <= budgets).all()):
            return
        if self.stage >= len(self.nodes):
            self.freeze()
            return
        self.say(f"reached node {self.nodes[self.stage]:g} at step {step + 1}: " + self.describe())
        self.stage += 1
        self.hold = max(int(self.node_fraction * self.compress_steps), 1)
        apply_masks(self.targets)
        set_straight_through(self.targets, False)

    def epoch_end(self, epoch: int, trainer) -> Dict[str, float]:
        scalars = super().epoch_end(epoch, trainer)
        e = self.engine
        scalars["dual/y"] = e.y
        scalars["penalty/S"] = e.penalty
        for c, z in zip(self.constraints, e.z.tolist()):
            scalars[f"dual/z_{c.resource.name}"] = z
        names = ["all"] if e.allocation == "global" else [t.name for t in self.targets]
        for name, s in zip(names, e.s.tolist()):
            scalars[f"sparsity/{name}"] = s
        return scalars

    def progress(self) -> Dict[str, str]:
        out = super().progress()
        out["y"] = f"{self.engine.y:.2g}"
        out.update({f"z_{c.resource.name}": f"{z:.2g}" for c, z in zip(self.constraints, self.engine.z.tolist())})
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "engine": self.engine.state_dict(), "stage": self.stage, "hold": self.hold}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.engine.load_state_dict(state["engine"])
        self.stage, self.hold = state["stage"], state["hold"]
        if self.hold > 0:
            set_straight_through(self.targets, False)
