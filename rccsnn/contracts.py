"""The two ways a spiking network can run over time, and what it hands back: the *model contracts*.

rccsnn runs a user's snntorch network as it is written; it never asks for a wrapper. A network keeps one of two
contracts, registered in :data:`STEPS`:

* ``multi`` (multi-step): ``net(x [T, B, ...])`` runs all T steps and returns the output spikes ``[T, B, K]``, or a
  tuple ``(spk_rec, mem_rec, ...)`` whose first element is the spikes (snntorch tutorial 5's own time loop, and
  every rccsnn zoo model);
* ``single`` (single-step): ``net(x_t [B, ...])`` runs one step and returns spikes ``[B, K]``, or a tuple
  ``(spk, mem)`` / ``(spk, syn, mem)`` whose first element is the spikes (an ``nn.Sequential`` of layers and snntorch
  neurons with ``init_hidden=True``, the last with ``output=True``: snntorch tutorial 6, NeuroBench's
  ``SNNTorchModel``). Its state lives in its neurons, so rccsnn resets it (:func:`reset_state`) before every batch
  (state never leaks from one batch into the next) and after it (no reference to the batch's graph is kept), and
  calls the network T times.

Either way the result is a :class:`Readout`: the output spikes ``[T, B, K]`` and, when the network returns a tuple
of two or more tensors, its last element as the output membrane ``[T, B, K]`` (what the membrane losses train on;
snntorch's neurons return the membrane last: ``(spk, mem)``, ``(spk, syn, mem)``, ``(spk, syn_exc, syn_inh, mem)``).

:func:`detect_steps` decides which contract a network keeps with one probe forward: a network whose snntorch neurons
keep their own state (``init_hidden=True``) is tried single-step first, any other multi-step first (a single-step
network without neuron state would forget everything between steps, so it cannot be one); the first contract whose
output has the promised shape wins, and a single-step one must also treat every sample of the batch alone (a
multi-step model with ``init_hidden`` neurons, handed one step, loops over the batch as if it were time).
``--model-steps`` overrides it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
from snntorch import SpikingNeuron
from torch import Tensor, nn

from rccsnn.errors import UserError, first_line
from rccsnn.registry import Registry

CONTRACTS = ("multi-step: net(x [T, B, ...]) -> spikes [T, B, K] or a tuple (spk_rec, mem_rec, ...); "
             "single-step: net(x_t [B, ...]) -> spikes [B, K] or a tuple (spk, mem), state in snntorch neurons "
             "with init_hidden=True")


@dataclass
class Readout:
    """What one forward pass over T steps gave back.

    Attributes:
        spikes: ``[T, B, K]`` output spikes.
        mem: ``[T, B, K]`` output membrane potential (the last element of a returned tuple), or ``None`` when the
            network returns spikes alone.
    """

    spikes: Tensor
    mem: Optional[Tensor] = None

    @property
    def counts(self) -> Tensor:
        """``[B, K]`` output spike counts over the T steps: the logits of the count decoding."""
        return self.spikes.sum(0)

    @property
    def T(self) -> int:
        return self.spikes.shape[0]


def describe(output: Any) -> str:
    """``output``'s type and shape(s) in a few words, for error messages."""
    if isinstance(output, Tensor):
        return f"a tensor of shape {list(output.shape)}"
    if isinstance(output, (tuple, list)):
        parts = ", ".join(f"[{', '.join(map(str, o.shape))}]" if isinstance(o, Tensor) else type(o).__name__
                          for o in output)
        return f"a {type(output).__name__} ({parts})"
    return f"a {type(output).__name__}"


def _split(output: Any, lead: Sequence[int], contract: str) -> Readout:
    """The spikes (and membrane) of one call's ``output``, whose leading dimensions must be ``lead``."""
    tensors = list(output) if isinstance(output, (tuple, list)) else [output]
    spikes = tensors[0] if tensors else None
    # Trailing dimensions are the output units (K for a classifier; a feature map is counted as well).
    ok = isinstance(spikes, Tensor) and spikes.dim() > len(lead) and tuple(spikes.shape[:len(lead)]) == tuple(lead)
    if not ok:
        shape = "[" + ", ".join(["T", "B"][-len(lead):] if len(lead) else []) + ", K]"
        raise UserError(f"the model's output fits neither contract: as a {contract} model it returned "
                        f"{describe(output)}, expected spikes {shape} ({'T, B = ' if len(lead) == 2 else 'B = '}"
                        f"{', '.join(map(str, lead))}); the contracts: {CONTRACTS}")
    mem = tensors[-1] if len(tensors) >= 2 and isinstance(tensors[-1], Tensor) else None
    if mem is not None and mem.shape != spikes.shape:
        mem = None  # not an output membrane (e.g. a hidden layer's record): the membrane losses will say so
    return Readout(spikes, mem)


STEPS: Registry[Callable[[nn.Module, Tensor], Readout]] = Registry("model steps")


@STEPS.register("multi")
def run_multi(net: nn.Module, x: Tensor) -> Readout:
    """``net(x [T, B, ...])``: one call for all T steps."""
    return _split(net(x), x.shape[:2], "multi-step")


def reset_state(net: nn.Module) -> None:
    """Zero the state of every snntorch neuron of ``net`` that keeps it (``init_hidden=True``), with fresh tensors
    that hold no graph.

    Each neuron's own ``reset_mem()``, the per-instance form of :func:`snntorch.utils.reset`: that one looks only
    at ``net``'s direct children and resets the instances snntorch registered at construction, which misses
    neurons nested in blocks and every copied or unpickled network.
    """
    for module in net.modules():
        if isinstance(module, SpikingNeuron) and getattr(module, "init_hidden", False):
            module.reset_mem()


def neuron_state(net: nn.Module) -> List[str]:
    """Names (as ``net.named_buffers()`` gives them) of the buffers in which snntorch neurons keep their state:
    each ``SpikingNeuron``'s non-persistent buffers (``mem``, ``syn``, ...), shaped by the last batch it saw."""
    names = []
    for prefix, module in net.named_modules():
        if isinstance(module, SpikingNeuron):
            kept = set(module.state_dict(keep_vars=True))
            names += [f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False) if b not in kept]
    return sorted(names)


@STEPS.register("single")
def run_single(net: nn.Module, x: Tensor) -> Readout:
    """``net(x[t] [B, ...])`` for t < T, the neurons' state reset before and after."""
    reset_state(net)
    try:
        steps = [_split(net(x[t]), x.shape[1:2], "single-step") for t in range(x.shape[0])]
    finally:
        reset_state(net)  # zero the state: the last step's graph is not kept alive
    mems = [s.mem for s in steps]
    mem = torch.stack(mems) if all(m is not None for m in mems) else None
    return Readout(torch.stack([s.spikes for s in steps]), mem)


def run(net: nn.Module, x: Tensor, steps: str = "multi") -> Readout:
    """Run ``net`` on the time-major input ``x [T, B, ...]`` under contract ``steps``."""
    return STEPS.get(steps)(net, x)


def probe_input(net: nn.Module, input_shape: Sequence[int], T: int, batch: int = 2) -> Tensor:
    """``[max(T, 2), batch, *input_shape]`` random inputs, the same every step, on ``net``'s device, drawn from a
    private generator (probing changes no later result)."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    return x.unsqueeze(0).expand(max(T, 2), *x.shape)


@torch.no_grad()
def output_units(net: nn.Module, probe: Tensor, steps: str) -> int:
    """K, the output units of ``net`` (its class count), from one forward of ``probe`` under contract ``steps``."""
    was_training = net.training
    net.eval()
    try:
        return int(run(net, probe, steps).spikes.shape[-1])
    except UserError:
        raise
    except Exception as exc:  # the user's forward failed on an input of the loaders' shape
        raise UserError(f"the model cannot run on inputs {list(probe.shape[1:])} as a {steps}-step model: "
                        f"{type(exc).__name__}: {first_line(exc)}") from None
    finally:
        net.train(was_training)
        reset_state(net)


def _batch_independent(net: nn.Module, probe: Tensor, first: Readout) -> bool:
    """Whether ``net`` run single-step gives sample 1 the same output when sample 0 changes. A multi-step model whose
    neurons keep their own state, handed one step, loops over the batch as if it were time; its later samples then
    depend on the earlier ones. A single-step model treats every sample alone (in eval mode)."""
    other = probe.clone()
    other[:, 0] = torch.rand(other[:, 0].shape, generator=torch.Generator().manual_seed(1)).to(other)
    again = run(net, other, "single")
    same = torch.equal(first.spikes[:, 1:], again.spikes[:, 1:])
    if first.mem is not None and again.mem is not None:
        same = same and torch.allclose(first.mem[:, 1:], again.mem[:, 1:])
    return same


def keeps_state(net: nn.Module) -> bool:
    """Whether any snntorch neuron of ``net`` keeps its state itself (``init_hidden=True``)."""
    return any(isinstance(m, SpikingNeuron) and getattr(m, "init_hidden", False) for m in net.modules())


@torch.no_grad()
def detect_steps(net: nn.Module, probe: Tensor) -> str:
    """The contract ``net`` keeps, found by running it on ``probe [T, B, ...]`` (see the module docstring).

    The probe runs in eval mode and draws no random numbers, so detecting changes no later result.

    Raises:
        UserError: one line naming what each contract got back, when neither fits.
    """
    order = ("single", "multi") if keeps_state(net) else ("multi", "single")
    was_training = net.training
    net.eval()
    failures = []
    try:
        for name in order:
            try:
                readout = run(net, probe, name)
                if name == "single" and probe.shape[1] > 1 and not _batch_independent(net, probe, readout):
                    failures.append("as a single-step model its output for one sample depends on another (does "
                                    "it loop over the batch as over time?)")
                    continue
                return name
            except UserError as exc:
                failures.append(str(exc).split(";")[0].replace("the model's output fits neither contract: ", ""))
            except Exception as exc:  # the user's forward raised on this contract's input: try the other
                failures.append(f"as a {name}-step model it raised {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    finally:
        net.train(was_training)
        reset_state(net)
    raise UserError(f"the model fits neither contract ({'; '.join(failures)}); the contracts: {CONTRACTS}")


__all__ = ["CONTRACTS", "Readout", "STEPS", "describe", "detect_steps", "keeps_state", "output_units",
           "probe_input", "reset_state", "run", "run_multi", "run_single"]
