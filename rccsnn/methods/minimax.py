"""``minimax``: budget-constrained sparse learning by primal-dual updates (METHOD.md).

    min_{W, s} max_{y >= 0, z >= 0}  L(W * M(s)) + y * sum_l S_l(W, k_l) + sum_j z_j (R_j(k) - B_j)

Scale-free parameterisation (so one set of defaults serves networks of 1e4 to 1e8 weights):

* ``s_l`` is the *fraction* of target l pruned, ``k_l = ceil(s_l * n_l)``. Updating fractions instead of counts
  rescales each layer's gradient by ``1 / n_l``, which changes the path but not the stationary points.
* ``w^2`` enters relative to a unit ``e_l``: one constant for all targets, the mean squared weight over all of
  them (``normalize: global``, METHOD.md's raw magnitudes up to a constant), or each target's own mean square
  (``normalize: layer``). The penalty is ``S = sum_l S_l / (N * e_l)`` and the s-gradient is
  ``y * v_l / e_l - sum_j z_j * c_hat_jl`` with ``c_hat_jl = c_jl * N / sum_l c_jl n_l`` (mean cost per weight
  = 1). Both terms are O(1) on any network. The default is ``layer``: a layer followed by BatchNorm has no
  meaningful weight scale, and in one global ranking per-layer units prune the layers to similar densities.
  Raw magnitudes (``global``, as the reference, magnitude pruning and gmp rank) keep far more of the small output
  layer of the digits network (27 % against 4 % at a 1 % budget) but cut its BatchNorm-followed conv layer to
  0.12 %; there joint minimax collapsed when the masks froze (78 +- 7 % test accuracy over 3 seeds, against
  95 % with per-layer units; BENCHMARKS.md).
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
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from rccsnn.errors import UserError
from rccsnn.masks import Target, apply_masks, set_straight_through
from rccsnn.methods.base import METHODS, PruningMethod, resource_values

ALLOCATIONS = ("auto", "global", "layerwise")

#: ``nodes: auto`` stages the descent at these multiples of the tightest budget. Going from dense straight to a 1 %
#: budget leaves the weights no time to adapt; holding the masks at 5x and 2x the budget for a tenth of the phase
#: each took the digits network from 93.4 to 96.7 % at 0.01 and from 68.5 to 93.4 % at 0.005 (BENCHMARKS.md).
AUTO_NODES = (5.0, 2.0)

#: Default step sizes per compression phase and initial duals (see the module docstring).
DEFAULTS = dict(lr_s=1.0, lr_y=1.0, lr_z=5.0, y0=1.0, z0=1.0)


class MinimaxEngine:
    """The primal-dual state (``s``, ``y``, ``z``) and one update of METHOD.md's compression step.

    Selection (which weights the current ``s`` prunes) costs a few passes over the weights per step, not a sort:

    * The thresholds come from *candidates*: all of a target's ``w^2 / e_l`` when it has at most ``sample_size``
      weights, else a uniform random sample of ``sample_size`` of them, each standing for ``n_l / m`` weights
      (for ``global`` one sample over all targets, drawn in proportion to their sizes). The sample is drawn
      from a generator seeded by the step count, so a resumed run and every rank of a distributed run draw the
      same one. On a layer of 4e7 weights, ranking the whole layer (``kthvalue``) costs about 30 passes.
    * On the step that lands on the budget, the thresholds are exact (``kthvalue`` over all weights), so the
      masks that freeze hold exactly ``ceil(s n)`` pruned weights; in between, a sampled threshold is off by
      about ``sqrt(q (1 - q) / m)`` of a layer (0.2 % of its weights at ``m = 2^14``).
    * Kept counts, and with them every resource value R, are always counted on the real masks.
    * The masks are written by one comparison per weight into the mask buffer, the proximal step by one
      multiplication, both through a preallocated scratch buffer (allocating 4e7 floats every step costs more
      than the arithmetic).

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
        sample_size: candidates per target (per network for ``global``) above which thresholds are sampled;
            0 ranks every weight on every step.
    """

    def __init__(self, targets: Sequence[Target], num_constraints: int, *, allocation: str, steps: int,
                 lr_s: float, lr_y: float, lr_z: float, y0: float, z0: float, s_max: float,
                 normalize: str = "layer", s_rate: float = 2.0, sample_size: int = 2 ** 14) -> None:
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
        self.sample_size = int(sample_size)
        self.t = 0  # engine steps taken: seeds the sample
        with torch.no_grad():
            sq = [t.weight.detach().double().pow(2) for t in targets]
            self.layer_energy = torch.stack([q.mean() for q in sq]).clamp_min(1e-30)
            self.energy = float(sum(q.sum() for q in sq) / self.N) or 1e-30
        # The unit of w^2 per layer: its own mean square ("layer", robust to BatchNorm-rescaled layers) or the
        # mean square over all targets ("global", METHOD.md's raw magnitudes up to one constant).
        self.scale = self.layer_energy if normalize == "layer" else torch.full_like(self.layer_energy, self.energy)
        self._units = self.scale.tolist()
        self.penalty = 0.0
        self.kept = self.n.clone()  # [L] weights the current masks keep (counted when they are set)
        self.thr = [float("-inf")] * len(self.targets)  # the current masks' thresholds, in units of e_l
        self.exact = True  # whether the current masks prune exactly k (not from sampled thresholds)
        self._scratch: Optional[Tensor] = None
        # The parametrization's stored weights and mask buffers, looked up once (the lookup costs more per step
        # than the arithmetic on a small network); loading a state dict copies into these same tensors.
        self._weights = [t.weight for t in self.targets]
        self._masks = [t.mask.mask for t in self.targets]

    # ------------------------------------------------------------------------------------------- selection
    def k(self, s: Optional[Tensor] = None) -> Tensor:
        """``[L]`` weights to prune per target (global: the overall count, split later by the ranking)."""
        s = self.s if s is None else s
        n = torch.tensor([self.N]) if self.allocation == "global" else self.n
        return torch.minimum(torch.ceil(s * n - 1e-9), n)

    def _groups(self) -> List[List[int]]:
        """The targets ranked together: all of them (global) or each alone (layerwise)."""
        return [list(range(len(self.targets)))] if self.allocation == "global" else [[l] for l in
                                                                                      range(len(self.targets))]

    def _draw(self, exact: bool) -> List[Optional[Tensor]]:
        """Per target the flat indices of its candidates (``None``: all of its weights)."""
        out: List[Optional[Tensor]] = [None] * len(self.targets)
        if exact or self.sample_size <= 0:
            return out
        g = torch.Generator().manual_seed(self.t)
        for group in self._groups():
            size = float(self.n[group].sum())
            if size <= self.sample_size:
                continue
            for l in group:
                m = max(1, round(self.sample_size * float(self.n[l]) / size))
                out[l] = torch.randint(self.targets[l].n, (m,), generator=g).to(self._weights[l].device)
        return out

    def _candidates(self, picks: List[Optional[Tensor]]) -> List[Tensor]:
        """Per target ``w^2 / e_l`` (float, on the weights' device) at ``picks`` (all weights where None)."""
        out = []
        for weight, idx, unit in zip(self._weights, picks, self._units):
            w = weight.detach().reshape(-1)
            out.append((w if idx is None else w[idx]).pow(2).div_(unit))
        return out

    def _thresholds(self, cands: List[Tensor], k: Tensor) -> List[float]:
        """Per target the threshold (in units of ``e_l``) at which ``k`` weights are pruned; -inf prunes none."""
        thr = [float("-inf")] * len(self.targets)
        found, where = [], []
        for group, kg in zip(self._groups(), k.tolist()):
            x = cands[group[0]] if len(group) == 1 else torch.cat([cands[l] for l in group])
            weight = float(self.n[group].sum()) / x.numel()  # weights each candidate stands for
            j = min(max(math.ceil(kg / weight - 1e-9), 0), x.numel())  # candidates pruned
            if j > 0:
                found.append(torch.kthvalue(x, j).values)
                where.append(group)
        for group, t in zip(where, torch.stack(found).tolist() if found else []):  # one host sync
            for l in group:
                thr[l] = t
        return thr

    def _penalty(self, cands: List[Tensor], thr: Sequence[float]) -> tuple:
        """``S`` ``[L]``, the sum of the pruned ``w^2 / e_l`` (estimated from the sample where sampled), and ``v``
        ``[L or 1]``, the smallest kept ``w^2 / e_l``, for the pruned sets given by the thresholds ``thr``."""
        sums, mins = [], []
        for c, t, n in zip(cands, thr, self.n.tolist()):
            below = c <= t
            sums.append(torch.where(below, c, 0.0).sum() * (n / c.numel()))  # a candidate stands for n / m weights
            mins.append(torch.where(below, torch.inf, c).min())
        out = torch.stack(sums + mins).double().cpu()  # one host sync
        S, v = out[: len(cands)], out[len(cands):]
        fallback = torch.tensor(thr, dtype=torch.float64)
        if self.allocation == "global":  # the smallest kept value of any target; one threshold for all
            v, fallback = v.min().reshape(1), fallback[:1]
        # Nothing kept (in the candidates): the marginal value is the threshold, the largest pruned value, of that
        # ranking itself (not of another target's).
        return S, torch.where(torch.isinf(v), fallback, v)

    def _buffer(self, t: Target) -> Tensor:
        """A scratch tensor of the target's shape (one buffer, reused: sized for the largest target)."""
        w = self._weights[0]
        if self._scratch is None or self._scratch.device != w.device or self._scratch.dtype != w.dtype:
            self._scratch = torch.empty(max(x.n for x in self.targets), device=w.device, dtype=w.dtype)
        return self._scratch[: t.n].view(t.shape)

    @torch.no_grad()
    def _write_masks(self, thr: Sequence[float], exact: bool = True) -> None:
        """Masks keep ``w^2 / e_l > thr_l`` (ties pruned); counts the kept weights (one host sync)."""
        sums = []
        for t, w, mask, limit, unit in zip(self.targets, self._weights, self._masks, thr, self._units):
            buf = self._buffer(t)
            torch.mul(w.detach(), w.detach(), out=buf)
            if exact:  # the same float operations as the candidates, so an exact threshold prunes exactly k
                torch.gt(buf.div_(unit), limit, out=mask)
            else:  # a sampled threshold is approximate anyway: save the division pass
                torch.gt(buf, limit * unit, out=mask)
            # A float32 sum counts exactly below 2^24 and is several times faster than a float64 one.
            sums.append(mask.sum() if t.n < 2 ** 24 else torch.count_nonzero(mask))
        self.kept = torch.stack([x.double() for x in sums]).cpu()

    @torch.no_grad()
    def set_masks(self, exact: bool = True, picks: Optional[List[Optional[Tensor]]] = None) -> None:
        """Step 5: masks from the current s and W: exact thresholds, or from the candidates at ``picks``."""
        picks = self._draw(exact) if exact or picks is None else picks
        self.thr = self._thresholds(self._candidates(picks), self.k())
        self.exact = all(p is None for p in picks)
        self._write_masks(self.thr, self.exact)

    @torch.no_grad()
    def _shrink(self, lr_w: float) -> None:
        """Step 2, the proximal step of the y-term: ``w <- w / (1 + 2 rho_l y)`` where the mask prunes."""
        rho = (lr_w / self.layer_energy.sqrt()).tolist()
        for t, w, mask, r in zip(self.targets, self._weights, self._masks, rho):
            buf = self._buffer(t)
            shrink, rest = _complements(1.0 / (1.0 + 2.0 * r * self.y), buf.dtype)
            # factor = shrink + mask * (1 - shrink): shrink where pruned, exactly 1 where kept (the two parts
            # are chosen to add up to 1 without rounding), so kept weights are not touched.
            torch.addcmul(torch.full((), shrink, dtype=buf.dtype, device=buf.device), mask,
                          torch.full((), rest, dtype=buf.dtype, device=buf.device), out=buf)
            w.mul_(buf)

    # ------------------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, costs: Tensor, dense: Tensor, budgets: Tensor, lr_w: float,
             final: Optional[Tensor] = None) -> Dict[str, float]:
        """Steps 2-5 of METHOD.md after the optimizer step.

        The pruned set of steps 2 and 4 is the current masks' (the set the forward pass of this step masked): S
        and v are taken at the current masks' thresholds, with the weights as they are after the optimizer step.

        Args:
            costs: ``[J, L]`` cost of one kept weight per target and resource.
            dense: ``[J]`` the dense model's cost per resource (the normaliser of R).
            budgets: ``[J]`` fractions of dense (of the current stage, where there are nodes).
            lr_w: the weights' current step size.
            final: ``[J]`` the run's budgets (default ``budgets``), the unit of the violation in the z-ascent.
        """
        picks = self._draw(exact=False)
        S, v = self._penalty(self._candidates(picks), self.thr)
        # 2. proximal step of the y-term on the pruned sets
        self._shrink(lr_w)
        # R_j on the hard masks of this step
        R = resource_values(costs, dense, self.kept)
        # 3. s descends
        total = (costs * self.n).sum(1, keepdim=True).clamp_min(1e-300)      # [J, 1] at the current rates
        c_hat = costs * self.N / total                                        # [J, L], mean cost per weight 1
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
        # how small the budget is (R - B is tiny in absolute terms near a budget of 0.5 %). Relative to the *final*
        # budget even at a node: relative to the node's, z would grow several times slower on the way to each
        # node than without nodes and reach the last one with a dual too small to finish the descent in time.
        unit = budgets if final is None else final
        self.z = (self.z + self.lr_z * (R - budgets) / unit).clamp_min(0.0)
        # 5. masks from the new s and the shrunk W; exact on the step that lands on the budget, so the masks
        # that freeze hold exactly what s says.
        landing = bool((self._resources(self.s, costs, dense) <= budgets).all())
        self.set_masks(exact=landing, picks=picks)
        self.t += 1
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
        return {"s": self.s.clone(), "y": self.y, "z": self.z.clone(), "penalty": self.penalty, "t": self.t,
                "kept": self.kept.clone(), "thr": torch.tensor(self.thr, dtype=torch.float64), "exact": self.exact}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.s, self.y, self.z, self.penalty = state["s"].double(), state["y"], state["z"].double(), state["penalty"]
        self.t, self.kept, self.thr = int(state["t"]), state["kept"].double().cpu(), state["thr"].tolist()
        self.exact = bool(state["exact"])


def auto_nodes(budget: float) -> List[float]:
    """The staged budgets of ``nodes: auto`` for a tightest budget ``budget`` (a fraction): ``AUTO_NODES x budget``,
    those below 1 (a node at or above dense would hold the dense masks)."""
    return [f * budget for f in AUTO_NODES if f * budget < 1.0]


def _complements(a: float, dtype: torch.dtype) -> tuple:
    """``(a', b)`` in ``dtype`` with ``a' ~ a`` and ``a' + b == 1`` exactly (Sterbenz: ``1 - x`` is exact for x in
    [0.5, 1], so whichever of the two is the larger is taken first and the other is its exact complement)."""
    one = torch.ones((), dtype=dtype)
    x = torch.tensor(a, dtype=dtype)
    if float(x) >= 0.5:
        return float(x), float(one - x)
    b = one - x
    return float(one - b), float(b)


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
            ``node_fraction`` of the compression phase while the weights finetune. ``auto`` (the default):
            ``AUTO_NODES`` times the tightest budget, those below 1 (0.05 and 0.02 for a 1 % budget); ``[]``: none.
        node_fraction: share of the compression phase spent at each node (added to the phase: see :meth:`deadline`).
        normalize: unit of w^2 per target: ``layer`` (its own mean square) or ``global`` (one unit for all).
        sample_size: candidates per ranking above which thresholds come from a random sample (see
            :class:`MinimaxEngine`); 0 ranks every weight on every step.
        guarantee_rounds: see :class:`PruningMethod`.
    """

    name = "minimax"

    def __init__(self, schedule: str = "joint", compress_fraction: float = 0.5, allocation: str = "auto",
                 lr_s: float = 1.0, lr_y: float = 1.0, lr_z: float = 5.0, y0: float = 1.0, z0: float = 1.0,
                 s_max: Optional[float] = None, min_density: float = 0.5, s_rate: float = 2.0,
                 nodes: Union[str, Sequence[float]] = "auto", node_fraction: float = 0.1, normalize: str = "layer",
                 sample_size: int = 2 ** 14, guarantee_rounds: int = 3) -> None:
        super().__init__(schedule=schedule, compress_fraction=compress_fraction, guarantee_rounds=guarantee_rounds)
        if allocation not in ALLOCATIONS:
            raise UserError(f"unknown allocation '{allocation}'; choices: {', '.join(ALLOCATIONS)}")
        if isinstance(nodes, str):
            if nodes != "auto":
                raise UserError(f"nodes must be 'auto' or a list of decreasing fractions in (0, 1], got '{nodes}'")
        elif (not isinstance(nodes, (list, tuple))
              or any(not isinstance(b, (int, float)) or not 0 < b <= 1 for b in nodes)
              or list(nodes) != sorted(nodes, reverse=True)):
            raise UserError(f"nodes must be 'auto' or decreasing fractions in (0, 1], got {nodes!r}")
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
        if sample_size < 0:
            raise UserError(f"method option sample_size must be >= 0 (0: rank every weight), got {sample_size}")
        self.s_max, self.min_density, self.sample_size = s_max, min_density, int(sample_size)
        self.nodes_auto = isinstance(nodes, str)  # resolved in start(), once the budgets are known
        self.nodes: List[float] = [] if self.nodes_auto else [float(b) for b in nodes]
        self.node_fraction = node_fraction
        self.stage = 0
        self.hold = 0  # steps left of the current hold at a node

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
        if self.nodes_auto:
            self.nodes = auto_nodes(float(self.budgets.min()))
        self.engine = MinimaxEngine(self.targets, len(self.constraints), allocation=allocation,
                                    steps=self.compress_steps, s_max=s_max, sample_size=self.sample_size,
                                    **self.hyper)
        self.engine.set_masks()
        self.scale = self.engine.scale

    def floors(self) -> List[int]:
        """The engine's own limit (``s_max``) as the projections' floor: if the phase ends before the budget holds,
        or a data-dependent budget fails on the final measurement, they prune the other layers before emptying one."""
        return [math.ceil((1.0 - self.engine.s_max) * t.n - 1e-9) for t in self.targets]

    def deadline(self) -> int:
        """A hold at a node stops the compression clock: the descent keeps all of ``compress_steps`` (the rates are
        per ``compress_steps``), the holds come on top, out of the finetuning phase, and never past the run's end."""
        return min(self.compress_steps + self.stage * self.hold_steps(), self.loop.total_steps)

    def hold_steps(self) -> int:
        """Steps of one hold at a node (every node reached so far has started one: ``stage`` of them)."""
        return max(int(self.node_fraction * self.compress_steps), 1)

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
        costs = self.costs()
        self.last = self.engine.step(costs, self.dense, budgets, self.loop.lr, final=self.budgets)
        # The engine counted the kept weights when it wrote the masks (no second pass over them here). Masks from
        # a sampled threshold may fall under the budget by chance; only exact masks (the landing step's) freeze,
        # so the frozen masks hold what s says rather than a sampling error below it.
        if not (self.engine.exact and bool((resource_values(costs, self.dense, self.engine.kept) <= budgets).all())):
            return
        if self.stage >= len(self.nodes):
            self.freeze()
            return
        self.say(f"reached node {self.nodes[self.stage]:g} at step {step + 1}: " + self.describe())
        self.stage += 1
        self.hold = self.hold_steps()
        apply_masks(self.targets)
        set_straight_through(self.targets, False)

    def epoch_end(self, epoch: int, loop) -> Dict[str, float]:
        scalars = super().epoch_end(epoch, loop)
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
