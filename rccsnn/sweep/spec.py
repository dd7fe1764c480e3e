"""Sweep files: read, check, expand the grid into points, name each point's run directory, validate every point.

A sweep file has a ``base`` (any setting of a compression config), a ``grid`` whose lists are crossed, and
optionally explicit ``runs``. Every point is validated before anything runs or any directory is made; nothing
here writes a file.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from rccsnn.config import CompressConfig, check_budget, did_you_mean, from_dict, read_yaml, set_path
from rccsnn.errors import UserError

SWEEP_KEYS = ("name", "out", "base", "grid", "runs")
#: Grid and run keys that stand for a config path; ``budget`` and ``resource`` together set ``budgets.<resource>``.
SHORTHANDS = {"budget": None, "resource": None, "method": "method.name", "schedule": "method.schedule",
              "seed": "seed", "epochs": "optim.epochs"}
#: Settings every run directory name already shows (budgets, method, schedule, seed).
NAMED_PATHS = ("budget", "resource", "method.name", "method.schedule", "seed")
DEFAULT_RESOURCE = "params"

Setting = Tuple[str, Any, str]  # (key as written, value, where it came from, e.g. "grid.budget[2]")


@dataclass
class Point:
    """One run of a sweep.

    Attributes:
        name: its run directory's name under the sweep directory (unique, built from its settings).
        config: the resolved compression config; ``config.out`` is the run directory.
        resource: the constrained resource that the Pareto plot puts on its x axis.
        extras: swept settings that the name's fixed part (budgets, method, schedule, seed) does not show,
            config path -> value.
        label: the settings as written, for messages (``budget=0.05, method=minimax, seed=0``).
    """

    name: str
    config: CompressConfig
    resource: str
    extras: Dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)

    def config_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.config)


@dataclass
class Sweep:
    """A loaded, validated sweep file: its points and where they run."""

    name: str
    path: Path
    out: Path
    points: List[Point]

    @property
    def extra_keys(self) -> List[str]:
        """Config paths swept beyond budgets, method, schedule and seed, in first-seen order."""
        keys: Dict[str, None] = {}
        for p in self.points:
            keys.update(dict.fromkeys(p.extras))
        return list(keys)

    def make_dir(self) -> None:
        """Create the sweep directory (the runner and the results both may be first to write into it)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create sweep directory {self.out}: {exc.strerror or exc}") from None


def comparable(config: Dict[str, Any]) -> Dict[str, Any]:
    """A point's config (as a mapping) without its output path: moving the sweep directory changes no point."""
    return {k: v for k, v in config.items() if k != "out"}


# ============================================================================================= keys
def _unoptional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _path_target(path: str) -> Optional[Any]:
    """The annotation at config path ``path`` (``None`` below a free mapping such as ``budgets.params``)."""
    tp: Any = CompressConfig
    for part in path.split("."):
        tp = _unoptional(tp)
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return _unoptional(tp)


def _check_key(key: Any, where: str) -> None:
    """A grid or run key must be a shorthand or a config path (``optim.lr``, ``method.options.lr_z``).

    Only the key: its values are checked one by one (:func:`_check_value`), so that a wrong key is reported once,
    at the grid, and a wrong value at its index.
    """
    if not isinstance(key, str):
        raise UserError(f"{where}: keys must be strings, got {key!r}")
    if key in SHORTHANDS:
        return
    if key == "out" or key.startswith("out."):
        raise UserError(f"{where}: 'out' is set by the sweep (each point runs in <sweep dir>/<point name>); "
                        f"use the sweep's top-level 'out' or --out")
    parts = key.split(".")
    tp: Any = CompressConfig
    for i, part in enumerate(parts):
        tp = _unoptional(tp)
        if typing.get_origin(tp) in (dict, Dict):
            return  # budgets.<resource>, method.options.<option>, resources.<name>...: checked when validated
        if not dataclasses.is_dataclass(tp):
            raise UserError(f"{where}: unknown key '{key}': '{'.'.join(parts[:i])}' is a single value, not a mapping")
        names = [f.name for f in dataclasses.fields(tp) if not (tp is CompressConfig and f.name == "out")]
        if part not in names:
            prefix = "".join(f"{p}." for p in parts[:i])
            choices = names + (list(SHORTHANDS) if i == 0 else [])
            valid = f"valid keys under {prefix[:-1]}" if prefix else "valid keys"
            raise UserError(f"{where}: unknown key '{key}'{did_you_mean(part, choices, prefix, valid)}")
        tp = typing.get_type_hints(tp)[part]


def _canonical(key: str) -> str:
    path = SHORTHANDS.get(key, key)
    return key if path is None else path


# ============================================================================================= values
def _budget_value(value: Any, where: str) -> float:
    # check_budget alone would take the string "0.5"; a sweep file writes numbers as numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: budget must be a number in (0, 1], got {value!r}")
    return check_budget(value, f"{where}: budget")


def _resource_value(value: Any, where: str) -> str:
    from rccsnn.resources import RESOURCES

    if not isinstance(value, str):
        raise UserError(f"{where}: resource must be a name ({', '.join(RESOURCES.names())}), got {value!r}")
    try:
        RESOURCES.get(value)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return value


def _apply(data: Dict[str, Any], path: str, value: Any) -> None:
    """Set config path ``path``; a mapping given for a config section (``optim``) is merged into it."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and dataclasses.is_dataclass(_path_target(path)):
        node = data
        for part in path.split("."):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"cannot set '{path}': '{part}' is not a mapping")
        for k, v in value.items():
            _apply(data, f"{path}.{k}", v)
        return
    set_path(data, path, value)


def _check_value(key: str, value: Any, where: str) -> None:
    """Type-check one setting on its own, so that the error names the grid or run key it came from."""
    if key == "budget":
        _budget_value(value, where)
        return
    if key == "resource":
        _resource_value(value, where)
        return
    data: Dict[str, Any] = {}
    try:
        _apply(data, _canonical(key), value)
        from_dict(CompressConfig, data)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


# ============================================================================================= expansion
def _settings_of(mapping: Any, where: str) -> List[Setting]:
    if not isinstance(mapping, dict):
        raise UserError(f"{where} must be a mapping of settings (e.g. {{method: minimax, schedule: joint}}), "
                        f"got {mapping!r}")
    settings = []
    for key, value in mapping.items():
        _check_key(key, where)
        _check_value(key, value, f"{where}.{key}")
        settings.append((key, value, f"{where}.{key}"))
    return settings


def _grid_axes(grid: Any, where: str) -> List[List[List[Setting]]]:
    """Each grid key becomes one axis: a list of alternatives, each a list of settings applied together."""
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise UserError(f"{where} must be a mapping of key -> list of values, got {grid!r}")
    axes = []
    for key, values in grid.items():
        at = f"{where}.{key}"
        if not isinstance(values, list):
            raise UserError(f"{at} must be a list of values, got {values!r}")
        if not values:
            raise UserError(f"{at} is an empty list: nothing to sweep (give at least one value or drop the key)")
        is_setting = True
        try:
            _check_key(key, where)
        except UserError:
            # A key that is no setting names a group: each value is a mapping of settings applied together.
            if not all(isinstance(v, dict) for v in values):
                raise
            is_setting = False
        if is_setting:
            axis = []
            for i, value in enumerate(values):
                _check_value(key, value, f"{at}[{i}]")
                axis.append([(key, value, f"{at}[{i}]")])
        else:
            axis = [_settings_of(v, f"{at}[{i}]") for i, v in enumerate(values)]
        axes.append(axis)
    return axes


def _leaves(path: str, value: Any) -> List[Tuple[str, Any]]:
    """A mapping set on a config section (``optim: {lr: 0.01}``) as the paths it sets (``optim.lr``)."""
    if isinstance(value, dict) and dataclasses.is_dataclass(_path_target(path)):
        return [leaf for k, v in value.items() for leaf in _leaves(f"{path}.{k}", v)]
    return [(path, value)]


def _resolve(base: Dict[str, Any], settings: List[Setting]) -> Tuple[CompressConfig, str, Dict[str, Any]]:
    """Base plus settings -> (config, constrained resource, extras); conflicting settings are errors."""
    data = copy.deepcopy(base)
    seen: Dict[str, str] = {}
    for key, _, where in settings:
        canon = _canonical(key)
        if canon in seen:
            raise UserError(f"{seen[canon]} and {where} both set '{canon}'")
        seen[canon] = where
    values = {_canonical(k): v for k, v, _ in settings}
    if "resource" in values and "budget" not in values:
        raise UserError(f"{seen['resource']}: 'resource' needs a 'budget' beside it")
    resource = values.get("resource", DEFAULT_RESOURCE)
    extras: Dict[str, Any] = {}
    for key, value, where in settings:
        canon = _canonical(key)
        if canon == "resource":
            continue
        if canon == "budget":
            path = f"budgets.{resource}"
            if path in seen:
                raise UserError(f"{seen[path]} and {where} both set '{path}'")
            _apply(data, path, _budget_value(value, where))
            continue
        _apply(data, canon, value)
        for path, leaf in _leaves(canon, value):
            if path not in NAMED_PATHS and not path.startswith("budgets"):
                extras[path] = leaf
    cfg = from_dict(CompressConfig, data)
    if "budget" not in values and cfg.budgets:
        resource = next(iter(cfg.budgets))
    return cfg, resource, extras


# ============================================================================================= names
def _token(path: str, value: Any) -> str:
    label = path.split(".")[-1]
    if path == "model" or path.endswith(".path"):
        text = Path(str(value)).stem
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, separators=(",", "="))
    else:
        text = str(value)
    return f"{label}{text}"


def _sanitise(name: str, limit: int = 120) -> str:
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name).strip("._-") or "point"
    if len(name) > limit:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:limit - 9]}-{digest}"
    return name


def point_name(cfg: CompressConfig, extras: Dict[str, Any]) -> str:
    """``params0.05-minimax-joint-seed0`` plus a token per other swept setting (``-lr_z40``), sanitised."""
    budgets = "-".join(f"{k}{float(v):g}" for k, v in cfg.budgets.items())
    parts = [budgets, cfg.method.name, cfg.method.schedule, f"seed{cfg.seed}"]
    parts += [_token(path, value) for path, value in extras.items()]
    return _sanitise("-".join(p for p in parts if p))


# ============================================================================================= loading
def load_sweep(path: str | Path, out: Optional[str | Path] = None, check_files: bool = True) -> Sweep:
    """Read, expand and validate a sweep file; every mistake is a one-line :class:`UserError`.

    Args:
        path: the sweep YAML file.
        out: sweep directory; default the file's ``out``, else ``runs/sweeps/<file stem>``.
        check_files: also require each point's model file (and ``data.path``) to exist.

    Nothing is written: the sweep directory is made by :func:`rccsnn.sweep.runner.run_sweep`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    doc = read_yaml(path)
    for key in doc:
        if key not in SWEEP_KEYS:
            raise UserError(f"{path}: unknown top-level key '{key}'{did_you_mean(key, SWEEP_KEYS)}")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise UserError(f"{path}: 'name' must be a string, got {name!r}")
    out_value = out if out is not None else doc.get("out")
    if out_value is not None and not isinstance(out_value, (str, Path)):
        raise UserError(f"{path}: 'out' must be a directory path, got {out_value!r}")
    sweep_dir = Path(out_value) if out_value is not None else Path("runs") / "sweeps" / path.stem

    try:
        base = doc.get("base") or {}
        if not isinstance(base, dict):
            raise UserError(f"'base' must be a mapping of compression settings, got {base!r}")
        if "out" in base:
            raise UserError("base.out: the sweep sets each point's directory; use the top-level 'out' or --out")
        from_dict(CompressConfig, base, prefix="base.")
        axes = _grid_axes(doc.get("grid"), "grid")
        runs = doc.get("runs") or []
        if not isinstance(runs, list):
            raise UserError(f"'runs' must be a list of mappings of settings, got {runs!r}")
        explicit = [_settings_of(run, f"runs[{i}]") for i, run in enumerate(runs)]
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None

    combos: List[List[Setting]] = []
    if axes:
        combos += [[s for alternative in combo for s in alternative] for combo in itertools.product(*axes)]
    combos += explicit
    if not combos:
        combos = [[]]  # no grid and no runs: the base is the one point

    points: List[Point] = []
    seen_configs: List[Dict[str, Any]] = []
    taken: set = set()
    checked_models: Dict[str, bool] = {}
    for settings in combos:
        label = ", ".join(f"{k}={v}" for k, v, _ in settings) or "base"
        try:
            cfg, resource, extras = _resolve(base, settings)
            _validate(cfg)
            cfg.budgets = {k: check_budget(v, f"budgets.{k}") for k, v in cfg.budgets.items()}
            if check_files:
                _check_files(cfg, checked_models)
        except UserError as exc:
            raise UserError(f"{path}: point ({label}): {exc}") from None
        settings_on_disk = comparable(dataclasses.asdict(cfg))
        if settings_on_disk in seen_configs:
            continue  # the grid and the runs may name the same point; it runs once
        seen_configs.append(settings_on_disk)
        run_name = stem = point_name(cfg, extras)
        copies = 1
        while run_name in taken:  # names that sanitising made equal (a/m.pt, b/m.pt) get -2, -3, ...
            copies += 1
            run_name = f"{stem}-{copies}"
        taken.add(run_name)
        cfg.out = str(sweep_dir / run_name)
        points.append(Point(name=run_name, config=cfg, resource=resource, extras=extras, label=label))
    return Sweep(name=name, path=path, out=sweep_dir, points=points)


def _validate(cfg: CompressConfig) -> None:
    """What ``rccsnn compress`` checks before it reads model or data: names, budgets, method options."""
    from rccsnn.compression import build_method, validate_config

    validate_config(cfg)
    build_method(cfg)


def _check_files(cfg: CompressConfig, loaded: Dict[str, bool]) -> None:
    """The point's files exist, and its model loads safely (once per distinct file; ``loaded`` is the cache)."""
    from rccsnn.loading import load_model

    if not Path(cfg.model).is_file():
        raise UserError(f"model file not found: {cfg.model} (train it first, or fix 'model:')")
    if cfg.data.path and not Path(cfg.data.path).exists():
        raise UserError(f"data.path not found: {cfg.data.path}")
    if cfg.model not in loaded:
        load_model(cfg.model)  # an unreadable or untrusted file is a UserError here, before any point runs
        loaded[cfg.model] = True
