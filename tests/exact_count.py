"""The independent judge of operation counts, written apart from the library on purpose (it imports nothing from
rccsnn): NeuroBench's definition, literally. For every Conv1d/2d/3d and Linear layer, each time it is called, the
layer's own function is applied to the binarised input ``(x != 0)`` with the binarised weight ``(w != 0)`` and no
bias; the sum of that output is the number of operations between a nonzero input and a nonzero weight (zero padding
reads zeros, so a tap outside the input counts nothing). Summed over calls (time steps) and divided by the samples.

    effective  layer(x != 0) with (w != 0)      SynOps (spiking input) or effective MACs (analog input)
    macs       layer(ones)   with (w != 0)      every tap inside the input, nonzero weights
    dense      layer(ones)   with ones          every tap inside the input, every weight
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _apply(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    """``layer``'s operation on ``x`` with weight ``w`` and no bias, in float64."""
    x, w = x.double(), w.double()
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    else:
        padding = layer.padding
    conv = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(layer)]
    return conv(x, w, None, layer.stride, padding, layer.dilation, layer.groups)


@torch.no_grad()
def exact_counts(net: nn.Module, run: Callable[[], None], samples: int) -> Dict[str, Dict[str, float]]:
    """Per weight layer (by module name) the counts of the module docstring per sample, over whatever ``run()``
    feeds ``net`` (``samples`` inputs in all)."""
    counts: Dict[str, Dict[str, float]] = {}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inputs) -> None:
            x = inputs[0]
            w = module.weight
            c = counts.setdefault(name, {"effective": 0.0, "macs": 0.0, "dense": 0.0})
            c["effective"] += float(_apply(module, (x != 0), (w != 0)).sum())
            c["macs"] += float(_apply(module, torch.ones_like(x), (w != 0)).sum())
            c["dense"] += float(_apply(module, torch.ones_like(x), torch.ones_like(w)).sum())

        return fn

    for name, module in net.named_modules():
        if isinstance(module, KINDS):
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {name: {k: v / samples for k, v in c.items()} for name, c in counts.items()}


@torch.no_grad()
def analog_inputs(net: nn.Module, run: Callable[[], None]) -> Dict[str, bool]:
    """Per weight layer (by module name) whether its input held any value other than 0 and 1 over whatever ``run()``
    feeds ``net``: such a layer's operations are MACs, a spiking layer's (input 0 or 1 only) accumulates."""
    analog: Dict[str, bool] = {}
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inputs) -> None:
            x = inputs[0]
            analog[name] = analog.get(name, False) or bool(((x != 0) & (x != 1)).any())

        return fn

    for name, module in net.named_modules():
        if isinstance(module, KINDS):
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return analog
