"""The hooks a compression method gives the Trainer, and where each is called.

One training step, exactly as :class:`rccsnn.trainer.Trainer` runs it::

    method.before_forward(step)
    loss = task_loss(simulate(net, x))        # forward with W * M
    loss.backward()
    method.after_backward(step)               # after loss.backward(), before optimizer.step(): edit gradients
    optimizer.step()
    method.after_step(step)                   # after optimizer.step(): proximal steps, duals, masks

and once per epoch, after validation: ``method.epoch_end(epoch, trainer)``, whose returned scalars are logged.
``method.selectable()`` says whether the current weights may be chosen as the run's best model (a compressed
model may only be chosen once it satisfies its budget). ``method.finalize(trainer)`` runs after the last epoch.

The base class does nothing, which is dense training. The Trainer never asks which method is running.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

from rccsnn.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from rccsnn.trainer import Trainer

METHODS: Registry["CompressionMethod"] = Registry("method")


class CompressionMethod:
    """No-op hooks (dense training); subclasses override what they need."""

    name = "dense"

    def setup(self, trainer: "Trainer") -> None:
        """Called once before the first epoch (and again after resuming, before loading state)."""

    def before_forward(self, step: int) -> None:
        """Before the forward pass of training step ``step`` (0-based, counted over the whole run)."""

    def after_backward(self, step: int) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``."""

    def after_step(self, step: int) -> None:
        """After ``optimizer.step()``."""

    def epoch_end(self, epoch: int, trainer: "Trainer") -> Dict[str, float]:
        """After validation of epoch ``epoch`` (0-based); returns scalars to log (tag -> value)."""
        return {}

    def progress(self) -> Dict[str, str]:
        """Short strings for the progress bar."""
        return {}

    def selectable(self) -> bool:
        """Whether the current weights may be selected as the best model of the run."""
        return True

    def finalize(self, trainer: "Trainer") -> None:
        """After the last epoch, once the best weights are restored."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (tensors and plain data only: it is loaded with weights_only=True)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
