"""Step sizes that follow a layer's density while the pruned network finetunes (minimax's ``finetune_step``).

Adam moves every weight by about the learning rate per step, whatever its gradient's size, so a unit's input moves
per step by roughly ``lr x (number of its inputs)``: a layer pruned to density ``d`` has ``d`` times fewer inputs
per unit and changes its units' inputs ``d`` times more slowly than it did dense. The few weights left must grow
(a unit that kept 3 of 128 inputs needs them much larger to reach its threshold), and at the learning rate the
dense network was trained with, a short finetuning cannot get there: on the panel's fully connected SNN at a 1 %
weights budget and 10 epochs, minimax reached 80 % with the run's learning rate (1e-3) and 95 % with ten times that,
with the same masks policy (BENCHMARKS.md, "The panel").

So each pruned layer's step is scaled by ``d ** -alpha`` (``d`` its kept fraction): ``alpha = 1`` restores the dense
rate of change of a unit's input exactly (the fan-in rule of maximal-update parametrisation for Adam) and was
unstable at the smallest budgets (the shipped convsnn at 0.002: 72.7 +- 14.5 % over three seeds); ``alpha = 0.5``,
the rule for updates uncorrelated with the inputs, was stable (92.0 +- 2.9 %, against 79 % without scaling). The
scaling is exact for Adam: ``w <- w_old + f (w - w_old)`` after the optimizer's step is a step of ``f x lr`` (its
weight decay included).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from rccsnn.masks import Target

#: The rules, by name: the exponent ``alpha`` of ``density ** -alpha`` (``none``: every layer at the run's rate).
STEP_RULES = {"none": 0.0, "sqrt_density": 0.5}


class DensityStepSize:
    """Scale each target's optimizer step by ``density ** -alpha`` (``density`` the layer's kept fraction).

    Call :meth:`before_step` after backward, before ``optimizer.step()`` (it keeps a copy of the targets' weights,
    one tensor per target, the size of the weights) and :meth:`after_step` after it (it stretches the step and
    drops the copy). Layers at density 1 are skipped.
    """

    def __init__(self, targets: Sequence[Target], alpha: float) -> None:
        self.targets = list(targets)
        self.alpha = float(alpha)
        self._before: Optional[List[Tuple[Tensor, Tensor, float]]] = None

    def factors(self) -> List[float]:
        """``[L]`` the step factor of each target, ``density ** -alpha`` (1 for a dense or empty layer)."""
        out = []
        for t in self.targets:
            d = float(t.mask.mask.mean())
            out.append(d ** -self.alpha if 0.0 < d < 1.0 else 1.0)
        return out

    @torch.no_grad()
    def before_step(self) -> None:
        if self.alpha == 0.0:
            return
        self._before = [(t.weight, t.weight.detach().clone(), f)
                        for t, f in zip(self.targets, self.factors()) if f != 1.0]

    @torch.no_grad()
    def after_step(self) -> None:
        if not self._before:
            return
        for w, old, f in self._before:
            w.sub_(old).mul_(f).add_(old)  # w_old + f (w - w_old)
        self._before = None
