"""``vgg16``: the VGG-16 SNN of the SNN literature (Rathi et al. 2020, tdBN), 13 convolutions and 3 FC layers."""
from __future__ import annotations

from typing import List, Sequence, Union

from torch import Tensor, nn

from rccsnn.models.registry import MODELS
from rccsnn.snn import LIF, NeuronConfig, PerStep, SeqDropout

VGG16_CFG: List[Union[int, str]] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
]


@MODELS.register("vgg16")
class VGG(nn.Module):
    """``[conv3x3 - BN - LIF] / maxpool2`` following a cfg, then ``[FC - LIF - dropout] x len(fc) -> FC K - LIF``.

    A pooling step is skipped once H or W is already 1, so small inputs (8x8, 16x16) also work.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: number of output neurons K.
        neuron: LIF settings.
        cfg: conv output channels in order, ``"M"`` for a 2x2 max pooling.
        fc: widths of the hidden fully connected layers (each with bias).
        dropout: drop probability after each hidden FC's LIF (mask shared over time).
        width: multiplier of every conv channel count (rounded, at least 1); 1.0 is the standard VGG-16.

    Shape: input ``[T, B, C, H, W]``, output spikes ``[T, B, K]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig,
        /,
        *,
        cfg: Sequence[Union[int, str]] = tuple(VGG16_CFG),
        fc: Sequence[int] = (4096, 4096),
        dropout: float = 0.5,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        layers: List[nn.Module] = []
        for item in cfg:
            if item == "M":
                if min(h, w) >= 2:
                    layers.append(PerStep(nn.MaxPool2d(2)))
                    h, w = h // 2, w // 2
                continue
            out = max(1, int(round(int(item) * width)))
            layers += [PerStep(nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)), LIF(neuron)]
            c = out
        self.features = nn.Sequential(*layers)
        head: List[nn.Module] = [PerStep(nn.Flatten())]
        features = c * h * w
        for hidden in fc:
            head += [PerStep(nn.Linear(features, hidden)), LIF(neuron), SeqDropout(dropout)]
            features = hidden
        head += [PerStep(nn.Linear(features, num_classes)), LIF(neuron)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
