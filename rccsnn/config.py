"""Run configuration: dataclasses filled from YAML, then overridden by CLI flags; saved beside every run.

Only this module and ``cli.py`` know about YAML and argparse. Unknown keys and values of the wrong type are
:class:`~rccsnn.errors.UserError` naming the key (with the closest valid key as a suggestion).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

import yaml

from rccsnn.errors import UserError
from rccsnn.snn import NeuronConfig

C = TypeVar("C")


@dataclass
class DataConfig:
    """Which data set, where it lives, and how it is batched."""

    name: Optional[str] = None  # None: digits for train, the checkpoint's data set for compress
    root: str = "data"
    download: bool = False
    path: Optional[str] = None
    # binning of an event set (nmnist, dvsgesture, shd), e.g. {n_time_bins: 20}: see rccsnn.data.events
    frames: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    eval_batch_size: int = 512
    workers: int = 0


@dataclass
class ModelConfig:
    """Architecture and spiking settings: a recipe's ``model:`` section. ``T`` is the number of time steps per
    inference; ``args`` are the architecture's own keyword arguments.

    The one schema of these settings: :class:`rccsnn.models.checkpoint.ModelSpec`, the spec that checkpoints and
    compact files record, is this plus what the data set fixes.
    """

    arch: str = "convsnn"
    args: Dict[str, Any] = field(default_factory=dict)
    T: int = 4
    encoding: str = "direct"
    loss: str = "ce"
    neuron: NeuronConfig = field(default_factory=NeuronConfig)


@dataclass
class OptimConfig:
    """Adam with a cosine learning-rate schedule over all steps of the run."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 30
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """Everything ``rccsnn train`` needs; ``checkpoint`` defaults to ``<out>/model.pt``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    out: str = "runs/train"
    checkpoint: Optional[str] = None
    device: str = "auto"

    def validate(self) -> None:
        if self.optim.epochs < 1:
            raise UserError(f"optim.epochs must be at least 1, got {self.optim.epochs}")
        if not (self.optim.lr > 0 and math.isfinite(self.optim.lr)):
            raise UserError(f"optim.lr must be a positive number, got {self.optim.lr}")
        if self.model.T < 1:
            raise UserError(f"model.T must be at least 1, got {self.model.T}")
        if self.data.batch_size < 1:
            raise UserError(f"data.batch_size must be at least 1, got {self.data.batch_size}")
        self.model.neuron.validate()


# ------------------------------------------------------------------------------------------------ YAML
class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats such as ``1e-3`` (YAML 1.1 wants ``1.0e-3``).

    PyYAML follows YAML 1.1, where an exponent needs a dot and a signed exponent, so ``lr: 1e-3`` would be the
    *string* ``'1e-3'``. Integers, ``.inf`` and ``.nan`` resolve as before.
    """


# Drop the YAML 1.1 float resolver and install one that also accepts a mantissa without a dot and an unsigned
# exponent. Resolvers are tried in order per first character, so replacing (not appending) keeps ints as ints.
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with :class:`_Loader` (YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> Dict[str, Any]:
    """Parse a YAML mapping; a missing file or a syntax error is a one-line :class:`UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = _safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def write_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass (or plain data) as YAML."""
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


#: What a value of each annotated type looks like in YAML, for the error of a Union that takes none of them.
_KINDS = {str: "a string", float: "a number", int: "an integer", bool: "true or false", list: "a list",
          List: "a list", collections.abc.Sequence: "a list", dict: "a mapping", Dict: "a mapping"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return _coerce(value, args[0], key)
        for arg in args:  # e.g. Union[str, Sequence[float]]: the first that takes the value
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        kinds = " or ".join(_KINDS.get(typing.get_origin(a) or a, _type_name(a)) for a in args)
        raise UserError(f"'{key}' must be {kinds}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"'{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, List, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"'{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise UserError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"'{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} for '{key}'")


def did_you_mean(key: Any, names: Sequence[str], prefix: str = "", valid: str = "valid keys") -> str:
    """The hint after an unknown ``key``: `` (did you mean '<prefix><closest name>'?)``, or where no name is close,
    ``; <valid>: <names>``. Shared by the checks of config keys, options and sweep files."""
    close = difflib.get_close_matches(str(key), list(names), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f"; {valid}: {', '.join(names)}"


def _checked(values: Dict[str, Any], names: List[str], hints: Dict[str, Any], prefix: str,
             what: str) -> Dict[str, Any]:
    """``values`` with each key checked against ``names`` (suggesting the closest) and its type against ``hints``."""
    out = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(f"unknown {what} '{prefix}{key}'{did_you_mean(key, names, prefix, f'valid {what}s')}")
        out[key] = _coerce(value, hints.get(key, Any), f"{prefix}{key}")
    return out


def from_dict(cls: Type[C], data: Dict[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**_checked(data, names, typing.get_type_hints(cls), prefix, "key"))


def typed_kwargs(fn: Any, options: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """Check ``options`` against the keyword parameters of ``fn`` (names and annotated types).

    Used for the free-form option mappings of the config (``method.options``, ``resources.<name>``), so that a
    misspelt or mistyped option is a one-line :class:`UserError` before anything runs.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = [n for n, p in inspect.signature(target).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return _checked(options, params, typing.get_type_hints(target), prefix, "option")


def set_path(data: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted = 'a.b'``, creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set '{dotted}': '{p}' is not a mapping")
    node[last] = value


def parse_assignment(text: str) -> tuple:
    """``'optim.lr=1e-3'`` -> ``('optim.lr', 0.001)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE, got '{text}'")
    try:
        value = _safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot parse value '{raw}'") from None
    return key.strip(), value


def load_config(cls: Type[C], path: Optional[str], overrides: Dict[str, Any]) -> C:
    """YAML file (if any) first, then ``overrides`` (dotted keys -> values) on top."""
    data = read_yaml(path) if path else {}
    for key, value in overrides.items():
        if value is not None:
            set_path(data, key, value)
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


@dataclass
class MethodConfig:
    """The compression method, its schedule and its own options (passed to its constructor)."""

    name: str = "minimax"
    schedule: str = "joint"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetsConfig:
    """Which weights may be pruned: glob patterns on module names, or type names such as ``Linear``."""

    include: List[str] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)
    exclude_first: bool = True


@dataclass
class CompressConfig:
    """Everything ``rccsnn compress`` needs. ``budgets`` maps resource -> fraction of dense in (0, 1]."""

    model: Optional[str] = None
    budgets: Dict[str, Any] = field(default_factory=dict)
    method: MethodConfig = field(default_factory=MethodConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=30))
    resources: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    out: Optional[str] = None  # None: runs/compress/<model>-<budgets>-<method>-<schedule>-seed<seed>
    device: str = "auto"

    def run_name(self) -> str:
        """A directory name that tells the run's settings apart."""
        budgets = "-".join(f"{k}{v:g}" for k, v in self.budgets.items())
        return f"{Path(self.model or 'model').stem}-{budgets}-{self.method.name}-{self.method.schedule}-seed{self.seed}"

    def validate(self) -> None:
        from rccsnn.methods import METHODS
        from rccsnn.resources import RESOURCES

        if not self.model:
            raise UserError("no model to compress: give MODEL.pt (or 'model:' in the config)")
        if not self.budgets:
            raise UserError("no budget: give --budget FRACTION (with --resource) or --constraint RESOURCE=FRACTION")
        for name, budget in self.budgets.items():
            RESOURCES.get(name)
            check_budget(budget, f"budget for {name}")
        for name, consts in self.resources.items():
            RESOURCES.get(name)
            if not isinstance(consts, dict):
                raise UserError(f"'resources.{name}' must be a mapping of constants, got {consts!r}")
        METHODS.get(self.method.name)
        from rccsnn.methods.base import SCHEDULES

        if self.method.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.method.schedule}'; choices: {', '.join(SCHEDULES)}")
        if self.optim.epochs < 1:
            raise UserError(f"optim.epochs must be at least 1, got {self.optim.epochs}")
        if not (self.optim.lr > 0 and math.isfinite(self.optim.lr)):
            raise UserError(f"optim.lr must be a positive number, got {self.optim.lr}")


def check_budget(value: Any, what: str = "budget") -> float:
    """A budget is a finite number in (0, 1]; anything else is a :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{what} must be a number in (0, 1], got {value!r}") from None
    value = float(value)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise UserError(f"{what} must be a number in (0, 1], got {value!r}")
    return value


def parse_constraint(text: str) -> tuple:
    """``'synops=0.1'`` -> ``('synops', 0.1)``."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip() or not raw.strip():
        raise UserError(f"--constraint expects RESOURCE=FRACTION (e.g. synops=0.1), got '{text}'")
    from rccsnn.resources import RESOURCES

    RESOURCES.get(name.strip())
    return name.strip(), check_budget(raw.strip(), f"budget in --constraint {text}")
