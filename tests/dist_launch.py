"""Test-only launcher for tests/test_distributed.py: ``python tests/dist_launch.py ARGS`` runs ``rccsnn ARGS``
(alone, or as one of the processes torchrun starts), with two test hooks set through the environment:

* ``RCCSNN_TEST_DUMP=DIR``: when training ends (right after ``Trainer.fit``, before the masks are baked), every
  process writes ``DIR/rank<R>.pt`` with its weights and masks (``net``) and its method state (``method``:
  phase, duals, sparsity levels, rate estimates), so the test can compare processes with each other and with a
  single-process run.
* ``RCCSNN_TEST_DIE=R:S``: process R dies with ``os._exit(1)`` (no cleanup, as a crash or the OOM killer) at
  training step S (0-based, counted over the run); only in torchrun's first attempt (a restarted group with
  ``--max-restarts`` runs normally).

Nothing here is part of the product; it only wraps two functions before calling the CLI.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import rccsnn.trainer as trainer_module
from rccsnn import distributed
from rccsnn.cli import main


def install_dump(directory: Path) -> None:
    fit = trainer_module.Trainer.fit

    def fit_and_dump(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        state = {"net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                 "method": self.method.state_dict(), "step": self.step, "world_size": distributed.world_size()}
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(state, directory / f"rank{distributed.rank()}.pt")
        return result

    trainer_module.Trainer.fit = fit_and_dump


def install_death(rank: int, step: int) -> None:
    forward = trainer_module.forward
    calls = {"training": 0}

    def forward_or_die(net, x, T, encoding="direct", steps="multi"):
        if net.training:
            if calls["training"] == step and distributed.rank() == rank:
                os._exit(1)
            calls["training"] += 1
        return forward(net, x, T, encoding, steps)

    trainer_module.forward = forward_or_die


if __name__ == "__main__":
    if os.environ.get("RCCSNN_TEST_DUMP"):
        install_dump(Path(os.environ["RCCSNN_TEST_DUMP"]))
    if os.environ.get("RCCSNN_TEST_DIE") and int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) == 0:
        die_rank, die_step = (int(v) for v in os.environ["RCCSNN_TEST_DIE"].split(":"))
        install_death(die_rank, die_step)
    raise SystemExit(main(sys.argv[1:]))
