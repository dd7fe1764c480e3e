"""Reliability (issue 8): one-line errors for every mistake a user can make (the README's error table: each row has
its test here or in test_cli.py / test_compress.py / test_sweep.py / test_checkpoint.py), a full disk, no code run
from an untrusted file by any command, exact resume after SIGKILL, Ctrl-C/SIGTERM, and divergence.

The tiny model (trained once per module, 2 epochs, as in test_compress.py): convsnn channels [4, 8], hidden 16 on
digits, T = 2; a compression epoch is 20 steps (1258 training digits in batches of 64).

Signals are raised with ``signal.raise_signal``, which runs the Python handler before it returns, so each test knows
exactly where the signal landed. The SIGKILL test (subprocesses, marked slow) kills a child that has stopped itself
right after saving the state it is to be killed in.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rccsnn.trainer
from helpers import assert_user_error as user_error, cli, one_line, train_tiny
from rccsnn import snn
from rccsnn.data import load_data
from rccsnn.errors import UserError
from rccsnn.models import build_model
from rccsnn.models import checkpoint as checkpoint_module
from rccsnn.models.checkpoint import ModelSpec, atomic_save
from rccsnn.rundir import RunDir, write_json
from rccsnn.runlock import Holder
from rccsnn.trainer import Trainer, TrainerOptions

STATE_FILE = RunDir.STATE

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 20

RECIPE = """\
data: {name: digits, batch_size: 64}
model: {arch: convsnn, args: {channels: [4, 8], hidden: 16}, T: 2}
optim: {lr: 0.02, epochs: 2}
seed: 0
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs on one CPU thread: the subprocess runs use one too, and two threads only compete on a busy
    2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny digits model's checkpoint path (its run directory holds the recipe's state.pt too)."""
    return train_tiny(tmp_path_factory.mktemp("tiny"), RECIPE)


def compress(model, out, *extra):
    return cli("compress", model, "--out", out, "--no-progress", "--device", "cpu", *extra)


def leftovers(directory: Path):
    """Temporary files of interrupted writes."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ============================================================================================ bad files, via the CLI
@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text", "directory", "tensor"])
def test_compress_refuses_a_bad_model_file_in_one_line(kind, tiny, tmp_path, capsys):
    path = tmp_path / f"model-{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = tiny.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("model: convsnn\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    code, out, err = compress(path, tmp_path / "run", "--budget", "0.5", "--epochs", "1")
    user_error(code, out, err, "rccsnn compress: error: ", str(path))
    assert not (tmp_path / "run").exists()


def mismatched_checkpoint(tiny, tmp_path) -> Path:
    """The tiny checkpoint claiming another hidden width: its state does not fit the architecture it names."""
    raw = torch.load(tiny, weights_only=True)
    raw["arch_args"] = {"channels": [4, 8], "hidden": 32}
    path = tmp_path / "mismatch.pt"
    torch.save(raw, path)
    return path


def test_evaluate_a_checkpoint_whose_state_does_not_fit_its_architecture(tiny, tmp_path, capsys):
    path = mismatched_checkpoint(tiny, tmp_path)
    code, out, err = cli("evaluate", path, "--device", "cpu")
    user_error(code, out, err, str(path), "state does not fit the architecture")


def test_compress_a_checkpoint_whose_state_does_not_fit_its_architecture(tiny, tmp_path, capsys):
    path = mismatched_checkpoint(tiny, tmp_path)
    code, out, err = compress(path, tmp_path / "run", "--budget", "0.5", "--epochs", "1")
    user_error(code, out, err, str(path), "state does not fit the architecture")
    assert not (tmp_path / "run").exists()


def test_compress_config_with_a_yaml_syntax_error(tiny, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny}\nbudgets:\n  params: 0.2\n   synops: 0.1\n")
    code, out, err = cli("compress", "--config", config, "--out", tmp_path / "run", "--no-progress")
    user_error(code, out, err, f"{config}:4:", "YAML syntax error")
    assert not (tmp_path / "run").exists()


def test_data_with_other_classes_than_the_model(tiny, tmp_path, capsys):
    import numpy as np

    npz = tmp_path / "twelve-classes.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 17, size=(60, 8, 8), dtype=np.uint8), y=np.arange(60) % 12)
    code, out, err = cli("evaluate", tiny, "--data", "npz", "--data-path", npz, "--device", "cpu")
    user_error(code, out, err, "has 12 classes but the model has 10 outputs")


def test_sweep_file_not_found(tmp_path, capsys):
    code, out, err = cli("sweep", tmp_path / "nope.yaml", "--out", tmp_path / "sw")
    user_error(code, out, err, f"sweep file not found: {tmp_path / 'nope.yaml'}")
    assert not (tmp_path / "sw").exists()


# ============================================================================================ unwritable output
@pytest.fixture
def blocker(tmp_path) -> Path:
    """A plain file: nothing can be created below it (a reliable 'unwritable' even for root)."""
    path = tmp_path / "a-file"
    path.write_text("")
    return path


def test_train_into_an_unwritable_directory(tiny, blocker, capsys):
    recipe = tiny.parent.parent / "tiny.yaml"
    code, out, err = cli("train", recipe, "--out", blocker / "run", "--no-progress", "--device", "cpu")
    user_error(code, out, err, f"output directory {blocker / 'run'} is not writable")


def test_compress_into_an_unwritable_directory(tiny, blocker, capsys):
    code, out, err = compress(tiny, blocker / "run", "--budget", "0.5", "--epochs", "1")
    user_error(code, out, err, f"output directory {blocker / 'run'} is not writable")


def test_sweep_into_an_unwritable_directory(tiny, blocker, tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {{model: {tiny}, optim: {{epochs: 1}}, device: cpu}}\ngrid: {{budget: [0.5]}}\n")
    code, out, err = cli("sweep", sweep, "--out", blocker / "sw", "--no-progress")
    assert code == 2, (out, err)
    assert f"cannot create sweep directory {blocker / 'sw'}" in one_line(err)


def test_train_checkpoint_path_that_cannot_be_written_keeps_the_run(tiny, blocker, tmp_path, capsys):
    recipe = tiny.parent.parent / "tiny.yaml"
    out = tmp_path / "run"
    code, stdout, err = cli("train", recipe, "--out", out, "--checkpoint", blocker / "m.pt", "--epochs", "1",
                            "--no-progress", "--device", "cpu")
    user_error(code, stdout, err, f"cannot write {blocker / 'm.pt'}", "is not a directory")
    assert torch.load(out / STATE_FILE, weights_only=True)["next_epoch"] == 1  # --resume can finish it


# ============================================================================================ no space left on device
def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        enospc()

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_atomic_save_on_a_full_disk_keeps_the_old_file(where, tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"x": torch.arange(3)}, path)
    before = path.read_bytes()
    if where == "fsync":
        monkeypatch.setattr(checkpoint_module.os, "fsync", enospc)
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(checkpoint_module.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(UserError) as info:
        atomic_save({"x": torch.arange(1000)}, path)
    assert str(info.value) == f"no space left on device writing {path}; free space or choose another --out"
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert leftovers(tmp_path) == []


def test_full_disk_while_saving_an_epoch(tiny, tmp_path, monkeypatch, capsys):
    """ENOSPC on the second epoch's state.pt: exit 2, one line, the first epoch's state.pt intact."""
    recipe = tiny.parent.parent / "tiny.yaml"
    out = tmp_path / "run"
    real_fsync, snapshot = os.fsync, {}

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(f".{STATE_FILE}.") and (out / STATE_FILE).is_file():
            snapshot["before"] = (out / STATE_FILE).read_bytes()
            enospc()
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    code, stdout, err = cli("train", recipe, "--out", out, "--epochs", "2", "--no-progress", "--device", "cpu")
    monkeypatch.undo()
    user_error(code, stdout, err, f"rccsnn train: error: no space left on device writing {out / STATE_FILE}; "
                                  "free space or choose another --out")
    assert (out / STATE_FILE).read_bytes() == snapshot["before"]
    assert torch.load(out / STATE_FILE, weights_only=True)["next_epoch"] == 1
    assert leftovers(out) == [] and not (out / "model.pt").exists()


def test_full_disk_writing_json_keeps_the_old_file(tiny, tmp_path, monkeypatch, capsys):
    result = tmp_path / "r.json"
    write_json({"old": True}, result)
    monkeypatch.setattr(os, "fsync", enospc)
    code, out, err = cli("evaluate", tiny, "--json", result, "--device", "cpu")
    monkeypatch.undo()
    user_error(code, out, err, f"no space left on device writing {result}; free space or choose another --out")
    assert json.loads(result.read_text()) == {"old": True}
    assert leftovers(tmp_path) == []


def test_full_disk_on_any_other_write_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    # e.g. config.yaml, which train writes with a plain write: the CLI maps the OSError itself.
    import rccsnn.training

    monkeypatch.setattr(rccsnn.training, "write_yaml", enospc)
    code, out, err = cli("train", tiny.parent.parent / "tiny.yaml", "--out", tmp_path / "run", "--no-progress",
                         "--device", "cpu")
    user_error(code, out, err, "rccsnn train: error: no space left on device; free space or choose another --out")


# ============================================================================================ untrusted pickles
def evil_files(tmp_path, user_models):
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"state_dict": user_models.Evil(str(marker))}, zipped)
    raw.write_bytes(pickle.dumps(user_models.Evil(str(marker))))
    return marker, [zipped, raw]


def test_payload_is_live(tmp_path, user_models):
    # Positive control: unpickling it really runs the command (so 'no marker' below means 'not run').
    marker, files = evil_files(tmp_path, user_models)
    torch.load(files[0], weights_only=False)
    assert marker.exists()


def test_compress_runs_no_code_from_an_untrusted_pickle(tiny, tmp_path, user_models, capsys):
    marker, files = evil_files(tmp_path, user_models)
    config = tmp_path / "c.yaml"
    for path in files:
        config.write_text(f"model: {path}\nbudgets: {{params: 0.5}}\n")
        for argv in ([path, "--budget", "0.5"], [path, "--budget", "0.5", "--model", "user_models:tiny_net"],
                     ["--config", config]):
            code, out, err = cli("compress", *argv, "--out", tmp_path / "run", "--no-progress", "--device", "cpu")
            user_error(code, out, err, "--trust-checkpoint")
            assert not marker.exists(), f"compress {argv} ran code from the file"
            assert not (tmp_path / "run").exists()


def test_resume_runs_no_code_from_a_planted_state_file(tiny, tmp_path, user_models, capsys):
    marker, files = evil_files(tmp_path, user_models)
    out = tmp_path / "run"
    out.mkdir()
    for path in files:
        (out / STATE_FILE).write_bytes(path.read_bytes())
        code, stdout, err = compress(tiny, out, "--budget", "0.5", "--epochs", "1", "--resume")
        user_error(code, stdout, err, f"cannot resume from {out / STATE_FILE}", "not a readable state file")
        assert not marker.exists()


def test_sweep_runs_no_code_from_an_untrusted_base_model(tmp_path, user_models, capsys):
    marker, files = evil_files(tmp_path, user_models)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {{model: {files[0]}, optim: {{epochs: 1}}, device: cpu}}\ngrid: {{budget: [0.5]}}\n")
    code, out, err = cli("sweep", sweep, "--out", tmp_path / "sw", "--no-progress")
    assert not marker.exists()
    # The base model is loaded (safely) while the sweep file is checked, so nothing runs and nothing is created.
    line = user_error(code, out, err, "--trust-checkpoint")
    assert "point (budget=0.5)" in line
    assert not (tmp_path / "sw").exists()


# ============================================================================================ resume
def test_compress_resume_without_state_creates_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = compress(tiny, out, "--budget", "0.5", "--epochs", "1", "--resume")
    user_error(code, stdout, err, f"nothing to resume in {out}: no state.pt")
    assert not out.exists()


def test_resume_from_a_truncated_state_file(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    data = (tiny.parent / STATE_FILE).read_bytes()
    (out / STATE_FILE).write_bytes(data[: len(data) // 2])
    code, stdout, err = compress(tiny, out, "--budget", "0.5", "--epochs", "1", "--resume")
    user_error(code, stdout, err, f"cannot resume from {out / STATE_FILE}: not a readable state file",
               "rerun without --resume")


def test_resume_from_the_state_of_another_run(tiny, tmp_path, capsys):
    # The pretraining run's state.pt (dense, no masks, no method state) in a compression run's directory.
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_FILE).write_bytes((tiny.parent / STATE_FILE).read_bytes())
    code, stdout, err = compress(tiny, out, "--budget", "0.5", "--epochs", "1", "--resume")
    user_error(code, stdout, err, f"cannot resume from {out / STATE_FILE}: it does not fit this run",
               "rerun without --resume")


def test_trainer_resumed_after_its_last_epoch_is_where_it_stopped(tmp_path):
    """Resuming a finished run restores the epoch (the guarantee finetuning reseeds the data order from it)
    and the last epoch's metrics."""
    data = load_data("digits")
    spec = ModelSpec(arch="convsnn", arch_args={"channels": [4], "hidden": 8}, input_shape=data.input_shape,
                     num_classes=data.num_classes, T=2)

    def trainer():
        torch.manual_seed(0)
        net = build_model(spec.arch, spec.input_shape, spec.num_classes, spec.neuron, spec.arch_args)
        return Trainer(net=net, data=data, spec=spec, options=TrainerOptions(epochs=2, lr=0.02, progress=False),
                       out_dir=tmp_path, device=torch.device("cpu"))

    first = trainer()
    fit = first.fit()
    again = trainer()
    refit = again.fit(resume=True)
    assert again.epoch == first.epoch == 1 and again.step == first.step == 2 * STEPS_PER_EPOCH
    assert refit == fit
    for key, value in first.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[key], value), key


# ============================================================================================ SIGTERM / Ctrl-C
class LossHook:
    """Stands in for ``rccsnn.trainer.LOSSES``: the real loss, with ``act(call, value, counts)`` run on every
    training call (counted from 1; evaluation runs without gradients and is left alone)."""

    def __init__(self, act):
        self.act, self.calls = act, 0

    def get(self, name):
        real = snn.LOSSES.get(name)

        def loss(out, target):
            value = real(out, target)
            if torch.is_grad_enabled():
                self.calls += 1
                value = self.act(self.calls, value, out.counts)
            return value

        return loss


def test_sigterm_saves_the_epoch_and_names_the_command_that_continues(tiny, tmp_path, monkeypatch, capsys):
    """SIGTERM mid-epoch: the epoch finishes and is saved, exit 130, one line naming the command that continues;
    that command then gives exactly the model of an uninterrupted run (sequential schedule, cut while compressing)."""
    args = ["--budget", "0.2", "--epochs", "3", "--seed", "1", "--schedule", "sequential", "--set",
            "method.options.s_rate=1"]
    code, _, err = compress(tiny, tmp_path / "whole", *args)
    assert code == 0, err

    def terminate(call, value, counts):
        if call == 5:  # in the first epoch; the handler has run when raise_signal returns
            signal.raise_signal(signal.SIGTERM)
        return value

    monkeypatch.setattr(rccsnn.trainer, "LOSSES", LossHook(terminate))
    out = tmp_path / "cut"
    code, stdout, err = compress(tiny, out, *args)
    monkeypatch.undo()
    assert code == 130, err
    line = one_line(err)
    assert line.startswith(f"rccsnn compress: stopped by SIGTERM after saving epoch 1 of 3 to {out / STATE_FILE}; "
                           "continue with: rccsnn compress "), line
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["next_epoch"] == 1 and state["method"]["phase"] == "compress"
    assert not (out / "model.pt").exists()
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[-1] == "--resume"
    code, _, err = cli(*command[1:])
    assert code == 0, err
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    resumed = torch.load(out / "model.pt", weights_only=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["metrics"] == whole["metrics"]


def test_sigterm_before_the_first_epoch_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    import rccsnn.compression as api

    real_prepare = api.prepare

    def prepare(*a, **kw):
        real_prepare(*a, **kw)  # the run's set-up completes, then the signal arrives
        signal.raise_signal(signal.SIGTERM)  # the handler runs (and raises) before this returns
        raise AssertionError("SIGTERM before the first epoch did not stop the run")

    monkeypatch.setattr(api, "prepare", prepare)
    code, out, err = compress(tiny, tmp_path / "run", "--budget", "0.5")
    assert code == 130, err
    line = one_line(err)
    assert line.startswith("rccsnn compress: interrupted (") and "continue with: rccsnn compress" in line
    assert line.endswith(" --resume)")


# ============================================================================================ divergence
def poison(kind: str, at: int, state: Path, snapshot: dict):
    """A LossHook action: at training call ``at`` a NaN loss (``loss``) or a finite loss with NaN gradients
    (``weights``: a silent network keeps a finite loss, so only the weights show it)."""

    def act(call, value, counts):
        if call != at:
            return value
        snapshot["state"] = state.read_bytes() if state.is_file() else None
        if kind == "loss":
            return value * float("nan")
        nan_grad = torch.sqrt(counts.sum() * 0.0 - 1.0)  # NaN, and so is its gradient
        return torch.where(torch.tensor(True), value, nan_grad)

    return act


@pytest.mark.parametrize("kind", ["loss", "weights"])
def test_divergence_stops_in_one_line_and_keeps_the_last_good_epoch(kind, tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    snapshot: dict = {}
    at = STEPS_PER_EPOCH + 3  # epoch 2 of 3
    monkeypatch.setattr(rccsnn.trainer, "LOSSES", LossHook(poison(kind, at, out / STATE_FILE, snapshot)))
    code, stdout, err = compress(tiny, out, "--budget", "0.5", "--epochs", "3")
    monkeypatch.undo()
    what = "the loss became nan at epoch 2, step 22" if kind == "loss" else "weights became NaN or infinite in epoch 2"
    line = user_error(code, stdout, err, f"rccsnn compress: error: training diverged: {what}",
                      "lower the learning rate (--lr)",
                      f"{out / STATE_FILE} keeps the last good epoch (1), --resume continues from it")
    assert snapshot["state"] is not None and (out / STATE_FILE).read_bytes() == snapshot["state"]
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["next_epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in state["net"].values() if v.is_floating_point())
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    assert leftovers(out) == []
    if kind == "loss":  # what the message promises: --resume continues from the kept epoch
        code, _, err = compress(tiny, out, "--budget", "0.5", "--epochs", "3", "--resume")
        assert code == 0, err + line
        assert json.loads((out / "summary.json").read_text())["resources"]["params"]["ratio"] <= 0.5


def test_divergence_in_the_first_epoch_says_nothing_was_kept(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rccsnn.trainer, "LOSSES", LossHook(poison("loss", 3, tmp_path / "none", {})))
    code, out, err = cli("train", tiny.parent.parent / "tiny.yaml", "--out", tmp_path / "run", "--no-progress",
                         "--device", "cpu")
    line = user_error(code, out, err, "rccsnn train: error: training diverged: the loss became nan at epoch 1, "
                                      "step 2; lower the learning rate (--lr) and rerun")
    assert "--resume" not in line and not (tmp_path / "run" / STATE_FILE).exists()


# ============================================================================================ SIGKILL, then --resume
# Killed in the compression phase, while the masks are held at a node: a data-dependent constraint (the rate
# tracker), layerwise sparsity levels, both duals, the node stage and hold, straight-through off while holding.
# (The sequential schedule is resumed exactly in the SIGTERM test above.)
KILL_VARIANTS = {
    "joint": ["--budget", "0.2", "--constraint", "synops=0.4", "--set", "method.options.s_rate=1",
              "--set", "method.options.nodes=[0.5]"],
}
CHILD_DEADLINE_S = 600  # only a hang guard: a busy 2-core machine may be slow, a correct run never waits this long

#: ``python -c STOP_WHILE_HELD ARGS`` runs ``rccsnn ARGS``, and the process stops itself (SIGSTOP) right after
#: ``Trainer.save_state`` has written the first state.pt of the compression phase with the masks held at a node:
#: the test then kills it at exactly that point, with no race against the epochs that follow.
STOP_WHILE_HELD = """\
import os, signal, sys
import rccsnn.trainer
from rccsnn.cli import main

save_state = rccsnn.trainer.Trainer.save_state


def save_then_stop(self, next_epoch):
    save_state(self, next_epoch)
    method = self.method.state_dict()
    if method.get("phase") == "compress" and method.get("hold", 0) > 0:
        os.kill(os.getpid(), signal.SIGSTOP)


rccsnn.trainer.Trainer.save_state = save_then_stop
raise SystemExit(main(sys.argv[1:]))
"""


def wait_until_stopped(proc: subprocess.Popen) -> None:
    """Block until ``proc`` has stopped itself (SIGSTOP); fails if it exits instead or never gets there."""
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid == proc.pid:
            assert os.WIFSTOPPED(status), (f"the run to be killed ended (wait status {status}) without saving an "
                                           "epoch in the compression phase with the masks held at a node")
            return
        assert time.monotonic() < deadline, "the run to be killed never got to the state it is killed in"
        time.sleep(0.05)  # polling interval of the wait above, not a guess at how far the child got


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_model(tiny, tmp_path):
    """For each variant an uninterrupted run of 6 epochs, and one SIGKILLed right after it saved an epoch while
    compressing with the masks held at a node and then rerun with --resume, in separate processes with one thread
    each (CPU kernels are then deterministic): the saved models are identical tensor for tensor (so the masks are),
    and so are their accuracy, resources and events."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(variant, run, *more, stop=False):
        entry = ["-c", STOP_WHILE_HELD] if stop else ["-m", "rccsnn"]
        args = ["compress", str(tiny), "--epochs", "6", "--device", "cpu", "--no-progress", "--out", str(run),
                *KILL_VARIANTS[variant], *more]
        log = open(tmp_path / f"{run.name}{'-resumed' if more else ''}.log", "w")
        with log:  # the child holds its own copy of the descriptor
            return subprocess.Popen([sys.executable, *entry, *args], cwd=tmp_path, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)

    def stderr_of(run, resumed=False):
        return (tmp_path / f"{run.name}{'-resumed' if resumed else ''}.log").read_text()[-3000:]

    whole = {v: start(v, tmp_path / f"{v}-whole") for v in KILL_VARIANTS}
    resumed = {}
    for v in KILL_VARIANTS:
        run = tmp_path / f"{v}-cut"
        proc = start(v, run, stop=True)
        try:
            wait_until_stopped(proc)
        except AssertionError as exc:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{exc}\n{stderr_of(run)}") from None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        state = torch.load(run / STATE_FILE, weights_only=True)
        assert 1 <= state["next_epoch"] < 6, state["next_epoch"]
        assert state["method"]["phase"] == "compress" and state["method"]["hold"] > 0
        assert not (run / "model.pt").exists() and not (run / "summary.json").exists()
        # Issue 18: the killed run could not remove its lock file; the kernel dropped its lock, so --resume takes
        # it over (and says so) instead of being turned away.
        assert Holder.parse(RunDir(run).lock.read_text()).pid == proc.pid
        resumed[v] = start(v, run, "--resume")
    for runs, was_resumed in ((whole, False), (resumed, True)):
        for v, proc in runs.items():
            proc.wait(timeout=CHILD_DEADLINE_S)
            run = tmp_path / f"{v}-{'cut' if was_resumed else 'whole'}"
            assert proc.returncode == 0, stderr_of(run, was_resumed)

    for v in KILL_VARIANTS:
        a, b = tmp_path / f"{v}-whole", tmp_path / f"{v}-cut"
        model_a = torch.load(a / "model.pt", weights_only=True)
        model_b = torch.load(b / "model.pt", weights_only=True)
        assert model_a["state_dict"].keys() == model_b["state_dict"].keys()
        for key, value in model_a["state_dict"].items():
            assert torch.equal(model_b["state_dict"][key] == 0, value == 0), f"{v}: mask of {key} differs"
            assert torch.equal(model_b["state_dict"][key], value), f"{v}: {key} differs"
        assert model_b["metrics"] == model_a["metrics"], v
        summary_a = json.loads((a / "summary.json").read_text())
        summary_b = json.loads((b / "summary.json").read_text())
        assert summary_b["accuracy"] == summary_a["accuracy"], v
        assert summary_b["resources"] == summary_a["resources"], v
        assert summary_b["events"] == summary_a["events"], v
        assert leftovers(b) == []
        assert f"note: took over {RunDir(b).lock}: its process " in (tmp_path / f"{b.name}-resumed.log").read_text()
        assert not RunDir(b).lock.exists() and not RunDir(a).lock.exists()
