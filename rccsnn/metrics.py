"""The metrics of any model file: accuracy, parameter counts, MACs, SynOps, energy and bytes on a data split.

:func:`evaluate` is what ``rccsnn evaluate`` prints; :func:`report` is ``rccsnn report``: per conv/linear layer
and in total, weights, nonzero weights, MACs, SynOps measured on the data, energy per inference with fp32 and int8
constants, and the bytes of the weights dense (fp32) and in the compact format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from rccsnn.data import DataSplits
from rccsnn.errors import UserError
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.resources import ENERGY_PJ, layer_costs
from rccsnn.snn import weight_layers
from rccsnn.trainer import EvalResult, evaluate_net

#: Keys of every entry of ``report(...)["layers"]``, in order; ``total`` has the numeric ones from "weights" on.
LAYER_KEYS = ("name", "kind", "analog_input", "positions", "input_rate", "weights", "nonzero", "macs", "dense_macs",
              "synops", "energy_pj_fp32", "energy_pj_int8", "bytes_dense", "bytes_compact")
TOTAL_KEYS = LAYER_KEYS[LAYER_KEYS.index("weights"):]
REPORT_KEYS = ("file", "file_bytes", "data", "split", "samples", "T", "accuracy", "energy_constants", "layers",
               "total")


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


def run_split(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device, batch_size: int = 512,
              spikes: bool = False) -> EvalResult:
    """Check that ``data`` fits, then evaluate ``loaded`` on ``split`` (one-line error if it cannot run)."""
    check_fit(loaded, data)
    net = loaded.net.to(device)
    loader = DataLoader(data.split(split), batch_size=batch_size, shuffle=False)
    try:
        return evaluate_net(net, loader, loaded.spec, device, spikes=spikes)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the model cannot run on data set '{data.name}': {first}") from None


def accuracy(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device, batch_size: int = 512) -> float:
    """Accuracy (a fraction) of ``loaded`` on ``split``."""
    return run_split(loaded, data, split, device, batch_size).accuracy


def evaluate(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device,
            batch_size: int = 512) -> Dict[str, Any]:
    """Evaluate ``loaded`` on ``split`` and count what it costs.

    Returns a dict with ``accuracy`` (fraction), ``split``, ``samples``, ``params`` (all parameters),
    ``nonzero_params``, ``weights``/``nonzero_weights`` (conv and linear weights only), ``macs`` (multiply-
    accumulates per inference that touch a nonzero weight: positions x nonzero weights x T, summed over
    layers), ``dense_macs`` (the same counting every weight) and ``firing_rates`` (LIF layer -> spikes per
    neuron per step).
    """
    result = run_split(loaded, data, split, device, batch_size, spikes=True)
    net = loaded.net
    mon = result.monitor
    nonzero = {name: int(torch.count_nonzero(m.weight)) for name, m in weight_layers(net)}
    # Only the counts of MACs are read, so the input rate does not matter here (analog: every MAC counted).
    costs = [layer_costs(positions=mon.positions[n], T=mon.T, weights=mon.weights[n], nonzero=nonzero[n],
                         input_rate=1.0, analog=True) for n in mon.positions]
    return {
        "accuracy": result.accuracy,
        "split": split,
        "samples": result.samples,
        "params": sum(p.numel() for p in net.parameters()),
        "nonzero_params": int(sum(torch.count_nonzero(p) for p in net.parameters())),
        "weights": sum(mon.weights.values()),
        "nonzero_weights": sum(nonzero.values()),
        "macs": int(sum(c["macs"] for c in costs)),
        "dense_macs": int(sum(c["dense_macs"] for c in costs)),
        "firing_rates": mon.firing_rates(),
    }


def report(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device, batch_size: int = 512,
                file: Optional[str] = None, stored_bytes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """What every conv/linear layer of ``loaded`` costs per inference, measured on ``split``.

    Per layer (keys :data:`LAYER_KEYS`): ``positions`` output positions per step and sample, ``input_rate`` the
    mean input per element per step (the firing rate of spike inputs), ``analog_input`` whether the input is not
    spikes; ``weights``, ``nonzero``; ``macs`` = positions x T x nonzero and ``dense_macs`` = positions x T x
    weights; ``synops`` = positions x T x input_rate x nonzero (``macs`` for analog inputs); energy in pJ =
    E_MAC x macs for analog inputs, E_AC x synops otherwise, with the constants of :data:`rccsnn.resources.ENERGY_PJ`;
    ``bytes_dense`` = 4 x weights (fp32) and ``bytes_compact`` = the weight's bytes in the compact format (the
    stored bytes given in ``stored_bytes`` for a compact file; otherwise what a float32 export would store).

    Returns a dict with keys :data:`REPORT_KEYS`; ``total`` sums :data:`TOTAL_KEYS` over the layers.
    """
    from rccsnn.formats.compact import encode_weight, entry_nbytes

    result = run_split(loaded, data, split, device, batch_size, spikes=True)
    mon = result.monitor
    rates = mon.input_rates()
    T = loaded.spec.T
    layers: List[Dict[str, Any]] = []
    for name, module in weight_layers(loaded.net):
        if name not in mon.positions:
            continue  # a layer the forward pass never used
        w = module.weight.detach()
        key = f"{name}.weight" if name else "weight"
        n, nonzero = w.numel(), int(torch.count_nonzero(w))
        positions, analog = mon.positions[name], bool(mon.analog_input[name])
        rate = 1.0 if analog else float(rates.get(name, 0.0))
        costs = layer_costs(positions=positions, T=T, weights=n, nonzero=nonzero, input_rate=rate, analog=analog)
        if stored_bytes is not None and key in stored_bytes:
            compact = int(stored_bytes[key])
        else:
            compact = entry_nbytes(encode_weight(w.cpu(), "float32"))
        layers.append({
            "name": name, "kind": type(module).__name__, "analog_input": analog, "positions": positions,
            "input_rate": float(rates.get(name, 0.0)), "weights": n, "nonzero": nonzero, **costs,
            "bytes_dense": 4 * n, "bytes_compact": compact,
        })
    total = {k: sum(layer[k] for layer in layers) for k in TOTAL_KEYS}
    return {
        "file": str(file) if file is not None else None,
        "file_bytes": Path(file).stat().st_size if file is not None and Path(file).is_file() else None,
        "data": data.name,
        "split": split,
        "samples": result.samples,
        "T": T,
        "accuracy": result.accuracy,
        "energy_constants": {fmt: dict(e) for fmt, e in ENERGY_PJ.items()},
        "layers": layers,
        "total": total,
    }


def report_table(report: Dict[str, Any]) -> str:
    """The per-layer table of :func:`report`, with a total row; energies in nJ, bytes in kB (1000 B)."""
    from rccsnn.monitor import format_table

    def row(name: str, kind: str, r: Dict[str, Any]) -> List[Any]:
        density = r["nonzero"] / r["weights"] if r["weights"] else 0.0
        return [name, kind, r["weights"], r["nonzero"], f"{100 * density:.2f}", r["macs"], r["dense_macs"],
                f"{r['synops']:.0f}", f"{r['energy_pj_fp32'] / 1e3:.3f}", f"{r['energy_pj_int8'] / 1e3:.4f}",
                f"{r['bytes_dense'] / 1e3:.1f}", f"{r['bytes_compact'] / 1e3:.1f}"]

    header = ["layer", "kind", "weights", "nonzero", "density %", "MACs", "dense MACs", "SynOps", "E fp32 nJ",
              "E int8 nJ", "dense kB", "compact kB"]
    rows = [row(r["name"], r["kind"] + (" (analog in)" if r["analog_input"] else ""), r) for r in report["layers"]]
    rows.append(row("total", "", report["total"]))
    return format_table(header, rows)
