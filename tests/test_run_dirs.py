"""Issue 18, nothing a user ran is ever overwritten: run directories are locked while a run writes them, a finished
run is replaced only with --overwrite, default names are versioned, and export / train --checkpoint keep an existing
file. The in-process tests hold a lock from the test itself (an advisory lock conflicts between two open files of
one process as between two processes); the two-process races (two compress into one directory, two sweeps of one
file) are slow: they start real processes and synchronise on the lock file and on process exit, never on sleeps."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY_RECIPE, assert_user_error, cli, train_tiny
from rccsnn.config import CompressConfig, load_config
from rccsnn.rundir import RunDir, settings_digest
from rccsnn.runlock import HANDOVER_ENV, Holder, LockHeld, RunLock
from rccsnn.sweep.runner import LOG_HEADER

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_DEADLINE_S = 600  # only a hang guard: a busy 2-core machine may be slow; a correct run never waits this long


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny digits model (one epoch) and a finished one-epoch compression of it: (model file, run dir)."""
    root = tmp_path_factory.mktemp("tiny")
    model = train_tiny(root, TINY_RECIPE)
    run = root / "compressed"
    code, _, err = compress(model, "--out", run)
    assert code == 0, err
    return model, run


def compress(model, *args):
    return cli("compress", model, "--budget", "0.5", "--epochs", 1, "--no-progress", "--device", "cpu", *args)


def contents(directory: Path):
    """Every file under ``directory`` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refused_untouched(model, out: Path, message: str, *flags) -> None:
    """``compress MODEL --out OUT FLAGS`` stops with the one-line ``message`` (exit 2) and leaves every file of
    ``out`` as it was."""
    before = contents(out)
    code, stdout, err = compress(model, "--out", out, *flags)
    assert_user_error(code, stdout, err, message)
    assert contents(out) == before


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name, data in contents(run).items():
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(data)
    return to


# ============================================================================================ the lock itself
def test_a_lock_is_exclusive_names_its_holder_and_goes_with_release(tmp_path):
    path = tmp_path / "run.lock"
    with RunLock.acquire(path) as lock:
        assert lock.previous is None
        holder = Holder.parse(path.read_text())
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        with pytest.raises(LockHeld, match=f"in use by another run \\(process {os.getpid()} on "):
            RunLock.acquire(path)
    assert not path.exists()
    RunLock.acquire(path).release()  # free again


def test_a_lock_file_nobody_holds_is_taken_over(tmp_path):
    """A run killed with SIGKILL leaves its lock file, but the kernel has dropped its lock."""
    path = tmp_path / "run.lock"
    dead = Holder(host=socket.gethostname(), pid=4_000_000, started="2020-01-01T00:00:00")
    path.write_text(dead.text())
    with RunLock.acquire(path) as lock:
        assert lock.previous == dead
        assert Holder.parse(path.read_text()).pid == os.getpid()


def test_a_lock_file_of_another_host_is_not_taken_over(tmp_path):
    """Advisory locks need not reach across hosts: a free lock named by another host's process proves nothing."""
    path = tmp_path / "run.lock"
    path.write_text(Holder(host="elsewhere.invalid", pid=1, started="2020-01-01T00:00:00").text())
    with pytest.raises(LockHeld, match=f"process 1 on elsewhere.invalid.*if that run has ended, delete {path}"):
        RunLock.acquire(path)
    assert Holder.parse(path.read_text()).host == "elsewhere.invalid"


def test_a_handed_over_lock_is_adopted_and_left_to_the_parent(tmp_path, monkeypatch):
    """What a sweep does for the ``rccsnn compress`` of a point (here the child is this same process)."""
    path = tmp_path / "run.lock"
    with RunLock.acquire(path) as parent:
        env, fds = parent.handover()
        assert env == {HANDOVER_ENV: str(fds[0])}
        # A child process gets its own descriptor of the same open file (pass_fds); here a duplicate stands in.
        monkeypatch.setenv(HANDOVER_ENV, str(os.dup(fds[0])))
        child = RunLock.acquire(path)  # no LockHeld: it is the lock passed on
        assert child.adopted and child.previous is None
        child.release()
        assert path.exists()  # still the parent's
        monkeypatch.delenv(HANDOVER_ENV)
        with pytest.raises(LockHeld):
            RunLock.acquire(path)
    assert not path.exists()


# ============================================================================================ compress
def test_a_locked_directory_stops_a_second_run_at_once(tiny, tmp_path):
    model, run = tiny
    out = tmp_path / "busy"
    out.mkdir()
    with RunLock.acquire(RunDir(out).lock):
        refused_untouched(model, out, f"{out} is in use by another run (process {os.getpid()} on")
    # The same for a directory that holds a run, with either flag.
    finished = copy_run(run, tmp_path / "finished")
    with RunLock.acquire(RunDir(finished).lock):
        before = contents(finished)
        for flag in ("--overwrite", "--resume"):
            code, stdout, err = compress(model, "--out", finished, flag)
            assert_user_error(code, stdout, err, "is in use by another run")
        assert contents(finished) == before


def test_a_finished_run_is_kept_without_a_flag(tiny, tmp_path):
    model, run = tiny
    out = copy_run(run, tmp_path / "run")
    refused_untouched(model, out, f"{out} already holds a finished run (summary.json): --overwrite replaces it, or "
                                  "choose a fresh --out directory (--resume continues only an unfinished run)")


def test_resume_of_a_finished_run_says_it_is_finished(tiny, tmp_path):
    model, run = tiny
    out = copy_run(run, tmp_path / "run")
    refused_untouched(model, out, f"{out} holds a finished run (all its 1 epochs; --epochs with more continues it): "
                                  "there is nothing to resume; --overwrite", "--resume")


def test_an_unfinished_run_is_kept_without_a_flag(tiny, tmp_path):
    model, run = tiny
    out = copy_run(run, tmp_path / "run")
    RunDir(out).summary.unlink()  # what an interrupted run leaves: state.pt, no summary
    refused_untouched(model, out, f"{out} holds an unfinished run (state.pt): --resume continues it, --overwrite "
                                  "replaces it, or choose a fresh --out directory")


def test_overwrite_replaces_a_finished_run(tiny, tmp_path):
    model, run = tiny
    out = copy_run(run, tmp_path / "run")
    old_events = sorted(p.name for p in out.glob("events.out.tfevents.*"))
    code, _, err = compress(model, "--out", out, "--overwrite", "--set", "optim.epochs=2")
    assert code == 0, err
    assert json.loads(RunDir(out).summary.read_text())["epochs"] == 2
    assert load_config(CompressConfig, RunDir(out).config, {}).optim.epochs == 2
    assert not set(old_events) & {p.name for p in out.glob("events.out.tfevents.*")}  # no mixed curves
    assert not RunDir(out).lock.exists()


def test_resume_and_overwrite_exclude_each_other(tiny, tmp_path):
    code, stdout, err = compress(tiny[0], "--out", tmp_path / "run", "--resume", "--overwrite")
    assert_user_error(code, stdout, err, "not allowed with argument")
    assert not (tmp_path / "run").exists()


def test_a_stale_lock_is_taken_over_with_a_message(tiny, tmp_path):
    model, run = tiny
    out = copy_run(run, tmp_path / "run")
    RunDir(out).summary.unlink()
    RunDir(out).lock.write_text(Holder(host=socket.gethostname(), pid=4_000_000, started="2020-01-01T00:00:00").text())
    code, stdout, err = compress(model, "--out", out, "--resume")
    assert code == 0, err
    assert (f"note: took over {RunDir(out).lock}: its process 4000000 on {socket.gethostname()}, started "
            "2020-01-01T00:00:00 ended without releasing it") in stdout
    assert RunDir(out).summary.is_file() and not RunDir(out).lock.exists()


def test_a_run_resumed_with_other_code_says_so(tiny, tmp_path, monkeypatch):
    """summary.json's code is the last start's; earlier starts that ran other code are listed (resumed_from), also
    in the sweep's label, and a state.pt from before starts were recorded counts as unknown code."""
    import rccsnn.compression as compression
    from rccsnn.provenance import code_label

    model, _ = tiny
    out = tmp_path / "run"
    a, b = ({"rccsnn": "0.1.0", "commit": c * 40, "modified": False} for c in "ab")

    def run_with(code_now, *flags):
        monkeypatch.setattr(compression, "code_version", lambda: code_now)
        code, _, err = compress(model, "--out", out, *flags)
        assert code == 0, err
        summary = json.loads(RunDir(out).summary.read_text())
        RunDir(out).summary.unlink()  # unfinished again: the next call resumes it
        return summary["code"]

    assert run_with(a) == a
    assert run_with(a, "--resume") == a  # resumed with the same code: nothing to say
    assert run_with(b, "--resume") == {**b, "resumed_from": [a]}
    assert code_label({**b, "resumed_from": [a]}) == "0.1.0+bbbbbbb after 0.1.0+aaaaaaa"
    state = torch.load(RunDir(out).state, weights_only=True)
    del state["starts"]  # as written before starts were recorded
    torch.save(state, RunDir(out).state)
    resumed = run_with(b, "--resume")
    assert resumed == {**b, "resumed_from": [{}]} and code_label(resumed) == "0.1.0+bbbbbbb after unknown"
    state = torch.load(RunDir(out).state, weights_only=True)
    state["starts"] = None  # damaged: provenance only, so the run still resumes, its earlier code unknown
    torch.save(state, RunDir(out).state)
    assert run_with(b, "--resume") == {**b, "resumed_from": [{}]}


def test_a_failed_start_leaves_nothing_behind(tiny, tmp_path):
    out = tmp_path / "a" / "b"
    code, stdout, err = compress(tiny[0], "--out", out, "--data", "npz", "--data-path", tmp_path / "missing.npz")
    assert code == 2, err
    assert not (tmp_path / "a").exists()


def test_default_names_are_versioned_by_settings(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    monkeypatch.chdir(tmp_path)
    base = Path("runs") / "compress" / "model-params0.5-minimax-joint-seed0"
    code, stdout, err = compress(model)
    assert code == 0 and "note:" not in stdout, err
    first = contents(base)

    # Other settings, same name: the next version, said on stdout.
    code, stdout, err = compress(model, "--lr", "0.01")
    assert code == 0, err
    second = base.with_name(base.name + "-2")
    assert f"note: {base} holds a run with other settings; this run writes {second}" in stdout
    assert load_config(CompressConfig, RunDir(second).config, {}).optim.lr == 0.01
    assert contents(base) == first

    # The same settings find their own directory again: finished, so kept; --resume says so.
    code, stdout, err = compress(model, "--lr", "0.01")
    assert_user_error(code, stdout, err, f"{second} already holds a finished run")
    code, stdout, err = compress(model, "--resume")
    assert_user_error(code, stdout, err, f"{base} holds a finished run")
    assert sorted(p.name for p in base.parent.iterdir()) == [base.name, second.name]


def test_a_default_name_held_by_a_starting_run(tiny, tmp_path, monkeypatch):
    """A run that has locked a default name but not yet written its config.yaml: its lock file's settings digest
    tells whether it is this run (stop) or another (next version)."""
    model, _ = tiny
    monkeypatch.chdir(tmp_path)
    base = Path("runs") / "compress" / "model-params0.5-minimax-joint-seed0"
    base.mkdir(parents=True)
    cfg = load_config(CompressConfig, None, {"model": str(model), "budgets": {"params": 0.5},
                                             "optim.epochs": 1, "device": "cpu"})
    with RunLock.acquire(RunDir(base).lock, settings=settings_digest(cfg)):
        code, stdout, err = compress(model)
        assert_user_error(code, stdout, err, f"{base} is in use by another run")
    with RunLock.acquire(RunDir(base).lock, settings="another-run"):
        code, stdout, err = compress(model)
        assert code == 0, err
        assert f"this run writes {base.with_name(base.name + '-2')}" in stdout


# ============================================================================================ export, train
def test_export_keeps_an_existing_file(tiny, tmp_path):
    model, run = tiny
    out = tmp_path / "m.compact.pt"
    code, _, err = cli("export", RunDir(run).model, "--out", out, "--no-eval")
    assert code == 0, err
    before = out.read_bytes()
    code, stdout, err = cli("export", RunDir(run).model, "--out", out, "--no-eval", "--dtype", "float16")
    assert_user_error(code, stdout, err, f"{out} already exists: --overwrite replaces it, or choose another --out")
    assert out.read_bytes() == before
    code, _, err = cli("export", RunDir(run).model, "--out", out, "--no-eval", "--dtype", "float16", "--overwrite")
    assert code == 0, err
    assert out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.compact.pt"]  # no temporary file left


def test_train_keeps_an_existing_checkpoint_and_run(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    ckpt = tmp_path / "elsewhere.pt"
    ckpt.write_bytes(b"someone's model")

    def train(out, *flags):
        return cli("train", recipe, "--out", out, "--checkpoint", ckpt, "--no-progress", "--device", "cpu", *flags)

    code, stdout, err = train(tmp_path / "a")
    assert_user_error(code, stdout, err, f"checkpoint {ckpt} already exists: --overwrite replaces it, or choose "
                                         "another --checkpoint")
    assert ckpt.read_bytes() == b"someone's model" and not (tmp_path / "a").exists()
    code, _, err = train(tmp_path / "a", "--overwrite")
    assert code == 0, err
    assert torch.load(ckpt, weights_only=True)["format"]
    # A finished training run: kept without a flag, and --resume says it is finished.
    before = contents(tmp_path / "a")
    code, stdout, err = train(tmp_path / "a")
    assert_user_error(code, stdout, err, "already holds a finished run")
    code, stdout, err = train(tmp_path / "a", "--resume")
    assert_user_error(code, stdout, err, "holds a finished run (all its 1 epochs")
    assert contents(tmp_path / "a") == before


def test_train_default_directory_is_versioned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text(TINY_RECIPE)  # names no out: runs/train
    code, stdout, err = cli("train", "tiny.yaml", "--no-progress", "--device", "cpu")
    assert code == 0 and "note:" not in stdout, err
    code, stdout, err = cli("train", "tiny.yaml", "--no-progress", "--device", "cpu", "--lr", "0.01")
    assert code == 0, err
    assert "note: runs/train holds a run with other settings; this run writes runs/train-2" in stdout
    assert RunDir("runs/train-2").summary.is_file()
    code, stdout, err = cli("train", "tiny.yaml", "--no-progress", "--device", "cpu")
    assert_user_error(code, stdout, err, "runs/train already holds a finished run")


# ============================================================================================ two processes at once
#: ``python -c STOP_AFTER_FIRST_EPOCH ARGS`` runs ``rccsnn ARGS`` and stops itself (SIGSTOP) right after it saved
#: its first epoch: the test starts the second run while the first one holds its directory, with no race.
STOP_AFTER_FIRST_EPOCH = """\
import os, signal, sys
import rccsnn.trainer
from rccsnn.cli import main

save_state = rccsnn.trainer.Trainer.save_state


def save_then_stop(self, next_epoch):
    save_state(self, next_epoch)
    if next_epoch == 1:
        os.kill(os.getpid(), signal.SIGSTOP)


rccsnn.trainer.Trainer.save_state = save_then_stop
raise SystemExit(main(sys.argv[1:]))
"""


def child_env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def wait_until_stopped(proc: subprocess.Popen) -> None:
    """Block until ``proc`` has stopped itself (SIGSTOP); fails if it exits instead."""
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid == proc.pid:
            assert os.WIFSTOPPED(status), f"the first run ended (wait status {status}) instead of stopping"
            return
        assert time.monotonic() < deadline, "the first run never saved its first epoch"
        time.sleep(0.05)  # polling interval of the wait above, not a guess at how far the child got


@pytest.mark.slow
def test_two_compress_into_one_directory(tiny, tmp_path):
    """The second exits 2 at once while the first holds the directory; the first's files are untouched, and it ends
    with exactly the files of a lone run of the same command (one thread each: CPU kernels are deterministic)."""
    model, _ = tiny
    args = ["compress", str(model), "--budget", "0.5", "--epochs", "3", "--device", "cpu", "--no-progress"]
    lone_out, first_out = tmp_path / "lone", tmp_path / "shared"
    lone = subprocess.Popen([sys.executable, "-m", "rccsnn", *args, "--out", str(lone_out)], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen([sys.executable, "-c", STOP_AFTER_FIRST_EPOCH, *args, "--out", str(first_out)],
                             env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(first)
        assert RunDir(first_out).lock.is_file()
        held = contents(first_out)
        for flags in ([], ["--resume"], ["--overwrite"]):
            second = subprocess.run([sys.executable, "-m", "rccsnn", *args, "--out", str(first_out), *flags],
                                    env=child_env(), capture_output=True, text=True, timeout=CHILD_DEADLINE_S)
            assert second.returncode == 2, second.stderr
            line, = second.stderr.splitlines()
            assert f"{first_out} is in use by another run (process {first.pid} on" in line, line
            assert contents(first_out) == held
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=CHILD_DEADLINE_S) == 0, first.stderr.read()
    assert lone.wait(timeout=CHILD_DEADLINE_S) == 0, lone.stderr.read()

    assert not RunDir(first_out).lock.exists()
    a, b = torch.load(RunDir(lone_out).model, weights_only=True), torch.load(RunDir(first_out).model,
                                                                               weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    assert a["metrics"] == b["metrics"]
    summaries = [json.loads(RunDir(d).summary.read_text()) for d in (lone_out, first_out)]
    for s in summaries:
        s.pop("wall_seconds"), s.pop("checkpoint")
    assert summaries[0] == summaries[1]
    assert sorted(p.name for p in lone_out.iterdir() if not p.name.startswith("events.")) == \
        sorted(p.name for p in first_out.iterdir() if not p.name.startswith("events."))


@pytest.mark.slow
def test_two_sweeps_of_one_file_run_every_point_once(tiny, tmp_path):
    """The second sweep starts once the first holds a point; each point is run by one of them, exactly once."""
    model, _ = tiny
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base:\n  model: {model}\n  optim: {{epochs: 1}}\n  device: cpu\n"
                     "grid:\n  budget: [0.5, 0.3]\n  method: [minimax, magnitude]\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rccsnn", "sweep", str(sweep), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not any(out.glob(f"*/{RunDir.LOCK}")):  # the first sweep holds a point
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.01)  # polling interval of the lock file's appearance
    second = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = [p.communicate(timeout=CHILD_DEADLINE_S)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    points = sorted(p for p in out.iterdir() if p.is_dir() and RunDir(p).point.exists())
    assert len(points) == 4
    for point in points:
        files = RunDir(point)
        assert files.summary.is_file() and not files.lock.exists(), point.name
        starts = [line for line in files.log.read_text().splitlines() if line.startswith(LOG_HEADER)]
        assert len(starts) == 1, (point.name, starts, logs)
        ran = [line for log in logs for line in log.splitlines() if line.startswith(f"{point.name}: ok")]
        assert len(ran) == 1, (point.name, logs)  # and one of the two sweeps says it ran it
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == [p.name for p in points]
    assert all(r["status"] == "ok" for r in rows), rows
