"""YAML experiment sweeps: a grid of compression settings, one ``rccsnn compress`` process per point.

    sweep file -> load_sweep (expand, validate every point) -> run_sweep (queue, resume, --jobs) -> write_results

A sweep file has a ``base`` (any setting of a compression config), a ``grid`` whose lists are crossed, and
optionally explicit ``runs``. Every point is validated before anything runs or any directory is made. Each point
runs in its own directory under the sweep directory, through exactly the code of ``rccsnn compress``; a point
with a ``summary.json`` is finished and skipped, so rerunning a sweep runs only what is new, failed or
interrupted. The results (``results.csv``, ``results.md``, ``pareto.png``, TensorBoard hparams) are always
rebuilt from the run directories' ``summary.json`` files.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rccsnn.config import CompressConfig, check_budget, from_dict, read_yaml, set_path, write_yaml
from rccsnn.errors import UserError

SWEEP_KEYS = ("name", "out", "base", "grid", "runs")
#: Grid and run keys that stand for a config path; ``budget`` and ``resource`` together set ``budgets.<resource>``.
SHORTHANDS = {"budget": None, "resource": None, "method": "method.name", "schedule": "method.schedule",
              "seed": "seed", "epochs": "optim.epochs"}
#: Settings every run directory name already shows (budgets, method, schedule, seed).
NAMED_PATHS = ("budget", "resource", "method.name", "method.schedule", "seed")
DEFAULT_RESOURCE = "params"
RESOURCE_ORDER = ("params", "macs", "synops", "energy")

POINT_FILE = "point.yaml"
LOG_FILE = "log.txt"
ERROR_FILE = "error.txt"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.pt"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PARETO_PNG = "pareto.png"
HPARAMS_DIR = "hparams"

EXIT_INTERRUPTED = 130

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


@dataclass
class SweepOutcome:
    """What ``run_sweep`` did: point names that ran and finished, failed, or were skipped as finished."""

    finished: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    interrupted: bool = False


# ============================================================================================= loading
def _suggest(key: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(choices)}"


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


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
        if not dataclasses.is_dataclass(tp) or part not in _hints(tp):
            return None
        tp = _hints(tp)[part]
    return _unoptional(tp)


def _check_key(key: Any, where: str) -> None:
    """A grid or run key must be a shorthand or a config path (``optim.lr``, ``method.options.lr_z``)."""
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
            close = difflib.get_close_matches(part, choices, n=1)
            hint = (f" (did you mean '{prefix}{close[0]}'?)" if close
                    else f"; valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(choices)}")
            raise UserError(f"{where}: unknown key '{key}'{hint}")
        tp = _hints(tp)[part]


def _canonical(key: str) -> str:
    path = SHORTHANDS.get(key, key)
    return key if path is None else path


def _budget_value(value: Any, where: str) -> float:
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


def _comparable(config: Dict[str, Any]) -> Dict[str, Any]:
    """A point's config without its output path: moving the sweep directory changes no point."""
    return {k: v for k, v in config.items() if k != "out"}


def load_sweep(path: str | Path, out: Optional[str | Path] = None, check_files: bool = True) -> Sweep:
    """Read, expand and validate a sweep file; every mistake is a one-line :class:`UserError`.

    Args:
        path: the sweep YAML file.
        out: sweep directory; default the file's ``out``, else ``runs/sweeps/<file stem>``.
        check_files: also require each point's model file (and ``data.path``) to exist.

    Nothing is written: the sweep directory is made by :func:`run_sweep`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    doc = read_yaml(path)
    for key in doc:
        if key not in SWEEP_KEYS:
            raise UserError(f"{path}: unknown top-level key '{key}'{_suggest(str(key), SWEEP_KEYS)}")
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
        comparable = _comparable(dataclasses.asdict(cfg))
        if comparable in seen_configs:
            continue  # the grid and the runs may name the same point; it runs once
        seen_configs.append(comparable)
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
    from rccsnn.compress import build_method, validate_config

    validate_config(cfg)
    build_method(cfg)


def _check_files(cfg: CompressConfig, loaded: Dict[str, bool]) -> None:
    """The point's files exist, and its model loads safely (once per distinct file; ``loaded`` is the cache)."""
    from rccsnn.export import load_model

    if not Path(cfg.model).is_file():
        raise UserError(f"model file not found: {cfg.model} (train it first, or fix 'model:')")
    if cfg.data.path and not Path(cfg.data.path).exists():
        raise UserError(f"data.path not found: {cfg.data.path}")
    if cfg.model not in loaded:
        load_model(cfg.model)  # an unreadable or untrusted file is a UserError here, before any point runs
        loaded[cfg.model] = True


# ============================================================================================= running
def point_status(point: Point) -> str:
    """``done`` (summary.json), ``changed`` (its settings differ from the run on disk: runs afresh),
    ``resume`` (interrupted: state.pt, no summary), ``failed`` (error.txt) or ``new``."""
    run = point.run_dir
    if (run / POINT_FILE).is_file():
        try:
            on_disk = read_yaml(run / POINT_FILE)
        except UserError:
            on_disk = None
        if on_disk is None or _comparable(on_disk) != _comparable(point.config_dict()):
            return "changed"
    if (run / SUMMARY_FILE).is_file():
        return "done"
    if (run / STATE_FILE).is_file():
        return "resume"
    if (run / ERROR_FILE).is_file():
        return "failed"
    return "new"


def threads_per_job(jobs: int) -> int:
    """CPU threads each of ``jobs`` parallel runs may use, so that together they do not oversubscribe."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // jobs)


def child_env(jobs: int) -> Dict[str, str]:
    """The environment of a point's process: thread counts for ``jobs`` parallel runs, unbuffered output
    (so that the log keeps stdout and stderr in order)."""
    env = dict(os.environ)
    threads = str(threads_per_job(jobs))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    return env


def point_command(point: Point, resume: bool) -> List[str]:
    """The point runs through ``rccsnn compress``, exactly as a user would run it."""
    run = point.run_dir
    cmd = [sys.executable, "-m", "rccsnn", "compress", "--config", str(run / POINT_FILE), "--out", str(run),
           "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _last_line(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError as exc:  # the run directory was removed under a running sweep
        return f"its log {path} cannot be read ({exc.strerror or exc})"
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class _Running:
    point: Point
    process: subprocess.Popen
    log: Any
    offset: int
    started: float


def run_sweep(sweep: Sweep, jobs: int = 1, progress: bool = True) -> SweepOutcome:
    """Run every point that is not finished, ``jobs`` at a time; returns what happened.

    Each point's resolved config goes to ``<run>/point.yaml`` and runs as
    ``python -m rccsnn compress --config <run>/point.yaml --out <run> --no-progress [--resume]`` with its output
    in ``<run>/log.txt``. A failure (non-zero exit) writes the last line of its output to ``<run>/error.txt``
    and the other points go on. Ctrl-C (or SIGTERM) stops starting points and asks the running ones to save
    their epoch and stop (a second Ctrl-C stops them at once); rerunning the sweep resumes them.
    """
    from tqdm.auto import tqdm

    try:
        sweep.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create sweep directory {sweep.out}: {exc.strerror or exc}") from None
    outcome = SweepOutcome()
    queue: deque = deque()
    counts: Dict[str, int] = {}
    for point in sweep.points:
        status = point_status(point)
        counts[status] = counts.get(status, 0) + 1
        if status == "done":
            outcome.skipped.append(point.name)
        else:
            queue.append((point, status))
    todo = ", ".join(f"{counts[s]} {s}" for s in ("new", "resume", "failed", "changed") if counts.get(s))
    print(f"sweep {sweep.name}: {len(sweep.points)} points, {len(outcome.skipped)} finished, {len(queue)} to run"
          + (f" ({todo})" if todo else "") + (f"; {jobs} at a time, {threads_per_job(jobs)} CPU threads each"
                                              if queue else "") + f" -> {sweep.out}", flush=True)
    if not queue:
        return outcome

    env = child_env(jobs)
    running: List[_Running] = []
    bar = tqdm(total=len(sweep.points), initial=len(outcome.skipped), desc="sweep", unit="point",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    interrupts = 0

    def say(text: str) -> None:
        if progress:
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def start(point: Point, status: str) -> None:
        run = point.run_dir
        run.mkdir(parents=True, exist_ok=True)
        if status == "changed":
            for stale in (SUMMARY_FILE, STATE_FILE):
                (run / stale).unlink(missing_ok=True)
        (run / ERROR_FILE).unlink(missing_ok=True)
        write_yaml(point.config, run / POINT_FILE)
        resume = status == "resume"
        cmd = point_command(point, resume)
        log = open(run / LOG_FILE, "ab")
        offset = log.tell()
        log.write(f"=== rccsnn sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
        log.flush()
        # A session of its own: Ctrl-C reaches the sweep only, which passes it on once (a second SIGINT to
        # `rccsnn compress` would abort it without saving its epoch).
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        running.append(_Running(point, process, log, offset, time.perf_counter()))

    def finish(job: _Running) -> None:
        job.log.close()
        run, code = job.point.run_dir, job.process.returncode
        seconds = time.perf_counter() - job.started
        if code == 0 and (run / SUMMARY_FILE).is_file():
            outcome.finished.append(job.point.name)
            say(f"{job.point.name}: ok ({seconds:.1f} s)")
        else:
            reason = _last_line(run / LOG_FILE, job.offset) if code != 0 else "exited without a summary.json"
            if code != 0 and (not reason or reason.startswith("=== rccsnn sweep")):
                reason = f"exit code {code}"
            (run / ERROR_FILE).write_text(reason + "\n")
            outcome.failed.append(job.point.name)
            if code == EXIT_INTERRUPTED and (run / STATE_FILE).is_file():
                say(f"{job.point.name}: stopped after {seconds:.1f} s; its last epoch is saved and the next run "
                    f"of the sweep resumes it")
            else:
                say(f"{job.point.name}: FAILED (exit {code}, {seconds:.1f} s): {reason}")
        bar.update(1)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        while queue or running:
            try:
                while queue and len(running) < jobs and not outcome.interrupted:
                    start(*queue.popleft())
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    finish(job)
                if outcome.interrupted and not running:
                    break
                time.sleep(0.05)
            except KeyboardInterrupt:
                interrupts += 1
                outcome.interrupted = True
                queue.clear()
                for job in running:
                    if job.process.poll() is None:
                        job.process.send_signal(signal.SIGINT)
                if interrupts == 1:
                    say("interrupted: the running points save their epoch and stop (Ctrl-C again to stop them "
                        "now); rerun the same command to continue")
    finally:
        for job in running:  # only reached on an unexpected error: do not leave orphans behind
            if job.process.poll() is None:
                job.process.kill()
            job.process.wait()
            job.log.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    return outcome


# ============================================================================================= results
def _resources() -> List[str]:
    from rccsnn.resources import RESOURCES

    names = RESOURCES.names()
    return [r for r in RESOURCE_ORDER if r in names] + [r for r in names if r not in RESOURCE_ORDER]


def setting_value(point: Point, path: str) -> Any:
    """The value of config path ``path`` in the point's resolved config (``""`` where it is unset, e.g. a method
    option left at its default)."""
    node: Any = point.config_dict()
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return node


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def collect_results(sweep: Sweep) -> List[Dict[str, Any]]:
    """One row per point, from its run directory: settings, status ``ok``/``failed``/``missing`` and, when ok,
    every resource ratio, dense and compressed accuracy and wall time from its ``summary.json``."""
    resources = _resources()
    rows = []
    for point in sweep.points:
        cfg = point.config
        row: Dict[str, Any] = {"name": point.name, "status": "missing", "method": cfg.method.name,
                               "schedule": cfg.method.schedule, "resource": point.resource}
        row.update({f"budget_{r}": cfg.budgets.get(r, "") for r in resources})
        row.update({"seed": cfg.seed, "epochs": cfg.optim.epochs})
        row.update({key: _cell(setting_value(point, key)) for key in sweep.extra_keys})
        row.update({f"ratio_{r}": "" for r in resources})
        row.update({"dense_accuracy": "", "accuracy": "", "wall_seconds": "", "run_dir": str(point.run_dir),
                    "error": ""})
        status = point_status(point)
        if status == "done":
            try:
                summary = json.loads((point.run_dir / SUMMARY_FILE).read_text())
                ratios = {r: float(summary["resources"][r]["ratio"]) for r in resources if r in summary["resources"]}
                row.update({f"ratio_{r}": v for r, v in ratios.items()})
                row.update({"dense_accuracy": float(summary["accuracy"]["dense"]),
                            "accuracy": float(summary["accuracy"]["compressed"]),
                            "wall_seconds": float(summary["wall_seconds"]), "status": "ok"})
            except (OSError, ValueError, KeyError, TypeError) as exc:
                row.update({"status": "failed", "error": f"unreadable {SUMMARY_FILE}: {exc}"})
        elif status == "failed":
            row["status"] = "failed"
            row["error"] = (point.run_dir / ERROR_FILE).read_text().strip()
        rows.append(row)
    return rows


def _mean_std(values: List[float]) -> Tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _budget_text(row: Dict[str, Any], resources: List[str]) -> str:
    return ", ".join(f"{r} {row[f'budget_{r}']:g}" for r in resources if row[f"budget_{r}"] != "")


def _groups(sweep: Sweep, rows: List[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
    """Rows grouped by every setting but the seed; by method/schedule in sweep order, then budget downwards."""
    resources = _resources()
    setting_keys = ["method", "schedule", "resource"] + [f"budget_{r}" for r in resources] + ["epochs"]
    setting_keys += sweep.extra_keys
    groups: Dict[Tuple, Tuple[Dict[str, Any], List[Dict[str, Any]]]] = {}
    for row in rows:
        key = tuple(str(row[k]) for k in setting_keys)
        groups.setdefault(key, ({k: row[k] for k in setting_keys}, []))[1].append(row)
    variants = list(dict.fromkeys((r["method"], r["schedule"]) for r in rows))

    def order(item):
        settings = item[0]
        budgets = tuple(-settings[f"budget_{r}"] if settings[f"budget_{r}"] != "" else 0.0 for r in resources)
        extras = tuple(str(settings[k]) for k in sweep.extra_keys + ["epochs"])
        return variants.index((settings["method"], settings["schedule"])), settings["resource"], extras, budgets

    return sorted(groups.values(), key=order)


def results_markdown(sweep: Sweep, rows: List[Dict[str, Any]]) -> str:
    """A markdown table: per method/schedule and budget, mean +- standard deviation over seeds (n runs)."""
    resources = _resources()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    missing = [r["name"] for r in rows if r["status"] == "missing"]
    extra = sweep.extra_keys
    header = ["method", "schedule", "budget", *extra, "n", "accuracy", "dense accuracy",
              *[f"{r} ratio" for r in resources]]
    lines = [f"# {sweep.name}", "",
             f"{len(ok)} of {len(rows)} points finished" + (f", {len(failed)} failed" if failed else "")
             + (f", {len(missing)} not run" if missing else "") + f"; sweep directory `{sweep.out}`. "
             "Accuracy is test accuracy (a fraction), ratios are compressed / dense; mean ± standard deviation "
             "over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for settings, group in _groups(sweep, rows):
        done = [r for r in group if r["status"] == "ok"]
        cells = [settings["method"], settings["schedule"], _budget_text(settings, resources)]
        cells += [str(settings[k]) for k in extra]
        cells.append(str(len(done)))
        if done:
            acc, acc_sd = _mean_std([r["accuracy"] for r in done])
            dense, _ = _mean_std([r["dense_accuracy"] for r in done])
            cells.append(f"{acc:.4f} ± {acc_sd:.4f}" if len(done) > 1 else f"{acc:.4f}")
            cells.append(f"{dense:.4f}")
            for r in resources:
                values = [x[f"ratio_{r}"] for x in done if x[f"ratio_{r}"] != ""]
                if not values:
                    cells.append("-")
                    continue
                mean, sd = _mean_std(values)
                cells.append(f"{mean:.4g} ± {sd:.2g}" if len(values) > 1 else f"{mean:.4g}")
        else:
            cells += ["-"] * (2 + len(resources))
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "Failed (see `error.txt` and `log.txt` in their run directories; rerun the sweep to retry): "
                  + ", ".join(failed)]
    return "\n".join(lines) + "\n"


def write_csv(rows: List[Dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["name", "status"])
        writer.writeheader()
        writer.writerows(rows)


def plot_pareto(sweep: Sweep, rows: List[Dict[str, Any]], path: Path) -> None:
    """Compressed accuracy against the constrained resource's ratio (log x), one line per method/schedule with
    error bars over seeds, dense accuracy dashed; one panel per constrained resource."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ok = [r for r in rows if r["status"] == "ok"]
    panels = list(dict.fromkeys(r["resource"] for r in ok)) or [DEFAULT_RESOURCE]
    fig = Figure(figsize=(6.0 * len(panels), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, resource in zip(axes, panels):
        here = [r for r in ok if r["resource"] == resource]
        lines: Dict[str, Dict[float, List[Dict[str, Any]]]] = {}
        for r in here:
            label = f"{r['method']}/{r['schedule']}" + "".join(f", {k.split('.')[-1]}={r[k]}"
                                                               for k in sweep.extra_keys)
            lines.setdefault(label, {}).setdefault(r[f"budget_{resource}"], []).append(r)
        for label, by_budget in lines.items():
            xs, ys, xerr, yerr = [], [], [], []
            for budget in sorted(by_budget):
                group = by_budget[budget]
                x, x_sd = _mean_std([g[f"ratio_{resource}"] for g in group])
                y, y_sd = _mean_std([g["accuracy"] for g in group])
                xs.append(x), ys.append(y), xerr.append(x_sd), yerr.append(y_sd)
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=label)
        dense = [r["dense_accuracy"] for r in here]
        if dense:
            ax.axhline(sum(dense) / len(dense), color="black", linestyle="--", linewidth=1, label="dense")
            ax.set_xscale("log")
            # Ticks at the budgets (the ratios sit on them): readable where a sweep spans less than a decade.
            budgets = sorted({float(r[f"budget_{resource}"]) for r in here})
            ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"{resource} kept (compressed / dense)")
        ax.set_ylabel("test accuracy")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(sweep.name)
    fig.savefig(path, dpi=120)


def write_hparams(sweep: Sweep, rows: List[Dict[str, Any]], log_dir: Path) -> None:
    """TensorBoard hparams of every finished point (``tensorboard --logdir <sweep dir>/hparams``)."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(log_dir, ignore_errors=True)  # rebuilt from scratch, so reruns do not duplicate entries
    resources = _resources()
    for row in rows:
        if row["status"] != "ok":
            continue
        hparams = {"method": row["method"], "schedule": row["schedule"], "resource": row["resource"],
                   "seed": row["seed"], "epochs": row["epochs"]}
        hparams.update({f"budget_{r}": float(row[f"budget_{r}"]) for r in resources if row[f"budget_{r}"] != ""})
        hparams.update({k: str(row[k]) for k in sweep.extra_keys})
        metrics = {"hparam/accuracy": row["accuracy"], "hparam/dense_accuracy": row["dense_accuracy"],
                   "hparam/wall_seconds": row["wall_seconds"]}
        metrics.update({f"hparam/ratio_{r}": row[f"ratio_{r}"] for r in resources if row[f"ratio_{r}"] != ""})
        writer = SummaryWriter(log_dir=str(log_dir / row["name"]))
        writer.add_hparams(hparams, metrics, run_name=".")
        writer.close()


def write_results(sweep: Sweep) -> str:
    """Rebuild results.csv, results.md, pareto.png and the hparams from the run directories; returns the
    markdown table."""
    try:
        sweep.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create sweep directory {sweep.out}: {exc.strerror or exc}") from None
    rows = collect_results(sweep)
    write_csv(rows, sweep.out / RESULTS_CSV)
    markdown = results_markdown(sweep, rows)
    (sweep.out / RESULTS_MD).write_text(markdown)
    plot_pareto(sweep, rows, sweep.out / PARETO_PNG)
    write_hparams(sweep, rows, sweep.out / HPARAMS_DIR)
    return markdown


def dry_run_table(sweep: Sweep) -> str:
    """The points, their run directories and what a run would do with each."""
    from rccsnn.monitor import format_table

    resources = _resources()
    extra = sweep.extra_keys
    header = ["#", "run directory", "status", "method", "schedule", "budgets", "seed", "epochs", *extra]
    rows = []
    counts: Dict[str, int] = {}
    for i, point in enumerate(sweep.points, 1):
        cfg, status = point.config, point_status(point)
        counts[status] = counts.get(status, 0) + 1
        budgets = ", ".join(f"{r} {cfg.budgets[r]:g}" for r in resources if r in cfg.budgets)
        rows.append([i, point.name, status, cfg.method.name, cfg.method.schedule, budgets, cfg.seed,
                     cfg.optim.epochs, *[_cell(setting_value(point, k)) for k in extra]])
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    text = f"sweep {sweep.name}: {len(sweep.points)} points ({summary}) -> {sweep.out}\n" + format_table(header, rows)
    absent = dict.fromkeys(p.config.model for p in sweep.points if not Path(p.config.model).is_file())
    for model in absent:
        text += f"\nnote: model file {model} does not exist (yet); the sweep will not start without it"
    return text
