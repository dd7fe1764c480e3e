"""``cifar10net``: the 6Conv2FC CIFAR-10 network of Grad R, STDS and the minimax paper (spikingjelly's example).

With the defaults and a ``(3, 32, 32)`` input it has 36,715,264 prunable weights, 91 % of them in the first FC layer::

    conv 3->256 (6,912) + 5 x conv 256->256 (5 x 589,824) + FC 16384->2048 (33,554,432) + FC 2048->100 (204,800)
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from rccsnn.errors import UserError
from rccsnn.models.registry import MODELS
from rccsnn.snn import LIF, NeuronConfig, PerStep, SeqDropout


class VotingPool(nn.Module):
    """Averages each group of ``voting`` consecutive output neurons into one class score (a population vote).

    Shape: input ``[..., K * voting]``, output ``[..., K]`` (firing rates in [0, 1] for spike inputs).
    """

    def __init__(self, voting: int) -> None:
        super().__init__()
        self.voting = voting

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (-1, self.voting)).mean(-1)

    def extra_repr(self) -> str:
        return f"voting={self.voting}"


@MODELS.register("cifar10net")
class Cifar10Net(nn.Module):
    """``conv3x3 - BN - LIF`` then ``5 x [conv3x3 - BN - LIF]`` with maxpool2 after the 2nd and 5th, then
    ``dropout - FC hidden - LIF - dropout - FC voting*K - LIF - voting pool``.

    All convolutions and linear layers are bias-free, as in the reference.

    Args:
        input_shape: ``(C, H, W)``; H and W must be divisible by 4.
        num_classes: number of classes K.
        neuron: LIF settings (the papers use tau 2, threshold 1, hard reset, ATan).
        channels: output channels of every convolution.
        hidden: width of the hidden fully connected layer.
        dropout: drop probability of the two :class:`SeqDropout` layers (mask shared over time).
        voting: output neurons per class, averaged by :class:`VotingPool`.

    Shape: input ``[T, B, C, H, W]``, output ``[T, B, K]`` (per-step voting rates, multiples of ``1 / voting``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig,
        /,
        *,
        channels: int = 256,
        hidden: int = 2048,
        dropout: float = 0.5,
        voting: int = 10,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise UserError(f"cifar10net needs H and W divisible by 4, got {h}x{w}")
        layers = [PerStep(nn.Conv2d(c, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)), LIF(neuron)]
        for i in range(5):
            layers += [
                PerStep(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)),
                LIF(neuron),
            ]
            if i in (1, 4):
                layers.append(PerStep(nn.MaxPool2d(2)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            PerStep(nn.Flatten()),
            SeqDropout(dropout),
            PerStep(nn.Linear(channels * (h // 4) * (w // 4), hidden, bias=False)),
            LIF(neuron),
            SeqDropout(dropout),
            PerStep(nn.Linear(hidden, voting * num_classes, bias=False)),
            LIF(neuron),
            VotingPool(voting),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
