"""The library calls, one per CLI command: ``train``, ``compress``, ``evaluate``, ``report``, ``export``.

Each takes what a user holds - a model file or a loaded model, a recipe file, a config object or a dict of dotted
settings - and returns what the command prints, as data. The CLI parses its flags into the same arguments and
prints the result; nothing here parses flags or prints.

Example::

    import rccsnn

    result = rccsnn.compress("checkpoints/digits_convsnn.pt", {"params": 0.05}, settings={"optim.epochs": 10})
    print(result.accuracy["compressed"], result.resources["params"]["ratio"])
    costs = rccsnn.report(result.checkpoint)                  # per-layer weights, MACs, SynOps, energy, bytes
    rccsnn.export(result.checkpoint, "model.compact.pt")     # the deployable sparse file

``compress``, ``evaluate`` and ``report`` also take the user's own module and DataLoaders (dispatched on the type
of the first argument; :mod:`rccsnn.objects`)::

    result = rccsnn.compress(net, train_loader, val_loader, budget=0.05, resource="synops", T=25, epochs=10)
    result.model, result.summary
    rccsnn.report(result.model, val_loader, T=25)
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import textwrap
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type, TypeVar, Union

import torch
from torch import nn

from rccsnn.compression import RunResult
from rccsnn.compression import compress as compress_loaded
from rccsnn.config import CompressConfig, TrainConfig, from_dict, read_yaml, set_path
from rccsnn.data import DataSplits
from rccsnn.formats import ExportResult
from rccsnn.formats import export as export_loaded
from rccsnn.loading import DataSource, fill_recorded_data, load_model, recorded_data
from rccsnn.metrics import check_fit
from rccsnn.metrics import evaluate as evaluate_loaded
from rccsnn.metrics import report as report_loaded
from rccsnn.models.checkpoint import LoadedModel
from rccsnn.distributed import resolve_device
from rccsnn.objects import compress_module, evaluate_module, report_module, train_module
from rccsnn.training import TrainResult
from rccsnn.training import train as train_config

Model = Union[str, Path, LoadedModel]
Data = Union[str, DataSplits, None]
C = TypeVar("C", TrainConfig, CompressConfig)


def _config(cls: Type[C], source: Union[C, str, Path, Mapping[str, Any], None],
            settings: Optional[Mapping[str, Any]]) -> C:
    """A config from an object, a YAML file or a nested dict, with dotted ``settings`` on top, validated."""
    if isinstance(source, cls):
        data: Dict[str, Any] = dataclasses.asdict(source)
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        data = read_yaml(str(source)) if source is not None else {}
    for key, value in (settings or {}).items():
        set_path(data, key, value)
    cfg = from_dict(cls, data)
    cfg.validate()
    return cfg


def _loaded(model: Model) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def _file(model: Model) -> Optional[str]:
    """The model file ``model`` names; ``None`` for a model object."""
    return None if isinstance(model, LoadedModel) else str(model)


def _data(data: Data, loaded: LoadedModel, model: Model) -> DataSplits:
    """The data set to measure ``loaded`` on (by default the one its file recorded, its data file included), checked
    to fit it."""
    if isinstance(data, DataSplits):
        splits = data
    else:
        splits = recorded_data(loaded, _file(model), DataSource(name=data)).load(default=loaded.spec.data)
    check_fit(loaded, splits)
    return splits


@functools.singledispatch
def train(recipe: Union[TrainConfig, str, Path, Mapping[str, Any]], *, settings: Optional[Mapping[str, Any]] = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train a model from a recipe (``rccsnn train``); ``settings`` are dotted overrides (``{"optim.epochs": 5}``).
    A run already in the run directory is continued only with ``resume`` and replaced only with ``overwrite``.

    ``train(net, train_loader, val_loader, *, T, epochs, ...)`` trains an ``nn.Module`` in place on DataLoaders
    instead (:func:`rccsnn.objects.train_module`)."""
    return train_config(_config(TrainConfig, recipe, settings), resume=resume, overwrite=overwrite,
                        progress=progress)


@functools.singledispatch
def compress(model: Model, budgets: Optional[Mapping[str, float]] = None, *,
             config: Union[CompressConfig, str, Path, Mapping[str, Any], None] = None,
             settings: Optional[Mapping[str, Any]] = None, resume: bool = False, overwrite: bool = False,
             progress: bool = True) -> RunResult:
    """Compress ``model`` to ``budgets`` (resource -> fraction of dense), as ``rccsnn compress`` does.

    Args:
        model: a model file or a :class:`LoadedModel`.
        budgets: e.g. ``{"params": 0.05}``; added to the config's.
        config: a :class:`CompressConfig`, a YAML file or a dict with the same sections.
        settings: dotted overrides, e.g. ``{"method.name": "gmp", "optim.epochs": 10, "out": "runs/x"}``.
        resume, overwrite: continue the unfinished run in the run directory, or replace the run there; without
            either a directory that holds a run is an error.

    Returns:
        The :class:`RunResult` (also written to ``<out>/summary.json``; the model to ``<out>/model.pt``).

    ``compress(net, train_loader, val_loader, *, budget, resource, T, ...)`` with an ``nn.Module`` compresses that
    module object in place and returns a :class:`~rccsnn.objects.ModuleResult` (``model``, ``summary``,
    ``checkpoint``); its arguments are those of :func:`rccsnn.objects.compress_module`, below.
    """
    loaded = _loaded(model)
    overrides: Dict[str, Any] = dict(settings or {})
    # ``model`` names the run directory (and is recorded in config.yaml); an object is named after its architecture.
    overrides.setdefault("model", _file(model) or loaded.spec.arch)
    overrides.update({f"budgets.{name}": fraction for name, fraction in (budgets or {}).items()})
    cfg = _config(CompressConfig, config, overrides)
    fill_recorded_data(cfg.data, loaded, _file(model))
    return compress_loaded(cfg, loaded, resume=resume, overwrite=overwrite, progress=progress)


@functools.singledispatch
def evaluate(model: Model, *, data: Data = None, split: str = "test", device: Union[str, torch.device] = "auto",
             batch_size: int = 512) -> Dict[str, Any]:
    """Accuracy, weights, nonzero weights, MACs and firing rates of ``model`` on ``split`` (``rccsnn evaluate``).

    ``evaluate(net, loader, *, T, encoding="direct", loss="ce", steps=None, device="auto")`` measures an
    ``nn.Module`` on a DataLoader instead (:func:`rccsnn.objects.evaluate_module`)."""
    loaded = _loaded(model)
    return evaluate_loaded(loaded, _data(data, loaded, model), split, resolve_device(device), batch_size=batch_size)


@functools.singledispatch
def report(model: Model, *, data: Data = None, split: str = "val", device: Union[str, torch.device] = "auto",
           batch_size: int = 512) -> Dict[str, Any]:
    """Per-layer and total costs of ``model`` on ``split``: weights, MACs, SynOps, energy, bytes (``rccsnn report``).

    The default split is the validation split, on which compression measured the budgets.

    ``report(net, loader, *, T, encoding="direct", loss="ce", steps=None, device="auto")`` measures an
    ``nn.Module`` on a DataLoader instead (:func:`rccsnn.objects.report_module`).
    """
    loaded = _loaded(model)
    return report_loaded(loaded, _data(data, loaded, model), split, resolve_device(device), batch_size=batch_size,
                         file=_file(model))


def export(model: Model, out: Union[str, Path], *, format: str = "compact", dtype: str = "float32",
           per_channel: bool = False, data: Data = None, split: Optional[str] = "test",
           device: Union[str, torch.device] = "auto", overwrite: bool = False) -> ExportResult:
    """Write ``model`` as a compact sparse file or a NIR graph (``rccsnn export``); see :func:`rccsnn.formats.export`.
    An existing ``out`` is replaced only with ``overwrite``."""
    loaded = _loaded(model)
    splits = _data(data, loaded, model) if split is not None else None
    return export_loaded(loaded, out, format=format, dtype=dtype, per_channel=per_channel, data=splits, split=split,
                         device=device, overwrite=overwrite)


# The same calls on a module object and DataLoaders (rccsnn.objects), chosen by the first argument's type.
train.register(nn.Module, train_module)
compress.register(nn.Module, compress_module)
evaluate.register(nn.Module, evaluate_module)
report.register(nn.Module, report_module)
compress.__doc__ += "\n" + textwrap.indent(inspect.cleandoc(compress_module.__doc__ or ""), "    ")



