"""Load any model file rccsnn accepts, whatever wrote it: the one entry point of evaluate, report, export,
compress, sweep and the benchmarks.

* a compact file (``rccsnn export``, :mod:`rccsnn.formats.compact`), recognised without unpickling it;
* an rccsnn checkpoint (:mod:`rccsnn.models.checkpoint`);
* a bare state_dict, or a dict with a ``state_dict`` key, plus ``model="package.module:factory"``;
* a whole pickled ``nn.Module``, only with ``trust=True`` (unpickling it runs code stored in the file).

Every file is read with ``torch.load(weights_only=True)`` first, so nothing in it runs unless ``trust`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from rccsnn.data import DataSplits, load_data
from rccsnn.errors import UserError
from rccsnn.formats.compact import is_compact_file, load_compact
from rccsnn.models.checkpoint import LoadedModel, ModelSpec, load_checkpoint
from rccsnn.contracts import STEPS
from rccsnn.snn import ENCODERS, LOSSES


@dataclass(frozen=True)
class DataSource:
    """Where a data set comes from (the ``--data``, ``--data-root``, ``--data-path`` and ``--download`` options,
    and a recipe's ``data.frames``).

    ``name`` None means the data set the model file recorded (digits for files that record none). ``frames`` are
    the binning settings of an event set as ``(key, value)`` pairs: a tuple, not a dict, so the source stays
    hashable and frozen; build it with :meth:`frames_of`.
    """

    name: Optional[str] = None
    root: str = "data"
    path: Optional[str] = None
    download: bool = False
    frames: Tuple[Tuple[str, Any], ...] = ()

    @staticmethod
    def frames_of(frames: Optional[Mapping[str, Any]]) -> Tuple[Tuple[str, Any], ...]:
        """``frames`` (a mapping such as a config's ``data.frames``) in the form this class stores, sorted by key."""
        return tuple(sorted((frames or {}).items()))

    def load(self, default: str = "digits") -> DataSplits:
        return load_data(self.name or default, root=self.root, download=self.download, path=self.path,
                         frames=dict(self.frames))


def load_model(path: str | Path, model: Optional[str] = None, trust: bool = False,
               fallback: Optional[ModelSpec] = None) -> LoadedModel:
    """The network in ``path`` in eval mode, with its spec and whatever else the file recorded.

    Args:
        path: a compact file, a checkpoint, a state_dict (needs ``model``) or a pickled module (needs ``trust``).
        model: ``package.module:factory`` of a user architecture; calling it is the user's explicit choice.
        trust: allow unpickling arbitrary objects (runs code from the file).
        fallback: the spec of files that record none (state_dicts and pickled modules).

    Raises:
        UserError: one line, for a missing, unreadable, untrusted or corrupt file.
    """
    if is_compact_file(path):
        return load_compact(path, model=model)
    return load_checkpoint(path, model=model, trust=trust, fallback=fallback)


def load_model_file(path: Optional[str | Path], *, model: Optional[str] = None, trust: bool = False,
                    data: DataSource = DataSource(), T: Optional[int] = None, encoding: Optional[str] = None,
                    loss: Optional[str] = None, steps: Optional[str] = None) -> LoadedModel:
    """:func:`load_model` with the model-file options of the CLI: a file that records no spec (a state_dict with
    ``model``, a trusted pickled module) runs on ``data`` (its sample shape and class count) with ``T`` (default
    4), ``encoding`` (default direct), ``loss`` (default ce) and the contract ``steps`` (default: detected by a
    probe forward, :mod:`rccsnn.contracts`); the four also override what a file recorded."""
    fallback = None
    if model or trust:
        splits = data.load()
        events = splits.steps  # time steps of event data (samples [T, ...]); None for static data
        fallback = ModelSpec(arch=model or "pickled-module", input_shape=tuple(splits.input_shape),
                             num_classes=splits.num_classes, data=data.name or "digits", T=T or events or 4,
                             encoding=encoding or ("none" if events else "direct"), loss=loss or "ce",
                             steps=steps or "auto")
    if path is None:
        raise UserError("no model file: give MODEL (or 'model:' in the config)")
    loaded = load_model(path, model=model, trust=trust, fallback=fallback)
    for name, value in (("T", T), ("encoding", encoding), ("loss", loss), ("steps", steps)):
        if value:
            setattr(loaded.spec, name, value)
    ENCODERS.get(loaded.spec.encoding)
    LOSSES.get(loaded.spec.loss)
    STEPS.get(loaded.spec.steps)
    return loaded


def model_and_data(path: Optional[str | Path], *, data: DataSource = DataSource(),
                   **options: Any) -> Tuple[LoadedModel, DataSplits]:
    """The model file (``options`` as :func:`load_model_file` takes them) and its data set (by default the one it
    recorded): what evaluate, report and export measure on."""
    loaded = load_model_file(path, data=data, **options)
    data = recorded_data(loaded, path, data)
    return loaded, data.load(default=loaded.spec.data)


def recorded_data(loaded: LoadedModel, path: Optional[str | Path], data: DataSource) -> DataSource:
    """``data`` with the data file, data root and frame settings the model file recorded filled in where the user
    gave none.

    A model trained or compressed on a file (an npz) or under a data root (torchvision and tonic sets) records them in
    the checkpoint's recipe, so ``evaluate``, ``report`` and ``export`` of it need no repeated ``--data-path`` or
    ``--data-root`` (nor the event set's ``data.frames``, which fix its T). The recorded path is used as it was written
    when it exists from here, else relative to the model file's directory (a run directory moved with its data);
    otherwise as written, and the loader's error names it. A ``--data`` naming another data set, or a
    ``--data-path``, is the user's choice and wins.
    """
    recorded = (loaded.recipe or {}).get("data")
    if not isinstance(recorded, dict):  # a recipe is free-form (a panel model records "data": "digits")
        return data
    trained_on = recorded.get("name") or loaded.spec.data
    if (data.name or loaded.spec.data) != trained_on:
        return data

    def found(value: Any) -> str:
        written = Path(str(value))
        beside = Path(path).parent / written if path is not None and not written.is_absolute() else written
        return str(written if written.exists() or not beside.exists() else beside)

    # An event set's frame settings fix the model's T: evaluating with other bins would not fit it.
    if not data.frames and isinstance(recorded.get("frames"), dict) and recorded["frames"]:
        data = replace(data, frames=DataSource.frames_of(recorded["frames"]))
    if data.root == DataSource.root and recorded.get("root") and recorded["root"] != DataSource.root:
        data = replace(data, root=found(recorded["root"]))  # torchvision and tonic sets live under a root
    if data.path is None and recorded.get("path"):
        data = replace(data, path=found(recorded["path"]))
    return data


def fill_recorded_data(data: Any, loaded: LoadedModel, path: Optional[str | Path]) -> None:
    """Fill a config's data section (``name``, ``root``, ``path``, ``frames``) with what the model recorded where the
    config gives nothing (:func:`recorded_data`), so that compressing a model trained on an npz or an event set needs
    no repeated ``--data-path``, ``--data-root`` or frame settings, and the compressed file records them too."""
    given = DataSource(name=data.name, root=data.root, path=data.path, frames=DataSource.frames_of(data.frames))
    source = recorded_data(loaded, path, given)
    data.path, data.root, data.frames = source.path, source.root, dict(source.frames)


__all__ = ["DataSource", "fill_recorded_data", "load_model", "load_model_file", "model_and_data", "recorded_data"]
