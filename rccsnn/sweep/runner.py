"""The run queue of a sweep: one ``python -m rccsnn compress`` process per point, ``jobs`` at a time.

A point's status comes from its run directory (:class:`~rccsnn.rundir.RunDir`): a point with a ``summary.json``
is finished and skipped, so rerunning a sweep runs only what is new, failed, interrupted or changed. Ctrl-C and
SIGTERM reach the sweep only, which asks each running point once to save its epoch and stop.

Before it writes anything in a point's directory the sweep locks it (:class:`~rccsnn.runlock.RunLock`), reads the
point's status again under the lock, and hands the lock to the point's ``rccsnn compress``. So two sweeps of one
file at once never run a point twice: a point the other holds waits until it is free, and is then skipped if the
other finished it.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Deque, Dict, List, Tuple

from rccsnn.config import from_dict, read_yaml, write_yaml
from rccsnn.errors import UserError
from rccsnn.rundir import RunDir
from rccsnn.runlock import LockHeld, RunLock
from rccsnn.sweep.spec import Point, Sweep, comparable

EXIT_INTERRUPTED = 130
#: The first line a point's log gets each time the sweep starts it (a failure's reason is never this line).
LOG_HEADER = "=== rccsnn sweep"
#: Statuses of points that run, in the order the sweep's first line counts them.
TO_RUN = ("new", "resume", "failed", "changed")


@dataclass
class SweepOutcome:
    """What ``run_sweep`` did: point names that ran and finished, failed, or were skipped as finished."""

    finished: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    interrupted: bool = False


def point_status(point: Point) -> str:
    """``done`` (summary.json), ``changed`` (its settings differ from the run on disk: runs afresh),
    ``resume`` (interrupted: state.pt, no summary), ``failed`` (error.txt) or ``new``."""
    files = RunDir(point.run_dir)
    if files.point.is_file():
        try:
            # Through the config's own loader, so that a key added to the config since the run (with its default,
            # as data.frames was) does not count as a change: only a setting that differs does.
            on_disk = dataclasses.asdict(from_dict(type(point.config), read_yaml(files.point)))
        except (UserError, ValueError):
            on_disk = None
        if on_disk is None or comparable(on_disk) != comparable(point.config_dict()):
            return "changed"
    if files.summary.is_file():
        return "done"
    if files.state.is_file():
        return "resume"
    if files.error.is_file():
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
    cmd = [sys.executable, "-m", "rccsnn", "compress", "--config", str(RunDir(run).point), "--out", str(run),
           "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _last_line(path: Path, offset: int) -> str:
    """The last non-empty line of ``path`` from byte ``offset`` on (this start's part of an appended log)."""
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
    """A started point: its process, its open log, where this start's output begins in the log (bytes), when
    it started (``time.perf_counter()`` seconds) and the lock of its run directory (shared with the process)."""

    point: Point
    process: subprocess.Popen
    log: IO[bytes]
    offset: int
    started: float
    lock: RunLock


def _plan(sweep: Sweep, outcome: SweepOutcome) -> Tuple[Deque[Tuple[Point, str]], Dict[str, int]]:
    """The points to run with their status, in sweep order, and the count of each status; finished points go to
    ``outcome.skipped``."""
    queue: Deque[Tuple[Point, str]] = deque()
    counts: Dict[str, int] = {}
    for point in sweep.points:
        status = point_status(point)
        counts[status] = counts.get(status, 0) + 1
        if status == "done":
            outcome.skipped.append(point.name)
        else:
            queue.append((point, status))
    return queue, counts


def _claim(point: Point) -> RunLock:
    """Lock the point's run directory (created if missing); :class:`LockHeld` when another run holds it."""
    files = RunDir(point.run_dir)
    try:
        files.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {files.root}: {exc.strerror or exc}") from None
    return RunLock.acquire(files.lock)


def _start(point: Point, status: str, env: Dict[str, str], lock: RunLock) -> _Running:
    """Write the point's settings and start its process, its output appended to its log; ``lock`` (held on the
    point's directory) passes to the process."""
    files = RunDir(point.run_dir)
    if status == "changed":  # another run's results: this one starts afresh
        for stale in (files.summary, files.state):
            stale.unlink(missing_ok=True)
    files.error.unlink(missing_ok=True)
    write_yaml(point.config, files.point)
    cmd = point_command(point, status == "resume")
    log = open(files.log, "ab")
    offset = log.tell()
    log.write(f"{LOG_HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
    log.flush()
    handover, fds = lock.handover()
    # A session of its own: Ctrl-C reaches the sweep only, which passes it on once (a second SIGINT to
    # `rccsnn compress` would abort it without saving its epoch).
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**env, **handover}, pass_fds=fds, start_new_session=True)
    return _Running(point, process, log, offset, time.perf_counter(), lock)


def _finish(job: _Running, outcome: SweepOutcome) -> str:
    """Record how an exited point ended (a failure's reason goes to its ``error.txt``), then unlock its directory;
    returns the line to show."""
    try:
        return _record(job, outcome)
    finally:
        job.lock.release()


def _record(job: _Running, outcome: SweepOutcome) -> str:
    job.log.close()
    files, code, name = RunDir(job.point.run_dir), job.process.returncode, job.point.name
    seconds = time.perf_counter() - job.started
    if code == 0 and files.summary.is_file():
        outcome.finished.append(name)
        return f"{name}: ok ({seconds:.1f} s)"
    reason = _last_line(files.log, job.offset) if code != 0 else f"exited without a {RunDir.SUMMARY}"
    if code != 0 and (not reason or reason.startswith(LOG_HEADER)):
        reason = f"exit code {code}"
    files.error.write_text(reason + "\n")
    outcome.failed.append(name)
    if code == EXIT_INTERRUPTED and files.state.is_file():
        return (f"{name}: stopped after {seconds:.1f} s; its last epoch is saved and the next run of the sweep "
                f"resumes it")
    return f"{name}: FAILED (exit {code}, {seconds:.1f} s): {reason}"


def _raise_interrupt(signum, frame) -> None:
    # SIGTERM takes the same way out as Ctrl-C: the running points save their epoch.
    raise KeyboardInterrupt


def run_sweep(sweep: Sweep, jobs: int = 1, progress: bool = True) -> SweepOutcome:
    """Run every point that is not finished, ``jobs`` at a time; returns what happened.

    Each point's resolved config goes to ``<run>/point.yaml`` and runs as
    ``python -m rccsnn compress --config <run>/point.yaml --out <run> --no-progress [--resume]`` with its output
    in ``<run>/log.txt``. A failure (non-zero exit) writes the last line of its output to ``<run>/error.txt``
    and the other points go on. Ctrl-C (or SIGTERM) stops starting points and asks the running ones to save
    their epoch and stop (a second Ctrl-C stops them at once); rerunning the sweep resumes them.

    A point another run holds (a second sweep of the same file, or an ``rccsnn compress`` into its directory) waits
    until it is free, and is then skipped if that run finished it; a point is never run by two processes at once.
    """
    from tqdm.auto import tqdm

    sweep.make_dir()
    outcome = SweepOutcome()
    queue, counts = _plan(sweep, outcome)
    todo = ", ".join(f"{counts[s]} {s}" for s in TO_RUN if counts.get(s))
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
            tqdm.write(text, file=sys.stdout)  # above the bar, which stays at the bottom
        else:
            print(text, flush=True)

    waited: set = set()  # names of points another run held when this sweep first came to them

    def start_what_fits() -> None:
        """Start queued points while slots are free; a point another run holds goes to the back of the queue (this
        sweep comes back to it), and one that run finished (or, after a wait, failed) is not run again."""
        for _ in range(len(queue)):
            if len(running) >= jobs or outcome.interrupted:
                return
            point, planned = queue.popleft()
            try:
                lock = _claim(point)
            except LockHeld as held:
                if point.name not in waited:
                    who = held.holder.describe() if held.holder is not None else "another process"
                    say(f"{point.name}: held by another run ({who}); waiting for it")
                    waited.add(point.name)
                queue.append((point, planned))
                continue
            status = point_status(point)  # again, under the lock: the other run may have finished it since the plan
            if status == "done" or (status == "failed" and point.name in waited):
                lock.release()
                if status == "done":
                    outcome.skipped.append(point.name)
                    say(f"{point.name}: finished by another run")
                else:
                    outcome.failed.append(point.name)
                    say(f"{point.name}: failed in another run (see its {RunDir.ERROR}); rerun the sweep to retry it")
                bar.update(1)
                continue
            try:
                running.append(_start(point, status, env, lock))
            except BaseException:
                lock.release()
                raise

    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        while queue or running:
            try:
                start_what_fits()
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    say(_finish(job, outcome))
                    bar.update(1)
                if outcome.interrupted and not running:
                    break
                time.sleep(0.05)  # polling interval of the running processes and of the points others hold
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
            job.lock.release()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    return outcome
