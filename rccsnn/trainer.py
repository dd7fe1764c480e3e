"""The one Trainer every run uses: dense training, compression and finetuning alike.

It owns the data loaders, the Adam optimizer and its cosine schedule, the time loop, validation-based model
selection, TensorBoard logging, and the per-epoch resume state. Compression methods act only through the hooks
of :class:`rccsnn.methods.base.CompressionMethod`; the Trainer never asks which method runs, and a method sees it
only as a :class:`rccsnn.methods.base.TrainingLoop`.

Under torchrun (:mod:`rccsnn.distributed`) the same Trainer runs on every process: ``batch_size`` is the global
batch, each process takes its share of every batch (:class:`ShardedShuffle`), the training forward goes through
DistributedDataParallel, evaluation is sharded and summed, and only process 0 writes state.pt and logs.
"""
from __future__ import annotations

import copy
import gc
import inspect
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from rccsnn import distributed
from rccsnn.batchnorm import sync_batchnorm
from rccsnn.config import DataConfig, OptimConfig
from rccsnn.contracts import neuron_state
from rccsnn.data import DataSplits
from rccsnn.errors import UserError
from rccsnn.methods.base import CompressionMethod
from rccsnn.models.checkpoint import ModelSpec, atomic_save
from rccsnn.monitor import Monitor
from rccsnn.rundir import RunDir
from rccsnn.snn import LOSSES, SpikeMonitor, forward



def cosine(total_steps: int, min_factor: float = 0.0) -> Callable[[int], float]:
    """Learning-rate factor at a step: 1 at step 0, ``min_factor`` at ``total_steps``, half a cosine between."""

    def factor(step: int) -> float:
        t = min(max(step, 0), total_steps) / max(total_steps, 1)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


class ShardedShuffle(Sampler[int]):
    """The training order of one epoch, a pure function of (seed, epoch), dealt out to the processes of a run.

    The order is the permutation a single-process run uses (``randperm`` from a generator seeded with
    ``seed * 100_003 + epoch``, after the one draw that the DataLoader takes from that generator, so the order of
    earlier single-process runs is kept). Process r of N takes positions ``r, r + N, r + 2N, ...`` of it, the
    permutation padded at its end by wrapping around to a multiple of N, as torch's DistributedSampler does.
    With ``b`` samples per process and step, the N batches number i together hold exactly positions
    ``i*b*N .. (i+1)*b*N - 1``: the single-process batch i of ``b * N`` samples. Only the last batch of an epoch
    can differ, by the up to N - 1 samples repeated as padding (none when N divides the split).

    Args:
        size: samples in the split.
        seed: the run's seed.
        rank, world_size: this process and the number of processes (0 and 1 for a single process).
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> List[int]:
        """The single-process order of the current epoch."""
        gen = torch.Generator()
        gen.manual_seed(self.seed * 100_003 + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the DataLoader's draw of its worker seed
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.permutation()
        padded = len(self) * self.world_size
        while len(order) < padded:
            order += order[:padded - len(order)]
        return iter(order[self.rank:padded:self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)


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


def trainer_options(optim: OptimConfig, data: DataConfig, seed: int, progress: bool, desc: str) -> TrainerOptions:
    """The Trainer's typed options from the optimisation and data sections of a config."""
    return TrainerOptions(epochs=optim.epochs, lr=optim.lr, weight_decay=optim.weight_decay, min_lr=optim.min_lr,
                          batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, workers=data.workers,
                          seed=seed, progress=progress, desc=desc)


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
        options: epochs, learning rate, batch sizes (``batch_size`` is the global batch: a run of N processes
            takes ``batch_size / N`` per process and step), seed.
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
        # In a distributed run BatchNorm normalises over the global batch (before the optimizer sees the
        # parameters; the converted layers keep the same Parameter objects anyway).
        self.net = sync_batchnorm(net.to(device), device)
        self.data = data
        self.spec = spec
        self.opt = options
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.monitor = monitor or Monitor(None, progress=options.progress)
        self.method = method or CompressionMethod()
        self.device = device
        self.loss_fn = LOSSES.get(spec.loss)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.loader_gen = torch.Generator()  # seeds the workers (augmentation); the order is the sampler's
        self.sampler = ShardedShuffle(len(data.train), seed=options.seed, rank=distributed.rank(),
                                      world_size=distributed.world_size())
        self.train_loader = DataLoader(
            data.train, batch_size=distributed.per_process_batch(options.batch_size), sampler=self.sampler,
            drop_last=False, num_workers=options.workers, generator=self.loader_gen, collate_fn=data.collate,
        )
        self._ddp: Optional[nn.Module] = None
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
        #: What the caller records of each start of the run, oldest first (compress: the code that ran, so a run
        #: resumed with other code can say so); the caller sets the current start's before fit, a resume prepends
        #: the earlier ones from state.pt (``None`` for a state.pt written before starts were recorded).
        self.starts: List[Any] = []

    # ------------------------------------------------------------------------------------------- schedule
    def restart_schedule(self, steps: int) -> None:
        """Start a new cosine decay of ``steps`` steps from the current step (used when finetuning begins)."""
        self.schedule = (self.step, max(int(steps), 1))

    def lr_factor(self, step: int) -> float:
        """Learning-rate factor at ``step``: a pure function of the step and the current schedule."""
        start, length = self.schedule
        return cosine(length, self.opt.min_lr / self.opt.lr)(step - start)

    @property
    def train_net(self) -> nn.Module:
        """The module the training forward goes through: DDP around :attr:`net` in a distributed run, else ``net``.

        DDP averages the gradients across processes; hooks, masks, evaluation and checkpoints use the plain
        module. DDP's per-step broadcast of buffers is off: the masks and the BatchNorm statistics are identical on
        every process by construction, and the masks alone are as large as the weights. Its first broadcast skips
        the spiking neurons' state (:func:`neuron_state`): an snntorch neuron with ``init_hidden=True`` keeps its
        membrane in a buffer shaped by the last batch it saw, which differs between processes (the shards of a split
        differ in size); broadcasting it aborted the run on a size mismatch.
        """
        if not distributed.active():
            return self.net
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            # The one way to keep tensors out of DDP's synchronisation (torch marks it provisional, issue 43690).
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.net, neuron_state(self.net))
            ids = [self.device.index] if self.device.type == "cuda" else None
            no_buffer_sync = ({"forward_sync_buffers": False}
                              if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                              else {"broadcast_buffers": False})  # its name in older torch
            self._ddp = DistributedDataParallel(self.net, device_ids=ids, output_device=ids[0] if ids else None,
                                                **no_buffer_sync)
        return self._ddp

    def release(self) -> None:
        """Drop the DDP wrapper (made again if training continues). A wrapper still alive when the process exits
        can make it abort in C++ ("terminate called without an active exception") after the process group is
        gone; :meth:`fit` releases it on its way out."""
        if self._ddp is not None:
            self._ddp = None
            gc.collect()  # DDP sits in reference cycles: free its reducer now, while the group still exists

    @property
    def lr(self) -> float:
        """The weights' current step size."""
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------------------- loops
    def evaluate(self, split: str = "val", spikes: bool = False) -> EvalResult:
        """Accuracy and loss of the current weights on ``split``; ``spikes`` also records a SpikeMonitor.

        In a distributed run each process evaluates its shard and the sums are added up (every process gets the
        result for the whole split).
        """
        loader = DataLoader(distributed.shard(self.data.split(split)), batch_size=self.opt.eval_batch_size,
                            shuffle=False, collate_fn=self.data.collate)
        return evaluate_net(self.net, loader, self.spec, self.device, spikes=spikes, across_ranks=True)

    def train_epoch(self, epoch: int, desc: Optional[str] = None) -> Dict[str, float]:
        """One pass over the training split with the method's hooks; returns mean loss and accuracy."""
        self.net.train()
        self.sampler.set_epoch(epoch)
        self.loader_gen.manual_seed(distributed.rank_seed(self.opt.seed * 100_003 + epoch))
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = self.monitor.progress(self.train_loader, desc=desc or f"{self.opt.desc} {epoch + 1}/{self.opt.epochs}")
        for i, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            for group in self.optimizer.param_groups:
                group["lr"] = self.opt.lr * self.lr_factor(self.step)
            self.method.before_forward(self.step)
            try:
                out = forward(self.train_net, x, self.spec.T, self.spec.encoding, self.spec.steps)
                counts = out.counts
                loss = self.loss_fn(out, y)
                extra = self.method.loss_term(self.step)
                objective = loss if extra is None else loss + extra
                # Every process takes the same decision: the mean loss is finite only if every process's is.
                mean_loss = distributed.all_reduce_mean(objective.detach())
                if not torch.isfinite(mean_loss):
                    raise self.diverged(f"the loss became {mean_loss.item()} at epoch {epoch + 1}, step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                objective.backward()  # under DDP this also averages the gradients across processes
            except RuntimeError as exc:
                lost = distributed.as_peer_lost(exc)
                if lost is exc:
                    raise
                raise lost from None
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
        totals = distributed.all_reduce_sum(
            torch.stack([total_loss.double(), correct.double(), torch.tensor(float(seen), device=self.device,
                                                                             dtype=torch.float64)]))
        total, hits, count = totals.tolist()
        return {"train/loss": total / max(count, 1), "train/accuracy": hits / max(count, 1)}

    def diverged(self, what: str) -> UserError:
        """The one-line error for a run whose loss or weights stopped being finite (nothing is saved after it)."""
        advice = "lower the learning rate (--lr) and rerun"
        if self.out_dir is not None and self.saved_epoch > 0:
            advice += (f"; {RunDir(self.out_dir).state} keeps the last good epoch ({self.saved_epoch}), "
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
        In a distributed run the processes agree at every epoch end (a signal on one stops all after that
        epoch), and SIGTERM aborts at once: torchrun sends it when another process failed or torchrun itself
        was stopped, and kills the processes soon after.
        """
        try:
            return self._fit(resume)
        finally:
            self.release()

    def _fit(self, resume: bool) -> Dict[str, float]:
        torch.manual_seed(distributed.rank_seed(self.opt.seed))
        self.method.setup(self)
        start = 0
        if resume:
            start = self.load_state()
        stop = {"signal": None}

        def handler(signum, frame):
            if stop["signal"] is not None:  # a second Ctrl-C aborts at once
                raise KeyboardInterrupt
            if signum == signal.SIGTERM and distributed.active():
                raise KeyboardInterrupt
            stop["signal"] = signum
            if distributed.is_main():
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
                if distributed.is_main():
                    tqdm.write(f"epoch {epoch + 1}/{self.opt.epochs}: loss {metrics['train/loss']:.4f}, "
                               f"train acc {metrics['train/accuracy']:.4f}, val acc {val.accuracy:.4f}"
                               + ("" if self.method.selectable() else " (not selectable yet)"))
                self.save_state(epoch + 1)
                # All processes stop after the same epoch, or none waits for one that stopped.
                signum = distributed.any_process(int(stop["signal"] or 0))
                if signum:
                    raise Interrupted(signal.Signals(signum).name, epoch + 1, self.opt.epochs,
                                      RunDir(self.out_dir).state if self.out_dir is not None else None)
        finally:
            for s, h in previous.items():
                if signal.getsignal(s) is handler:  # not when a lost process had signals ignored (see distributed)
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

        In a distributed run every process builds the state (reading the method's state is a collective, and
        each process's RNG state is gathered into ``rng_ranks``) and process 0 writes it.
        """
        if self.out_dir is None:
            return
        state = {
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
            "starts": list(self.starts),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        if distributed.active():
            own_cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0)
            state["rng_ranks"] = distributed.all_gather_object([torch.get_rng_state(), own_cuda])
        distributed.on_main(lambda: atomic_save(state, RunDir(self.out_dir).state))
        self.saved_epoch = next_epoch

    def load_state(self) -> int:
        """Restore ``out_dir/state.pt``; returns the epoch to continue with.

        A file that cannot be read, or that was written by a run with another model, method or budget set (its
        tensors or keys do not fit), is a one-line :class:`UserError`.
        """
        path = RunDir(self.out_dir or ".").state
        # In a distributed run process 0 reads the file and sends it to the others: only its node need hold the
        # run directory, and a file it cannot read stops every process with its message.
        state = distributed.on_main(lambda: read_state(path, self.device if not distributed.active() else "cpu"))
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
            earlier = state.get("starts")  # provenance only: a value that is not a list of records reads as unknown
            earlier = [c if isinstance(c, dict) else None for c in earlier] if isinstance(earlier, list) else [None]
            self.starts = earlier + self.starts[-1:]
            own = state.get("rng_ranks") or []
            if len(own) == distributed.world_size() > 1:  # each process continues its own random stream
                torch.set_rng_state(own[distributed.rank()][0].cpu())
                if self.device.type == "cuda" and own[distributed.rank()][1].numel():
                    torch.cuda.set_rng_state(own[distributed.rank()][1].cpu(), self.device)
            else:
                torch.set_rng_state(state["rng"].cpu())
                if distributed.rank() > 0:  # another number of processes than the run had: fresh, distinct streams
                    torch.manual_seed(distributed.rank_seed(self.opt.seed * 100_003 + next_epoch))
            if self.best_state is not None:
                self.best_state = {k: v.to(self.device) for k, v in self.best_state.items()}
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            detail = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
            if isinstance(exc, KeyError):
                detail = f"no {detail}"
            raise UserError(f"cannot resume from {path}: it does not fit this run ({detail[:200]}); resume with "
                            f"the settings that started it, or rerun without --resume to start afresh") from None
        if state.get("cuda_rng") and torch.cuda.is_available() and not distributed.active():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        # The epoch whose state this is: the guarantee finetuning in ``method.finalize`` reseeds the data order
        # from it, so a run resumed after its last epoch finalizes exactly as an uninterrupted one.
        self.epoch = max(next_epoch - 1, 0)
        self.saved_epoch = next_epoch
        return next_epoch


def read_state(path: Path, map_location) -> dict:
    """The contents of a state.pt, read with ``weights_only=True``; a missing or unreadable file is a
    one-line :class:`UserError`."""
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist (run the command once without --resume)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # weights_only: a pickle that names code is refused here, never run
        text = str(exc).strip()
        first = text.splitlines()[0].strip() if text else ""
        if not first or first.startswith("Weights only load failed"):
            first = "it holds more than tensors and plain data"
        raise UserError(f"cannot resume from {path}: not a readable state file ({type(exc).__name__}: "
                        f"{first}); rerun without --resume to start afresh") from None


#: A probe loss (:func:`probe_loss`) is measured on at most this many samples of the validation split, its first ones.
PROBE_SAMPLES = 512
#: The seed of the encoding's random draws in a probe (rate encoding): every probe of a run sees the same draw.
PROBE_SEED = 20170


def probe_loss(net: nn.Module, data: DataSplits, spec: ModelSpec, device: torch.device,
               samples: int = PROBE_SAMPLES, batch_size: int = 512) -> Callable[[int], float]:
    """``loss_at(T)``: the task loss of ``net`` as it is when called (mean per sample), run for ``T`` steps on the
    first ``samples`` of the validation split, in evaluation mode.

    The encoding's random draws are seeded (:data:`PROBE_SEED`) inside a forked random state, so two probes differ
    only by what changed in between and the run's own random stream is untouched (a resumed run draws as an
    uninterrupted one). Every process of a distributed run probes the same samples; a method that branches on the
    result takes the mean over the processes (:meth:`rccsnn.methods.minimax.Minimax.probe`), so all branch alike.
    The samples are loaded onto the device at the first call, in batches of ``batch_size`` (the run's evaluation
    batch size).
    """
    loss_fn = LOSSES.get(spec.loss)
    held: List[tuple] = []

    def loss_at(T: int) -> float:
        was_training = net.training
        net.eval()
        forked = [device] if device.type == "cuda" else []
        try:
            # Everything that could draw from the run's random stream happens inside the fork (a DataLoader's
            # iterator draws a base seed when it is made).
            with torch.no_grad(), torch.random.fork_rng(devices=forked):
                if not held:
                    subset = torch.utils.data.Subset(data.val, range(min(samples, len(data.val))))
                    held.extend((x.to(device), y.to(device)) for x, y in
                                DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=data.collate))
                torch.default_generator.manual_seed(PROBE_SEED)
                if device.type == "cuda":
                    with torch.cuda.device(device):  # the run's device, which need not be the current one
                        torch.cuda.manual_seed(PROBE_SEED)
                total = sum(float(loss_fn(forward(net, x, T, spec.encoding, spec.steps), y)) * len(y)
                            for x, y in held)
        finally:
            net.train(was_training)
        return total / max(sum(len(y) for _, y in held), 1)

    return loss_at


@torch.no_grad()
def evaluate_net(net: nn.Module, loader: DataLoader, spec: ModelSpec, device: torch.device,
             spikes: bool = False, across_ranks: bool = False) -> EvalResult:
    """Accuracy and mean loss of ``net`` over ``loader``; with ``spikes`` the SpikeMonitor of the pass.

    ``across_ranks``: ``loader`` holds this process's shard of the split (:func:`rccsnn.distributed.shard`); the
    sums of all processes are added up, so every process gets the result for the whole split (a collective).
    Without a process group it changes nothing.
    """
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
            out = forward(net, x, spec.T, spec.encoding, spec.steps)
            counts = out.counts
            total_loss += loss_fn(out, y).double() * len(y)
            correct += (counts.argmax(1) == y).sum()
            seen += len(y)
    finally:
        if monitor:
            monitor.__exit__()
        net.train(was_training)
    if across_ranks and distributed.active():
        sums = torch.stack([total_loss, correct.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                                        device=device)])
        total, hits, count = distributed.all_reduce_sum(sums).tolist()
        total_loss, correct, seen = torch.tensor(total), torch.tensor(hits), int(count)
        if monitor:
            monitor.all_reduce()
    return EvalResult(accuracy=correct.item() / max(seen, 1), loss=total_loss.item() / max(seen, 1),
                      samples=seen, monitor=monitor)
