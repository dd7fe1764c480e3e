"""The metrics of any model file: accuracy, parameter counts, MACs and firing rates on a data split."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch.utils.data import DataLoader

from rccsnn.data import DataSplits
from rccsnn.errors import UserError
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.snn import weight_layers
from rccsnn.trainer import evaluate


def check_fit(loaded: LoadedModel, data: DataSplits) -> None:
    """Raise a one-line :class:`UserError` when ``data`` cannot feed ``loaded`` (shape or class count)."""
    spec = loaded.spec
    if spec.input_shape and tuple(spec.input_shape) != tuple(data.input_shape):
        raise UserError(
            f"data set '{data.name}' has inputs of shape {tuple(data.input_shape)} but the model expects "
            f"{tuple(spec.input_shape)} (it was trained on '{spec.data}'); pass a matching --data"
        )
    if spec.num_classes and data.num_classes > spec.num_classes:
        raise UserError(
            f"data set '{data.name}' has {data.num_classes} classes but the model has {spec.num_classes} outputs"
        )


def measure(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device,
            batch_size: int = 512) -> Dict[str, Any]:
    """Evaluate ``loaded`` on ``split`` and count what it costs.

    Returns a dict with ``accuracy`` (fraction), ``split``, ``samples``, ``params`` (all parameters),
    ``nonzero_params``, ``weights``/``nonzero_weights`` (conv and linear weights only), ``macs`` (multiply-
    accumulates per inference that touch a nonzero weight: positions x nonzero weights x T, summed over
    layers), ``dense_macs`` (the same counting every weight) and ``firing_rates`` (LIF layer -> spikes per
    neuron per step).
    """
    check_fit(loaded, data)
    net = loaded.net.to(device)
    loader = DataLoader(data.split(split), batch_size=batch_size, shuffle=False)
    try:
        result = evaluate(net, loader, loaded.spec, device, spikes=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"the model cannot run on data set '{data.name}': {first}") from None
    mon = result.monitor
    dense_macs = mon.macs()
    nonzero = {name: int(torch.count_nonzero(m.weight)) for name, m in weight_layers(net)}
    macs = sum(dense_macs[n] * nonzero[n] // max(mon.weights[n], 1) for n in dense_macs)
    return {
        "accuracy": result.accuracy,
        "split": split,
        "samples": result.samples,
        "params": sum(p.numel() for p in net.parameters()),
        "nonzero_params": int(sum(torch.count_nonzero(p) for p in net.parameters())),
        "weights": sum(mon.weights.values()),
        "nonzero_weights": sum(nonzero.values()),
        "macs": int(macs),
        "dense_macs": int(sum(dense_macs.values())),
        "firing_rates": mon.firing_rates(),
    }
