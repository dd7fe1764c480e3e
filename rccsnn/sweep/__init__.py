"""YAML experiment sweeps: a grid of compression settings, one ``rccsnn compress`` process per point.

    sweep file -> load_sweep (expand, validate every point) -> run_sweep (queue, resume, --jobs) -> write_results

* :mod:`~rccsnn.sweep.spec`: sweep files, grid expansion, point names, validation before anything runs;
* :mod:`~rccsnn.sweep.runner`: the run queue, each point's status (new, done, resume, failed, changed), resume
  and Ctrl-C / SIGTERM;
* :mod:`~rccsnn.sweep.results`: ``results.csv``, ``results.md``, ``pareto.png`` and TensorBoard hparams, always
  rebuilt from the run directories' ``summary.json`` files, and the dry run's table.
"""
from rccsnn.sweep.results import collect_results, dry_run_table, results_markdown, write_results
from rccsnn.sweep.runner import SweepOutcome, child_env, point_command, point_status, run_sweep, threads_per_job
from rccsnn.sweep.spec import Point, Sweep, load_sweep, point_name

__all__ = ["Point", "Sweep", "SweepOutcome", "load_sweep", "point_name", "run_sweep", "point_status",
           "point_command", "child_env", "threads_per_job", "collect_results", "results_markdown", "write_results",
           "dry_run_table"]
