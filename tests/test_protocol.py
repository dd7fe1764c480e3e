"""The method contract: a method that is not pruning runs through ``compress()``, and methods never see the trainer
except through the :class:`TrainingLoop` Protocol."""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from helpers import cli, tiny_recipe, train_tiny
from rccsnn.compression import compress
from rccsnn.config import CompressConfig, MethodConfig, OptimConfig
from rccsnn.methods import METHODS, CompressionMethod, Problem, TrainingLoop
from rccsnn.models.checkpoint import load_checkpoint
from rccsnn.trainer import Trainer

RCCSNN = Path(__file__).resolve().parent.parent / "rccsnn"
RECIPE = tiny_recipe(epochs=1)


class ScaleOneWeight(CompressionMethod):
    """A toy method that owns no mask: after the last epoch it scales the last target's weight by ``factor``, and
    it counts the hooks the loop called (with the loop's step, to check the order the contract promises)."""

    name = "toy-scale"
    made: list = []  # the instances compress() built (the test reads the hooks' counts from them)

    def __init__(self, schedule: str = "joint", factor: float = 2.0) -> None:
        super().__init__(schedule=schedule)
        self.made.append(self)
        self.factor = factor
        self.calls: Dict[str, int] = {}
        self.loss_terms = 0

    def _count(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def bind(self, problem: Problem) -> None:
        super().bind(problem)
        self._count("bind")

    def setup(self, loop: TrainingLoop) -> None:
        assert isinstance(loop, TrainingLoop)  # the Trainer satisfies the Protocol structurally
        self.loop = loop
        self._count("setup")

    def before_forward(self, step: int) -> None:
        assert step == self.loop.step
        self._count("before_forward")

    def loss_term(self, step: int) -> Optional[torch.Tensor]:
        self._count("loss_term")
        # A zero that carries a graph: the Trainer must add it to the loss before backward.
        weight = self.problem.targets[-1].module.weight
        return 0.0 * weight.sum()

    def after_backward(self, step: int) -> None:
        assert self.problem.targets[-1].module.weight.grad is not None  # backward ran, the step did not yet
        self._count("after_backward")

    def after_step(self, step: int) -> None:
        self._count("after_step")

    @torch.no_grad()
    def finalize(self, loop: TrainingLoop) -> None:
        weight = self.problem.targets[-1].module.weight
        self.before = weight.detach().clone()
        weight.mul_(self.factor)
        self.say(f"scaled {self.problem.targets[-1].name} by {self.factor:g}")


@pytest.fixture(scope="module")
def toy_registered():
    METHODS.register("toy-scale")(ScaleOneWeight)
    yield ScaleOneWeight
    METHODS._items.pop("toy-scale")  # the registry is process-wide: leave it as the other tests expect it


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("toy"), RECIPE)


def test_a_method_that_is_not_pruning_runs_through_compress(toy_registered, tiny_ckpt, tmp_path):
    ScaleOneWeight.made.clear()
    cfg = CompressConfig(model=str(tiny_ckpt), budgets={"params": 1.0},
                         method=MethodConfig(name="toy-scale", options={"factor": 3.0}),
                         optim=OptimConfig(lr=1e-3, epochs=2), out=str(tmp_path / "run"), device="cpu")
    result = compress(cfg, load_checkpoint(tiny_ckpt), progress=False)
    method, = ScaleOneWeight.made
    steps = 2 * method.loop.steps_per_epoch
    assert method.calls == {"bind": 1, "setup": 1, "before_forward": steps, "loss_term": steps,
                            "after_backward": steps, "after_step": steps}
    assert result.method == "toy-scale" and result.schedule == "joint"
    assert result.events == [f"scaled {method.problem.targets[-1].name} by 3"]
    saved = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    key = method.problem.targets[-1].name + ".weight"
    assert torch.equal(saved[key], 3.0 * method.before)  # what finalize did is what was saved
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "toy-scale" and summary["events"] == result.events


def test_method_options_schedule_is_an_error_not_silently_dropped(tiny_ckpt, tmp_path):
    code, _, err = cli("compress", tiny_ckpt, "--budget", "0.5", "--set", "method.options.schedule=sequential",
                       "--out", tmp_path / "run", "--no-progress", "--device", "cpu")
    assert code == 2 and "method.options.schedule" in err and "--schedule" in err
    assert not (tmp_path / "run").exists()


def _imports(path: Path):
    """Every module name an import statement in ``path`` names (function-level and TYPE_CHECKING ones included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_methods_never_import_the_trainer():
    offenders = {str(p.relative_to(RCCSNN.parent)): name for p in (RCCSNN / "methods").rglob("*.py")
                 for name in _imports(p) if name == "rccsnn.trainer" or name.startswith("rccsnn.trainer.")}
    assert offenders == {}


def test_the_trainer_satisfies_the_loop_protocol():
    members = {"step", "epoch", "total_steps", "steps_per_epoch", "lr", "restart_schedule", "train_epoch"}
    protocol = {m for m in vars(TrainingLoop) if not m.startswith("_")} | set(TrainingLoop.__annotations__)
    assert members <= protocol
    assert all(hasattr(Trainer, m) for m in ("lr", "restart_schedule", "train_epoch"))
