"""``minimax``: budget-constrained sparse learning by primal-dual updates (docs/method.md).

    min_{W, s} max_{y >= 0, z >= 0}  L(W * M(s)) + y * sum_l S_l(W, k_l) + sum_j z_j (R_j(k) - B_j)

What a weight is worth (``importance``):

* ``fisher`` (the default): Optimal Brain Damage's saliency ``a_i = F_ii w_i^2 / 2``, the loss increase from
  removing weight i, with the Hessian's diagonal approximated by the empirical Fisher ``F_ii``, an EMA of squared
  gradients (the straight-through backward gives pruned weights their gradient too). Saliency is in loss units, so
  it compares across layers without per-layer units: selection and allocation rank every weight by it, ``S_l``
  sums the ``k_l`` smallest saliencies, the proximal step shrinks those weights, and ``s`` descends on ``y`` times
  the marginal saliency against the marginal cost. S and v are taken relative to one unit for all layers,
  ``sum_l e_l sum_i F_i / N`` (the mean Fisher at the layers' initial mean squares ``e_l``), which follows the
  loss's gradient scale as the network is cut but not the pruning itself. The ``1/2`` is in that unit. A layer
  followed by BatchNorm needs no special unit: scaling its weights by a scales its gradients by ``1/a``, and
  ``F w^2`` not at all. A target with no gradient history yet has no evidence: it is ranked by its magnitude,
  ``f w^2`` with ``f = sum F w^2 / sum w^2`` over the targets that have one, and the run says so.
  Saliency is a per-weight, second-order estimate: it can rank a whole layer below the rest (a conv layer whose
  every weight matters little alone, all of them together everything), and an empty layer in series kills the
  network. So a global ranking by saliency keeps each layer's density floor (``min_density`` of the tightest budget,
  the floor the layerwise allocation and the projections already keep): on the tutorial-style conv SNN of
  ``benchmarks/panel_models.py`` at 0.005, 10 epochs, seeds 0-2, 26.0 / 37.9 / 40.9 % with it against 8.6 / 8.6 /
  13.4 % without (its second conv layer emptied); it costs a network with a side path that may go, the recurrent
  panel model's recurrent weights: 83.3 / 90.7 / 84.8 % against 94.8 / 91.8 / 94.8 % (gmp: 17 %).
  Measured on a fully connected Leaky SNN on digits (15 epochs, 0.05 of the weights), ``w2`` units kept 4.8 % of
  the small output layer and the network fell to 68 % (gmp: 96 %); ``fisher`` kept 37.5 % of it and reached 97 %.
* ``w2`` (the engine before loss-aware allocation): ``w^2`` relative to a unit ``e_l``: one constant for all
  targets, the mean squared weight over all of them (``normalize: global``, docs/method.md's raw magnitudes up to a
  constant), or each target's own mean square (``normalize: layer``). The penalty is ``S = sum_l S_l / (N * e_l)``
  and the s-gradient is ``y * v_l / e_l - sum_j z_j * c_hat_jl``. With ``layer`` (its default), a layer followed by
  BatchNorm is measured in its own scale, but every layer ends up about equally dense, which starves a small
  output layer; raw magnitudes (``global``) cut the BatchNorm-followed conv layer of the digits convsnn to 0.12 %
  and joint minimax collapsed when the masks froze (78 +- 7 % against 95 %; BENCHMARKS.md).

Scale-free parameterisation (so one set of defaults serves networks of 1e4 to 1e8 weights):

* ``s_l`` is the *fraction* of target l pruned, ``k_l = ceil(s_l * n_l)``. Updating fractions instead of counts
  rescales each layer's gradient by ``1 / n_l``, which changes the path but not the stationary points.
* Costs enter as ``c_hat_jl = c_jl * N / sum_l c_jl n_l`` (mean cost per weight = 1), importances relative to
  their unit (above): both terms of the s-gradient are O(1) on any network.
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

from rccsnn import distributed
from rccsnn.errors import UserError
from rccsnn.masks import Target, apply_masks, set_straight_through
from rccsnn.methods.base import (METHODS, PruningMethod, kept_counts, kept_mean_costs, prune_cheapest,
                                resource_values)
from rccsnn.methods.stepsize import STEP_RULES, DensityStepSize
from rccsnn.quant import FLOAT_BITS, LADDER, parse_ladder, quantize, set_bits, target_bits
from rccsnn.resources import cost_sum, per_weight

ALLOCATIONS = ("auto", "global", "layerwise")
IMPORTANCES = ("fisher", "w2")
PACINGS = ("auto", "legacy")
#: What ``decide`` may list: the masks (``sparsity``), the weights' bit widths (``bits``) and the number of time
#: steps (``timesteps``).
DECISIONS = ("sparsity", "bits", "timesteps")
REGROWS = ("none", "criticality")
ACTIVITY_LAYERS = ("output", "all")

#: ``nodes: auto`` stages the descent at these multiples of the tightest budget. Going from dense straight to a 1 %
#: budget leaves the weights no time to adapt; holding the masks at 5x and 2x the budget for a tenth of the phase
#: each took the digits network from 93.4 to 96.7 % at 0.01 and from 68.5 to 93.4 % at 0.005 (BENCHMARKS.md).
AUTO_NODES = (5.0, 2.0)

#: ``pacing: auto``: the whole descent, at the trust region's pace, takes this share of the compression phase (as
#: ``s_rate = 2`` does under ``legacy``), spread evenly over the decades of density.
DESCENT_SHARE = 0.5

#: ``pacing: auto``: a hold at a node lasts at least an epoch, but the epoch stretches no hold beyond this share of the
#: compression phase.
MAX_HOLD = 0.25

#: ``importance: fisher``: the unit of S and v (a sum over every Fisher buffer) is counted again every this many steps.
UNIT_EVERY = 4

#: Default step sizes per compression phase and initial duals (see the module docstring).
DEFAULTS = dict(lr_s=1.0, lr_y=1.0, lr_z=5.0, y0=1.0, z0=1.0)

#: ``pacing: auto``: the value of ``lr_log_z: auto``, the step of ``log z`` per phase per unit of relative violation
#: (see :meth:`MinimaxEngine.step`): a stage budget exceeded by 20 % raises the price 1.6-fold in 33 steps of a
#: 420-step phase. The cap of a decade per ``decade_steps`` binds from an excess of ``ln 10 D / (DESCENT_SHARE x 30)``
#: on, D the decades to descend: 20 % at a 0.05 budget, 30 % at 0.01, 41 % at 0.002.
LOG_LR_Z = 30.0


def decade_steps(phase_steps: int, budget: float) -> float:
    """``pacing: auto``'s steps per decade of density: dense to ``budget`` (the tightest, a fraction) in
    ``DESCENT_SHARE`` of a compression phase of ``phase_steps`` steps at full speed, every decade alike."""
    return DESCENT_SHARE * phase_steps / max(math.log10(1.0 / budget), 0.1)


class MinimaxEngine:
    """The primal-dual state (``s``, ``y``, ``z``) and one update of the compression step (Steps 2-5 of docs/method.md).

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
        lr_log_z: step size per phase of ``log z`` (0: the additive step alone; needs ``decade_steps``).
        y0, z0: initial duals.
        s_max: largest fraction of a target that may be pruned.
        normalize: unit of w^2 per target, ``layer`` or ``global``.
        s_rate: the most any s may move per phase (a trust region: 2 means 0 -> 1 takes half the phase).
        sample_size: candidates per target (per network for ``global``) above which thresholds are sampled;
            0 ranks every weight on every step.
    """

    def __init__(self, targets: Sequence[Target], num_constraints: int, *, allocation: str, steps: int,
                 lr_s: float, lr_y: float, lr_z: float, y0: float, z0: float, s_max: float,
                 normalize: str = "layer", s_rate: float = 2.0, sample_size: int = 2 ** 14,
                 importance: str = "w2", fisher_steps: float = 1.0, decade_steps: Optional[float] = None,
                 floor_layer: Optional[int] = None, floor_per_row: int = 0, layer_floor: bool = False,
                 fixed: Optional[Sequence[bool]] = None, lr_log_z: float = 0.0) -> None:
        if importance not in IMPORTANCES:
            raise UserError(f"unknown importance '{importance}'; choices: {', '.join(IMPORTANCES)}")
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
        # Fixed targets (not pruned by the engine): s stays 0 for them (layerwise); a global ranking floors them at all weights.
        self.fixed = torch.tensor([bool(f) for f in (fixed or [False] * len(targets))])
        self.sample_size = int(sample_size)
        self.t = 0  # engine steps taken: seeds the sample
        with torch.no_grad():
            sq = [t.weight.detach().double().pow(2) for t in targets]
            self.layer_energy = torch.stack([q.mean() for q in sq]).clamp_min(1e-30)
            self.energy = float(sum(q.sum() for q in sq) / self.N) or 1e-30
        # The unit of w^2 per layer: its own mean square ("layer", robust to BatchNorm-rescaled layers) or the
        # mean square over all targets ("global", docs/method.md's raw magnitudes up to one constant).
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
        # Pacing: ``decade_steps`` (log trust region) or the linear one above (``max_ds``).
        self.decade_steps = decade_steps
        if lr_log_z > 0 and decade_steps is None:
            raise ValueError("lr_log_z needs decade_steps (its cap)")
        self.lr_log_z = lr_log_z / P
        # Loss-aware importance: the empirical Fisher per weight, an EMA of squared gradients over ``fisher_steps``
        # steps; ``seen[l]`` counts the gradients target l has contributed (0: no evidence yet).
        self.importance = importance
        self.fisher: Optional[List[Tensor]] = None
        self.beta = 1.0 - 1.0 / max(float(fisher_steps), 1.0)
        self.inv = 1.0  # the Fisher buffers hold F * inv (see accumulate)
        self._thr_inv = 1.0
        self.seen = [0] * len(self.targets)
        self.fallback: List[int] = []  # targets ranked by the magnitude fallback at the last ranking
        self.fallback_unit = 1.0
        self.unit: Optional[float] = None  # fisher: the unit of S and v (see _set_unit)
        self._restart_unit = False  # a target got its first gradient: the unit is counted again
        self._inf: List[int] = [0] * len(self.targets)
        self._gathered: List[Optional[tuple]] = [None] * len(self.targets)  # (picks, F at picks) of this step
        self._hit: Optional[tuple] = None  # (picks, protected, protected among picks, their count) of this step
        if importance == "fisher":
            self.fisher = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in self._weights]
        # The output floor: rows (output units) of target ``floor_layer`` keep their ``floor_per_row`` most
        # important inputs whatever s says; ``protected[l]`` counts the weights so kept.
        self.floor_layer = floor_layer if floor_per_row > 0 else None
        self.floor_per_row = int(floor_per_row)
        self.protected = torch.zeros(len(self.targets), dtype=torch.float64)
        self._prot: Optional[Tensor] = None  # flat indices of the protected weights of floor_layer
        self._row_min: Optional[float] = None  # fewest weights a row of floor_layer kept in the last masks
        if self.floor_layer is not None:
            shape = self.targets[self.floor_layer].shape
            rows, cols = shape[0], self.targets[self.floor_layer].n // shape[0]
            self.protected[self.floor_layer] = float(rows * min(self.floor_per_row, cols))
        # The layer floor of a global ranking: each target keeps its ceil((1 - s_max) n_l) most important weights
        # (with per-layer units of w^2 the layers stay about equally dense anyway; saliencies in one unit can
        # rank a whole layer below the others, and an empty layer kills the network). ``keep[l]``: the weights of
        # target l that s cannot prune (its floor, or the output floor's protected weights where more).
        self.layer_floor = (bool(layer_floor) or bool(self.fixed.any())) and allocation == "global" \
            and len(self.targets) > 1
        floors = torch.ceil((1.0 - s_max) * self.n - 1e-9) if self.layer_floor else torch.zeros_like(self.n)
        floors = torch.where(self.fixed, self.n, floors)
        self.keep = torch.maximum(floors.clamp(0.0, None), self.protected)

    # ------------------------------------------------------------------------------------------- selection
    def k(self, s: Optional[Tensor] = None) -> Tensor:
        """``[L]`` weights to prune per target (global: the overall count, split later by the ranking); never one
        that the output floor protects, nor (global, with the layer floor) one of a layer's floor."""
        s = self.s if s is None else s
        if self.allocation == "global":
            n = torch.tensor([self.N])
            cap = n - self.keep.sum()
        else:
            n = cap = self.n
            if self.floor_layer is not None:
                cap = self.n - self.protected
        return torch.minimum(torch.ceil(s * n - 1e-9), cap)

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

    # ------------------------------------------------------------------------------------------- importance
    @torch.no_grad()
    def accumulate(self) -> None:
        """Fold this step's gradients into the Fisher EMA, ``F <- beta F + (1 - beta) g^2`` (a target's first
        gradient initialises it, so there is no bias to correct). Call after ``loss.backward()``, before anything
        drops the targets' gradients.

        One fused pass over the weights (``torch._foreach_addcmul_``): the buffers hold ``G = F / beta^t``, so the
        decay of every old term is a growing weight ``(1 - beta) / beta^t`` on the new one instead of a pass over
        the buffer; ``F = G / inv`` with ``inv = beta^-t`` (:meth:`fisher_of`). Every use of the Fisher is a ratio
        of such values (the ranking, the unit of S and v, the fallback), so the common factor never needs to be
        applied; when ``inv`` passes 1e15 the buffers are rescaled once (float32 holds it with room to spare)."""
        if self.fisher is None:
            return
        if self.beta > 0:
            self.inv /= self.beta
        fs, gs = [], []
        for l, (w, f) in enumerate(zip(self._weights, self.fisher)):
            g = w.grad
            if g is None:
                if self.seen[l] > 0 and self.beta > 0:  # no gradient this step: its Fisher stays as it was
                    f.div_(self.beta)
                continue
            if self.seen[l] == 0 or self.beta == 0:  # (fisher_steps 1: the last gradient alone)
                torch.mul(g, g, out=f).mul_(self.inv)
                self._restart_unit = self._restart_unit or self.seen[l] == 0
            else:
                fs.append(f)
                gs.append(g)
            self.seen[l] += 1
        if fs:
            torch._foreach_addcmul_(fs, gs, gs, value=(1.0 - self.beta) * self.inv)
        if self.inv > 1e15:
            torch._foreach_mul_(self.fisher, 1.0 / self.inv)
            self.inv = 1.0

    def fisher_of(self, l: int) -> Tensor:
        """The Fisher EMA of target ``l`` (a new tensor; the buffer holds it times ``inv``)."""
        return self.fisher[l] / self.inv

    @torch.no_grad()
    def _prepare(self, force: bool = False) -> None:
        """Before a ranking: the magnitude fallback of targets without gradient history, and the output floor. The
        floor is chosen only while a row of its layer may be near empty: when the last masks kept more than four
        times the floor in every row, no step of the descent empties a row, and the next step looks again (exact
        rankings, ``force``, always choose it)."""
        if self.fisher is not None and not all(self.seen):
            self._fill_fallback()
        elif self.fallback:
            self.fallback = []
        if self.floor_layer is not None:
            if not force and self._row_min is not None and self._row_min > 4 * self.floor_per_row:
                self._prot = None
                return
            l, t = self.floor_layer, self.targets[self.floor_layer]
            scores = self._scores(l, None).view(t.shape[0], -1)
            top = torch.topk(scores, min(self.floor_per_row, scores.shape[1]), dim=1).indices
            rows = torch.arange(scores.shape[0], device=top.device)[:, None] * scores.shape[1]
            self._prot = (top + rows).reshape(-1)

    @torch.no_grad()
    def _fill_fallback(self) -> None:
        """A target with no gradient yet has no evidence of what it costs the loss: it is ranked by ``f w^2`` with
        ``f = sum F w^2 / sum w^2`` over the targets that have a gradient history (1 if none has), the unit in which
        magnitude and saliency agree in sum on those targets (its Fisher buffer holds ``f`` until its first
        gradient replaces it)."""
        self.fallback = [l for l, c in enumerate(self.seen) if c == 0]
        have = [l for l, c in enumerate(self.seen) if c > 0]
        unit = 1.0
        if have:
            num = sum(float((self.fisher[l] * self._weights[l].detach().pow(2)).sum()) for l in have)
            den = sum(float(self._weights[l].detach().pow(2).sum()) for l in have)
            unit = num / den if den > 0 and num > 0 else 1.0
        self.fallback_unit = unit / self.inv  # in units of the Fisher (the buffers hold F * inv)
        for l in self.fallback:
            self.fisher[l].fill_(unit)

    def _set_unit(self, fisher_sums: Tensor) -> None:
        """The unit of S and v from each target's summed Fisher: ``sum_l e_l sum_i F_i / N``, the mean saliency the
        weights would have at their layer's initial mean square ``e_l``. It follows the loss's gradient scale as the
        network is cut, but not the pruning itself (a unit from the current weights would fall as the pruned ones
        shrink, and the y-term would stall the descent)."""
        unit = float((fisher_sums.double() * self.layer_energy).sum()) / self.N / self.inv
        if unit > 0 and math.isfinite(unit):
            self.unit = unit

    @torch.no_grad()
    def _count_unit(self) -> None:
        """:meth:`_set_unit` counted now (one pass over the Fisher buffers)."""
        self._set_unit(torch.stack([f.sum() for f in self.fisher]).double().cpu())

    def _scores(self, l: int, idx: Optional[Tensor]) -> Tensor:
        """Importance of target ``l``'s weights at the flat indices ``idx`` (all where None), float, on the weights'
        device: ``w^2 / e_l`` (``w2``) or ``F w^2`` (``fisher``, in loss units; the common unit divides S and v)."""
        w = self._weights[l].detach().reshape(-1)
        x = (w if idx is None else w.index_select(0, idx)).pow(2)  # (index_select: 4x faster than w[idx])
        if self.fisher is None:
            return x.div_(self._units[l])
        f = self.fisher[l].reshape(-1)
        if idx is None:
            return x.mul_(f)
        # The Fisher does not change within a step: its sample is gathered once for both rankings of the step.
        cached = self._gathered[l]
        if cached is None or cached[0] is not idx:
            cached = self._gathered[l] = (idx, f.index_select(0, idx))
        return x.mul_(cached[1])

    def _candidates(self, picks: List[Optional[Tensor]]) -> List[Tensor]:
        """Per target its importance at ``picks`` (all weights where None); the output floor's protected weights are
        +inf (never pruned, never the marginal value), and ``self._inf[l]`` counts them among the candidates."""
        out = []
        self._inf = [0] * len(self.targets)
        for l, idx in enumerate(picks):
            c = self._scores(l, idx)
            if l == self.floor_layer and self._prot is not None:
                if idx is None:
                    c[self._prot] = torch.inf
                    self._inf[l] = int(self._prot.numel())
                else:
                    if self._hit is None or self._hit[0] is not idx or self._hit[1] is not self._prot:
                        hit = torch.zeros(self.targets[l].n, dtype=torch.bool, device=c.device)
                        hit[self._prot] = True
                        hit = hit.index_select(0, idx)
                        self._hit = (idx, self._prot, hit, int(hit.sum()))
                    c = torch.where(self._hit[2], torch.inf, c)
                    self._inf[l] = self._hit[3]
            out.append(c)
        return out

    def _eligible(self, cands: List[Tensor], k: float) -> tuple:
        """The layer floor of a global ranking: per target, only its ``n_l - keep_l`` least important weights may be
        pruned. Returns the candidates with the others set to +inf, each target's cap ``q_l`` (its largest eligible
        value, a 0-dim tensor; +inf where no cap binds, -inf where nothing is eligible) and the count of eligible
        candidates, for ``k`` weights to prune.

        With sampled candidates, a target far above its floor is not ranked for its cap (a ``kthvalue`` each): the
        ranking can take from it at most the weights pruned beyond the current masks' (twice that, and 5 % of what
        it keeps, for the sample's error and the weights' moves). The next step ranks it again, and exact rankings
        (the landing step's) always do."""
        marked, caps, finite = [], [], 0
        more = max(k - (self.N - float(self.kept.sum())), 0.0)  # weights pruned beyond the current masks
        for c, inf, n, keep, kept in zip(cands, self._inf, self.n.tolist(), self.keep.tolist(), self.kept.tolist()):
            m = c.numel()  # (the output floor's protected weights, +inf here, are counted in keep)
            e = min(m - inf, int(n - keep) if m == n else math.floor((n - keep) / n * m + 1e-9))
            if m < n and kept - keep > 2.0 * more + 0.05 * kept + 16:
                marked.append(c)
                caps.append(None)
                finite += m - inf
                continue
            if e >= m - inf:
                q = torch.full((), torch.inf, dtype=c.dtype, device=c.device)
            elif e <= 0:
                q = torch.full((), -torch.inf, dtype=c.dtype, device=c.device)
            else:
                q = torch.kthvalue(c, e).values
            marked.append(torch.where(c > q, torch.inf, c))
            caps.append(q)
            finite += max(e, 0)
        return marked, caps, finite

    def _thresholds(self, cands: List[Tensor], k: Tensor) -> List[float]:
        """Per target the threshold (in its importance's unit) at which ``k`` weights are pruned; -inf prunes none.
        A global ranking with the layer floor caps each target's threshold at its largest prunable value."""
        thr = [float("-inf")] * len(self.targets)
        found, where = [], []
        infs = self._inf
        for group, kg in zip(self._groups(), k.tolist()):
            if len(group) > 1 and self.layer_floor:
                marked, caps, finite = self._eligible(cands, kg)
                x = torch.cat(marked)
            else:
                x = cands[group[0]] if len(group) == 1 else torch.cat([cands[l] for l in group])
                caps, finite = None, x.numel() - sum(infs[l] for l in group)
            weight = float(self.n[group].sum()) / x.numel()  # weights each candidate stands for
            j = min(max(math.ceil(kg / weight - 1e-9), 0), finite)  # candidates pruned
            if j > 0:
                t = torch.kthvalue(x, j).values
                if caps is None:
                    found.append(t)
                    where.append(group)
                else:
                    found += [t if q is None else torch.minimum(t, q) for q in caps]
                    where += [[l] for l in group]
        for group, t in zip(where, torch.stack(found).tolist() if found else []):  # one host sync
            for l in group:
                thr[l] = t
        return thr

    def _penalty(self, cands: List[Tensor], thr: Sequence[float]) -> tuple:
        """``S`` ``[L]``, the sum of the pruned importances (estimated from the sample where sampled), ``v``
        ``[L or 1]``, the smallest kept importance that may still be pruned, for the pruned sets given by the
        thresholds ``thr``."""
        sums, mins = [], []
        top = max(thr) if thr else float("-inf")
        for c, t, n in zip(cands, thr, self.n.tolist()):
            below = c <= t
            sums.append(torch.where(below, c, 0.0).sum() * (n / c.numel()))  # a candidate stands for n / m weights
            if self.layer_floor and t < top:  # a layer whose threshold was capped is at its floor: none may go
                mins.append(torch.full((), torch.inf, dtype=c.dtype, device=c.device))
            else:
                mins.append(torch.where(below, torch.inf, c).min())
        out = torch.stack(sums + mins).double().cpu()  # one host sync
        S, v = out[: len(cands)], out[len(cands):]
        fallback = torch.tensor(thr, dtype=torch.float64)
        if self.allocation == "global":  # the smallest kept value of any target; one threshold for all
            v, fallback = v.min().reshape(1), fallback.max().reshape(1)
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
        """Masks keep the importance ``> thr_l`` (ties pruned) and the output floor's protected weights; counts the
        kept weights (one host sync)."""
        sums, dots = [], []
        for l, (t, w, mask, limit, unit) in enumerate(zip(self.targets, self._weights, self._masks, thr,
                                                           self._units)):
            buf = self._buffer(t)
            torch.mul(w.detach(), w.detach(), out=buf)
            if self.fisher is not None:  # F w^2: the same float operations as the candidates
                torch.gt(buf.mul_(self.fisher[l]), limit, out=mask)
            elif exact:  # the same float operations as the candidates, so an exact threshold prunes exactly k
                torch.gt(buf.div_(unit), limit, out=mask)
            else:  # a sampled threshold is approximate anyway: save the division pass
                torch.gt(buf, limit * unit, out=mask)
            if l == self.floor_layer:
                if self._prot is not None:
                    mask.view(-1)[self._prot] = 1.0
                rows = mask.view(t.shape[0], -1).sum(1).min()
            # A float32 sum counts exactly below 2^24 and is several times faster than a float64 one.
            sums.append(mask.sum() if t.n < 2 ** 24 else torch.count_nonzero(mask))
            if self.fisher is not None and (self.t % UNIT_EVERY == 0 or exact):
                # the layer's total Fisher, for the unit: a reduction pass, taken every UNIT_EVERY steps (the Fisher
                # is an EMA over several steps, so the unit moves slowly) and on exact rankings
                dots.append(self.fisher[l].sum())
        extra = [rows] if self.floor_layer is not None else []
        out = torch.stack([x.double() for x in sums + dots + extra]).cpu()  # one host sync
        self.kept = out[: len(sums)]
        if extra:
            self._row_min, out = float(out[-1]), out[:-1]
        if dots:
            self._set_unit(out[len(sums):])

    @torch.no_grad()
    def set_masks(self, exact: bool = True, picks: Optional[List[Optional[Tensor]]] = None,
                  prepared: bool = False) -> None:
        """Step 5: masks from the current s and W: exact thresholds, or from the candidates at ``picks``
        (``prepared``: :meth:`_prepare` ran on these weights already; the proximal step since then only shrank
        pruned weights, which changes neither the fallback nor the output floor's choice)."""
        picks = self._draw(exact) if exact or picks is None else picks
        if not prepared or (exact and self.floor_layer is not None and self._prot is None):
            self._prepare(force=exact)
        self.thr = self._thresholds(self._candidates(picks), self.k())
        self._thr_inv = self.inv  # the Fisher buffers' factor the thresholds were taken in
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
        """Steps 2-5 of docs/method.md after the optimizer step.

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
        self._prepare()
        # The current masks' thresholds, in the Fisher buffers' current units (their factor inv grew since).
        thr = self.thr if self.fisher is None else [t * (self.inv / self._thr_inv) for t in self.thr]
        S, v = self._penalty(self._candidates(picks), thr)
        if self.fisher is not None:
            # Saliencies are in loss units: S and v enter relative to one unit for every layer, the mean Fisher times
            # the initial mean square (counted when the masks are written; here after a target's first gradient).
            if self.unit is None or self._restart_unit:
                self._count_unit()
                self._restart_unit = False
            unit = (self.unit or 1.0) * self.inv  # the buffers hold F * inv
            S, v = S / unit, v / unit
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
        grad = self.y * v - pull  # v is already in units of the layer's mean square (w2) or mean saliency (fisher)
        ds = -self.lr_s * grad
        if self.decade_steps is None:
            # A trust region on s: no layer's pruned fraction moves faster than s_rate per phase, which leaves the
            # weights time to adapt (and firing-rate estimates time to follow) however hard the duals push.
            ds = ds.clamp(-self.max_ds, self.max_ds)
        else:
            # The trust region in log density: the kept fraction d = 1 - s shrinks (or grows) by at most a factor
            # 10^(1/decade_steps) per step, so every decade of density takes at least decade_steps steps and the
            # last weights are not cut faster than the first.
            d = 1.0 - self.s
            f = 10.0 ** (-1.0 / self.decade_steps)
            ds = torch.maximum(torch.minimum(ds, d * (1.0 - f)), -d * (1.0 / f - 1.0))
        cap = torch.full_like(self.s, float(self.s_max))
        if self.allocation != "global":
            cap = torch.where(self.fixed, 0.0, cap)
        self.s = self._land(self.s, torch.minimum((self.s + ds).clamp_min(0.0), cap), costs, dense, budgets)
        # 4. duals ascend, projected onto >= 0
        self.penalty = float(S.sum()) / self.N
        self.y = max(0.0, self.y + self.lr_y * self.penalty)
        # The violation enters relative to the budget, (R - B) / B, so that the dual's speed does not depend on
        # how small the budget is (R - B is tiny in absolute terms near a budget of 0.5 %). Relative to the *final*
        # budget even at a node: relative to the node's, z would grow several times slower on the way to each
        # node than without nodes and reach the last one with a dual too small to finish the descent in time.
        unit = budgets if final is None else final
        z = (self.z + self.lr_z * (R - budgets) / unit).clamp_min(0.0)
        if self.lr_log_z > 0:
            # While a budget is exceeded, the larger of that and a step in log space, which moves the price by a
            # factor, not an amount. The value of the marginal weight spans four decades over a descent (on the
            # panel's fc network v was 0.003 at the start, 50 at 1.2 % density): the additive step, sized for the
            # first decades, cannot move the price of the last, and z balanced y v above the budget for hundreds of
            # steps (the masks froze only at the deadline); the log step is too slow from a small z, where the
            # additive one sets the early pace. Its violation is relative to the stage's budget, its rise capped at
            # a decade of price per decade of density's steps, so that a large early violation cannot wind the
            # price far past the balance. Under the budget the additive step alone: a price that only shrinks by a
            # factor never reaches 0, and a slack constraint would keep pushing s.
            g = torch.clamp(self.lr_log_z * (R - budgets) / budgets, max=math.log(10.0) / self.decade_steps)
            z = torch.where(R > budgets, torch.maximum(z, self.z * torch.exp(g)), z)
        self.z = z
        # 5. masks from the new s and the shrunk W; exact on the step that lands on the budget, so the masks
        # that freeze hold exactly what s says.
        landing = bool((self._resources(self.s, costs, dense) <= budgets).all())
        self.set_masks(exact=landing, picks=picks, prepared=True)
        self.t += 1
        return {"penalty": self.penalty, "y": self.y, **{f"z{j}": float(z) for j, z in enumerate(self.z)}}

    def _resources(self, s: Tensor, costs: Tensor, dense: Tensor) -> Tensor:
        """``[J]`` resources that the sparsity levels ``s`` would give, from the counts ``k = ceil(s n)``."""
        if self.allocation == "global":  # global is params-only: every weight costs the same
            kept = self.N - float(self.k(s))
            return costs[:, 0] * kept / dense.clamp_min(1e-300)
        return resource_values(costs, dense, self.n - self.k(s))

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
        out = {"s": self.s.clone(), "y": self.y, "z": self.z.clone(), "penalty": self.penalty, "t": self.t,
               "kept": self.kept.clone(), "thr": torch.tensor(self.thr, dtype=torch.float64), "exact": self.exact}
        if self.fisher is not None:
            out.update(fisher=[f.detach().cpu().clone() for f in self.fisher], seen=list(self.seen), unit=self.unit,
                       inv=self.inv, thr_inv=self._thr_inv)
        if self.floor_layer is not None:
            out["row_min"] = self._row_min
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.s, self.y, self.z, self.penalty = state["s"].double(), state["y"], state["z"].double(), state["penalty"]
        self.t, self.kept, self.thr = int(state["t"]), state["kept"].double().cpu(), state["thr"].tolist()
        self.exact = bool(state["exact"])
        if self.fisher is not None and state.get("fisher") is not None:  # the same buffers, so no reallocation
            for f, saved in zip(self.fisher, state["fisher"]):
                f.copy_(saved)
            self.seen, self.unit, self.inv = [int(c) for c in state["seen"]], state["unit"], float(state["inv"])
            self._thr_inv = float(state["thr_inv"])
        self._row_min = state.get("row_min")


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
    """The primal-dual engine with loss-aware importance, paced by the run's length, staged at ``nodes``.

    **Pacing** (``pacing: auto``, the default). The run's compression phase is ``P = compress_fraction x`` its
    steps (0.7 of them by default); the masks freeze as soon as every budget holds. With B the tightest budget and
    ``D = log10(1 / B)`` the decades of density to descend:

    * *The descent is paced in log density.* No ranking's kept fraction ``d = 1 - s`` shrinks (or grows) by more than
      a factor ``10^(1/S)`` per step, ``S = DESCENT_SHARE x P / D`` steps per decade: at full speed the descent from
      dense to B takes half the phase, and every decade the same number of steps, so the last weights are not cut
      faster than the first. (The legacy trust region bounds ``s`` linearly, ``s_rate / P`` per step: it spends as
      many steps on 1 -> 0.9 as on 0.1 -> 0; with P = 100 it took the density from 0.025 to 0.01 in one step.)
    * *Nodes* at ``AUTO_NODES`` = 5x and 2x the budget (or the given ``nodes``): the masks are held at each for
      ``max(node_fraction x P, min(one epoch, MAX_HOLD x P))`` steps while the weights finetune; the holds add to
      the phase. A hold is sized in epochs on a short run (every batch seen once with the held masks) and in
      phase shares on a long one.
    * *The Fisher EMA* averages ``min(one epoch, P / 10)`` steps: a pass over the data where it can, fast enough
      to follow a descent of ten or more steps per decade.

    For example, 10 epochs of 20 steps on digits at B = 0.002 with ``compress_fraction: 0.5``: P = 100, D = 2.7, S = 18.5 steps (0.9 epoch) per
    decade, holds of 20 steps at 0.01 and 0.004, masks frozen at step 92 of 200. ``pacing: legacy`` is the engine
    before this rule: the linear trust region ``s_rate``, holds of ``node_fraction x P``, the Fisher EMA as above.

    **Output floor.** Every output unit (row of the weight of the target that feeds the network's outputs: its last
    weight layer) keeps its ``output_floor`` most important inputs whatever ``s`` says: in every mask the engine
    writes, and in the projections (which drop it only when nothing else is left to prune). The count of
    protected weights is taken off what ``s`` may prune, so the resources the engine predicts stay exact.

    Args:
        schedule: ``joint`` (task loss updates every weight while compressing) or ``sequential``. Under
            ``sequential`` the task gradient of the targets is dropped after backward, but only after it has
            entered the Fisher EMA: the task loss ranks the weights although it does not train them.
        compress_fraction: longest share of the run spent compressing (before the holds); the masks freeze as
            soon as every constraint holds on the hard masks. 0.7 by default (the baselines' 0.5 before): on the
            10-epoch panel (5 models x 4 budgets x 3 seeds) a longer, gentler descent gained 1.6 to 8.8 points
            where minimax was weakest (synaptic_conv 0.05 and 0.002, fc 0.005 and 0.002, convsnn 0.002) and lost
            more than a point in two of twenty cells (tutorial_conv and synaptic_conv at 0.005); BENCHMARKS.md.
        allocation: ``global`` (params only), ``layerwise``, or ``auto`` (global when every constraint is params).
        lr_s, lr_y, lr_z: step sizes of s, y, z per compression phase.
        lr_log_z: under ``pacing: auto``, while a budget is exceeded z takes the larger of its additive step and a
            step in log space, ``z exp(min((lr_log_z / P) (R - B) / B, ln 10 / S))`` (B the stage's budget, S the
            steps per decade of density): the value of the marginal weight grows by thousands over a descent, and
            the additive step alone left joint minimax above the budget until the deadline on the last leg
            (BENCHMARKS.md, the panel). ``auto`` (the default): ``LOG_LR_Z`` = 30 under ``pacing: auto``, none under
            ``pacing: legacy`` (which has no ``S`` for the cap, so a number there is an error); 0: the additive
            step alone.
        y0, z0: initial duals.
        s_max: largest fraction of any target that may be pruned; by default ``1 - min_density * min_j B_j``,
            so no layer is cut below half the tightest budget (the magnitude ranking alone would otherwise empty
            a layer whose weights cost much more than the rest, killing the network).
        min_density: see ``s_max``. With ``importance: fisher`` a global ranking keeps this floor per layer too
            (each target's ``ceil((1 - s_max) n_l)`` most salient weights; see the module docstring).
        s_rate: trust region of s per compression phase under ``pacing: legacy`` (2: a layer goes from dense to
            empty in half a phase).
        nodes: intermediate budgets (fractions, decreasing, e.g. [0.25, 0.12]) at which the masks are held while
            the weights finetune. ``auto`` (the default): ``AUTO_NODES`` times the tightest budget, those below 1
            (0.05 and 0.02 for a 1 % budget); ``[]``: none.
        node_fraction: share of the compression phase spent at each node, at least (see *Pacing*; the holds are
            added to the phase: see :meth:`deadline`).
        normalize: unit of w^2 per target under ``importance: w2``: ``layer`` (its own mean square) or ``global``.
        sample_size: candidates per ranking above which thresholds come from a random sample (see
            :class:`MinimaxEngine`); 0 ranks every weight on every step.
        importance: what selection and allocation rank by: ``fisher`` (the default; loss-aware, see the module
            docstring) or ``w2``.
        pacing: ``auto`` (the default; see *Pacing*) or ``legacy``.
        output_floor: inputs every output unit keeps (default 1; 0: none).
        activity: ``rho_min`` of the activity constraints, a fraction of a spiking layer's dense firing rate below
            which its rate may not fall (:class:`rccsnn.activity.ActivityConstraints`: one dual per layer, a loss
            term through the surrogate gradient); 0: none. Default 0.1.
        activity_layers: which spiking layers are constrained: ``output`` (the default: the last spiking layer in
            registration order, the output neurons) or ``all``. Measured on ``benchmarks/panel_models.py``, 10
            epochs, seeds 0-2: without constraints 4 of 60 minimax runs ended with a silent output layer (synaptic
            conv at 0.005 and 0.002, tutorial conv at 0.002; all near chance); ``output`` at 0.1 ended none of the
            15 runs at those points silent and cost nothing measurable elsewhere (shipped convsnn at 0.002: 79.4 +-
            1.8 % against 79.1 +- 1.7 % without); ``all`` kept them firing too but pushed up hidden layers that
            were sparse for a reason: convsnn 0.002 71.0 +- 1.3 %, fully connected 0.002 15.5 +- 3.0 % against
            38.4 +- 3.4 % without (``output``: 32.6 +- 6.5 %). A silent hidden layer silences the output, whose dual
            then pushes back through the surrogate gradients of the layers before it.
        regrow: ``none`` (the default) or ``criticality``: when the masks are about to be held (at each node, and
            when they freeze), a budget-neutral swap regrows pruned inputs of the most critical units and drops as
            many of the least important kept weights, layer by layer
            (:class:`rccsnn.methods.criticality.CriticalityRegrowth`; never in the output floor's layer).
        finetune_step: ``sqrt_density`` (the default) or ``none``: while the frozen masks finetune, each pruned
            layer's optimizer step is scaled by ``density ** -0.5``, so that a layer left with few inputs per unit
            can still change its units' inputs at a useful rate in a short run
            (:class:`rccsnn.methods.stepsize.DensityStepSize`, which says why and what was measured).
        guarantee_rounds: see :class:`PruningMethod`.

    ``importance: w2, pacing: legacy, output_floor: 0, activity: 0, regrow: none, finetune_step: none`` is the engine
    as it was before these options, step for step.
    """

    name = "minimax"

    def __init__(self, schedule: str = "joint", compress_fraction: float = 0.7, allocation: str = "auto",
                 lr_s: float = 1.0, lr_y: float = 1.0, lr_z: float = 5.0, y0: float = 1.0, z0: float = 1.0,
                 lr_log_z: Union[str, float] = "auto", s_max: Optional[float] = None, min_density: float = 0.5,
                 s_rate: float = 2.0,
                 nodes: Union[str, Sequence[float]] = "auto", node_fraction: float = 0.1, normalize: str = "layer",
                 sample_size: int = 2 ** 14, importance: str = "fisher", pacing: str = "auto",
                 output_floor: int = 1, activity: float = 0.1, activity_layers: str = "output", regrow: str = "none",
                 finetune_step: str = "sqrt_density", decide: Union[str, Sequence[str]] = "sparsity",
                 bits_ladder: Union[str, Sequence[int]] = LADDER, min_T: int = 1, guarantee_rounds: int = 3) -> None:
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
        if pacing not in PACINGS:
            raise UserError(f"unknown pacing '{pacing}'; choices: {', '.join(PACINGS)}")
        if isinstance(lr_log_z, str):
            if lr_log_z != "auto":
                raise UserError(f"method option lr_log_z must be 'auto' or a finite number >= 0, got '{lr_log_z}'")
            lr_log_z = LOG_LR_Z if pacing == "auto" else 0.0
        elif pacing == "legacy" and lr_log_z != 0:
            raise UserError(f"method option lr_log_z needs pacing: auto (its cap is a decade of price per decade of "
                            f"density's steps, which pacing: legacy does not have); got {lr_log_z} with pacing: legacy")
        for key, value in (("lr_s", lr_s), ("lr_y", lr_y), ("lr_z", lr_z), ("y0", y0), ("z0", z0),
                           ("lr_log_z", lr_log_z), ("s_rate", s_rate), ("node_fraction", node_fraction)):
            if not (value >= 0 and math.isfinite(value)):
                raise UserError(f"method option {key} must be a finite number >= 0, got {value}")
        if s_max is not None and not 0.0 <= s_max <= 1.0:
            raise UserError(f"method option s_max must be in [0, 1], got {s_max}")
        if not 0.0 <= min_density <= 1.0:
            raise UserError(f"method option min_density must be in [0, 1], got {min_density}")
        if normalize not in ("layer", "global"):
            raise UserError(f"unknown normalize '{normalize}'; choices: layer, global")
        if importance not in IMPORTANCES:
            raise UserError(f"unknown importance '{importance}'; choices: {', '.join(IMPORTANCES)}")
        if isinstance(output_floor, bool) or not isinstance(output_floor, int) or output_floor < 0:
            raise UserError(f"method option output_floor must be an integer >= 0 (0: none), got {output_floor!r}")
        if isinstance(activity, bool) or not isinstance(activity, (int, float)) or not 0.0 <= activity <= 1.0:
            raise UserError(f"method option activity must be a fraction in [0, 1] (0: no activity constraints), "
                            f"got {activity!r}")
        if activity_layers not in ACTIVITY_LAYERS:
            raise UserError(f"unknown activity_layers '{activity_layers}'; choices: {', '.join(ACTIVITY_LAYERS)}")
        if regrow not in REGROWS:
            raise UserError(f"unknown regrow '{regrow}'; choices: {', '.join(REGROWS)}")
        if finetune_step not in STEP_RULES:
            raise UserError(f"unknown finetune_step '{finetune_step}'; choices: {', '.join(STEP_RULES)}")
        self.finetune_step = finetune_step
        chosen = [d.strip() for d in (decide.split(",") if isinstance(decide, str) else decide)]
        unknown = [d for d in chosen if d not in DECISIONS]
        if unknown or not chosen:
            raise UserError(f"method option decide lists what to decide, from {', '.join(DECISIONS)}; got {decide!r}")
        self.decide = tuple(d for d in DECISIONS if d in chosen)
        self.ladder = parse_ladder(bits_ladder)
        # Bits and time steps change what every layer costs, the first included: the whole network is the problem.
        self.whole_network = "bits" in self.decide or "timesteps" in self.decide
        if isinstance(min_T, bool) or not isinstance(min_T, int) or min_T < 1:
            raise UserError(f"method option min_T must be an integer >= 1, got {min_T!r}")
        self.min_T = int(min_T)
        self._next_decision = 0  # the step of the next bit-width and time-step decision
        self.hyper = dict(lr_s=lr_s, lr_y=lr_y, lr_z=lr_z, y0=y0, z0=z0, lr_log_z=float(lr_log_z),
                          normalize=normalize, s_rate=s_rate)
        if sample_size < 0:
            raise UserError(f"method option sample_size must be >= 0 (0: rank every weight), got {sample_size}")
        self.s_max, self.min_density, self.sample_size = s_max, min_density, int(sample_size)
        self.nodes_auto = isinstance(nodes, str)  # resolved in start(), once the budgets are known
        self.nodes: List[float] = [] if self.nodes_auto else [float(b) for b in nodes]
        self.node_fraction = node_fraction
        self.importance, self.pacing, self.output_floor = importance, pacing, int(output_floor)
        if "bits" in self.decide and importance != "fisher":
            raise UserError("decide: bits prices a layer's quantization noise with the Fisher information; "
                            "it needs importance: fisher")
        self.rho_min, self.activity_layers, self.regrow = float(activity), activity_layers, regrow
        self.activity: Optional[Any] = None  # rccsnn.activity.ActivityConstraints when rho_min > 0
        self.regrowth: Optional[Any] = None  # rccsnn.methods.criticality.CriticalityRegrowth for regrow: criticality
        self.regrown = 0
        self.stage = 0
        self.hold = 0  # steps left of the current hold at a node
        self._said_fallback: set = set()

    def check(self, constraints) -> None:
        if self.allocation == "global" and any(c.resource.name != "params" for c in constraints):
            raise UserError("allocation 'global' ranks all weights as equals, so it needs params-only "
                            "constraints; use allocation layerwise for weighted resources")

    # --------------------------------------------------------------------------------------------- setup
    def bind(self, problem) -> None:
        super().bind(problem)
        if "timesteps" in self.decide:
            self.check_steps()

    def output_layer(self) -> Optional[int]:
        """Index of the target that feeds the network's outputs: the last weight layer of the network (in module
        registration order), when it is a target; None otherwise."""
        from rccsnn.snn import WEIGHT_LAYERS

        net = getattr(getattr(self, "problem", None), "net", None)
        layers = [m for m in net.modules() if isinstance(m, WEIGHT_LAYERS)] if net is not None else []
        if not layers:
            return len(self.targets) - 1 if self.targets else None
        return next((l for l, t in enumerate(self.targets) if t.module is layers[-1]), None)

    def plan(self) -> Dict[str, Any]:
        """The pacing of this run: ``decade_steps`` (None: the linear trust region ``s_rate``), the ``nodes``, the
        steps of one ``hold`` and the Fisher EMA's ``fisher_steps`` (see the class docstring for the rule)."""
        B = float(self.budgets.min())
        P = max(self.compress_steps, 1)
        nodes = auto_nodes(B) if self.nodes_auto else list(self.nodes)
        per_epoch = max(int(getattr(self.loop, "steps_per_epoch", 0) or 0), 1)
        fisher_steps = float(max(1, min(per_epoch, P // 10)))
        if self.pacing == "legacy":
            return dict(decade_steps=None, nodes=nodes, hold=max(int(self.node_fraction * P), 1),
                        fisher_steps=fisher_steps)
        hold = max(int(self.node_fraction * P), min(per_epoch, int(MAX_HOLD * P)), 1)
        return dict(decade_steps=decade_steps(P, B), nodes=nodes, hold=hold, fisher_steps=fisher_steps)

    def start(self) -> None:
        self.check(self.constraints)
        allocation = self.allocation
        if allocation == "auto":
            allocation = "global" if all(c.resource.name == "params" for c in self.constraints) else "layerwise"
        s_max = self.s_max if self.s_max is not None else 1.0 - self.min_density * float(self.budgets.min())
        plan = self.plan()
        self.nodes, self._hold_steps = plan["nodes"], plan["hold"]
        self._next_decision = self._hold_steps
        floor_layer = self.output_layer() if self.output_floor > 0 else None
        fixed = [t.name in self.problem.fixed or "sparsity" not in self.decide for t in self.targets]
        if all(fixed) and "bits" not in self.decide and "timesteps" not in self.decide:
            raise UserError("every layer is fixed (targets.exclude_first and the patterns leave nothing to prune)")
        if "bits" in self.decide:
            set_bits(self.problem.net, {t.name: FLOAT_BITS for t in self.targets})
        self.engine = MinimaxEngine(self.targets, len(self.constraints), allocation=allocation,
                                    steps=self.compress_steps, s_max=s_max, sample_size=self.sample_size,
                                    importance=self.importance, fisher_steps=plan["fisher_steps"],
                                    decade_steps=plan["decade_steps"], floor_layer=floor_layer,
                                    floor_per_row=self.output_floor, layer_floor=self.importance == "fisher",
                                    fixed=fixed, **self.hyper)
        self.engine.set_masks()
        self.scale = self.engine.scale
        self.stepsize = DensityStepSize(self.targets, STEP_RULES[self.finetune_step])
        if self.rho_min > 0:
            from rccsnn.activity import ActivityConstraints, spiking_layers

            layers = spiking_layers(self.problem.net)
            if self.activity_layers == "output":
                layers = layers[-1:]  # the last spiking layer in registration order: the output neurons
            self.activity = ActivityConstraints(self.problem.net, rho_min=self.rho_min, layers=layers)
            # At setup, before any state is loaded: the weights are the dense model's here.
            self.activity.calibrate(self.measure_stats)
            self.activity.start(self.compress_steps)
        if self.regrow == "criticality":
            from rccsnn.methods.criticality import CriticalityRegrowth

            self.regrowth = CriticalityRegrowth(self.problem.net, self.targets)
            self.regrowth.record(False)

    # --------------------------------------------------------------------------------------------- hooks
    def before_forward(self, step: int) -> None:
        if self.regrowth is not None:
            self.regrowth.record(self.phase == "compress")
        if self.activity is not None:
            self.activity.before_forward(step)

    def loss_term(self, step: int) -> Optional[Tensor]:
        return self.activity.loss_term(step) if self.activity is not None else None

    def after_backward(self, step: int) -> None:
        # Before the sequential schedule drops the targets' task gradients: under sequential the Fisher (and the
        # regrowth's gradient statistics) still come from the task loss, which then ranks the weights although it
        # does not train them. Nothing is folded in while the masks are held or frozen: pruned weights get no
        # gradient then, and their saliency would decay to zero for want of evidence, not because of it.
        if self.phase == "compress" and self.hold == 0:
            self.engine.accumulate()
            if self.regrowth is not None:
                self.regrowth.observe()
        super().after_backward(step)
        if self.phase == "finetune":
            self.stepsize.before_step()

    def after_step(self, step: int) -> None:
        self.stepsize.after_step()  # the step of a finetuning step only (nothing was kept otherwise)
        super().after_step(step)
        if self.activity is not None:
            self.activity.after_step(step)

    def floors(self) -> List[int]:
        """The engine's own limit (``s_max``) as the projections' floor: if the phase ends before the budget holds,
        or a data-dependent budget fails on the final measurement, they prune the other layers before emptying one."""
        return [t.n if bool(fixed) else math.ceil((1.0 - self.engine.s_max) * t.n - 1e-9)
                for t, fixed in zip(self.targets, self.engine.fixed)]

    def deadline(self) -> int:
        """A hold at a node stops the compression clock: the descent keeps all of ``compress_steps`` (the rates are
        per ``compress_steps``), the holds come on top, out of the finetuning phase, and never past the run's end."""
        return min(self.compress_steps + self.stage * self.hold_steps(), self.loop.total_steps)

    def hold_steps(self) -> int:
        """Steps of one hold at a node (every node reached so far has started one: ``stage`` of them)."""
        return self._hold_steps

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

        def over() -> bool:
            return not bool((resource_values(costs, self.dense, self.engine.kept) <= budgets).all())

        # Widths and T follow the prices only while the stage's budget is not met: once it holds, the masks hold
        # or freeze, and a lower width or T would give up accuracy for nothing (z falls slowly once R < B).
        if ("bits" in self.decide or "timesteps" in self.decide) and step >= self._next_decision and over():
            self._next_decision = step + self.hold_steps()
            if "bits" in self.decide:
                self.decide_bits()
                costs = self.costs()  # at the widths just decided
            if "timesteps" in self.decide and over():
                self.decide_steps()
                costs = self.costs()  # at the T just decided
        self.last = self.engine.step(costs, self.dense, budgets, self.loop.lr, final=self.budgets)
        for l in self.engine.fallback:
            if l not in self._said_fallback:
                self._said_fallback.add(l)
                self.say(f"{self.targets[l].name} has no gradient history: ranked by its magnitude, w^2 x "
                         f"{self.engine.fallback_unit:.3g} (the mean Fisher of the other targets, weighted by w^2)")
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
        self._regenerate()
        apply_masks(self.targets)
        set_straight_through(self.targets, False)

    @torch.no_grad()
    def decide_bits(self) -> Dict[str, int]:
        """Set every target's weight bit width to the ladder value that the engine's current prices favour.

        The engine's equilibrium prices weights and resources in one currency: a weight is kept while ``y`` times its
        saliency (``F w^2`` in the engine's unit ``U``) exceeds ``sum_j z_j c_hat_j``, its normalised cost
        ``c_hat_j = c_j N / C_j`` (``C_j`` the targets' cost if dense). Bits are priced the same way: layer l at
        ``b`` bits costs the task loss ``y sum_i F_i (q_b(w_i) - w_i)^2 / U`` (Optimal Brain Damage's second-order
        estimate, applied to the quantization error instead of removal), and spends ``sum_j z_j C_jl(b) N / C_j``
        of the budgets (``C_jl(b)`` the cost of its kept weights at ``b`` bits). Each layer takes the ladder value
        with the smallest sum: a separable, exact minimisation (the ladder is short), where a continuous
        relaxation of b would need rounding, and a rounding that breaks a budget. Widths go down as the duals
        rise and back up if they fall, one rung per decision; the sparsity step then sees the costs at the new
        widths, so the two decisions share the budget at equal marginal prices. The first decision waits one hold
        (the duals start at ``y0``, ``z0``, not at prices), decisions are made only while the stage's budget is
        exceeded, and the widths freeze with the masks.

        Returns:
            layer name -> bits chosen (32: float32).
        """
        e = self.engine
        if e.fisher is None or e.unit is None or not all(e.seen) or e.y <= 0:
            return dict(zip((t.name for t in self.targets), target_bits(self.targets)))
        stats = self.current_stats().at_steps(self.steps())
        current = self.costs()  # [J, L] at the current widths
        totals = (current * self.n).sum(1).clamp_min(1e-300)
        price = e.z * self.n.sum() / totals  # [J] per unit of each resource, in the engine's currency
        scores = torch.zeros(len(self.ladder), len(self.targets), dtype=torch.float64)
        unit = e.unit * e.inv  # the Fisher buffers hold F * inv
        for i, b in enumerate(self.ladder):
            at_b = stats.with_bits([b] * len(self.targets))
            spend = torch.tensor([[float(cost_sum(t, c.resource.tap_costs(at_b, l), t.mask.mask))
                                   for l, t in enumerate(self.targets)] for c in self.constraints],
                                 dtype=torch.float64).reshape(len(self.constraints), len(self.targets))
            for l, t in enumerate(self.targets):
                w = t.weight.detach() * t.mask.mask
                noise = float((e.fisher[l] * (quantize(w, b) - w).pow(2)).sum()) / unit
                scores[i, l] = e.y * noise + float((price * spend[:, l]).sum())
        # A trust region, as for s: a layer moves one rung of the ladder per decision (a decision per hold's steps,
        # about an epoch), so the weights adapt to each width before the next; 32 -> 2 bits takes six decisions.
        now = self._rungs()
        best = scores.argmin(0).tolist()
        rung = [r + (b > r) - (b < r) for r, b in zip(now, best)]
        chosen = {t.name: self.ladder[r] for t, r in zip(self.targets, rung)}
        if rung != now:
            set_bits(self.problem.net, chosen)
            self.say("bits " + ", ".join(f"{name}:{b}" for name, b in chosen.items()))
        return chosen

    def _rungs(self) -> List[int]:
        """``[L]`` each target's current width as an index into the ladder (a width off it counts as the top rung)."""
        return [self.ladder.index(b) if b in self.ladder else len(self.ladder) - 1 for b in target_bits(self.targets)]

    def check_steps(self) -> None:
        """``decide: timesteps`` needs the run's time steps, an encoding that makes them, and ``min_T <= T``."""
        time = getattr(self.problem, "time", None)
        if time is None:
            raise UserError("decide: timesteps needs the run's time steps (Problem.time); compress() passes them")
        if time.spec.encoding == "none":
            raise UserError("decide: timesteps shortens the encoding of static inputs, but this model reads event "
                            "data (encoding none) binned at its own T; rebin the events (data.frames) instead")
        if self.min_T > int(time.spec.T):
            raise UserError(f"method option min_T ({self.min_T}) exceeds the model's T ({time.spec.T})")

    @torch.no_grad()
    def decide_steps(self) -> int:
        """Lower the network's time steps by one when that costs the task loss less than saving as much of the
        budgets another way (pruning, a rung less of every width); returns T (the new one, or the old).

        Every data-dependent cost is a sum over the steps, so ``T -> T - 1`` saves ``R_j / T`` of each such budget
        (``saved_j``, closed form at the current rates). What it costs the loss is measured, not estimated:
        ``dL_T = L(T - 1) - L(T)`` on the probe set (:class:`rccsnn.methods.base.TimeSteps`). The engine's saliency
        cannot price it: on the shipped digits convsnn the Fisher estimate ``F w^2 / 2`` of a perturbation was
        600 to 300 000 times below its measured loss change (docs/method.md), a ranking good across weights and
        widths but no exchange rate into loss. So T is priced against the marginal price of the budget where the
        engine sets it, at the sparsity margin: the kept weights of least importance per priced cost
        (``sum_j z_j c_ij / C_j``, the duals as prices), as many as save the same priced amount
        ``sum_j z_j saved_j``, are masked for one probe, ``dL_prune = L(T, without them) - L(T)``; with bits decided,
        every width one rung lower is probed too, its loss scaled to the same saving (``dL_bits x saved_T /
        saved_bits``). Fewer steps win when ``dL_T`` is at most the cheapest of these (a loss that falls counts as
        0): equal marginal loss per unit of budget, the condition at which the primal-dual equilibrium stops trading
        one axis for another. A step of half of T is weighed first, then a quarter, then a single one (the trust
        region of T, as one rung is that of the widths). Without sparsity or bits among the decisions there is
        nothing to trade against: T falls by the smallest such step that meets the stage's budget, else the largest,
        down to ``min_T``.
        Decisions are made as the bit widths' are: one per hold, only while the stage's budget is exceeded, and T
        freezes with the masks.
        """
        T = int(self.problem.time.spec.T)
        # The probes are averaged over the processes (probe), so every process takes the same branch; process 0's
        # choice is the run's all the same (every process calls this at the same step, so every process takes part).
        new, note = distributed.broadcast_object(self._choose_steps(T))
        if new != T:
            self.problem.time.spec.T = new
            self.say(f"time steps {T} -> {new}{note}")
        return new

    @torch.no_grad()
    def _choose_steps(self, T: int) -> tuple:
        """``(T to run at, why)`` by the rule of :meth:`decide_steps`."""
        if T <= self.min_T:
            return T, ""
        kept = self.engine.kept
        now = resource_values(self.costs(T), self.dense, kept)
        # The trust region of T: half of it first (16 -> 8 halves every data-dependent cost, as a rung of the widths,
        # 16 -> 8 bits, halves an add's), then a quarter, then one step; one step alone would take T0 = 16 a decision
        # per step, about an epoch each.
        sizes = sorted({min(d, T - self.min_T) for d in (T // 2, math.ceil(T / 4), 1) if d >= 1}, reverse=True)
        saved = {d: now - resource_values(self.costs(T - d), self.dense, kept) for d in sizes}
        budgets = self.stage_budgets()
        if not bool((saved[1][now > budgets] > 0).any()):
            return T, ""  # no exceeded budget depends on the time steps
        if "sparsity" not in self.decide and "bits" not in self.decide:
            # Nothing to trade against: the smallest step that meets the stage's budget, else the largest.
            step = next((d for d in reversed(sizes) if bool((now - saved[d] <= budgets).all())), sizes[0])
            return T - step, ""
        z = self.engine.z.clamp_min(0.0)
        price = z if float(z.sum()) > 0 else torch.ones_like(z)
        base = self.probe(T)
        lower = self._probe_lower_bits(T, price) if "bits" in self.decide else None
        for d in sizes:
            value = float((price * saved[d]).sum())
            cost_T = self.probe(T - d) - base
            # What saving as much of the budget another way costs the loss (a loss that falls costs nothing).
            others = {}
            if "sparsity" in self.decide:
                others["pruning as much"] = self._probe_pruned(value, price) - base
            if lower is not None:
                others["every width a rung lower"] = (lower[0] - base) * value / lower[1]  # scaled to this saving
            if not others or max(cost_T, 0.0) <= min(max(c, 0.0) for c in others.values()):
                return T - d, f" (probe loss +{cost_T:.4g}; for as much of the budget: " + ", ".join(
                    f"{name} +{c:.4g}" for name, c in others.items()) + ")"
        return T, ""

    def probe(self, T: int) -> float:
        """The probe loss at ``T`` steps (:class:`rccsnn.methods.base.TimeSteps`), the mean over the processes of a
        distributed run: float sums may differ between devices, and every process must take the same branch of a
        decision, each branch having its own collectives (the firing rates' average)."""
        loss = torch.tensor(float(self.problem.time.probe_loss(T)), dtype=torch.float64)
        return float(distributed.all_reduce_mean(loss))

    @torch.no_grad()
    def _candidates(self, prices: Sequence[Tensor], protect: Optional[Tensor], skip_fixed: bool = False) -> tuple:
        """``(scores, costs, where)`` of the kept weights that cost something: per target (fixed ones left out with
        ``skip_fixed``) the flat indices of its kept weights but the output floor's ``protect`` ed ones, their
        importance per cost (the engine's score over ``prices[l]``, each weight's flat cost) and that cost; pruning
        what costs nothing helps nothing."""
        e = self.engine
        scores, costs, where = [], [], []
        for l, t in enumerate(self.targets):
            if skip_fixed and bool(e.fixed[l]):
                continue
            mask = t.mask.mask.flatten()
            if l == e.floor_layer and protect is not None:
                mask = mask.clone()
                mask[protect] = 0.0  # protected: not a candidate
            idx = torch.nonzero(mask, as_tuple=False).flatten()
            price = prices[l][idx.cpu()]
            idx, price = idx[(price > 0).to(idx.device)], price[price > 0]
            if not len(idx):
                continue
            scores.append(e._scores(l, idx).double().cpu() / price)
            costs.append(price)
            where.append((l, idx))
        return scores, costs, where

    @torch.no_grad()
    def _probe_lower_bits(self, T: int, price: Tensor) -> Optional[tuple]:
        """``(probe loss, priced saving)`` with every target one rung lower on the ladder than now (None when none
        can go lower or it saves nothing); the widths are restored after."""
        now = target_bits(self.targets)
        lower = [min(b, self.ladder[r - 1]) if r > 0 else b for b, r in zip(now, self._rungs())]  # never a rung up
        if lower == now:
            return None
        kept = self.engine.kept
        before = resource_values(self.costs(T), self.dense, kept)
        set_bits(self.problem.net, {t.name: b for t, b in zip(self.targets, lower)})
        try:
            saved = float((price * (before - resource_values(self.costs(T), self.dense, kept))).sum())
            loss = self.probe(T)
        finally:
            set_bits(self.problem.net, {t.name: b for t, b in zip(self.targets, now)})
        return (loss, saved) if saved > 0 else None

    @torch.no_grad()
    def _probe_pruned(self, value: float, price: Tensor) -> float:
        """The probe loss at the current T with the kept weights of least importance per priced cost masked, as many
        as cost ``value`` (in ``sum_j price_j c_ij / C_j``, the budgets' fractions); the masks are restored after.
        Fixed targets and the output floor's protected weights are not candidates."""
        e = self.engine
        e._prepare(force=True)
        weight_costs = self.weight_costs()
        priced = [sum(float(p) / float(d) * per_weight(t, wc[l])
                      for p, d, wc in zip(price.tolist(), self.dense.tolist(), weight_costs))
                  for l, t in enumerate(self.targets)]
        scores, costs, where = self._candidates(priced, e._prot if e.floor_layer is not None else None,
                                                skip_fixed=True)
        if not where:
            return float("inf")  # nothing left to prune: fewer steps are the only saving
        held = [t.mask.mask.clone() for t in self.targets]
        prune_cheapest(self.targets, where, scores, costs, value)
        try:
            return self.probe(int(self.problem.time.spec.T))
        finally:
            for t, m in zip(self.targets, held):
                t.mask.mask.copy_(m)

    def _regenerate(self) -> None:
        """``regrow: criticality``: a budget-neutral swap when the masks are about to be held (at a node, and when
        they freeze): regrow pruned inputs of the most critical units, drop as many of the least important kept
        weights, layer by layer (never in the output floor's layer, whose floor it could drop)."""
        if self.regrowth is None:
            return
        floor = self.engine.floor_layer
        self.regrown += self.regrowth.regenerate(targets=[t for l, t in enumerate(self.targets) if l != floor])

    def freeze(self) -> None:
        self._regenerate()
        if self.regrowth is not None:
            self.regrowth.record(False)
        if self.engine.fisher is not None:
            # The guarantee rounds of finalize() project with base.project, per-layer units of w^2: the inverse mean
            # Fisher of each layer makes w^2 / scale_l its mean saliency per unit of w^2.
            self.scale = torch.stack([1.0 / f.double().mean().clamp_min(1e-30) for f in self.engine.fisher]).cpu()
        super().freeze()
        if self.regrowth is not None:
            self.say(f"criticality regrowth swapped {self.regrown} weights")

    @torch.no_grad()
    def project(self, limits: Sequence[float], floors: Optional[Sequence[int]] = None) -> int:
        """:func:`rccsnn.methods.base.project` with the engine's importance: prune the kept weights of lowest
        importance per cost (``F w^2 / c`` or ``w^2 / (e_l c)``) until every limit holds, keeping each layer's
        ``floors`` and the output floor while the limits can be met otherwise (the floors go first, then the
        output floor). Returns the number of weights pruned."""
        e = self.engine
        e._prepare(force=True)
        protect = e._prot if e.floor_layer is not None else None
        weight_costs = self.weight_costs()  # each weight priced by its own cost
        limit = torch.tensor(list(limits), dtype=torch.float64) * (1.0 - 1e-12)
        pruned = 0
        for _ in range(100 * len(limit) + 100):
            kept = kept_counts(self.targets)
            excess = kept_mean_costs(self.targets, weight_costs).mul(kept).sum(1) - limit
            if bool((excess <= 0).all()):
                return pruned
            j = int(torch.argmax(excess / limit.abs().clamp_min(1e-300)))
            scores, cost, where = self._candidates(
                [per_weight(t, weight_costs[j][l]) for l, t in enumerate(self.targets)], protect)
            if floors is not None:  # only the weights below the layer's floor are candidates
                for i, (l, idx) in enumerate(where):
                    small = torch.argsort(scores[i])[:max(int(kept[l]) - int(floors[l]), 0)]
                    where[i], scores[i], cost[i] = (l, idx[small.to(idx.device)]), scores[i][small], cost[i][small]
            if sum(len(x) for x in scores) == 0:
                if floors is not None:
                    floors = None  # every layer is at its floor: the limits come first
                    continue
                if protect is not None:
                    protect = None  # then the output floor
                    continue
                return pruned  # nothing kept costs anything: what is over the limit is no weight's (memory's scales)
            pruned += prune_cheapest(self.targets, where, scores, cost, excess[j].item())
        raise RuntimeError("projection did not converge")  # unreachable: each round prunes at least one weight

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
        if self.activity is not None:
            scalars.update(self.activity.scalars())
        if self.regrowth is not None:
            scalars["regrown/total"] = float(self.regrown)
        return scalars

    def progress(self) -> Dict[str, str]:
        out = super().progress()
        out["y"] = f"{self.engine.y:.2g}"
        out.update({f"z_{c.resource.name}": f"{z:.2g}" for c, z in zip(self.constraints, self.engine.z.tolist())})
        return out

    def finalize(self, loop) -> None:
        super().finalize(loop)
        if self.regrowth is not None:
            self.regrowth.close()
        if self.activity is not None:
            self.activity.close()

    def state_dict(self) -> Dict[str, Any]:
        out = {**super().state_dict(), "engine": self.engine.state_dict(), "stage": self.stage, "hold": self.hold,
               "bits": target_bits(self.targets), "next_decision": self._next_decision, "T": self.steps()}
        if self.activity is not None:
            out["activity"] = self.activity.state_dict()
        if self.regrowth is not None:
            out.update(regrowth=self.regrowth.state_dict(), regrown=self.regrown)
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.engine.load_state_dict(state["engine"])
        self.stage, self.hold = state["stage"], state["hold"]
        if "bits" in self.decide and state.get("bits") is not None:
            set_bits(self.problem.net, {t.name: int(b) for t, b in zip(self.targets, state["bits"])})
        if "bits" in self.decide or "timesteps" in self.decide:
            self._next_decision = int(state.get("next_decision", state.get("next_bits", 0)))  # next_bits: before T
        if "timesteps" in self.decide:
            self.problem.time.spec.T = int(state["T"])
        if self.activity is not None and state.get("activity") is not None:
            self.activity.load_state_dict(state["activity"])
        if self.regrowth is not None and state.get("regrowth") is not None:
            self.regrowth.load_state_dict(state["regrowth"])
            self.regrown = int(state["regrown"])
        if self.hold > 0:
            set_straight_through(self.targets, False)
