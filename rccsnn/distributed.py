"""Multi-process runs under torchrun: joining the process group, and the few collectives rccsnn needs.

``torchrun --nproc_per_node=N -m rccsnn compress ...`` (or ``train``) starts N copies of the command; torchrun
tells each its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``).
:func:`start` joins them into one process group (NCCL on CUDA, gloo on the CPU) and picks the process's device
(``cuda:LOCAL_RANK``). Without torchrun, or with a single process, nothing here does anything: there is no process
group, every helper is the identity, and a run is exactly the single-process run.

What is synchronised, and how (every process ends every training step with the same weights, masks and duals):

* gradients: averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, so Adam moves identical weights
  identically on every process;
* BatchNorm: batch statistics over the global batch (:func:`rccsnn.batchnorm.sync_batchnorm`, built on the
  collectives here), so the forward pass is the single-process one;
* firing-rate estimates (:class:`rccsnn.resources.RateTracker`): averaged across processes when read;
* evaluation and layer statistics: each process runs a shard of the split (:func:`shard`), the sums are added up;
* everything else the compression methods compute (sparsity levels, duals, masks, projections) is a deterministic
  function of those synchronised quantities, so it is computed on every process, never sent.

Process 0 alone writes the run directory (:func:`on_main`). There is no module-level state: whether a run is
distributed is whatever :mod:`torch.distributed` says.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, Subset

from rccsnn.errors import UserError

T = TypeVar("T")

#: How long a collective waits for the other processes before the run is aborted (seconds). Waits are normally
#: short (every process does the same work); the longest is process 0 writing state.pt at the end of an epoch.
DEFAULT_TIMEOUT_S = 600.0

#: Substrings of the errors that torch raises when a collective fails because a peer died or timed out.
_COMM_FAILURE_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer",
                         "socket", "process group", "processgroup")


class PeerLost(Exception):
    """A collective failed: another process of the run stopped (crashed, killed) or stopped answering.

    ``str()`` says which process saw it and the backend's own first line, e.g. ``process 0 of 2 lost contact
    with another process of the run, which stopped or stopped answering (... Connection reset by peer ...)``.
    """


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch (read from torchrun's environment variables).

    Attributes:
        rank: 0 .. world_size - 1 over all nodes.
        world_size: processes in the run.
        local_rank: 0 .. local_world_size - 1 on this node (the CUDA device index).
        local_world_size: processes on this node.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def single_node(self) -> bool:
        return self.local_world_size == self.world_size


def launch_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Launch]:
    """The torchrun launch this process belongs to, or ``None`` for a single-process run.

    ``None`` also when torchrun started only one process (``WORLD_SIZE=1``): that run needs no process group.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise UserError("torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers, got "
                        + ", ".join(f"{k}={env.get(k)!r}" for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                     "LOCAL_WORLD_SIZE"))) from None
    if world <= 1:
        return None
    return Launch(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)


def timeout_from_env(environ: Optional[Mapping[str, str]] = None) -> float:
    """``RCCSNN_DIST_TIMEOUT`` (seconds, > 0), else :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if environ is None else environ
    text = env.get("RCCSNN_DIST_TIMEOUT")
    if text is None or text.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"RCCSNN_DIST_TIMEOUT must be a positive number of seconds, got '{text}'")
    return value


def start(device: torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the torchrun process group (if launched by torchrun with 2+ processes); returns this process's device.

    Args:
        device: the device the run asked for (already resolved: ``cpu``, ``cuda`` or ``cuda:N``).
        timeout_s: how long any collective may wait for the others before the run is aborted, in seconds.

    On CUDA each process takes ``cuda:LOCAL_RANK`` and the backend is NCCL; on the CPU it is gloo. A single
    process (no torchrun) gets ``device`` back unchanged and no process group is made.
    """
    launch = launch_from_env()
    if launch is None:
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index != launch.local_rank:
            raise UserError(f"--device {device} pins a GPU, but under torchrun every process takes its own "
                            f"(cuda:LOCAL_RANK); pass --device cuda or auto")
        if launch.local_world_size > count:
            raise UserError(f"torchrun started {launch.local_world_size} processes on this node, but it has only "
                            f"{count} CUDA GPU{'s' if count != 1 else ''}; use --nproc_per_node={count} or fewer, "
                            f"or --device cpu")
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():  # an API user who joined the group before calling rccsnn
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    except (RuntimeError, ValueError) as exc:
        raise PeerLost(f"process {launch.rank} of {launch.world_size} could not join the other processes "
                       f"({_first_line(exc)})") from None
    return device


def stop() -> None:
    """Leave the process group (at the end of a command); nothing without one."""
    if dist.is_available() and dist.is_initialized():
        # The command's trainer (with its DistributedDataParallel wrapper, whose reducer holds the gloo group) is
        # left in reference cycles. Freed only at the interpreter's shutdown, the group's worker threads were
        # destroyed while still joinable and a process that had succeeded aborted ("terminate called without an
        # active exception") in 2 of 3 runs of tests/test_distributed.py; collecting first, 0 of 3 (and 0 of 16).
        gc.collect()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ queries
def active() -> bool:
    """Whether this process is one of 2+ processes of a run (a process group with more than one member)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this is process 0, the one that writes files and prints."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """The seed of this process's random stream (dropout, rate encoding): ``seed`` on process 0, distinct elsewhere.

    Process 0 keeps the run's seed, so it draws what a single-process run draws; the others must not repeat its
    draws (the same dropout pattern on every process would be one sample's noise copied N times).
    """
    r = rank()
    return seed if r == 0 else (seed * 1_000_003 + 7_919 * r) % (2 ** 63)


def per_process_batch(global_batch: int, world: Optional[int] = None) -> int:
    """Samples per process and step for a global ``data.batch_size``; it must split evenly across processes."""
    world = world_size() if world is None else world
    if global_batch % world:
        lower = (global_batch // world) * world
        choices = [b for b in (lower, lower + world) if b > 0]
        raise UserError(f"data.batch_size {global_batch} is the global batch and must be divisible by the {world} "
                        f"processes of this run (each takes batch_size / {world}); use "
                        + " or ".join(str(b) for b in choices))
    return global_batch // world


def shard(dataset: Dataset) -> Dataset:
    """This process's share of an evaluation split: samples ``rank, rank + N, ...`` (no sample twice).

    The shards of all processes are the whole split, each sample once, so sums over the shards are the
    single-process sums. The dataset itself when the run is not distributed.
    """
    if not active():
        return dataset
    n, world = len(dataset), world_size()
    if n < world:
        raise UserError(f"a split of {n} sample{'s' if n != 1 else ''} cannot be shared by {world} processes; "
                        f"run with fewer processes")
    return Subset(dataset, range(rank(), n, world))


# ------------------------------------------------------------------------------------------------ collectives
def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: its first sentence, without gloo's source location and closing advice."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", line)  # "[.../pair.cc:545] Read error ..."
    line = re.split(r"\.\s+(?=[A-Z])", line, maxsplit=1)[0].rstrip(".")
    return line[:300]


def _lost(exc: BaseException) -> PeerLost:
    """The :class:`PeerLost` for a failed collective; from now on a signal from the launcher cannot cut it short."""
    try:  # torchrun sends SIGTERM to the survivors right away; let this process say what happened first
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    r, w = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return PeerLost(f"process {r} of {w} lost contact with another process of the run, which stopped or stopped "
                    f"answering ({_first_line(exc)})")


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (raised inside a step that communicates, e.g. DDP's backward) is a failed collective."""
    if isinstance(exc, PeerLost):
        return True
    if getattr(dist, "DistError", None) is not None and isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _COMM_FAILURE_MARKERS)


def as_peer_lost(exc: BaseException) -> BaseException:
    """``exc`` turned into :class:`PeerLost` when it is a failed collective of a distributed run, else ``exc``."""
    if active() and not isinstance(exc, PeerLost) and is_comm_failure(exc):
        return _lost(exc)
    return exc


def _comm_device() -> torch.device:
    """Where collective buffers must live: the process's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: Tensor, op: "dist.ReduceOp") -> Tensor:
    """``op`` over processes, elementwise (a new tensor on ``tensor``'s device; ``tensor`` itself without a group)."""
    if not active():
        return tensor
    buf = tensor.detach().to(_comm_device(), copy=True)
    try:
        dist.all_reduce(buf, op=op)
    except RuntimeError as exc:
        raise _lost(exc) from None
    return buf.to(tensor.device)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Elementwise sum over processes."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Elementwise mean over processes."""
    if not active():
        return tensor
    return all_reduce_sum(tensor) / world_size()


def any_process(value: int) -> int:
    """The largest of every process's ``value`` (e.g. a signal number, 0 for none): all stop if one must."""
    if not active():
        return value
    return int(all_reduce_max(torch.tensor([int(value)], dtype=torch.int64)).item())


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Elementwise maximum over processes."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` (pickled; tensors and plain data) on every process."""
    if not active():
        return obj
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=src)
    except RuntimeError as exc:
        raise _lost(exc) from None
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not active():
        return [obj]
    out: List[Any] = [None] * world_size()
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as exc:
        raise _lost(exc) from None
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on process 0 only (writing files, reading state.pt); every process gets its result.

    A :class:`UserError` on process 0 is raised on every process, so all stop together with the same one-line
    message (which only process 0 prints); the others never wait on a process that has given up.
    """
    if not active():
        return fn()
    payload: Any = None
    if is_main():
        try:
            payload = ("ok", fn())
        except UserError as exc:
            payload = ("error", str(exc))
    payload = broadcast_object(payload)
    if payload[0] == "error":
        raise UserError(payload[1])
    return payload[1]


def agreed(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every process; if it fails with a :class:`UserError` on any, it fails on all.

    For steps whose outcome may differ between processes (reading the model and the data on each node): the
    first failure is raised everywhere, naming the process when it is not process 0, so that process 0 can
    print it and nobody waits for a process that has stopped.
    """
    if not active():
        return fn()
    result, error = None, None
    try:
        result = fn()
    except UserError as exc:
        error = str(exc)
    errors = all_gather_object(error)
    for r, message in enumerate(errors):
        if message is not None:
            raise UserError(message if r == 0 else f"process {r} of {len(errors)}: {message}")
    return result  # type: ignore[return-value]


# ================================================================================================ launching commands
def resolve_device(name: "str | torch.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a ``torch.device`` is taken as it is."""
    if isinstance(name, torch.device):
        return name
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


def join_launch(device: torch.device, batch_size: int) -> torch.device:
    """Under torchrun (2+ processes): check that the global batch splits evenly, then join the other processes.

    Returns this process's device (``cuda:LOCAL_RANK`` under torchrun on GPUs). Without torchrun: ``device``.
    """
    launch = launch_from_env()
    if launch is not None:
        per_process_batch(batch_size, launch.world_size)
    return start(device, timeout_s=timeout_from_env())


def resume_after_restart(resume: bool, state_file: str | os.PathLike) -> bool:
    """``torchrun --max-restarts``: a restarted group of processes continues the run from its state file.

    torchrun restarts the command exactly as it was given; without this a restart after a failure would start
    the run afresh and clear the epochs it had finished.
    """
    try:
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    if resume or restarts == 0 or launch_from_env() is None:
        return resume
    found = on_main(lambda: os.path.isfile(state_file))
    if found and is_main():
        print(f"torchrun restarted the processes (restart {restarts}): continuing from {state_file}", flush=True)
    return found


def single_process_only(command_name: str) -> None:
    """Refuse a command that has nothing to share across processes when torchrun started several."""
    launch = launch_from_env()
    if launch is not None:
        raise UserError(f"rccsnn {command_name} runs in one process; only train and compress run under torchrun "
                        f"(it started {launch.world_size})")


def wait_to_be_stopped(code: int, wait_s: float) -> None:
    """(Processes other than 0 under torchrun, after an error.) Give process 0, which normally hit the same error,
    ``wait_s`` seconds to print it: torchrun stops this process as soon as process 0 exits, and a SIGTERM or SIGINT
    then ends the wait (and the process, with ``code``)."""
    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda signum, frame: os._exit(code))
    except ValueError:  # not the main thread
        return
    time.sleep(wait_s)


def hold_signals(launch: Optional[Launch]) -> None:
    """Under torchrun, let a message out before torchrun's SIGTERM (sent once another process exits), or the
    SIGINT it passes on when it is interrupted, lands."""
    if launch is None:
        return
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block (outside the epoch loop, which saves its epoch first,
    SIGTERM stops a command like Ctrl-C); the previous SIGINT and SIGTERM handlers are back afterwards."""
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    try:
        previous_sigint = signal.getsignal(signal.SIGINT)
        previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        if previous_sigterm is None:  # installed outside Python: the default is the closest we can restore
            previous_sigterm = signal.SIG_DFL
    except ValueError:  # not the main thread: leave the signals alone
        previous_sigterm = previous_sigint = None
    try:
        yield
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
            if previous_sigint is not None:  # a lost process or a waiting one changed it
                signal.signal(signal.SIGINT, previous_sigint)
