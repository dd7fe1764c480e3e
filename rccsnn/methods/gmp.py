"""``gmp``: gradual magnitude pruning (Zhu and Gupta 2017) on the same trainer.

Over the compression phase the resource follows a cubic schedule from dense to the budget,

    R_t = B + (1 - B) * (1 - t / t_n)^3 ,

pruning the smallest ``w^2 / c_l`` among the kept weights every ``1 / updates`` of the phase (masks only
shrink); then the masks freeze and the remaining epochs finetune.
"""
from __future__ import annotations

import torch

from rccsnn.errors import UserError
from rccsnn.methods.base import METHODS, PruningMethod, project


def cubic_budget(budget: torch.Tensor, progress: float) -> torch.Tensor:
    """Resource allowed at ``progress`` in [0, 1] of the phase: 1 at 0, ``budget`` at 1."""
    p = min(max(progress, 0.0), 1.0)
    return budget + (1.0 - budget) * (1.0 - p) ** 3


@METHODS.register("gmp")
class GMP(PruningMethod):
    """Gradual magnitude pruning.

    Args:
        schedule: ``joint`` or ``sequential`` (weights' task update off while pruning).
        compress_fraction: share of the run over which pruning ramps up.
        updates: pruning events over the phase.
    """

    name = "gmp"

    def __init__(self, schedule: str = "joint", compress_fraction: float = 0.5, updates: int = 20,
                 guarantee_rounds: int = 3) -> None:
        super().__init__(schedule=schedule, compress_fraction=compress_fraction, guarantee_rounds=guarantee_rounds)
        if updates < 1:
            raise UserError(f"method option updates must be at least 1, got {updates}")
        self.updates = updates

    def compress_step(self, step: int) -> None:
        interval = max(self.compress_steps // self.updates, 1)
        if (step + 1) % interval == 0:
            budgets = cubic_budget(self.budgets, (step + 1) / self.compress_steps)
            project(self.targets, self.weight_costs(), (budgets * self.dense).tolist())
