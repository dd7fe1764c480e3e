"""The library calls on what a notebook holds: the user's own ``nn.Module`` and ``DataLoader``\\ s.

    result = rccsnn.compress(net, train_loader, val_loader, budget=0.05, resource="synops", T=25, epochs=10)
    result.model      # the same module object, pruned weights zero, no parametrizations left
    result.summary    # what summary.json holds

The module runs as it is written (single-step or multi-step, :mod:`rccsnn.contracts`). Loaders yield ``(x, y)``:
static inputs ``x [B, ...]``, encoded each batch by ``encoding`` (``direct``, ``rate``), or time-major event tensors
``x [T, B, ...]`` with ``encoding="none"``. rccsnn reads each loader's dataset with its own seeded sampler (so a run
is reproducible and resumable), in the loader's batch size and with its ``collate_fn``; the loader's own order is
not used. Everything else is :func:`rccsnn.compression.compress` and :mod:`rccsnn.metrics`, as for model files.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from rccsnn.compression import compress as compress_loaded
from rccsnn.config import CompressConfig, from_dict
from rccsnn.contracts import output_units, probe_input
from rccsnn.data import DataSplits
from rccsnn.distributed import resolve_device
from rccsnn.errors import UserError
from rccsnn.metrics import evaluate as evaluate_loaded
from rccsnn.metrics import report as report_loaded
from rccsnn.models.checkpoint import LoadedModel, ModelSpec, resolve_steps
from rccsnn.monitor import Monitor
from rccsnn.snn import ENCODERS, LOSSES
from rccsnn.trainer import Trainer, TrainerOptions


@dataclass
class LoaderSplits(DataSplits):
    """:class:`DataSplits` read from the user's loaders: their datasets, batched with the loaders' ``collate_fn``."""

    collate_fn: Optional[Callable] = None

    @property
    def collate(self) -> Optional[Callable]:  # type: ignore[override]
        return self.collate_fn


@dataclass
class ModuleResult:
    """What :func:`compress_module` returns.

    Attributes:
        model: the user's module (the object passed in), compressed: pruned weights are zero, no parametrization is
            left, ``model.state_dict()`` loads into the user's class with ``strict=True``; in eval mode.
        summary: the run's ``summary.json`` (method, budgets, per-resource dense/compressed/ratio, accuracy, events).
        checkpoint: ``<out>/model.pt``, or ``None`` when ``out`` was ``None`` (nothing was kept on disk).
    """

    model: nn.Module
    summary: Dict[str, Any]
    checkpoint: Optional[str]


def _dataset(loader: Any, role: str):
    if not isinstance(loader, DataLoader):
        raise UserError(f"{role} must be a torch DataLoader yielding (x, y), got {type(loader).__name__}")
    try:
        len(loader.dataset)
    except TypeError:
        raise UserError(f"{role}: rccsnn needs a map-style dataset (with len), not an iterable one") from None
    if loader.batch_size is None:
        raise UserError(f"{role}: rccsnn batches the loader's dataset itself; give the DataLoader a batch_size")
    return loader.dataset


def _first_batch(loader: DataLoader, role: str, T: int, encoding: str) -> Tensor:
    """The first ``x`` of ``loader``, checked to be what ``encoding`` takes (a one-line error otherwise)."""
    batch = next(iter(loader), None)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(b, Tensor) for b in batch)):
        raise UserError(f"{role} must yield (x, y) tensor pairs, got "
                        f"{type(batch).__name__ if not isinstance(batch, (tuple, list)) else f'{len(batch)} items'}")
    x, y = batch
    batch_dim = 1 if encoding == "none" else 0
    if y.dim() != 1 or x.dim() <= batch_dim or x.shape[batch_dim] != y.shape[0]:
        layout = "[T, B, ...] (encoding 'none')" if encoding == "none" else f"[B, ...] (encoding '{encoding}')"
        raise UserError(f"{role} yields x of shape {list(x.shape)} and y of shape {list(y.shape)}; expected x "
                        f"{layout} and y [B] class indices")
    try:
        ENCODERS.get(encoding)(x, T)  # 'none' checks that the batch has T steps
    except UserError as exc:
        raise UserError(f"{role}: {exc}") from None
    return x


def loader_splits(train_loader: DataLoader, val_loader: DataLoader, test_loader: Optional[DataLoader], *, T: int,
                  encoding: str) -> LoaderSplits:
    """The splits the loaders hold (test defaults to validation), with the per-step input shape of their batches."""
    datasets = [_dataset(train_loader, "train_loader"), _dataset(val_loader, "val_loader")]
    datasets.append(_dataset(test_loader, "test_loader") if test_loader is not None else datasets[1])
    x = _first_batch(val_loader, "val_loader", T, encoding)
    _first_batch(train_loader, "train_loader", T, encoding)
    shape = tuple(x.shape[2:] if encoding == "none" else x.shape[1:])
    collate = train_loader.collate_fn
    for role, loader in (("val_loader", val_loader), ("test_loader", test_loader)):
        if loader is not None and loader.collate_fn is not collate:
            raise UserError(f"{role} batches with another collate_fn than train_loader; rccsnn batches every split "
                            f"with one (give the loaders the same collate_fn)")
    collate = collate if collate is not default_collate else None
    return LoaderSplits(name="loaders", train=datasets[0], val=datasets[1], test=datasets[2], input_shape=shape,
                        num_classes=0, steps=T if encoding == "none" else None, collate_fn=collate)


def loaded_module(net: nn.Module, splits: DataSplits, *, T: int, encoding: str, loss: str,
                  steps: Optional[str]) -> LoadedModel:
    """``net`` with the spec that runs it on ``splits``: its contract detected (unless ``steps``) and its class
    count read from one forward pass."""
    if not isinstance(net, nn.Module):
        raise UserError(f"the model must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(T, int) or T < 1:
        raise UserError(f"T must be a positive number of time steps, got {T!r}")
    ENCODERS.get(encoding)
    LOSSES.get(loss)
    arch = f"{type(net).__module__}:{type(net).__qualname__}"
    spec = ModelSpec(arch=arch, input_shape=tuple(splits.input_shape), num_classes=0, data=splits.name, T=T,
                     encoding=encoding, loss=loss, steps=steps or "auto")
    resolve_steps(net, spec)
    spec.num_classes = output_units(net, probe_input(net, spec.input_shape, T), spec.steps)
    splits.num_classes = spec.num_classes
    return LoadedModel(net=net, spec=spec)


def compress_module(net: nn.Module, train_loader: DataLoader, val_loader: DataLoader, *,
                    budget: Optional[float] = None, resource: str = "params",
                    constraints: Optional[Mapping[str, float]] = None, T: int, encoding: str = "direct",
                    loss: str = "ce", steps: Optional[str] = None, epochs: int = 30, lr: float = 1e-3,
                    method: str = "minimax", schedule: str = "joint", options: Optional[Mapping[str, Any]] = None,
                    targets: Optional[Mapping[str, Any]] = None, resources: Optional[Mapping[str, Any]] = None,
                    test_loader: Optional[DataLoader] = None, out: Optional[str] = None, seed: int = 0,
                    progress: bool = True, device: str = "auto", resume: bool = False,
                    overwrite: bool = False) -> ModuleResult:
    """Compress the module ``net`` in place to a budget, trained on ``train_loader`` and measured on ``val_loader``.

    Args:
        net: the user's SNN, single-step or multi-step (:mod:`rccsnn.contracts`), trained or not.
        train_loader, val_loader: DataLoaders of ``(x, y)``; the budget is measured on the validation data.
        budget, resource: one budget, a fraction of the dense model's ``resource`` (``params``, ``macs``,
            ``synops``, ``energy``).
        constraints: further budgets, ``{resource: fraction}`` (the YAML ``budgets``).
        T: time steps per inference; with ``encoding="none"`` the loaders' batches must have T steps.
        encoding: ``direct`` (the static input every step), ``rate`` (Bernoulli spikes) or ``none`` (``x`` is
            already ``[T, B, ...]``).
        loss: ``ce`` (spike-count cross-entropy), ``rate_ce``, ``count_mse``, ``mse``, ``mem_ce`` (output
            membrane, as snntorch tutorial 5 trains), ``mem_max_ce``.
        steps: ``single`` or ``multi``; ``None`` detects the contract with one probe forward.
        epochs, lr: the run's length and Adam's learning rate (the YAML ``optim``).
        method, schedule, options: the compression method (``minimax``, ``gmp``, ``magnitude``, ``criticality``,
            ...), ``joint`` or ``sequential``, and the method's own options (the YAML ``method``).
        targets: which layers may be pruned (the YAML ``targets``: ``include``, ``exclude``, ``exclude_first``).
        resources: constants of the cost models (the YAML ``resources``).
        test_loader: where the final accuracy is measured (default: ``val_loader``).
        out: the run directory (config.yaml, TensorBoard, state.pt, model.pt, summary.json); ``None`` keeps
            nothing on disk.
        seed, progress, device: as the CLI's ``--seed``, ``--no-progress``, ``--device``.
        resume, overwrite: continue or replace the run in ``out``.

    Returns:
        :class:`ModuleResult`: ``model`` (``net`` itself, compressed), ``summary``, ``checkpoint``.

    Raises:
        UserError: a one-line message for bad arguments, loaders that yield the wrong shapes, or a model whose output
            fits neither contract.
    """
    budgets = dict(constraints or {})
    if budget is not None:
        budgets[resource] = budget
    splits = loader_splits(train_loader, val_loader, test_loader, T=T, encoding=encoding)
    loaded = loaded_module(net, splits, T=T, encoding=encoding, loss=loss, steps=steps)
    settings = {
        "model": loaded.spec.arch, "budgets": budgets, "seed": seed, "device": device,
        "method": {"name": method, "schedule": schedule, "options": dict(options or {})},
        "optim": {"epochs": epochs, "lr": lr},
        "data": {"batch_size": train_loader.batch_size, "eval_batch_size": val_loader.batch_size},
        "targets": dict(targets or {}), "resources": dict(resources or {}),
    }
    with tempfile.TemporaryDirectory(prefix="rccsnn-") as scratch:
        settings["out"] = out if out is not None else f"{scratch}/run"
        cfg = from_dict(CompressConfig, settings)
        result = compress_loaded(cfg, loaded, data=splits, resume=resume, overwrite=overwrite, progress=progress)
    summary = result.summary()
    if out is None:
        summary["checkpoint"] = None
    return ModuleResult(model=net.eval(), summary=summary, checkpoint=summary["checkpoint"])


def train_module(net: nn.Module, train_loader: DataLoader, val_loader: DataLoader, *, T: int,
                 encoding: str = "direct", loss: str = "ce", steps: Optional[str] = None, epochs: int = 30,
                 lr: float = 1e-3, test_loader: Optional[DataLoader] = None, seed: int = 0, progress: bool = True,
                 device: Union[str, torch.device] = "auto") -> ModuleResult:
    """Train the module ``net`` in place (dense, Adam with a cosine schedule) and keep its best validated weights;
    arguments as :func:`compress_module`. Nothing is written to disk.

    Returns:
        :class:`ModuleResult` with ``summary`` ``{"val_accuracy", "test_accuracy", "test_loss", "best_epoch",
        "epochs"}``.
    """
    splits = loader_splits(train_loader, val_loader, test_loader, T=T, encoding=encoding)
    loaded = loaded_module(net, splits, T=T, encoding=encoding, loss=loss, steps=steps)
    options = TrainerOptions(epochs=epochs, lr=lr, batch_size=train_loader.batch_size,
                             eval_batch_size=val_loader.batch_size, seed=seed, progress=progress, desc="train")
    torch.manual_seed(seed)
    trainer = Trainer(net=net, data=splits, spec=loaded.spec, options=options, monitor=Monitor(None, progress=progress),
                      device=resolve_device(device))
    fit = trainer.fit()
    test = trainer.evaluate("test")
    summary = {"val_accuracy": fit["best_val"], "test_accuracy": test.accuracy, "test_loss": test.loss,
               "best_epoch": fit["best_epoch"] + 1, "epochs": epochs}
    return ModuleResult(model=net.eval(), summary=summary, checkpoint=None)


def _measured(net: nn.Module, loader: DataLoader, T: int, encoding: str, loss: str,
              steps: Optional[str]) -> tuple:
    splits = loader_splits(loader, loader, loader, T=T, encoding=encoding)
    return loaded_module(net, splits, T=T, encoding=encoding, loss=loss, steps=steps), splits


def evaluate_module(net: nn.Module, loader: DataLoader, *, T: int, encoding: str = "direct", loss: str = "ce",
                    steps: Optional[str] = None, device: Union[str, torch.device] = "auto") -> Dict[str, Any]:
    """Accuracy, weights, nonzero weights, MACs and firing rates of ``net`` on ``loader`` (``rccsnn evaluate
    --json``); arguments as :func:`compress_module`."""
    loaded, splits = _measured(net, loader, T, encoding, loss, steps)
    return evaluate_loaded(loaded, splits, "test", resolve_device(device), batch_size=loader.batch_size)


def report_module(net: nn.Module, loader: DataLoader, *, T: int, encoding: str = "direct", loss: str = "ce",
                  steps: Optional[str] = None, device: Union[str, torch.device] = "auto") -> Dict[str, Any]:
    """Per-layer and total costs of ``net`` on ``loader``: weights, MACs, SynOps, energy, bytes, firing rates
    (``rccsnn report --json``); arguments as :func:`compress_module`."""
    loaded, splits = _measured(net, loader, T, encoding, loss, steps)
    return report_loaded(loaded, splits, "test", resolve_device(device), batch_size=loader.batch_size)


__all__ = ["LoaderSplits", "ModuleResult", "compress_module", "evaluate_module", "loader_splits", "loaded_module",
           "report_module", "train_module"]
