"""``resnet19``: the spiking ResNet-19 of Zheng et al. 2021 (tdBN), a stem and 8 residual blocks in 3 stages."""
from __future__ import annotations

from typing import List, Sequence

from torch import Tensor, nn

from rccsnn.errors import UserError
from rccsnn.models.registry import MODELS
from rccsnn.snn import LIF, NeuronConfig, PerStep


class SpikingBasicBlock(nn.Module):
    """``LIF(BN(conv3x3(LIF(BN(conv3x3(x))))) + shortcut(x))``: the sum is taken before the last LIF, so the block
    outputs spikes. The shortcut is the identity, or ``conv1x1 (stride s) - BN`` when the shape changes.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv and of the shortcut.
        neuron: LIF settings.

    Shape: input ``[T, B, in_channels, H, W]``, output spikes ``[T, B, out_channels, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, neuron: NeuronConfig) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            PerStep(
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            ),
            LIF(neuron),
            PerStep(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PerStep(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()
        self.lif = LIF(neuron)

    def forward(self, x: Tensor) -> Tensor:
        return self.lif(self.residual(x) + self.shortcut(x))


@MODELS.register("resnet19")
class ResNet19(nn.Module):
    """``conv3x3 - BN - LIF -> stages of SpikingBasicBlocks -> global avg pool -> FC hidden - LIF -> FC K - LIF``.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: number of output neurons K.
        neuron: LIF settings.
        widths: channels of each stage (the stem has ``widths[0]``); every stage but the first starts with stride 2.
        blocks: number of blocks per stage.
        hidden: width of the hidden fully connected layer (with bias, as is the output layer).

    Shape: input ``[T, B, C, H, W]``, output spikes ``[T, B, K]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig,
        /,
        *,
        widths: Sequence[int] = (128, 256, 512),
        blocks: Sequence[int] = (3, 3, 2),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise UserError(f"resnet19 needs one width per stage, got widths={widths} and blocks={blocks}")
        c = input_shape[0]
        self.stem = nn.Sequential(
            PerStep(nn.Conv2d(c, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])), LIF(neuron)
        )
        c = widths[0]
        stages: List[nn.Module] = []
        for i, (out, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(SpikingBasicBlock(c, out, stride, neuron))
                c = out
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Sequential(
            PerStep(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, hidden)),
            LIF(neuron),
            PerStep(nn.Linear(hidden, num_classes)),
            LIF(neuron),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.stem(x)))
