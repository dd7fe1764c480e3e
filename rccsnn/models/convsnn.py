"""``convsnn``: a small convolutional SNN for 8x8 (digits) and 28x28 (MNIST) inputs."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from rccsnn.models.registry import MODELS
from rccsnn.snn import LIF, NeuronConfig, PerStep


@MODELS.register("convsnn")
class ConvSNN(nn.Module):
    """``[conv3x3 - BN - LIF - maxpool2] x len(channels) -> FC hidden - LIF -> FC classes - LIF``.

    Args:
        input_shape: ``(C, H, W)``; H and W must be divisible by ``2 ** len(channels)``.
        num_classes: number of output neurons K.
        neuron: LIF settings.
        channels: output channels of the convolutions (no bias; BatchNorm follows each).
        hidden: width of the hidden fully connected layer.

    Shape: input ``[T, B, C, H, W]``, output spikes ``[T, B, K]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig,
        /,
        *,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        layers = []
        for out in channels:
            layers += [
                PerStep(nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)),
                LIF(neuron),
                PerStep(nn.MaxPool2d(2)),
            ]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            PerStep(nn.Flatten(), nn.Linear(c * h * w, hidden)),
            LIF(neuron),
            PerStep(nn.Linear(hidden, num_classes)),
            LIF(neuron),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
