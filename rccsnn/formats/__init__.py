"""Deployable output: :func:`export` writes a model as a compact sparse file or as a NIR graph (``rccsnn export``).

* :mod:`rccsnn.formats.compact`: the compact format (index and value codecs, planning, writing, reading, loading);
* :mod:`rccsnn.formats.nir`: the NIR graph of one time step.

A compact export encodes the weights, decodes them again in memory, measures the accuracy of both on a data split
(optional), writes the file through a temporary file and a rename, and reloads it to check that it gives exactly
the exported weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import torch

from rccsnn.data import DataSplits
from rccsnn.errors import UserError
from rccsnn.formats.compact import TensorRecord, decoded, load_compact, plan_compact, same_state, save_compact
from rccsnn.formats.nir import export_nir, require_nir
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.rundir import check_destination

FORMATS = ("compact", "nir")


@dataclass(frozen=True)
class AccuracyChange:
    """Accuracy (fractions in [0, 1]) of the model before and after the export, on ``split``."""

    split: str
    before: float
    after: float


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the file written, as given.
        format: ``compact`` or ``nir``.
        file_bytes: size of the written file.
        T: time steps the model runs for (a NIR graph is one step of them).
        dtype, per_channel: compact only: how the weight values are stored.
        records: compact only: how each state_dict tensor was stored, in state_dict order.
        payload_bytes, dense_bytes: compact only: bytes of the stored tensors, and of the dense state_dict.
        accuracy: compact only: before and after, when a data set and a split were given.
        nodes, edges, notes: NIR only: the graph's size, and how it represents the network.
    """

    path: str
    format: str
    file_bytes: int
    T: int
    dtype: str = "float32"
    per_channel: bool = False
    records: List[TensorRecord] = field(default_factory=list)
    payload_bytes: int = 0
    dense_bytes: int = 0
    accuracy: Optional[AccuracyChange] = None
    nodes: int = 0
    edges: int = 0
    notes: List[str] = field(default_factory=list)


def check_options(format: str, dtype: str = "float32", per_channel: bool = False) -> None:
    """What can be checked before a model is loaded; a one-line :class:`UserError` otherwise.

    The format's name, that ``dtype`` and ``per_channel`` are left alone for NIR, and that NIR's packages are
    installed (so that a missing extra is reported before a long load).
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}' (use {' or '.join(FORMATS)})")
    if format == "nir":
        if dtype != "float32" or per_channel:
            raise UserError("--dtype and --per-channel apply to --format compact only")
        require_nir()


def export(
    loaded: LoadedModel,
    out: Union[str, Path],
    *,
    format: str = "compact",
    dtype: str = "float32",
    per_channel: bool = False,
    data: Optional[DataSplits] = None,
    split: Optional[str] = "test",
    device: Union[str, torch.device] = "auto",
    batch_size: int = 512,
    model: Optional[str] = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``loaded`` to ``out`` as a compact file or a NIR graph.

    Args:
        loaded: the model (masks baked); a spec without an input shape takes ``data``'s.
        out: the file to write (through a temporary file and a rename).
        format: ``compact`` or ``nir``.
        dtype: compact only: stored weight values, ``float32`` (loads back exactly), ``float16`` or ``int8``.
        per_channel: with ``int8``: one scale per output channel instead of one per tensor.
        data: the data set of the accuracy check (and of the input shape, where the file records none).
        split: compact only: the split of the accuracy check; ``None`` skips the check.
        device: where the accuracy check runs (``auto``, ``cpu``, ``cuda:N`` or a device).
        batch_size: samples per batch of the accuracy check.
        model: ``package.module:factory`` that rebuilds a user architecture when the export is decoded.
        overwrite: replace ``out`` if it exists; without it an existing file is an error, before any work.

    Raises:
        UserError: one line, for options that do not fit, a model that cannot be exported or an unwritable path.
    """
    check_options(format, dtype, per_channel)
    check_destination(out, overwrite=overwrite)
    if not loaded.spec.input_shape and data is not None:  # a bare state_dict: the data set says what goes in
        loaded.spec.input_shape = tuple(data.input_shape)
    if format == "nir":
        nir = export_nir(loaded, out, overwrite=overwrite)
        return ExportResult(path=str(out), format=format, file_bytes=Path(out).stat().st_size, T=loaded.spec.T,
                            nodes=len(nir.graph.nodes), edges=len(nir.graph.edges), notes=list(nir.notes))

    plan = plan_compact(loaded, dtype=dtype, per_channel=per_channel)
    after = decoded(plan, model=model)
    accuracy = None
    if data is not None and split is not None:
        # Imported here: rccsnn.metrics imports this package's codec (the compact bytes of every layer).
        from rccsnn.metrics import accuracy as measure
        from rccsnn.distributed import resolve_device

        where = resolve_device(device) if isinstance(device, str) else device
        accuracy = AccuracyChange(split, measure(loaded, data, split, where, batch_size),
                                  measure(after, data, split, where, batch_size))
        plan.contents["export"]["accuracy"] = {"split": split, "before": accuracy.before, "after": accuracy.after}
    save_compact(plan, out, overwrite=overwrite)
    if not same_state(load_compact(out, model=model).net, after.net):
        raise RuntimeError(f"{out} does not load back to the exported weights")  # a bug, not a user error
    return ExportResult(path=str(out), format=format, file_bytes=Path(out).stat().st_size, T=loaded.spec.T,
                        dtype=dtype, per_channel=per_channel, records=plan.records, payload_bytes=plan.payload_bytes,
                        dense_bytes=plan.dense_bytes, accuracy=accuracy)


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f} %" if whole else "n/a"


def summary(result: ExportResult) -> str:
    """What ``rccsnn export`` prints: NIR notes and the graph's size; or one row per weight tensor, the payload
    and the file as a percentage of the dense state_dict, and the accuracy before and after."""
    if result.format == "nir":
        lines = [f"note: {note}" for note in result.notes]
        lines.append(f"NIR graph: {result.path} ({result.nodes} nodes, {result.edges} edges, {result.file_bytes} "
                     f"bytes); one time step, run it for T = {result.T} steps")
        return "\n".join(lines)
    from rccsnn.monitor import format_table

    weights = [r for r in result.records if r.encoding != "raw"]
    others = [r for r in result.records if r.encoding == "raw"]
    rows = [[r.name, "x".join(map(str, r.shape)), f"{100 * r.nonzero / r.numel:.2f}" if r.numel else "-",
             r.encoding, r.dense_bytes, r.stored_bytes] for r in weights]
    rows.append([f"{len(others)} other tensors", "", "", "raw", sum(r.dense_bytes for r in others),
                 sum(r.stored_bytes for r in others)])
    dense, payload, size = result.dense_bytes, result.payload_bytes, result.file_bytes
    lines = [format_table(["tensor", "shape", "density %", "stored as", "dense bytes", "stored bytes"], rows), "",
             f"compact file: {result.path} ({result.dtype}{', per channel' if result.per_channel else ''})",
             f"tensor payload: {payload} bytes = {_percent(payload, dense)} of the dense state_dict's {dense} bytes; "
             f"whole file {size} bytes = {_percent(size, dense)}"]
    acc = result.accuracy
    if acc:
        lines.append(f"{acc.split} accuracy: before {acc.before:.4f}, after {acc.after:.4f} "
                     f"(change {100 * (acc.after - acc.before):+.2f} points)")
    return "\n".join(lines)


__all__ = ["AccuracyChange", "ExportResult", "FORMATS", "check_destination", "check_options", "export", "summary"]
