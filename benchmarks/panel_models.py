"""The quality benchmark's panel: small SNNs written the ways snntorch users write them, for the 8x8 digits.

Every factory takes no arguments and returns a *multi-step* network, rccsnn's contract for a user model: input
``[T, B, 1, 8, 8]`` (the digits image repeated every step: direct encoding), output spikes ``[T, B, 10]`` (rccsnn
decodes by counting them). Load a model file with ``--model benchmarks.panel_models:FACTORY`` from the repository
root (``PYTHONPATH=.`` elsewhere)::

    rccsnn evaluate runs/benchmarks/quality-panel/pretrained/fc.pt --model benchmarks.panel_models:fc

* ``convsnn``: rccsnn's zoo model, the shipped ``checkpoints/digits_convsnn.pt`` (no factory here); rccsnn LIF,
  BatchNorm; 340,992 prunable weights (the first layer is never pruned by default);
* ``fc`` (:func:`fc`): fully connected 64-128-64-10 with ``snn.Leaky``, its own time loop (snntorch tutorial 5);
  8,832 prunable weights, of which the output layer has 640;
* ``tutorial_conv`` (:func:`tutorial_conv`): snntorch tutorial 6's single-step ``nn.Sequential`` with
  ``init_hidden=True`` neurons and no BatchNorm, run over time by :class:`MultiStep`; 21,760;
* ``recurrent`` (:func:`recurrent`): 64-128-10 with ``snn.RLeaky``, whose 128x128 recurrent weights are targets
  like any other; 17,664;
* ``synaptic_conv`` (:func:`synaptic_conv`): three 3x3 convs with BatchNorm and ``snn.Synaptic`` neurons, time
  folded into the batch for the stateless layers; 25,600.

:data:`PANEL` records how each is pretrained (:func:`pretrain`, rccsnn's own :class:`~rccsnn.trainer.Trainer`,
seed 0) and compressed (``T``). ``python benchmarks/panel_models.py --out DIR`` pretrains them all.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import snntorch as snn
import torch
from snntorch import surrogate
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONVSNN = REPO / "checkpoints" / "digits_convsnn.pt"
INPUT_SHAPE = (1, 8, 8)
CLASSES = 10


def reset_neurons(net: nn.Module) -> None:
    """Zero the hidden state of every snntorch neuron in ``net`` (and only those: ``snntorch.utils.reset`` resets
    every instance of a neuron class in the process, through class-level lists)."""
    for module in net.modules():
        if isinstance(module, snn.SpikingNeuron) and hasattr(module, "reset_mem"):
            module.reset_mem()


def first(output) -> Tensor:
    """The spikes of a neuron's or a network's output: snntorch returns ``(spk, mem, ...)`` tuples."""
    return output[0] if isinstance(output, (tuple, list)) else output


class MultiStep(nn.Module):
    """Runs a single-step network (hidden state in its neurons, ``init_hidden=True``) over the time axis.

    The hidden state is zeroed before every call, so nothing leaks from one batch into the next.

    Args:
        net: ``forward(x_t [B, ...])`` returns spikes ``[B, K]`` or a tuple whose first element is the spikes.

    Shape: input ``[T, B, ...]``, output spikes ``[T, B, K]``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        reset_neurons(self.net)
        out = torch.stack([first(self.net(x[t])) for t in range(x.shape[0])])
        reset_neurons(self.net)  # drop the last step's graph held by the neurons
        return out


class FullyConnected(nn.Module):
    """A fully connected Leaky SNN with its own time loop, as snntorch's tutorial 5 writes one.

    ``flatten -> fc1 64->128 -> Leaky -> fc2 128->64 -> Leaky -> fc3 64->10 -> Leaky``; beta 0.9, ATan surrogate.
    The output layer is small (640 of the 8,832 prunable weights): a per-layer-uniform allocation starves it.

    Shape: input ``[T, B, 1, 8, 8]``, output spikes ``[T, B, 10]``.
    """

    def __init__(self, sizes: Sequence[int] = (64, 128, 64, 10), beta: float = 0.9) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.lif1 = snn.Leaky(beta=beta)
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.lif2 = snn.Leaky(beta=beta)
        self.fc3 = nn.Linear(sizes[2], sizes[3])
        self.lif3 = snn.Leaky(beta=beta)

    def forward(self, x: Tensor) -> Tensor:
        mem1, mem2, mem3 = self.lif1.reset_mem(), self.lif2.reset_mem(), self.lif3.reset_mem()
        spk_rec = []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t].flatten(1)), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk3, mem3 = self.lif3(self.fc3(spk2), mem3)
            spk_rec.append(spk3)
        reset_neurons(self)
        return torch.stack(spk_rec)


def tutorial_sequential(beta: float = 0.5) -> nn.Sequential:
    """snntorch tutorial 6's convolutional SNN, single-step, for 8x8 inputs (padding keeps 8 -> 4 -> 2).

    ``conv 1->12 5x5 - maxpool 2 - Leaky - conv 12->64 5x5 - maxpool 2 - Leaky - flatten - fc 256->10 -
    Leaky(output=True)``, no BatchNorm, fast-sigmoid surrogate (slope 25), ``init_hidden=True``.

    Shape: input ``[B, 1, 8, 8]`` (one step), output ``(spikes [B, 10], membrane [B, 10])``.
    """
    grad = surrogate.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 12, 5, padding=2), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
        nn.Conv2d(12, 64, 5, padding=2), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
        nn.Flatten(), nn.Linear(64 * 2 * 2, CLASSES),
        snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True, output=True),
    )


class Recurrent(nn.Module):
    """A recurrent SNN: ``flatten -> fc1 64->128 -> RLeaky (all-to-all recurrent 128x128) -> fc2 128->10 -> Leaky``.

    beta 0.9, own time loop. The recurrent ``Linear`` inside ``RLeaky`` (``rlif1.recurrent``) is a prunable target
    like any other (16,384 of the 17,664 prunable weights).

    Shape: input ``[T, B, 1, 8, 8]``, output spikes ``[T, B, 10]``.
    """

    def __init__(self, hidden: int = 128, beta: float = 0.9) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.rlif1 = snn.RLeaky(beta=beta, linear_features=hidden)
        self.fc2 = nn.Linear(hidden, CLASSES)
        self.lif2 = snn.Leaky(beta=beta)

    def forward(self, x: Tensor) -> Tensor:
        spk1, mem1 = self.rlif1.reset_mem()
        mem2 = self.lif2.reset_mem()
        spk_rec = []
        for t in range(x.shape[0]):
            spk1, mem1 = self.rlif1(self.fc1(x[t].flatten(1)), spk1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
        reset_neurons(self)
        return torch.stack(spk_rec)


class SynapticConv(nn.Module):
    """A deeper narrow convolutional SNN with BatchNorm and second-order (``snn.Synaptic``) neurons.

    ``[conv3x3 - BN - Synaptic] 1->16 at 8x8, 16->32 then maxpool (4x4), 32->64 then maxpool (2x2), fc 256->10 -
    Synaptic``; alpha 0.5 (synaptic current decay), beta 0.5. The stateless layers run on all time steps at once
    (time folded into the batch); the neurons loop over time.

    Shape: input ``[T, B, 1, 8, 8]``, output spikes ``[T, B, 10]``.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), alpha: float = 0.5, beta: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1))
        self.syn1 = snn.Synaptic(alpha=alpha, beta=beta)
        self.conv2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2))
        self.syn2 = snn.Synaptic(alpha=alpha, beta=beta)
        self.conv3 = nn.Sequential(nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3))
        self.syn3 = snn.Synaptic(alpha=alpha, beta=beta)
        self.fc = nn.Linear(c3 * 2 * 2, CLASSES)
        self.syn_out = snn.Synaptic(alpha=alpha, beta=beta)
        self.pool = nn.MaxPool2d(2)

    @staticmethod
    def _per_step(layer: nn.Module, x: Tensor) -> Tensor:
        T, B = x.shape[:2]
        y = layer(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])

    @staticmethod
    def _spiking(neuron: snn.Synaptic, current: Tensor) -> Tensor:
        syn, mem = neuron.reset_mem()
        spikes = []
        for t in range(current.shape[0]):
            spk, syn, mem = neuron(current[t], syn, mem)
            spikes.append(spk)
        neuron.reset_mem()
        return torch.stack(spikes)

    def forward(self, x: Tensor) -> Tensor:
        s = self._spiking(self.syn1, self._per_step(self.conv1, x))
        s = self._per_step(self.pool, self._spiking(self.syn2, self._per_step(self.conv2, s)))
        s = self._per_step(self.pool, self._spiking(self.syn3, self._per_step(self.conv3, s)))
        return self._spiking(self.syn_out, self._per_step(self.fc, s.flatten(2)))


# ------------------------------------------------------------------------------------------------ factories
def fc() -> nn.Module:
    """:class:`FullyConnected` (``[T, B, 1, 8, 8] -> [T, B, 10]``)."""
    return FullyConnected()


def tutorial_conv() -> nn.Module:
    """:func:`tutorial_sequential` wrapped in :class:`MultiStep` (``[T, B, 1, 8, 8] -> [T, B, 10]``)."""
    return MultiStep(tutorial_sequential())


def recurrent() -> nn.Module:
    """:class:`Recurrent` (``[T, B, 1, 8, 8] -> [T, B, 10]``)."""
    return Recurrent()


def synaptic_conv() -> nn.Module:
    """:class:`SynapticConv` (``[T, B, 1, 8, 8] -> [T, B, 10]``)."""
    return SynapticConv()


# ------------------------------------------------------------------------------------------------ the panel
@dataclass(frozen=True)
class PanelModel:
    """One model of the panel and how it is pretrained.

    Attributes:
        name: short name (table rows, file names).
        factory: ``package.module:factory`` (``None`` for the shipped zoo checkpoint).
        T: time steps per inference.
        epochs, lr, batch_size: dense pretraining with rccsnn's Trainer (Adam, cosine schedule, best validation
            epoch kept), seed 0.
        about: one line for the report.
    """

    name: str
    factory: Optional[str]
    T: int
    epochs: int = 40
    lr: float = 2e-3
    batch_size: int = 32
    about: str = ""


PANEL: Dict[str, PanelModel] = {m.name: m for m in (
    PanelModel("convsnn", None, 4, about="rccsnn zoo convsnn (64, 128 channels, BN, hidden 512), shipped checkpoint"),
    PanelModel("fc", "benchmarks.panel_models:fc", 8, about="fully connected 64-128-64-10, snn.Leaky, own loop"),
    PanelModel("tutorial_conv", "benchmarks.panel_models:tutorial_conv", 6,
               about="snntorch tutorial-6 Sequential (init_hidden), 12 and 64 5x5 convs, no BN"),
    PanelModel("recurrent", "benchmarks.panel_models:recurrent", 8,
               about="64-128-10 with snn.RLeaky (recurrent 128x128 weights pruned too)"),
    PanelModel("synaptic_conv", "benchmarks.panel_models:synaptic_conv", 4,
               about="3 convs 16-32-64 with BN, snn.Synaptic neurons"),
)}


def build(name: str) -> nn.Module:
    """A fresh (untrained) panel model by name (not ``convsnn``, which is the shipped checkpoint)."""
    from rccsnn.models.checkpoint import import_factory

    spec = PANEL[name]
    if spec.factory is None:
        raise ValueError(f"{name} is not built here: it is the shipped checkpoint {SHIPPED_CONVSNN}")
    return import_factory(spec.factory)()


def recipe(name: str, epochs: Optional[int] = None) -> dict:
    """What :func:`pretrain` records in the checkpoint (and compares, to reuse a pretrained file)."""
    spec = PANEL[name]
    out = asdict(spec)
    out.pop("about")
    if epochs is not None:
        out["epochs"] = epochs
    return {"panel_model": out, "data": "digits", "seed": 0}


def pretrain(name: str, path: Path, epochs: Optional[int] = None, progress: bool = False) -> Dict[str, float]:
    """Train panel model ``name`` densely on digits with rccsnn's Trainer (seed 0) and save an rccsnn checkpoint.

    The checkpoint's ``arch`` is the factory path, so ``rccsnn evaluate|compress FILE --model FACTORY`` load it.
    Returns ``{"val_accuracy", "test_accuracy"}`` (fractions).
    """
    from rccsnn.data import load_data
    from rccsnn.models.checkpoint import ModelSpec, save_checkpoint
    from rccsnn.trainer import Trainer, TrainerOptions

    spec = PANEL[name]
    rec = recipe(name, epochs)
    data = load_data("digits")
    model_spec = ModelSpec(arch=spec.factory, input_shape=data.input_shape, num_classes=data.num_classes,
                           data=data.name, T=spec.T, encoding="direct", loss="ce")
    torch.manual_seed(0)
    net = build(name)
    options = TrainerOptions(epochs=rec["panel_model"]["epochs"], lr=spec.lr, batch_size=spec.batch_size, seed=0,
                             progress=progress, desc=f"pretrain {name}")
    trainer = Trainer(net=net, data=data, spec=model_spec, options=options)
    fit = trainer.fit()
    metrics = {"val_accuracy": fit["best_val"], "test_accuracy": trainer.evaluate("test").accuracy,
               "best_epoch": fit["best_epoch"] + 1}
    save_checkpoint(path, trainer.net, model_spec, metrics=metrics, recipe=rec)
    return metrics


def pretrain_announced(name: str, path: Path, epochs: Optional[int] = None) -> Dict[str, float]:
    """:func:`pretrain` as the benchmarks run it: one line before, the accuracies after, the Trainer's line per epoch
    silenced."""
    import contextlib
    import io

    print(f"pretraining {name} ({recipe(name, epochs)['panel_model']['epochs']} epochs, seed 0) -> {path}", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = pretrain(name, path, epochs)
    print(f"  {name}: test {100 * metrics['test_accuracy']:.2f} %, val {100 * metrics['val_accuracy']:.2f} %",
          flush=True)
    return metrics


def prunable_weights(net: nn.Module) -> int:
    """Weights of the conv/linear layers rccsnn prunes by default (all but the first)."""
    from rccsnn.masks import find_targets

    return sum(t.n for t in find_targets(net))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Pretrain the panel models (seed 0) and print their sizes.")
    p.add_argument("--out", default="runs/benchmarks/panel-pretrained", help="where <name>.pt go")
    p.add_argument("--models", nargs="+", default=[n for n, m in PANEL.items() if m.factory], choices=list(PANEL))
    p.add_argument("--epochs", type=int, default=None, help="override every model's pretraining epochs")
    args = p.parse_args(argv)
    for name in args.models:
        if PANEL[name].factory is None:
            print(f"{name}: the shipped {SHIPPED_CONVSNN}")
            continue
        path = Path(args.out) / f"{name}.pt"
        m = pretrain(name, path, args.epochs)
        print(f"{name}: {prunable_weights(build(name)):,} prunable weights, test {100 * m['test_accuracy']:.2f} %, "
              f"val {100 * m['val_accuracy']:.2f} % (epoch {m['best_epoch']}) -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    raise SystemExit(main())
