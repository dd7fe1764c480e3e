"""A sweep's results, always rebuilt from its run directories' ``summary.json`` files.

``results.csv`` (one row per point), ``results.md`` (mean ± standard deviation over seeds), ``pareto.png``
(accuracy against the constrained resource) and TensorBoard hparams; and the dry run's table of what would run.
"""
from __future__ import annotations

from collections import Counter
import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

from rccsnn.provenance import code_label
from rccsnn.rundir import RunDir
from rccsnn.sweep.runner import point_status
from rccsnn.sweep.spec import DEFAULT_RESOURCE, Point, Sweep

RESOURCE_ORDER = ("params", "macs", "synops", "energy")
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PARETO_PNG = "pareto.png"
HPARAMS_DIR = "hparams"
RESULTS_LOCK = "results.lock"  # held while the results are rebuilt

Row = Dict[str, Any]


def _resources() -> List[str]:
    """Every registered resource: the four built-in ones first, in their usual order."""
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


def collect_results(sweep: Sweep) -> List[Row]:
    """One row per point, from its run directory: settings, status ``ok``/``failed``/``missing`` and, when ok,
    every resource ratio, dense and compressed test accuracy and loss, wall time and the code that ran it
    (:func:`rccsnn.provenance.code_label`) from its ``summary.json``."""
    resources = _resources()
    rows = []
    for point in sweep.points:
        cfg, files = point.config, RunDir(point.run_dir)
        row: Row = {"name": point.name, "status": "missing", "method": cfg.method.name,
                    "schedule": cfg.method.schedule, "resource": point.resource}
        row.update({f"budget_{r}": cfg.budgets.get(r, "") for r in resources})
        row.update({"seed": cfg.seed, "epochs": cfg.optim.epochs})
        row.update({key: _cell(setting_value(point, key)) for key in sweep.extra_keys})
        row.update({f"ratio_{r}": "" for r in resources})
        row.update({"dense_accuracy": "", "accuracy": "", "dense_loss": "", "loss": "", "wall_seconds": "",
                    "code": "", "run_dir": str(point.run_dir), "error": ""})
        status = point_status(point)
        if status == "done":
            try:
                summary = json.loads(files.summary.read_text())
                ratios = {r: float(summary["resources"][r]["ratio"]) for r in resources if r in summary["resources"]}
                row.update({f"ratio_{r}": v for r, v in ratios.items()})
                row.update({"dense_accuracy": float(summary["accuracy"]["dense"]),
                            "accuracy": float(summary["accuracy"]["compressed"]),
                            "wall_seconds": float(summary["wall_seconds"]), "code": code_label(summary.get("code")),
                            "status": "ok"})
                # a run finished before summaries recorded the test loss leaves its cells empty
                loss = summary.get("loss")
                loss = loss if isinstance(loss, dict) else {}
                row.update({f"{prefix}loss": float(loss[key]) for prefix, key in
                            (("dense_", "dense"), ("", "compressed")) if key in loss})
            except (OSError, ValueError, KeyError, TypeError) as exc:
                row.update({"status": "failed", "error": f"unreadable {RunDir.SUMMARY}: {exc}"})
        elif status == "failed":
            row["status"] = "failed"
            row["error"] = files.error.read_text().strip()
        rows.append(row)
    return rows


def _mean_std(values: List[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _mean_cell(values: List[float], fmt: str) -> str:
    """``mean ± sd`` of ``values`` in ``fmt``; the mean alone for one value, ``-`` for none."""
    if not values:
        return "-"
    mean, sd = _mean_std(values)
    return f"{fmt.format(mean)} ± {fmt.format(sd)}" if len(values) > 1 else fmt.format(mean)


def _budget_text(row: Row, resources: List[str]) -> str:
    return ", ".join(f"{r} {row[f'budget_{r}']:g}" for r in resources if row[f"budget_{r}"] != "")


def _groups(sweep: Sweep, rows: List[Row]) -> List[Tuple[Row, List[Row]]]:
    """Rows grouped by every setting but the seed; by method/schedule in sweep order, then budget downwards."""
    resources = _resources()
    setting_keys = ["method", "schedule", "resource"] + [f"budget_{r}" for r in resources] + ["epochs"]
    setting_keys += sweep.extra_keys
    groups: Dict[Tuple, Tuple[Row, List[Row]]] = {}
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


def results_markdown(sweep: Sweep, rows: List[Row]) -> str:
    """A markdown table: per method/schedule and budget, mean +- standard deviation over seeds (n runs)."""
    resources = _resources()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    missing = [r["name"] for r in rows if r["status"] == "missing"]
    extra = sweep.extra_keys
    header = ["method", "schedule", "budget", *extra, "n", "accuracy", "dense accuracy", "loss",
              *[f"{r} ratio" for r in resources]]
    lines = [f"# {sweep.name}", "",
             f"{len(ok)} of {len(rows)} points finished" + (f", {len(failed)} failed" if failed else "")
             + (f", {len(missing)} not run" if missing else "") + f"; sweep directory `{sweep.out}`. "
             "Accuracy is test accuracy (a fraction), loss the mean test loss per sample, ratios are compressed / "
             "dense; mean ± standard deviation over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for settings, group in _groups(sweep, rows):
        done = [r for r in group if r["status"] == "ok"]
        cells = [settings["method"], settings["schedule"], _budget_text(settings, resources)]
        cells += [str(settings[k]) for k in extra]
        cells.append(str(len(done)))
        if done:
            dense, _ = _mean_std([r["dense_accuracy"] for r in done])
            cells.append(_mean_cell([r["accuracy"] for r in done], "{:.4f}"))
            cells.append(f"{dense:.4f}")
            cells.append(_mean_cell([r["loss"] for r in done if r["loss"] != ""], "{:.4f}"))
            for r in resources:
                values = [x[f"ratio_{r}"] for x in done if x[f"ratio_{r}"] != ""]
                if not values:
                    cells.append("-")
                    continue
                mean, sd = _mean_std(values)
                cells.append(f"{mean:.4g} ± {sd:.2g}" if len(values) > 1 else f"{mean:.4g}")
        else:
            cells += ["-"] * (3 + len(resources))
        lines.append("| " + " | ".join(cells) + " |")
    codes = Counter(r["code"] for r in ok)
    if len(codes) > 1:  # a finished point counts as done by its settings alone, whatever code ran it
        lines += ["", "The finished points were run by different code (rccsnn version+commit: points): "
                  + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())) + ". A point is not rerun when the code "
                  "changes; remove the run directories of the older ones (column `code` of results.csv) to rerun "
                  "them."]
    if failed:
        lines += ["", f"Failed (see `{RunDir.ERROR}` and `{RunDir.LOG}` in their run directories; rerun the sweep "
                  "to retry): " + ", ".join(failed)]
    return "\n".join(lines) + "\n"


def write_csv(rows: List[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["name", "status"])
        writer.writeheader()
        writer.writerows(rows)


def plot_pareto(sweep: Sweep, rows: List[Row], path: Path) -> None:
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
        lines: Dict[str, Dict[float, List[Row]]] = {}
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


def write_hparams(sweep: Sweep, rows: List[Row], log_dir: Path) -> None:
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
        metrics.update({f"hparam/{k}": row[k] for k in ("loss", "dense_loss") if row[k] != ""})
        metrics.update({f"hparam/ratio_{r}": row[f"ratio_{r}"] for r in resources if row[f"ratio_{r}"] != ""})
        writer = SummaryWriter(log_dir=str(log_dir / row["name"]))
        writer.add_hparams(hparams, metrics, run_name=".")
        writer.close()


def write_results(sweep: Sweep) -> str:
    """Rebuild results.csv, results.md, pareto.png and the hparams from the run directories; returns the
    markdown table."""
    from rccsnn.runlock import RunLock

    sweep.make_dir()
    # Two sweeps of one file that end together would otherwise remove each other's hparams while writing them.
    with RunLock.acquire(sweep.out / RESULTS_LOCK, wait=True):
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
