"""BatchNorm over the global batch of a multi-process run: :func:`sync_batchnorm` and the CPU's
:class:`GlobalBatchNorm`.

The collectives come from :mod:`rccsnn.distributed` and are looked up there at call time
(``distributed.all_reduce_sum``): this module depends on that one, never the other way round.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from rccsnn import distributed


class _GlobalBatchNorm(torch.autograd.Function):
    """BatchNorm in training mode with statistics over every process's batch (the single-process statistics).

    Forward: each process sums its ``count``, ``sum x`` and centred ``sum (x - mean_r)^2`` per channel in
    float64; one all-reduce gives the global mean and (biased) variance. Backward: ``sum dy`` and
    ``sum dy * xhat`` are all-reduced the same way; the affine gradients stay local (DDP averages them).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], eps: float, momentum: float) -> Tensor:
        dims = [0, *range(2, x.dim())]
        view = [1, -1] + [1] * (x.dim() - 2)
        channels = x.shape[1]
        xd = x.detach().double()
        count = x.numel() // max(channels, 1)
        local_mean = xd.mean(dims) if count else torch.zeros(channels, dtype=torch.float64, device=x.device)
        local_m2 = ((xd - local_mean.view(view)) ** 2).sum(dims)
        packed = torch.cat([torch.tensor([float(count)], dtype=torch.float64, device=x.device),
                            count * local_mean, local_m2 + count * local_mean ** 2])
        packed = distributed.all_reduce_sum(packed)
        n = float(packed[0])
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        mean = packed[1:channels + 1] / n
        var = (packed[channels + 1:] / n - mean ** 2).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1.0 - momentum).add_((var * n / (n - 1)).to(running_var.dtype), alpha=momentum)
        mean_x, invstd_x = mean.to(x.dtype).view(view), invstd.to(x.dtype).view(view)
        xhat = (x - mean_x) * invstd_x
        out = xhat
        if weight is not None:
            out = out * weight.view(view)
        if bias is not None:
            out = out + bias.view(view)
        ctx.save_for_backward(xhat, weight, invstd_x)
        ctx.count = n
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xhat, weight, invstd_x = ctx.saved_tensors
        dims = [0, *range(2, grad_out.dim())]
        view = [1, -1] + [1] * (grad_out.dim() - 2)
        channels = grad_out.shape[1]
        sum_dy = grad_out.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (grad_out * xhat).sum(dims, dtype=torch.float64)
        total = distributed.all_reduce_sum(torch.cat([sum_dy, sum_dy_xhat]))
        mean_dy = (total[:channels] / ctx.count).to(grad_out.dtype).view(view)
        mean_dy_xhat = (total[channels:] / ctx.count).to(grad_out.dtype).view(view)
        scale = invstd_x if weight is None else invstd_x * weight.view(view)
        grad_x = (grad_out - mean_dy - xhat * mean_dy_xhat) * scale
        grad_w = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_b = sum_dy.to(grad_out.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (any of 1d/2d/3d) whose training statistics cover the batches of every process.

    torch's :class:`~torch.nn.SyncBatchNorm` does this on GPUs only; this one works on any device through
    plain all-reduces (gloo on the CPU). Evaluation, and training without a process group, is ordinary
    BatchNorm. Parameters and buffers are those of the layer it replaces, so state_dicts are unchanged.

    Shape: input ``[N, C, *]``, output the same.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and distributed.active()):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        track = self.track_running_stats and self.running_mean is not None
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.running_mean if track else None,
                                      self.running_var if track else None, self.eps, factor)


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameters: optimizers still hold them
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, _to_global_batchnorm(child))
    return module


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of ``net`` normalise over the global batch (in place; returns ``net``).

    Without this each process would normalise its own share of the batch, and the run would no longer be the
    single-process run. CUDA uses torch's :class:`~torch.nn.SyncBatchNorm`; the CPU :class:`GlobalBatchNorm`.
    Does nothing when the run is not distributed.
    """
    if not distributed.active():
        return net
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return _to_global_batchnorm(net)


__all__ = ["GlobalBatchNorm", "sync_batchnorm"]
