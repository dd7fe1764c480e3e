"""User-side code for the model-file tests: architectures named by ``--model user_models:FACTORY`` and
objects that are pickled whole. Imported with the tests directory on ``sys.path`` (see conftest.py)."""
from __future__ import annotations

import os

import torch
from torch import nn

from rccsnn.snn import LIF, NeuronConfig, PerStep


def tiny_net() -> nn.Module:
    """A multi-step net for digits: ``[T, B, 1, 8, 8] -> [T, B, 10]`` spikes."""
    return nn.Sequential(PerStep(nn.Flatten(), nn.Linear(64, 10)), LIF(NeuronConfig()))


def wide_net() -> nn.Module:
    """Same layer names as :func:`tiny_net`, other shapes: a tiny_net state does not fit it."""
    return nn.Sequential(PerStep(nn.Flatten(), nn.Linear(64, 12)), LIF(NeuronConfig()))


def not_a_module():
    return 3


class PickledNet(nn.Module):
    """Pickled whole (no rccsnn LIF inside): ``[T, B, 1, 8, 8] -> [T, B, 10]`` (analog scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = PerStep(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Evil:
    """A pickle payload that runs a shell command when unpickled (creates ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import shlex

        return os.system, (f"touch {shlex.quote(self.marker)}",)
