"""Helpers shared by the CLI-level tests (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import contextlib
import io

from rccsnn.cli import main


def cli(*argv):
    """``rccsnn ARGV`` in-process with stdout and stderr captured: ``(exit code, stdout, stderr)``.

    argparse errors leave through SystemExit; its code is returned like any other.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def whole_and_resumed(run, method_class, stop_after_epoch: int, monkeypatch):
    """``(whole, resumed)``: ``run(out, resume=False)`` into ``whole``, and into ``cut`` stopped by SIGINT at the end
    of epoch ``stop_after_epoch`` (0-based; the Trainer saves that epoch, then raises Interrupted) and resumed.
    ``run`` is called with the directory name (``"whole"``, ``"cut"``); one thread, so CPU kernels are
    deterministic."""
    import os
    import signal

    import pytest
    import torch

    from rccsnn.trainer import Interrupted

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = run("whole")
        original = method_class.epoch_end

        def stop(self, epoch, loop):
            if epoch == stop_after_epoch:
                os.kill(os.getpid(), signal.SIGINT)
            return original(self, epoch, loop)

        monkeypatch.setattr(method_class, "epoch_end", stop)
        with pytest.raises(Interrupted):
            run("cut")
        monkeypatch.setattr(method_class, "epoch_end", original)
        return whole, run("cut", resume=True)
    finally:
        torch.set_num_threads(threads)


def one_line(err: str) -> str:
    """The single line of ``err``; fails the test when there is not exactly one."""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def assert_user_error(code, out, err, *needles):
    """Exit code 2 and exactly one line on stderr containing every needle; returns the line."""
    assert code == 2, (code, out[-2000:], err[-3000:])
    line = one_line(err)
    for needle in needles:
        assert needle in line, line
    return line


#: A tiny digits recipe (convsnn channels [4], hidden 8, T 2, one epoch): what the CLI tests train.
TINY_RECIPE = """\
data: {name: digits, batch_size: 64}
model: {arch: convsnn, args: {channels: [4], hidden: 8}, T: 2}
optim: {lr: 0.02, epochs: 1}
seed: 0
"""


def train_tiny(root, recipe: str, run: str = "run"):
    """Train ``recipe`` (YAML text) into ``root/run`` through the CLI on the CPU; returns the checkpoint path."""
    (root / "tiny.yaml").write_text(recipe)
    code, _, err = cli("train", root / "tiny.yaml", "--out", root / run, "--no-progress", "--device", "cpu")
    assert code == 0, err
    return root / run / "model.pt"


def tiny_recipe(epochs: int = 2) -> str:
    """The recipe of the tiny digits convsnn the compression-level tests train (seconds on a CPU)."""
    return ("data: {name: digits, batch_size: 64}\n"
            "model: {arch: convsnn, args: {channels: [4, 8], hidden: 16}, T: 2}\n"
            f"optim: {{lr: 0.02, epochs: {epochs}}}\n"
            "seed: 0\n")
