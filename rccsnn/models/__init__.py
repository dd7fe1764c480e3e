"""Model zoo. Every model is built by a registered factory::

    factory(input_shape: (C, H, W), num_classes: int, neuron: NeuronConfig, **arch_args) -> nn.Module

and runs in multi-step mode: input ``[T, B, C, H, W]`` -> output ``[T, B, num_classes]`` (spikes or voting rates).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

from torch import nn

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
    """Build a registered architecture; bad ``arch_args`` become a one-line :class:`UserError`."""
    factory = MODELS.get(arch)
    try:
        return factory(input_shape=tuple(input_shape), num_classes=num_classes, neuron=neuron, **(arch_args or {}))
    except TypeError as exc:
        raise UserError(f"architecture '{arch}': bad arguments {arch_args}: {exc}") from None


# Importing the modules registers their factories.
from rccsnn.models import cifar10net, convsnn, resnet, vgg  # noqa: E402,F401
