"""Weight bit widths: symmetric per-output-channel fake quantization, the bit-width ladder, and what a model records.

A layer at ``b`` bits (``b < 32``) computes with ``w_q = scale_c x clamp(round(w / scale_c), -q, q)``, ``q = 2^(b-1) -
1``, one ``scale_c = max |w[c]| / q`` per output channel ``c``; 32 means float32 (no quantization). The forward pass
sees ``w_q`` (:class:`FakeQuant`, a ``torch.nn.utils.parametrize`` parametrization after the pruning mask, so a pruned
weight stays exactly 0), on torch's own ``torch.fake_quantize_per_channel_affine``, whose backward is the
straight-through estimator (the gradient passes where ``w`` lies inside the clamp range, which with this scale is
everywhere).

The scales are computed from the weights, not learned: the channel's largest weight sets its range, so nothing is
clipped, no extra parameter trains or needs its own learning rate, and the scale follows the weights while they
finetune. (A learned scale, as in LSQ, clips outliers to resolve the bulk better; at 2-4 bits that can be worth a
little accuracy, at the price of another optimiser state and of clipping errors the Fisher estimate of the
quantization cost below does not see.)

Baking (``rccsnn.masks.bake``) writes ``w_q`` into a plain weight, so a saved model computes at its bits with no
machinery at load; the checkpoint records the bit widths (``ModelSpec.bits``: layer name -> bits, absent = 32), which
the cost models (:mod:`rccsnn.resources`), the report and the compact export read.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rccsnn.errors import UserError

#: float32: a layer at this width is not quantized.
FLOAT_BITS = 32
#: The default bit-width ladder of ``--decide bits`` (issue 17; LitE-SNN's mixed precision space, float32 on top).
LADDER: Tuple[int, ...] = (2, 3, 4, 6, 8, 16, 32)


def parse_ladder(value: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    """Bit widths from ``"2,4,8,32"`` or a list: integers in [2, 16] or 32, sorted, without repeats (one line error)."""
    items: Iterable = value.split(",") if isinstance(value, str) else value
    try:
        bits = sorted({int(str(b).strip()) for b in items})
    except ValueError:
        raise UserError(f"a bits ladder is a list of integers (e.g. 2,4,8,32), got {value!r}") from None
    bad = [b for b in bits if not (2 <= b <= 16 or b == FLOAT_BITS)]
    if not bits or bad:
        raise UserError(f"bit widths must be integers from 2 to 16, or 32 for float32; got {value!r}")
    return tuple(bits)


def check_bits(bits: int, where: str = "bits") -> int:
    """``bits`` if it is a width this module can compute at (2..16 or 32), else a one-line UserError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (2 <= bits <= 16 or bits == FLOAT_BITS):
        raise UserError(f"{where} must be an integer from 2 to 16, or 32 for float32; got {bits!r}")
    return bits


def levels(bits: int) -> int:
    """``q = 2^(b-1) - 1``: the largest integer of a symmetric ``b``-bit code (values ``-q .. q``)."""
    return 2 ** (bits - 1) - 1


def channel_scales(w: Tensor, bits: int) -> Tensor:
    """``[C_out]`` float32 per-output-channel scales ``max |w[c]| / q`` (1 for an all-zero channel)."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).float()
    return torch.where(amax > 0, amax / levels(bits), torch.ones_like(amax))


def quantize(w: Tensor, bits: int) -> Tensor:
    """``w`` fake-quantized to ``bits`` (identity at 32), straight-through gradient; same shape and dtype."""
    if bits >= FLOAT_BITS:
        return w
    q = levels(bits)
    scale = channel_scales(w, bits).to(w.device)
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -q, q)


def integers(w: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """The integer codes ``[*w.shape]`` (int32, in ``-q .. q``) and ``[C_out]`` scales of ``w`` at ``bits``:
    ``codes x scale`` is :func:`quantize` of ``w`` (up to float rounding), and of a weight that is already at
    ``bits`` it gives back the same integers."""
    scale = channel_scales(w, bits)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = levels(bits)
    codes = torch.round(w.detach().float().cpu() / scale.view(shape)).clamp_(-q, q).to(torch.int32)
    return codes, scale


class FakeQuant(nn.Module):
    """Parametrization ``W -> quantize(W, bits)``; ``bits`` may change between steps (32: identity)."""

    def __init__(self, bits: int = FLOAT_BITS) -> None:
        super().__init__()
        self.bits = check_bits(bits)

    def forward(self, w: Tensor) -> Tensor:
        return quantize(w, self.bits)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def quantizer(module: nn.Module) -> "FakeQuant | None":
    """The :class:`FakeQuant` of ``module.weight``, if it has one."""
    if parametrize.is_parametrized(module, "weight"):
        return next((p for p in module.parametrizations.weight if isinstance(p, FakeQuant)), None)
    return None


def set_bits(net: nn.Module, bits: Mapping[str, int]) -> None:
    """Quantize the weight of each module named in ``bits`` to its width (attaching a :class:`FakeQuant` after any
    mask the first time); unknown names are a one-line error."""
    modules = dict(net.named_modules())
    for name, b in bits.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), Tensor):
            raise UserError(f"bits for '{name}': the model has no weight layer of that name")
        check_bits(b, f"bits of '{name}'")
        fq = quantizer(module)
        if fq is None:
            parametrize.register_parametrization(module, "weight", FakeQuant(b))
        else:
            fq.bits = b


def target_bits(targets: Sequence, recorded: Optional[Mapping[str, int]] = None) -> List[int]:
    """``[L]`` the current weight bit width of each target (anything with ``name`` and ``module``): its quantizer's,
    else the width ``recorded`` for it (a loaded model's ``ModelSpec.bits``, whose weights are already on that
    grid), else 32."""
    out = []
    for t in targets:
        fq = quantizer(t.module)
        out.append(fq.bits if fq is not None else int((recorded or {}).get(t.name, FLOAT_BITS)))
    return out


def bits_of(net: nn.Module) -> Dict[str, int]:
    """Layer name -> bits of every module whose weight has a :class:`FakeQuant` below 32 bits."""
    out = {}
    for name, module in net.named_modules():
        fq = quantizer(module)
        if fq is not None and fq.bits < FLOAT_BITS:
            out[name] = fq.bits
    return out


__all__ = ["FLOAT_BITS", "FakeQuant", "LADDER", "bits_of", "channel_scales", "check_bits", "integers", "levels",
           "parse_ladder", "quantize", "quantizer", "set_bits", "target_bits"]
