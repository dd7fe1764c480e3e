"""The rccsnn checkpoint format: save and load, safely.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` reads without running any code::

    {
      "format": "rccsnn-checkpoint", "format_version": 1, "rccsnn_version": "0.1.0",
      "arch": "convsnn", "arch_args": {...},          # registry name (or "pkg.module:factory") and its arguments
      "state_dict": {...},                             # tensors; masks are always baked (pruned weights are 0)
      "data": {"name": "digits", "input_shape": [1, 8, 8], "num_classes": 10},
      "T": 4, "encoding": "direct", "loss": "ce", "steps": "multi",   # the model contract (rccsnn.contracts)
      "bits": {"features.3.0": 4},                     # weight bit widths of quantized layers (rccsnn.quant)
      "neuron": {"beta": 0.5, "threshold": 1.0, "reset": "subtract", "surrogate": "atan", "surrogate_alpha": 2.0},
                                                       # zoo models only: a user model's neurons are its own
      "metrics": {...},                                # e.g. {"val_accuracy": 0.98, "test_accuracy": 0.97}
      "recipe": {...},                                 # the resolved configuration that produced it
      "compression": {...},                            # only in compressed models: method, budgets, resources
    }

Models of the user's own design are supported two ways: a state_dict (bare or inside a dict) plus
``model="package.module:factory"`` (the factory is called with no arguments and returns the network as the user
wrote it, single-step or multi-step: :mod:`rccsnn.contracts`), or a whole pickled ``nn.Module``, which runs pickled
code on load and therefore needs ``trust=True``. Files written before the contract was recorded are multi-step.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
import sys
import tempfile
import warnings
import zipfile
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from rccsnn.version import __version__
from rccsnn.config import ModelConfig
from rccsnn.errors import UserError
from rccsnn.contracts import STEPS, detect_steps, probe_input
from rccsnn.quant import check_bits
from rccsnn.models.registry import MODELS, build_model
from rccsnn.rundir import fsync_directory, write_error
from rccsnn.snn import ENCODERS, LOSSES, NeuronConfig

FORMAT = "rccsnn-checkpoint"
FORMAT_VERSION = 1


@dataclass(kw_only=True)
class ModelSpec(ModelConfig):
    """What it takes to rebuild and run a network besides its weights: the model settings of a recipe
    (:class:`~rccsnn.config.ModelConfig`: ``arch``, ``args``, ``T``, ``encoding``, ``loss``, ``neuron``) and what
    the data set fixes (``input_shape`` ``(C, H, W)``, ``num_classes``, the data set's name ``data``), the
    network's contract ``steps`` (``multi`` or ``single``, :mod:`rccsnn.contracts`; ``auto`` until detected) and
    the weight bit width of every quantized layer, ``bits`` (layer name -> 2..16; a layer not named is float32; the
    saved weights are already on their grid, :mod:`rccsnn.quant`).

    One schema for recipes, checkpoints and compact files: :func:`checkpoint_dict` writes it and
    :func:`spec_from_checkpoint` reads it back. ``arch`` is required here. The files call ``args``
    ``arch_args``; ``ModelSpec(arch_args=...)`` (which fills an empty ``args``) and ``spec.arch_args`` accept
    that name too.
    """

    arch: str = field()  # required: field() hides ModelConfig's default, which a bare annotation would inherit
    input_shape: Tuple[int, ...]
    num_classes: int
    data: str = "digits"
    steps: str = "multi"
    bits: Dict[str, int] = field(default_factory=dict)
    arch_args: InitVar[Optional[Dict[str, Any]]] = None

    def __post_init__(self, arch_args: Optional[Dict[str, Any]]) -> None:
        # A non-empty ``args`` wins, so that dataclasses.replace (which passes both) keeps a replaced ``args``.
        if arch_args is not None and not self.args:
            self.args = arch_args

    @classmethod
    def from_config(cls, model: ModelConfig, *, input_shape: Sequence[int], num_classes: int,
                    data: str) -> "ModelSpec":
        """The spec of a network built from a recipe's ``model`` settings for a data set."""
        settings = {f.name: getattr(model, f.name) for f in fields(ModelConfig)}
        return cls(**settings, input_shape=tuple(input_shape), num_classes=num_classes, data=data)


# Read as a property, ``arch_args`` is ``args`` (set after the class: the dataclass takes the name as an InitVar).
ModelSpec.arch_args = property(lambda self: self.args, doc="``args`` under the name the checkpoint files use")


@dataclass
class LoadedModel:
    """A network ready to run, with its spec and whatever else its file recorded."""

    net: nn.Module
    spec: ModelSpec
    metrics: Dict[str, Any] = field(default_factory=dict)
    recipe: Dict[str, Any] = field(default_factory=dict)
    compression: Optional[Dict[str, Any]] = None


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    ``path`` is always either the previous file or the complete new one. Any failure (a full disk, an unwritable
    directory, Ctrl-C) removes the temporary file; a full disk or an unwritable path is a one-line
    :class:`UserError` ("no space left on device writing PATH; ...").
    """
    path = Path(path)
    # Serialise in memory first, so that every byte reaches the disk through one plain file write: on a full disk
    # that is an OSError with errno ENOSPC, whereas torch's zip writer turns it into "RuntimeError: [enforce fail
    # at inline_container.cc] unexpected pos" when it closes the archive.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
    fsync_directory(path.parent)


def checkpoint_dict(
    spec: ModelSpec,
    state_dict: Dict[str, torch.Tensor],
    *,
    metrics: Optional[Dict[str, Any]] = None,
    recipe: Optional[Dict[str, Any]] = None,
    compression: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The checkpoint dict (see the module docstring): the one place its keys are written.

    The compact format (:mod:`rccsnn.formats.compact`) stores the same dict with ``state_dict`` replaced.
    """
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rccsnn_version": __version__,
        "arch": spec.arch,
        "arch_args": dict(spec.args),
        "state_dict": state_dict,
        "data": {"name": spec.data, "input_shape": list(spec.input_shape), "num_classes": spec.num_classes},
        "T": spec.T,
        "encoding": spec.encoding,
        "loss": spec.loss,
        "steps": spec.steps,
        "bits": dict(spec.bits),
        # The neuron settings build a zoo model; a user model's neurons are in its own code (and weights).
        "neuron": spec.neuron.to_dict() if is_zoo(spec.arch) else None,
        "metrics": dict(metrics or {}),
        "recipe": dict(recipe or {}),
    }
    if compression is not None:
        ckpt["compression"] = compression
    return ckpt


def spec_from_checkpoint(raw: Dict[str, Any]) -> ModelSpec:
    """The spec :func:`checkpoint_dict` wrote; ``KeyError`` or ``TypeError`` when a field is missing or malformed."""
    data = raw["data"]
    return ModelSpec(
        arch=raw["arch"],
        args=dict(raw.get("arch_args") or {}),
        input_shape=tuple(data["input_shape"]),
        num_classes=int(data["num_classes"]),
        data=data["name"],
        T=int(raw["T"]),
        encoding=raw["encoding"],
        loss=raw.get("loss", "ce"),
        steps=raw.get("steps", "multi"),
        bits={str(name): check_bits(int(b), f"bits of '{name}'") for name, b in (raw.get("bits") or {}).items()},
        # Required to build a zoo model; a user model's file records none.
        neuron=NeuronConfig(**raw["neuron"]) if is_zoo(raw["arch"]) or raw.get("neuron") else NeuronConfig(),
    )


def is_zoo(arch: str) -> bool:
    """Whether ``arch`` names a registered architecture (built from the spec) rather than user code."""
    return arch in MODELS


def resolve_steps(net: nn.Module, spec: ModelSpec) -> None:
    """Set ``spec.steps`` to the contract ``net`` keeps when it is ``auto``, by one probe forward on random input
    of ``spec.input_shape`` (drawn from a private generator: detecting changes no later result); check it
    otherwise."""
    if spec.steps != "auto":
        STEPS.get(spec.steps)
        return
    if not spec.input_shape:
        raise UserError("cannot detect whether the model is single-step or multi-step without its input shape; "
                        "give --model-steps single|multi")
    spec.steps = detect_steps(net, probe_input(net, spec.input_shape, spec.T))


def save_checkpoint(
    path: str | Path,
    net: nn.Module,
    spec: ModelSpec,
    metrics: Optional[Dict[str, Any]] = None,
    recipe: Optional[Dict[str, Any]] = None,
    compression: Optional[Dict[str, Any]] = None,
) -> None:
    """Write ``net`` (with masks already baked) and its spec in the checkpoint format, atomically."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_save(checkpoint_dict(spec, state, metrics=metrics, recipe=recipe, compression=compression), path)


def import_factory(target: str):
    """Import ``package.module:factory``; any failure is a one-line :class:`UserError`."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--model expects package.module:factory, got '{target}'")
    # The rccsnn console script does not put the working directory on sys.path (python -m and python script.py
    # do), so a factory in ./mymodels.py would not import. Appended, not prepended: a module of the same name that
    # is installed still wins, as it would for the user's own scripts run from elsewhere.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of the user's module
        raise UserError(f"--model {target}: cannot import '{module_name}': {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--model {target}: '{module_name}' has no callable '{attr}'")
    return factory


def _build(spec: ModelSpec, model: Optional[str]) -> nn.Module:
    if ":" in spec.arch:
        if model is None:
            raise UserError(
                f"this checkpoint's architecture is user code ('{spec.arch}'); pass --model {spec.arch} to import it"
            )
        net = import_factory(model)()
    elif model is not None:
        net = import_factory(model)()
    else:
        net = build_model(spec.arch, spec.input_shape, spec.num_classes, spec.neuron, spec.args)
    if not isinstance(net, nn.Module):
        raise UserError(f"--model {model}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    return net


def load_state(net: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error when the state does not fit the architecture."""
    result = None
    try:
        result = net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = [k for k in net.state_dict() if k not in state]
        unexpected = [k for k in state if k not in net.state_dict()]
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if not detail:
            detail.append(str(exc).strip().splitlines()[-1].strip())
        raise UserError(f"{source}: state does not fit the architecture ({'; '.join(detail)})") from None
    return result


# Phrases in torch's weights_only UnpicklingError messages that mean "the file names a Python global (a class or a
# function) that is not on the allowlist", i.e. a pickle that would construct objects or run code when fully loaded.
_GLOBAL_REFUSALS = (
    "unsupported global",  # "Unsupported global: GLOBAL x.y was not an allowed global by default" / "... GLOBAL x.y whose module x is blocked"
    "was not an allowed global",
    "is blocked",
    "trying to call reduce for unrecognized function",
    "can only create new object for nn.parameter or classes allowlisted",
    "can only build tensor, parameter, ordereddict or types allowlisted",
)

# Pickle opcodes that import a global or call/instantiate one: only these let a pickle run code when loaded.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})


def _names_globals(path: Path) -> bool:
    """Whether ``path`` is one complete raw pickle stream that imports or calls Python globals.

    Read with :func:`pickletools.genops`, which only decodes opcodes and never imports or runs anything. Needed
    because torch's weights_only unpickler rejects protocol 4+ framing ("Unsupported operand 149") before it
    reaches, and names, the globals of a raw ``pickle.dumps`` file.
    """
    try:
        if zipfile.is_zipfile(path):
            return False  # torch's own format: its weights_only message already names any global
        seen = False
        with path.open("rb") as fh:
            for opcode, _arg, _pos in pickletools.genops(fh):
                if opcode.name in _CODE_OPCODES:
                    seen = True
                if opcode.name == "STOP":
                    return seen
        return False  # no STOP: not a (complete) pickle
    except Exception:  # not a pickle stream at all (text, garbage, truncated)
        return False


def _not_readable(path: Path, exc: BaseException) -> UserError:
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    if first.startswith("Weights only load failed"):
        first = type(exc).__name__  # torch's long advice to set weights_only=False: wrong here, and not one line
    elif not isinstance(exc, (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError)):
        first = f"{type(exc).__name__}: {first}"  # e.g. a text file: "KeyError: 101" rather than a bare "101"
    return UserError(f"{path} is not a readable PyTorch checkpoint (truncated or another format?): {first}")


def read_raw(path: Path, trust: bool) -> Any:
    """What ``torch.load`` reads from ``path``: with ``weights_only=True`` (runs no code), or fully only when
    ``trust`` allows a file of pickled objects; every failure is a one-line :class:`UserError`."""
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": stderr noise, not an error
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only=True runs no code from the file, so any failure means "cannot read it"
        refused = isinstance(exc, pickle.UnpicklingError) and any(
            phrase in str(exc).lower() for phrase in _GLOBAL_REFUSALS
        )
        if not refused and not (isinstance(exc, pickle.UnpicklingError) and _names_globals(path)):
            raise _not_readable(path, exc) from None
    # weights_only refused a pickled Python object that is not plain data (for example a whole nn.Module).
    if not trust:
        raise UserError(
            f"{path} contains pickled Python objects, which run code when loaded; "
            "pass --trust-checkpoint only if you trust where it came from"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc2:
        text = str(exc2).strip()
        first = text.splitlines()[0].strip() if text else ""
        raise UserError(f"{path}: cannot unpickle ({type(exc2).__name__}: {first})") from None


def load_checkpoint(
    path: str | Path,
    *,
    model: Optional[str] = None,
    trust: bool = False,
    fallback: Optional[ModelSpec] = None,
) -> LoadedModel:
    """Load any model file rccsnn accepts and return the network in eval mode.

    Args:
        path: an rccsnn checkpoint, a bare state_dict (needs ``model``), or a pickled module (needs ``trust``).
        model: ``package.module:factory`` for a user architecture; running it is the user's explicit choice.
        trust: allow unpickling arbitrary objects (runs code from the file).
        fallback: the spec to use for files that carry none (state_dicts and pickled modules).
    """
    path = Path(path)
    raw = read_raw(path, trust)
    if isinstance(raw, nn.Module):
        spec = fallback or ModelSpec(arch="pickled-module", input_shape=(), num_classes=0)
        resolve_steps(raw, spec)
        return LoadedModel(net=raw.eval(), spec=spec)
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a {type(raw).__name__}, not a checkpoint, state_dict or module")
    if raw.get("format") == FORMAT:
        return from_checkpoint(raw, path, model)
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is a dict but neither an rccsnn checkpoint nor a state_dict of tensors")
    if model is None:
        raise UserError(f"{path} is a bare state_dict; pass --model package.module:factory to name its architecture")
    spec = fallback or ModelSpec(arch=model, input_shape=(), num_classes=0)
    spec.arch = model
    net = _build(spec, model)
    load_state(net, state, str(path))
    resolve_steps(net, spec)
    return LoadedModel(net=net.eval(), spec=spec)


def from_checkpoint(raw: Dict[str, Any], path: Path, model: Optional[str]) -> LoadedModel:
    """The network of a checkpoint dict already read (``path`` names it in errors), in eval mode."""
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {version} is newer than this rccsnn reads ({FORMAT_VERSION})")
    try:
        spec = spec_from_checkpoint(raw)
        state = raw["state_dict"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: checkpoint is missing or has a malformed field ({exc})") from None
    ENCODERS.get(spec.encoding)
    LOSSES.get(spec.loss)
    STEPS.get(spec.steps)
    net = _build(spec, model)
    load_state(net, state, str(path))
    return LoadedModel(
        net=net.eval(),
        spec=spec,
        metrics=dict(raw.get("metrics") or {}),
        recipe=dict(raw.get("recipe") or {}),
        compression=raw.get("compression"),
    )
