"""The architecture registry and :func:`build_model`.

Every architecture is a registered class (or function) whose signature says what it takes::

    Arch(input_shape: (C, H, W), num_classes: int, neuron: NeuronConfig, /, *, <arch args with types and defaults>)

The first three, fixed by the data set and the neuron settings, are positional-only; the architecture's own
arguments (a recipe's ``model.args``, a checkpoint's ``arch_args``) are keyword-only, so :func:`build_model` checks
their names and types against the signature before anything is built. Every network runs in multi-step mode:
input ``[T, B, C, H, W]`` -> output ``[T, B, num_classes]`` (spikes or voting rates).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

from torch import nn

from rccsnn.config import typed_kwargs
from rccsnn.errors import UserError
from rccsnn.registry import Registry
from rccsnn.snn import NeuronConfig

MODELS: Registry[nn.Module] = Registry("architecture")


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    neuron: NeuronConfig,
    arch_args: Dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered architecture; unknown or mistyped ``arch_args`` are a one-line :class:`UserError`."""
    factory = MODELS.get(arch)
    try:
        options = typed_kwargs(factory, dict(arch_args or {}), prefix="")
    except UserError as exc:
        raise UserError(f"architecture '{arch}': bad arguments {arch_args}: {exc}") from None
    return factory(tuple(input_shape), num_classes, neuron, **options)


__all__ = ["MODELS", "build_model"]
