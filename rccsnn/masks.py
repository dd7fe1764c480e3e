"""Which weights can be pruned (targets), how a mask is applied (a parametrization), and ``bake()``.

A mask lives as a ``torch.nn.utils.parametrize`` parametrization of the module's ``weight``: the forward pass sees
``W * M``, the stored ``W`` is untouched (so a pruned weight can grow back), and the mask is a buffer, so the
state_dict round-trips. ``bake()`` is the only way to make pruning permanent: it writes ``W * M`` into a plain
``weight`` and removes the parametrization (parametrized modules cannot be pickled).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rccsnn.errors import UserError
from rccsnn.snn import WEIGHT_LAYERS


@dataclass(frozen=True, eq=False)
class Target:
    """One prunable weight tensor.

    Attributes:
        name: module path in the network (``"features.3.0"``).
        module: the Conv/Linear module that owns ``weight``.
        shape: shape of the weight.
        n: number of weights.
    """

    name: str
    module: nn.Module
    shape: tuple
    n: int

    @property
    def weight(self) -> Tensor:
        """The stored (unmasked) weight parameter."""
        if parametrize.is_parametrized(self.module, "weight"):
            return self.module.parametrizations.weight.original
        return self.module.weight

    @property
    def mask(self) -> Optional["Mask"]:
        """The weight's :class:`Mask` (its first parametrization; a quantizer, if any, comes after it)."""
        if parametrize.is_parametrized(self.module, "weight"):
            return next((p for p in self.module.parametrizations.weight if isinstance(p, Mask)), None)
        return None

    def nonzero(self) -> int:
        """Weights that are really nonzero in the forward pass (mask and stored value both)."""
        with torch.no_grad():
            return int(torch.count_nonzero(self.module.weight))


def _matches(name: str, module: nn.Module, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or type(module).__name__ == p for p in patterns)


def find_targets(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    exclude_first: bool = True,
) -> List[Target]:
    """The prunable weights of ``model``: Conv1d/2d/3d and Linear weights, in registration order.

    Args:
        include: if given, only modules whose name matches one of these glob patterns (``"classifier.*"``) or
            whose type name equals one (``"Linear"``) are targets.
        exclude: modules matching any of these are not targets.
        exclude_first: leave the first weight layer dense (it sees the analog input; as in the reference).
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    if exclude_first and layers:
        layers = layers[1:]
    if include:
        layers = [(n, m) for n, m in layers if _matches(n, m, include)]
    layers = [(n, m) for n, m in layers if not _matches(n, m, exclude)]
    if not layers:
        raise UserError("no prunable layers left after include/exclude (and exclude_first)")
    return [Target(name=n, module=m, shape=tuple(m.weight.shape), n=m.weight.numel()) for n, m in layers]


class _StraightThrough(torch.autograd.Function):
    """Forward ``w * m``; backward passes the whole gradient to ``w`` (so pruned weights can regrow)."""

    @staticmethod
    def forward(ctx, w: Tensor, m: Tensor) -> Tensor:
        return w * m

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class Mask(nn.Module):
    """Parametrization ``W -> W * M`` with a binary mask buffer of W's shape.

    Args:
        shape: the weight's shape.
        straight_through: pass gradients to masked weights too (compression phase); otherwise masked weights get
            zero gradient (finetuning with frozen masks).
    """

    def __init__(self, shape: torch.Size, straight_through: bool = True, device=None) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.straight_through = straight_through

    def forward(self, w: Tensor) -> Tensor:
        if self.straight_through and torch.is_grad_enabled():
            return _StraightThrough.apply(w, self.mask)
        return w * self.mask

    def right_inverse(self, w: Tensor) -> Tensor:
        return w


def attach_masks(targets: Sequence[Target], straight_through: bool = True) -> None:
    """Give every target a :class:`Mask` (all ones) unless it has one already, always as the weight's first
    parametrization: a quantizer already there is put back after it, so that it quantizes the masked weight (a pruned
    weight stays 0, and the scale comes from the weights that are kept)."""
    for t in targets:
        if t.mask is None:
            after = []
            if parametrize.is_parametrized(t.module, "weight"):  # e.g. a FakeQuant (rccsnn.quant)
                after = list(t.module.parametrizations.weight)
                parametrize.remove_parametrizations(t.module, "weight", leave_parametrized=False)
            parametrize.register_parametrization(
                t.module, "weight", Mask(t.shape, straight_through, device=t.module.weight.device)
            )
            for p in after:
                parametrize.register_parametrization(t.module, "weight", p)


def set_straight_through(targets: Sequence[Target], on: bool) -> None:
    for t in targets:
        if t.mask is not None:
            t.mask.straight_through = on


@torch.no_grad()
def apply_masks(targets: Sequence[Target]) -> None:
    """Zero the stored weights where the mask is 0 (the forward pass is unchanged)."""
    for t in targets:
        if t.mask is not None:
            t.weight.mul_(t.mask.mask)


def bake(model: nn.Module) -> nn.Module:
    """Make every mask permanent: ``weight = W * M`` as a plain parameter, parametrizations removed."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def density(targets: Sequence[Target]) -> List[float]:
    """Fraction of nonzero weights per target."""
    return [t.nonzero() / t.n for t in targets]
