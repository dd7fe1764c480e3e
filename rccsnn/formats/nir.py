"""NIR export: the network for one time step as a graph of ``nir`` nodes (the optional extra ``rccsnn[nir]``).

:func:`nir_graph` traces one small batch through the network and writes, in call order, Conv2d with BatchNorm
folded in, Linear/Affine, Flatten, AvgPool2d, MaxPool2d on spikes as SumPool2d followed by Threshold(0.5), and LIF
with ``dt = 1e-4`` (snntorch's convention: ``tau = dt / (1 - beta)``, ``r = tau / dt``, ``v_leak = v_reset = 0``).
The spiking layers are rccsnn's multi-step LIF, snntorch's ``Leaky`` and its ``Synaptic`` (as CubaLIF, in
snntorch's convention): a model written as snntorch's tutorials write it (single-step ``nn.Sequential`` with
``init_hidden=True`` neurons) is traced one time step at a time.
Only chains of layers are supported; residual or branching networks, and other snntorch neurons, are refused with a
one-line message.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from snntorch import Leaky, SpikingNeuron, Synaptic

from rccsnn.contracts import reset_state
from rccsnn.version import __version__
from rccsnn.errors import UserError, first_line
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.rundir import publish
from rccsnn.snn import ENCODERS, LIF, SeqDropout, spikes_of

#: The time step NIR's continuous-time LIF is discretised with (snntorch's export/import convention).
NIR_DT = 1e-4


def require_nir():
    """The ``nir`` module, or a one-line :class:`UserError` naming the extra to install."""
    try:
        import nir
    except ImportError:
        raise UserError("--format nir needs the optional packages nir and nirtorch: pip install 'rccsnn[nir]'") \
            from None
    return nir


@dataclass
class _Call:
    name: str
    module: nn.Module
    inp: Tensor
    out: Tensor


def _units(net: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Spiking layers (rccsnn's LIF, snntorch neurons) and every leaf module outside them, in registration
    order."""
    found: List[Tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, (LIF, SpikingNeuron)) or not any(True for _ in child.children()):
                found.append((full, child))
            else:
                walk(child, full)

    walk(net, "")
    return found


def _trace(net: nn.Module, input_shape: Sequence[int], T: int, encoding: str, steps: str = "multi",
           batch: int = 3):
    """Run one small batch (a single-step model: its first time step) and record, in call order, every unit's
    input and output (a spiking layer's spikes); check they form a chain."""
    calls: List[_Call] = []

    def record(mod: nn.Module, args: tuple, kwargs: dict, out: Any, name: str) -> None:
        # the input is the first argument, also when given by keyword (snntorch's neurons: ``lif(input_=x)``)
        inp = args[0] if args else next(iter(kwargs.values()), None)
        calls.append(_Call(name, mod, inp, spikes_of(out) if isinstance(out, tuple) else out))

    handles = [m.register_forward_hook(lambda mod, args, kwargs, out, name=name: record(mod, args, kwargs, out, name),
                                       with_kwargs=True)
               for name, m in _units(net)]
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            x = ENCODERS.get(encoding)(torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0)), T)
            x = x.to(device)
            if steps == "single":  # [B, ...] per call, the neurons' state kept inside them between calls
                reset_state(net)
                x = x[0]
            y = net(x)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"NIR export: the model failed on a traced batch of its recorded input shape "
                        f"{tuple(input_shape)}: {first_line(exc)}") from None
    finally:
        if steps == "single":
            reset_state(net)
        for h in handles:
            h.remove()
        net.train(was_training)
    y = spikes_of(y) if isinstance(y, tuple) else y

    def same(a: Tensor, b: Tensor) -> bool:
        return a.numel() == b.numel() and (a.data_ptr() == b.data_ptr() or torch.equal(a.reshape(-1), b.reshape(-1)))

    names = [c.name for c in calls]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"NIR export supports chains of layers; layer '{twice}' runs more than once per step")
    previous = x
    for call in calls:
        if not isinstance(call.inp, Tensor) or not isinstance(call.out, Tensor) or not same(previous, call.inp):
            raise UserError(f"NIR export supports chains of layers only; '{call.name}' "
                            f"({type(call.module).__name__}) does not take the previous layer's output "
                            "(residual or branching networks are not supported)")
        previous = call.out
    if not same(previous, y):
        raise UserError("NIR export supports chains of layers only; the network's output is not its last layer's")
    return calls, batch


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _fold_bn(weight: Tensor, bias: Optional[Tensor], bn: nn.Module, name: str) -> Tuple[Tensor, Tensor]:
    """``BN(conv(x))`` as one conv: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)``."""
    if bn.running_mean is None or bn.running_var is None:
        raise UserError(f"NIR export: BatchNorm '{name}' keeps no running statistics and cannot be folded")
    w = weight.detach().double()
    b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    s = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return w * s.reshape(-1, *([1] * (w.dim() - 1))), (b - bn.running_mean.detach().double()) * s + beta


def _per_neuron(value: Any, shape: Tuple[int, ...], what: str, name: str, clamp: bool = False) -> np.ndarray:
    """A neuron parameter (one value, or one per neuron) as a float32 array of ``shape``."""
    t = torch.as_tensor(value).detach()
    try:
        return np.broadcast_to(_np(t.clamp(0, 1) if clamp else t), shape).astype(np.float32)
    except ValueError:
        raise UserError(f"NIR export: the {what} of '{name}' does not fit its output shape {shape}") from None


def _synaptic_node(nir: Any, neuron: Synaptic, shape: Tuple[int, ...], name: str) -> Any:
    """NIR's CubaLIF for an snntorch ``Synaptic``, in snntorch's own convention (``export_to_nir``):
    ``tau_syn = dt / (1 - alpha)``, ``tau_mem = dt / (1 - beta)``, ``r = tau_mem / dt``, ``w_in = tau_syn / dt``."""
    alpha = _per_neuron(neuron.alpha, shape, "alpha", name, clamp=True).astype(np.float64)
    beta = _per_neuron(neuron.beta, shape, "beta", name, clamp=True).astype(np.float64)
    if (alpha >= 1.0).any() or (beta >= 1.0).any():
        raise UserError(f"NIR export: '{name}' has alpha or beta = 1, which NIR's CubaLIF cannot express")
    tau_syn, tau_mem = NIR_DT / (1.0 - alpha), NIR_DT / (1.0 - beta)
    zeros = np.zeros(shape, dtype=np.float32)
    return nir.CubaLIF(tau_syn=tau_syn.astype(np.float32), tau_mem=tau_mem.astype(np.float32),
                       r=(tau_mem / NIR_DT).astype(np.float32), v_leak=zeros,
                       v_threshold=_per_neuron(neuron.threshold, shape, "threshold", name),
                       v_reset=zeros.copy(), w_in=(tau_syn / NIR_DT).astype(np.float32))


def _leaky_node(nir: Any, leaky: Leaky, shape: Tuple[int, ...], name: str) -> Any:
    """NIR's LIF (or IF where beta is 1) for an snntorch ``Leaky`` whose output has per-sample ``shape``; beta
    and threshold may be one value or one per neuron."""
    beta = _per_neuron(leaky.beta, shape, "beta", name, clamp=True)
    v_threshold = _per_neuron(leaky.threshold, shape, "threshold", name)
    zeros = np.zeros(shape, dtype=np.float32)
    if (beta >= 1.0).all():
        return nir.IF(r=np.ones(shape, dtype=np.float32), v_threshold=v_threshold, v_reset=zeros)
    if (beta >= 1.0).any():
        raise UserError(f"NIR export: '{name}' mixes beta = 1 (IF) and beta < 1 (LIF) neurons")
    tau = NIR_DT / (1.0 - beta.astype(np.float64))
    return nir.LIF(tau=tau.astype(np.float32), r=(tau / NIR_DT).astype(np.float32), v_leak=zeros,
                   v_threshold=v_threshold, v_reset=zeros.copy())


@dataclass
class NirExport:
    """A NIR graph and the notes on how it represents the network (folded, rewritten, or not exactly)."""

    graph: Any  # nir.NIRGraph
    notes: List[str]


def nir_graph(loaded: LoadedModel) -> NirExport:
    """The network of ``loaded`` for one time step, as a ``nir.NIRGraph`` (see the module docstring)."""
    nir = require_nir()
    spec = loaded.spec
    if not spec.input_shape:
        raise UserError("NIR export needs the model's input shape; this file does not record it")
    net = loaded.net
    single = spec.steps == "single"
    calls, batch = _trace(net, spec.input_shape, spec.T, spec.encoding, spec.steps)

    def per_sample(t: Tensor) -> Tuple[int, ...]:
        if single:  # [B, ...]: one time step
            return tuple(t.shape[1:])
        return tuple(t.shape[1:]) if t.shape[0] == spec.T * batch else tuple(t.shape[2:])

    def stepwise(call: _Call) -> None:
        if not single and call.inp.shape[0] != spec.T * batch:
            raise UserError(f"NIR export: '{call.name}' ({type(call.module).__name__}) is not applied per time step "
                            "(wrap stateless layers in PerStep)")

    nodes: Dict[str, Any] = {"input": nir.Input(input_type=np.array(spec.input_shape))}
    edges: List[Tuple[str, str]] = []
    notes: List[str] = []
    last = "input"
    spikes = spec.encoding == "rate"  # whether the signal at this point is binary spikes
    resets = set()

    def add(name: str, node) -> None:
        nonlocal last
        nodes[name] = node
        edges.append((last, name))
        last = name

    i = 0
    while i < len(calls):
        call = calls[i]
        m, name = call.module, call.name
        following = calls[i + 1].module if i + 1 < len(calls) else None
        if isinstance(m, (nn.Dropout, SeqDropout, nn.Identity)):
            i += 1
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            stepwise(call)
            weight, bias = m.weight.detach(), (m.bias.detach() if m.bias is not None else None)
            bn_type = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm1d
            if isinstance(following, bn_type):
                weight, bias = _fold_bn(weight, bias, following, calls[i + 1].name)
                notes.append(f"BatchNorm '{calls[i + 1].name}' folded into '{name}'")
                i += 1
            if isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros":
                    raise UserError(f"NIR export: conv '{name}' uses padding_mode '{m.padding_mode}'")
                b = bias if bias is not None else torch.zeros(weight.shape[0])
                add(name, nir.Conv2d(input_shape=per_sample(call.inp)[1:], weight=_np(weight), stride=_pair(m.stride),
                                     padding=m.padding if isinstance(m.padding, str) else _pair(m.padding),
                                     dilation=_pair(m.dilation), groups=m.groups, bias=_np(b)))
            else:
                if len(per_sample(call.inp)) != 1:
                    raise UserError(f"NIR export: linear layer '{name}' needs flat inputs (add a Flatten before it)")
                add(name, nir.Affine(weight=_np(weight), bias=_np(bias)) if bias is not None
                    else nir.Linear(weight=_np(weight)))
            spikes = False
        elif isinstance(m, nn.MaxPool2d):
            stepwise(call)
            if not spikes:
                raise UserError(f"NIR export: max-pooling '{name}' acts on analog values, which NIR cannot express "
                                "(on spikes it is SumPool2d + Threshold)")
            if _pair(m.dilation) != (1, 1) or m.ceil_mode:
                raise UserError(f"NIR export: max-pooling '{name}' with dilation or ceil_mode is not supported")
            kernel = _pair(m.kernel_size)
            stride = _pair(m.stride if m.stride is not None else m.kernel_size)
            add(name, nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                    padding=np.array(_pair(m.padding))))
            add(f"{name}.threshold", nir.Threshold(threshold=np.full(per_sample(call.out), 0.5, dtype=np.float32)))
            notes.append(f"max-pooling '{name}' on spikes written as SumPool2d + Threshold(0.5) (exact for 0/1 inputs)")
        elif isinstance(m, nn.AvgPool2d):
            stepwise(call)
            padded = not m.count_include_pad and _pair(m.padding) != (0, 0)
            if m.ceil_mode or m.divisor_override is not None or padded:
                raise UserError(f"NIR export: average pooling '{name}' with ceil_mode/divisor_override is not "
                                "supported")
            kernel = _pair(m.kernel_size)
            add(name, nir.AvgPool2d(kernel_size=np.array(kernel),
                                    stride=np.array(_pair(m.stride if m.stride is not None else m.kernel_size)),
                                    padding=np.array(_pair(m.padding))))
            spikes = False
        elif isinstance(m, nn.Flatten):
            stepwise(call)
            if m.start_dim == 0 or m.end_dim == 0:
                raise UserError(f"NIR export: flatten '{name}' must keep the batch dimension (start_dim >= 1)")
            shape = per_sample(call.inp)
            add(name, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=m.start_dim - 1,
                                  end_dim=m.end_dim - 1 if m.end_dim > 0 else m.end_dim))
        elif isinstance(m, LIF) or type(m) is Leaky:  # exactly Leaky: its subclasses have other dynamics
            leaky = m.neuron if isinstance(m, LIF) else m
            resets.add(str(leaky.reset_mechanism))
            add(name, _leaky_node(nir, leaky, per_sample(call.out), name))
            spikes = True
        elif type(m) is Synaptic:
            resets.add(str(m.reset_mechanism))
            add(name, _synaptic_node(nir, m, per_sample(call.out), name))
            spikes = True
        elif isinstance(m, SpikingNeuron):
            raise UserError(f"NIR export: spiking layer '{name}' ({type(m).__name__}) is not supported; the "
                            "supported spiking layers are snntorch's Leaky and Synaptic and rccsnn's LIF")
        else:
            raise UserError(f"NIR export: layer '{name}' ({type(m).__name__}) is not supported (supported: Conv2d, "
                            "Linear, BatchNorm after them, MaxPool2d on spikes, AvgPool2d, Flatten, Dropout, LIF, "
                            "snntorch's Leaky and Synaptic)")
        i += 1
    nodes["output"] = nir.Output(output_type=np.array(per_sample(calls[-1].out) if calls else spec.input_shape))
    edges.append((last, "output"))
    if resets - {"zero"}:
        notes.append(f"NIR's LIF resets to v_reset = 0 after a spike; this model resets by "
                     f"'{'/'.join(sorted(resets - {'zero'}))}', so a NIR runtime's spikes will differ from rccsnn's")
    metadata = {"source": "rccsnn", "rccsnn_version": __version__, "arch": spec.arch, "T": int(spec.T),
                "encoding": spec.encoding, "decoding": "spike count over T", "dt": NIR_DT,
                "reset": "/".join(sorted(resets)) or "none"}
    try:
        graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
    except Exception as exc:  # nir's own type checks; a message of ours would be more useful, but keep it one line
        raise UserError(f"NIR export: nir rejected the graph: {first_line(exc)}") from None
    return NirExport(graph, notes)


def export_nir(loaded: LoadedModel, path: str | Path, *, overwrite: bool = False) -> NirExport:
    """Write ``loaded`` as a NIR file (HDF5, ``nir.write``) through a temporary file and a rename; an existing
    ``path`` only with ``overwrite`` (:func:`rccsnn.rundir.publish`)."""
    result = nir_graph(loaded)
    nir = require_nir()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            nir.write(tmp, result.graph)
            publish(tmp, path, overwrite=overwrite)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return result


__all__ = ["NIR_DT", "NirExport", "export_nir", "nir_graph", "require_nir"]
