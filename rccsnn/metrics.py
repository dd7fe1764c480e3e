"""The metrics of any model file: accuracy, parameter counts, MACs, SynOps, energy and bytes on a data split.

:func:`evaluate` is what ``rccsnn evaluate`` prints; :func:`report` is ``rccsnn report``: per conv/linear layer
and in total, weights, nonzero weights, MACs, effective MACs and SynOps counted exactly on the data (NeuroBench's
definitions), energy per inference with fp32 and int8 constants, and the bytes of the weights dense (fp32) and in
the compact format. Every count comes from :mod:`rccsnn.resources` (:func:`~rccsnn.resources.layer_costs`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from rccsnn.data import DataSplits
from rccsnn.errors import UserError, first_line
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.masks import Target
from rccsnn.resources import ENERGY_PJ, layer_costs
from rccsnn.snn import weight_layers
from rccsnn.trainer import EvalResult, evaluate_net

#: Keys of every entry of ``report(...)["layers"]``, in order; ``total`` has the numeric ones from "weights" on.
LAYER_KEYS = ("name", "kind", "analog_input", "positions", "input_rate", "bits", "weights", "nonzero", "macs",
              "effective_macs", "synops", "dense_ops", "energy_pj_fp32", "energy_pj_int8", "energy_pj", "bitops",
              "bytes_dense", "bytes_compact")
#: Keys of ``report(...)["total"]``: the sums of the numeric layer keys from "weights" on, then NeuroBench's
#: ``connection_sparsity`` (zero weights / weights), ``activation_sparsity`` (1 - spikes / neuron steps over the LIF
#: layers; None without any) and ``footprint_bytes`` (every parameter and buffer, dense, as NeuroBench's Footprint).
TOTAL_KEYS = LAYER_KEYS[LAYER_KEYS.index("weights"):] + ("connection_sparsity", "activation_sparsity",
                                                         "footprint_bytes")
REPORT_KEYS = ("file", "file_bytes", "data", "split", "samples", "T", "accuracy", "energy_constants", "layers",
               "total", "firing_rates")


def layer_report(mon, name: str, module: torch.nn.Module, bits: int = 32) -> Dict[str, float]:
    """:func:`rccsnn.resources.layer_costs` of one weight layer that ``mon`` (a SpikeMonitor) watched, whose weights
    have ``bits`` bits (32: float32)."""
    target = Target(name=name, module=module, shape=tuple(module.weight.shape), n=module.weight.numel())
    return layer_costs(target, mon.tap_macs(name), mon.tap_reads(name), bool(mon.analog_input[name]), bits=bits)


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
    loader = DataLoader(data.split(split), batch_size=batch_size, shuffle=False, collate_fn=data.collate)
    try:
        return evaluate_net(net, loader, loaded.spec, device, spikes=spikes)
    except RuntimeError as exc:
        raise UserError(f"the model cannot run on data set '{data.name}': {first_line(exc)}") from None


def accuracy(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device, batch_size: int = 512) -> float:
    """Accuracy (a fraction) of ``loaded`` on ``split``."""
    return run_split(loaded, data, split, device, batch_size).accuracy


def evaluate(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device,
            batch_size: int = 512) -> Dict[str, Any]:
    """Evaluate ``loaded`` on ``split`` and count what it costs.

    Returns a dict with ``accuracy`` (fraction), ``loss`` (the model's task loss, its ``loss`` setting, mean per
    sample), ``split``, ``samples``, ``params`` (all parameters), ``nonzero_params``, ``weights``/``nonzero_weights``
    (conv and linear weights only), ``macs`` (multiply-accumulates per inference that touch a nonzero weight: for
    each tap, T x the output positions at which it reads inside the input, summed over nonzero weights and layers),
    ``dense_macs`` (the same counting every weight) and ``firing_rates`` (spiking layer, rccsnn's LIF or an
    snntorch neuron -> spikes per neuron per step).
    """
    result = run_split(loaded, data, split, device, batch_size, spikes=True)
    net = loaded.net
    mon = result.monitor
    nonzero = {name: int(torch.count_nonzero(m.weight)) for name, m in weight_layers(net)}
    costs = [layer_report(mon, n, m) for n, m in weight_layers(net) if n in mon.positions]
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "split": split,
        "samples": result.samples,
        "params": sum(p.numel() for p in net.parameters()),
        "nonzero_params": int(sum(torch.count_nonzero(p) for p in net.parameters())),
        "weights": sum(mon.weights.values()),
        "nonzero_weights": sum(nonzero.values()),
        "macs": int(sum(c["macs"] for c in costs)),
        "dense_macs": int(sum(c["dense_ops"] for c in costs)),
        "firing_rates": mon.firing_rates(),
    }


def report(loaded: LoadedModel, data: DataSplits, split: str, device: torch.device, batch_size: int = 512,
                file: Optional[str] = None, stored_bytes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """What every conv/linear layer of ``loaded`` costs per inference, measured on ``split``, counted exactly as
    NeuroBench counts (an operation between a nonzero input and a nonzero weight, summed over time steps and samples,
    per sample).

    Per layer (keys :data:`LAYER_KEYS`): ``positions`` output positions per step and sample, ``input_rate`` the
    mean input per element per step (the firing rate of spike inputs), ``analog_input`` whether the input is not
    spikes; ``weights``, ``nonzero``; ``macs`` every multiply-accumulate of a nonzero weight (each tap T x the output
    positions at which it reads inside the input: padding, stride and dilation honoured) and ``dense_ops`` the same
    with every weight; ``effective_macs`` (analog input) and ``synops`` (spike input, NeuroBench's effective ACs)
    the operations whose input is nonzero too (each is 0 for the other kind of layer); energy in pJ = E_MAC x macs
    for analog inputs, E_AC x synops otherwise, with the constants of :data:`rccsnn.resources.ENERGY_PJ`
    (``energy_pj_fp32``, ``energy_pj_int8``: what the layer would cost in each format) and at the layer's own weight
    width ``bits`` (``energy_pj``, :func:`rccsnn.resources.op_energy`; ``bits`` 32 is float32), ``bitops`` its
    operations x bits; ``bytes_dense`` = 4 x weights (fp32) and ``bytes_compact`` = the weight's bytes in the compact format (the
    stored bytes given in ``stored_bytes``, by default those of ``file`` when it is a compact file; otherwise what an
    export would store: float32 values, or the layer's packed codes at its ``bits``).

    Returns a dict with keys :data:`REPORT_KEYS`; ``total`` has :data:`TOTAL_KEYS`; ``firing_rates`` maps each
    spiking layer (rccsnn's LIF or any snntorch neuron) to its spikes per neuron per step.
    """
    from rccsnn.formats.compact import compact_tensor_bytes, encode_weight, entry_nbytes, is_compact_file

    if stored_bytes is None and file is not None and is_compact_file(file):
        stored_bytes = compact_tensor_bytes(file)

    result = run_split(loaded, data, split, device, batch_size, spikes=True)
    mon = result.monitor
    rates = mon.input_rates()
    T = loaded.spec.T
    layers: List[Dict[str, Any]] = []
    for name, module in weight_layers(loaded.net):
        if name not in mon.positions:
            continue  # a layer the forward pass never used
        w = module.weight.detach()
        bits = loaded.spec.bits.get(name, 32)
        key = f"{name}.weight" if name else "weight"
        n, nonzero = w.numel(), int(torch.count_nonzero(w))
        if stored_bytes is not None and key in stored_bytes:
            compact = int(stored_bytes[key])
        else:
            compact = entry_nbytes(encode_weight(w.cpu(), "float32", bits=bits))  # as export would store it
        layers.append({
            "name": name, "kind": type(module).__name__, "analog_input": bool(mon.analog_input[name]),
            "positions": mon.positions[name], "input_rate": float(rates.get(name, 0.0)), "bits": bits, "weights": n,
            "nonzero": nonzero, **layer_report(mon, name, module, bits), "bytes_dense": 4 * n,
            "bytes_compact": compact,
        })
    total: Dict[str, Any] = {k: sum(layer[k] for layer in layers) for k in LAYER_KEYS[LAYER_KEYS.index("weights"):]}
    total["connection_sparsity"] = 1.0 - total["nonzero"] / total["weights"] if total["weights"] else 0.0
    total["activation_sparsity"] = mon.activation_sparsity()
    total["footprint_bytes"] = sum(t.numel() * t.element_size()
                                   for t in list(loaded.net.parameters()) + list(loaded.net.buffers()))
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
        "firing_rates": mon.firing_rates(),
    }


def report_table(report: Dict[str, Any]) -> str:
    """The per-layer table of :func:`report`, with a total row; energies in nJ, bytes in kB (1000 B)."""
    from rccsnn.monitor import format_table

    def row(name: str, kind: str, r: Dict[str, Any]) -> List[Any]:
        density = r["nonzero"] / r["weights"] if r["weights"] else 0.0
        return [name, kind, r.get("bits", ""), r["weights"], r["nonzero"], f"{100 * density:.2f}", f"{r['macs']:.0f}",
                f"{r['effective_macs']:.0f}", f"{r['synops']:.0f}", f"{r['energy_pj'] / 1e3:.3f}",
                f"{r['energy_pj_fp32'] / 1e3:.3f}", f"{r['energy_pj_int8'] / 1e3:.4f}",
                f"{r['bytes_dense'] / 1e3:.1f}", f"{r['bytes_compact'] / 1e3:.1f}"]

    header = ["layer", "kind", "bits", "weights", "nonzero", "density %", "MACs", "eff. MACs", "SynOps", "E nJ",
              "E fp32 nJ", "E int8 nJ", "dense kB", "compact kB"]
    rows = [row(r["name"], r["kind"] + (" (analog in)" if r["analog_input"] else ""), r) for r in report["layers"]]
    rows.append(row("total", "", report["total"]))
    return format_table(header, rows)
