"""``train()``: a recipe in, a trained SNN checkpoint out - the library call behind ``rccsnn train``.

    recipe -> data -> model (seeded) -> Trainer (dense: the no-op method) -> best validated weights -> checkpoint

Under torchrun every process calls it: it joins the process group (:func:`rccsnn.distributed.start`), every
process reads the data and builds the same initial weights, the Trainer runs DDP, and process 0 alone writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import torch

from rccsnn import distributed
from rccsnn.config import TrainConfig, write_yaml
from rccsnn.data import DataSplits, load_data
from rccsnn.models import build_model
from rccsnn.models.checkpoint import ModelSpec, save_checkpoint
from rccsnn.monitor import Monitor
from rccsnn.errors import UserError
from rccsnn.rundir import RunDir, claimed_run_dir, find_versioned, prepare_run_dir, write_json
from rccsnn.snn import ENCODERS, LOSSES
from rccsnn.distributed import resolve_device
from rccsnn.trainer import Trainer, trainer_options


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        checkpoint: path of the saved model (the recipe's ``checkpoint``, else ``<out>/model.pt``).
        spec: how the model runs (architecture, T, encoding, loss, data set).
        metrics: ``val_accuracy`` (best, a fraction), ``test_accuracy`` and ``test_loss`` (of those weights; the
            recipe's loss, mean per sample), ``best_epoch`` (1-based) and ``epochs``.
    """

    checkpoint: str
    spec: ModelSpec
    metrics: Dict[str, float]


def data_and_spec(cfg: TrainConfig) -> Tuple[DataSplits, ModelSpec]:
    """The recipe's data set and the model spec it implies; unknown encodings and losses are one-line errors."""
    data = load_data(cfg.data.name or "digits", root=cfg.data.root, download=cfg.data.download, path=cfg.data.path,
                     frames=cfg.data.frames)
    spec = ModelSpec.from_config(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes,
                                 data=data.name)
    ENCODERS.get(spec.encoding)
    LOSSES.get(spec.loss)
    return data, spec


#: The run directory of a recipe that names none; versioned (``runs/train-2``, ...) like compress's default names.
DEFAULT_OUT = TrainConfig.out


def find_run_dir(cfg: TrainConfig) -> Path:
    """Where this recipe's run is (or would go), without claiming it: ``cfg.out``, or for :data:`DEFAULT_OUT` the
    version of it that holds a run with the same settings, else the first free one."""
    return find_versioned(Path(DEFAULT_OUT), cfg) if cfg.out == DEFAULT_OUT else Path(cfg.out)


def check_checkpoint(cfg: TrainConfig, *, overwrite: bool) -> None:
    """A ``checkpoint`` outside the run directory is another run's output once it exists: refused unless
    ``overwrite``, before the first epoch rather than after the last."""
    if cfg.checkpoint and Path(cfg.checkpoint).exists() and not overwrite:
        raise UserError(f"checkpoint {cfg.checkpoint} already exists: --overwrite replaces it, "
                        f"or choose another --checkpoint")


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train the recipe's model from scratch (or continue the run in ``cfg.out`` with ``resume``).

    The run directory ``cfg.out`` gets ``config.yaml`` (the resolved recipe), TensorBoard events, ``state.pt`` and,
    when the run has finished, ``summary.json``; the checkpoint goes to ``cfg.checkpoint`` or ``<out>/model.pt``.
    The directory is locked while the run writes it, and holds on to the run it has: a finished or unfinished run
    there, or an existing ``cfg.checkpoint``, is a :class:`UserError` unless ``resume`` (continue the unfinished
    run) or ``overwrite`` (replace). The default directory (:data:`DEFAULT_OUT`) is versioned: a recipe whose
    settings differ from the run there writes ``runs/train-2``, ... (``cfg.out`` is set to the directory used).
    """
    device = distributed.start(resolve_device(cfg.device))
    distributed.per_process_batch(cfg.data.batch_size)
    with contextlib.ExitStack() as held:
        def claim() -> str:
            run = held.enter_context(claimed_run_dir(cfg.out, resume=resume, overwrite=overwrite,
                                                     epochs=cfg.optim.epochs,
                                                     settings=cfg if cfg.out == DEFAULT_OUT else None))
            if not resume:  # a resumed run's checkpoint, if any, is its own (written before its summary)
                check_checkpoint(cfg, overwrite=overwrite)
            for note in run.notes:  # stdout: stderr keeps the one line of an error that may follow
                print(f"note: {note}", flush=True)
            return str(run.root)

        cfg.out = distributed.on_main(claim)
        return _train(cfg, device, resume=resume, progress=progress)


def _train(cfg: TrainConfig, device: torch.device, *, resume: bool, progress: bool) -> TrainResult:
    """:func:`train` in the run directory ``cfg.out``, which this process (process 0) holds."""
    # On every process: a node that cannot read the data stops the run with its message.
    data, spec = distributed.agreed(lambda: data_and_spec(cfg))
    torch.manual_seed(cfg.seed)  # the initial weights, too, come from the run's seed (the same on every process)
    net = build_model(spec.arch, spec.input_shape, spec.num_classes, spec.neuron, spec.args)

    def make_run_dir() -> Path:
        out = prepare_run_dir(cfg.out, resume=resume)
        write_yaml(cfg, RunDir(out).config)
        return out

    out = distributed.on_main(make_run_dir)
    main = distributed.is_main()
    monitor = Monitor(out if main else None, progress=progress and main)
    options = trainer_options(cfg.optim, cfg.data, cfg.seed, progress and main, desc="train")
    trainer = Trainer(net=net, data=data, spec=spec, options=options, out_dir=out, monitor=monitor, device=device)
    fit = trainer.fit(resume=resume)
    test = trainer.evaluate("test")
    metrics = {"val_accuracy": fit["best_val"], "test_accuracy": test.accuracy, "test_loss": test.loss,
               "best_epoch": fit["best_epoch"] + 1, "epochs": cfg.optim.epochs}
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else RunDir(out).model

    def write_outputs() -> None:
        monitor.hparams({"arch": spec.arch, "data": spec.data, "T": spec.T, "lr": cfg.optim.lr,
                         "epochs": cfg.optim.epochs, "seed": cfg.seed}, {"val_accuracy": fit["best_val"],
                                                                         "test_accuracy": test.accuracy})
        monitor.close()
        save_checkpoint(ckpt, trainer.net, spec, metrics=metrics, recipe=dataclasses.asdict(cfg))
        # Last: its presence marks a finished run; "epochs" is what a later --resume must exceed to continue it.
        write_json({"epochs": cfg.optim.epochs, **dataclasses.asdict(result)}, RunDir(out).summary)

    result = TrainResult(checkpoint=str(ckpt), spec=spec, metrics=metrics)
    distributed.on_main(write_outputs)
    return result
