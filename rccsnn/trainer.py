"""The one Trainer every run uses: dense training, compression and finetuning alike.

It owns the data loaders, the Adam optimizer and its cosine schedule, the time loop, validation-based model
selection, TensorBoard logging, and the per-epoch resume state. Compression methods act only through the hooks
of :class:`rccsnn.methods.base.CompressionMethod`; the Trainer never asks which method runs.
"""
from __future__ import annotations

import copy
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rccsnn.data import DataSplits
from rccsnn.errors import UserError
from rccsnn.methods.base import CompressionMethod
from rccsnn.models.checkpoint import ModelSpec, atomic_save
from rccsnn.monitor import Monitor
from rccsnn.snn import LOSSES, SpikeMonitor, simulate

STATE_FILE = "state.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device '{name}' requested, but no CUDA GPU is available (use --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device '{name}' requested, but only {count} CUDA GPU{'s' if count != 1 else ''} "
                f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''}) available"
            )
    return device


def cosine(total_steps: int, min_factor: float = 0.0) -> Callable[[int], float]:
    """Learning-rate factor at a step: 1 at step 0, ``min_factor`` at ``total_steps``, half a cosine between."""

    def factor(step: int) -> float:
        t = min(max(step, 0), total_steps) / max(total_steps, 1)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


@dataclass
class EvalResult:
    """Accuracy (a fraction) and mean loss on one split, with the spike statistics when requested."""

    accuracy: float
    loss: float
    samples: int
    monitor: Optional[SpikeMonitor] = None


@dataclass
class TrainerOptions:
    """The knobs of a :class:`Trainer` (typed; built by the CLI from the resolved config)."""

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.0
    min_lr: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 512
    workers: int = 0
    seed: int = 0
    progress: bool = True
    desc: str = "train"


class Interrupted(Exception):
    """Raised inside the loop on SIGINT/SIGTERM after the epoch state has been saved.

    ``str()`` says what happened and where the state is, e.g. ``stopped by SIGTERM after saving epoch 3 of 30 to
    runs/x/state.pt``; the CLI adds the command that continues the run.
    """

    def __init__(self, signal_name: str, next_epoch: int, epochs: int, state_path: Optional[Path]) -> None:
        where = f" to {state_path}" if state_path is not None else ""
        super().__init__(f"stopped by {signal_name} after saving epoch {next_epoch} of {epochs}{where}")
        self.signal_name, self.next_epoch, self.epochs, self.state_path = signal_name, next_epoch, epochs, state_path


class Trainer:
    """Trains ``net`` on ``data`` with the hooks of ``method``.

    Args:
        net: a multi-step network (``[T, B, ...] -> [T, B, K]``).
        data: the data set's splits.
        spec: T, encoding and loss of the network.
        options: epochs, learning rate, batch sizes, seed.
        out_dir: where ``state.pt`` (resume state) goes; ``None`` keeps nothing on disk.
        monitor: TensorBoard and progress; ``None`` logs nothing.
        method: the compression method (the base class is dense training).
        device: where to run.
    """

    def __init__(
        self,
        *,
        net: nn.Module,
        data: DataSplits,
        spec: ModelSpec,
        options: TrainerOptions,
        out_dir: Optional[Path] = None,
        monitor: Optional[Monitor] = None,
        method: Optional[CompressionMethod] = None,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        self.net = net.to(device)
        self.data = data
        self.spec = spec
        self.opt = options
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.monitor = monitor or Monitor(None, progress=options.progress)
        self.method = method or CompressionMethod()
        self.device = device
        self.loss_fn = LOSSES.get(spec.loss)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.loader_gen = torch.Generator()
        self.train_loader = DataLoader(
            data.train, batch_size=options.batch_size, shuffle=True, drop_last=False,
            num_workers=options.workers, generator=self.loader_gen,
        )
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = self.steps_per_epoch * options.epochs
        self.schedule = (0, self.total_steps)  # (first step, length) of the current cosine decay
        self.step = 0
        self.epoch = 0
        self.best_val = -1.0
        self.best_loss = math.inf
        self.best_epoch = -1
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.history: Dict[str, float] = {}
        self.saved_epoch = 0  # epochs finished and saved in out_dir/state.pt (the last good state)

    # ------------------------------------------------------------------------------------------- schedule
    def restart_schedule(self, steps: int) -> None:
        """Start a new cosine decay of ``steps`` steps from the current step (used when finetuning begins)."""
        self.schedule = (self.step, max(int(steps), 1))

    def lr_factor(self, step: int) -> float:
        """Learning-rate factor at ``step``: a pure function of the step and the current schedule."""
        start, length = self.schedule
        return cosine(length, self.opt.min_lr / self.opt.lr)(step - start)

    @property
    def lr(self) -> float:
        """The weights' current step size."""
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------------------- loops
    def evaluate(self, split: str = "val", spikes: bool = False) -> EvalResult:
        """Accuracy and loss of the current weights on ``split``; ``spikes`` also records a SpikeMonitor."""
        loader = DataLoader(self.data.split(split), batch_size=self.opt.eval_batch_size, shuffle=False)
        return evaluate(self.net, loader, self.spec, self.device, spikes=spikes)

    def train_epoch(self, epoch: int, desc: Optional[str] = None) -> Dict[str, float]:
        """One pass over the training split with the method's hooks; returns mean loss and accuracy."""
        self.net.train()
        self.loader_gen.manual_seed(self.opt.seed * 100_003 + epoch)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = self.monitor.progress(self.train_loader, desc=desc or f"{self.opt.desc} {epoch + 1}/{self.opt.epochs}")
        for i, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            for group in self.optimizer.param_groups:
                group["lr"] = self.opt.lr * self.lr_factor(self.step)
            self.method.before_forward(self.step)
            counts = simulate(self.net, x, self.spec.T, self.spec.encoding)
            loss = self.loss_fn(counts, y, self.spec.T)
            if not torch.isfinite(loss):
                raise self.diverged(f"the loss became {loss.item()} at epoch {epoch + 1}, step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.method.after_backward(self.step)
            self.optimizer.step()
            self.method.after_step(self.step)
            total_loss += loss.detach() * len(y)
            correct += (counts.argmax(1) == y).sum()
            seen += len(y)
            self.step += 1
            if i % 10 == 0 or i == self.steps_per_epoch - 1:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                **self.method.progress())
        return {"train/loss": total_loss.item() / max(seen, 1), "train/accuracy": correct.item() / max(seen, 1)}

    def diverged(self, what: str) -> UserError:
        """The one-line error for a run whose loss or weights stopped being finite (nothing is saved after it)."""
        advice = "lower the learning rate (--lr) and rerun"
        if self.out_dir is not None and self.saved_epoch > 0:
            advice += (f"; {self.out_dir / STATE_FILE} keeps the last good epoch ({self.saved_epoch}), "
                       "--resume continues from it")
        return UserError(f"training diverged: {what}; {advice}")

    def check_finite(self, when: str) -> None:
        """Refuse to go on (and to save) with weights that are NaN or infinite.

        The loss check in :meth:`train_epoch` alone misses them: a NaN membrane potential never crosses the
        threshold, so a network with NaN weights is silent and its spike-count loss stays finite.
        """
        with torch.no_grad():
            bad = [name for name, p in self.net.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise self.diverged(f"weights became NaN or infinite {when} ({bad[0]}"
                                + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") + ")")

    def fit(self, resume: bool = False) -> Dict[str, float]:
        """Run all epochs (from the saved state when ``resume``), keep the best validated weights.

        Returns the history of the last epoch and ``best_val``/``best_epoch``. SIGINT and SIGTERM let the
        current epoch finish, save its state and raise :class:`Interrupted`; a second SIGINT aborts at once.
        """
        torch.manual_seed(self.opt.seed)
        self.method.setup(self)
        start = 0
        if resume:
            start = self.load_state()
        stop = {"signal": None}

        def handler(signum, frame):
            if stop["signal"] is not None:  # a second Ctrl-C aborts at once
                raise KeyboardInterrupt
            stop["signal"] = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this epoch (again to abort now)", flush=True)

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, handler)
        try:
            for epoch in range(start, self.opt.epochs):
                self.epoch = epoch
                t0 = time.perf_counter()
                metrics = self.train_epoch(epoch)
                self.check_finite(f"in epoch {epoch + 1}")
                # The method's epoch end may change the weights (a projection), so validation comes after it.
                metrics.update(self.method.epoch_end(epoch, self))
                val = self.evaluate("val", spikes=True)
                metrics.update({"val/accuracy": val.accuracy, "val/loss": val.loss, "lr": self.lr})
                metrics.update({f"firing_rate/{k}": v for k, v in val.monitor.firing_rates().items()})
                # Ties in accuracy (common on small validation sets) go to the lower validation loss.
                if self.method.selectable() and (val.accuracy, -val.loss) > (self.best_val, -self.best_loss):
                    self.best_val, self.best_loss, self.best_epoch = val.accuracy, val.loss, epoch
                    self.best_state = copy.deepcopy(self.net.state_dict())
                metrics["val/best_accuracy"] = max(self.best_val, 0.0)
                metrics["time/epoch_seconds"] = time.perf_counter() - t0
                self.monitor.scalars(metrics, epoch + 1)
                self.history = metrics
                tqdm.write(f"epoch {epoch + 1}/{self.opt.epochs}: loss {metrics['train/loss']:.4f}, "
                           f"train acc {metrics['train/accuracy']:.4f}, val acc {val.accuracy:.4f}"
                           + ("" if self.method.selectable() else " (not selectable yet)"))
                self.save_state(epoch + 1)
                if stop["signal"] is not None:
                    raise Interrupted(signal.Signals(stop["signal"]).name, epoch + 1, self.opt.epochs,
                                      self.out_dir / STATE_FILE if self.out_dir is not None else None)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        self.method.finalize(self)
        self.check_finite("while finalizing (the budget guarantee's finetuning)")
        return {**self.history, "best_val": self.best_val, "best_epoch": self.best_epoch}

    # ------------------------------------------------------------------------------------------- resume
    def save_state(self, next_epoch: int) -> None:
        """Write everything needed to continue at ``next_epoch`` to ``out_dir/state.pt``, atomically.

        Together with the configuration this is the whole run: weights with their masks, Adam's moments, the
        step and the cosine schedule, the best weights so far, the method's state (phase, duals, sparsity levels,
        rate estimates, events) and the global RNG. The data order needs no state: the loader's generator is
        reseeded from (seed, epoch) at the start of every epoch.
        """
        if self.out_dir is None:
            return
        atomic_save(
            {
                "next_epoch": next_epoch,
                "epochs": self.opt.epochs,
                "step": self.step,
                "schedule": list(self.schedule),
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "best_val": self.best_val,
                "best_loss": self.best_loss,
                "best_epoch": self.best_epoch,
                "best_state": self.best_state,
                "method": self.method.state_dict(),
                "history": {k: float(v) for k, v in self.history.items()},
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            self.out_dir / STATE_FILE,
        )
        self.saved_epoch = next_epoch

    def load_state(self) -> int:
        """Restore ``out_dir/state.pt``; returns the epoch to continue with.

        A file that cannot be read, or that was written by a run with another model, method or budget set (its
        tensors or keys do not fit), is a one-line :class:`UserError`.
        """
        path = (self.out_dir or Path(".")) / STATE_FILE
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist (run the command once without --resume)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # weights_only: a pickle that names code is refused here, never run
            text = str(exc).strip()
            first = text.splitlines()[0].strip() if text else ""
            if not first or first.startswith("Weights only load failed"):
                first = "it holds more than tensors and plain data"
            raise UserError(f"cannot resume from {path}: not a readable state file ({type(exc).__name__}: "
                            f"{first}); rerun without --resume to start afresh") from None
        try:
            self.method.load_state_dict(state["method"])
            self.net.load_state_dict(state["net"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            self.schedule = tuple(int(v) for v in state["schedule"])
            self.best_val, self.best_loss = state["best_val"], state["best_loss"]
            self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]
            if self.best_state is not None:  # check it fits now rather than after the last epoch
                differ = set(self.net.state_dict()) ^ set(self.best_state)
                if differ:
                    raise KeyError(f"best_state key {sorted(differ)[0]}")
            next_epoch = int(state["next_epoch"])
            self.history = dict(state.get("history") or {})
            rng = state["rng"].cpu()
            torch.set_rng_state(rng)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            detail = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
            if isinstance(exc, KeyError):
                detail = f"no {detail}"
            raise UserError(f"cannot resume from {path}: it does not fit this run ({detail[:200]}); resume with "
                            f"the settings that started it, or rerun without --resume to start afresh") from None
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        # The epoch whose state this is: the guarantee finetuning in ``method.finalize`` reseeds the data order
        # from it, so a run resumed after its last epoch finalizes exactly as an uninterrupted one.
        self.epoch = max(next_epoch - 1, 0)
        self.saved_epoch = next_epoch
        return next_epoch


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, spec: ModelSpec, device: torch.device,
             spikes: bool = False) -> EvalResult:
    """Accuracy and mean loss of ``net`` over ``loader``; with ``spikes`` the SpikeMonitor of the pass."""
    was_training = net.training
    net.eval()
    loss_fn = LOSSES.get(spec.loss)
    monitor = SpikeMonitor(net, spec.T) if spikes else None
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    if monitor:
        monitor.__enter__()
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            counts = simulate(net, x, spec.T, spec.encoding)
            total_loss += loss_fn(counts, y, spec.T).double() * len(y)
            correct += (counts.argmax(1) == y).sum()
            seen += len(y)
    finally:
        if monitor:
            monitor.__exit__()
        net.train(was_training)
    return EvalResult(accuracy=correct.item() / max(seen, 1), loss=total_loss.item() / max(seen, 1),
                      samples=seen, monitor=monitor)
