"""``magnitude``: one-shot pruning of the smallest weights down to the budget, then finetuning.

Smallest ``|w|`` over all targets at once for params (what ``torch.nn.utils.prune.global_unstructured`` does), and
smallest ``w^2 / c_l`` (importance per unit of cost) for the other resources, through the same exact projection
that makes every method's budget a guarantee. The whole run is finetuning with frozen masks.
"""
from __future__ import annotations

from rccsnn.methods.base import METHODS, PruningMethod, project


@METHODS.register("magnitude")
class Magnitude(PruningMethod):
    """One-shot magnitude pruning. ``schedule`` is accepted for a uniform interface; there is no compression phase."""

    name = "magnitude"

    def __init__(self, schedule: str = "joint", guarantee_rounds: int = 3) -> None:
        super().__init__(schedule=schedule, compress_fraction=0.0, guarantee_rounds=guarantee_rounds)

    def start(self) -> None:
        project(self.targets, self.weight_costs(), self.limits().tolist())
