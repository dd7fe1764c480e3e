"""``compress()``: the product's one call - a model file and budgets in, a model that fits them out.

    load model -> measure dense -> find targets -> method.bind(problem) -> Trainer(method) -> bake -> measure -> save

It asks the method only what :class:`rccsnn.methods.base.CompressionMethod` promises (check, bind, the hooks,
``name``, ``schedule``, ``events``): pruning attaches its masks in ``bind``, another kind of method its own
parametrizations; ``bake`` makes whatever parametrizations are left permanent.

The run directory is claimed first (:func:`rccsnn.rundir.claimed_run_dir`: locked, a finished run never replaced
without ``overwrite``, the default name versioned), so a second run into it stops at once. Everything a user can get
wrong after that (budgets, names, data that does not fit the model) is checked before anything is written there, and
a bad call removes what the claim created: it leaves nothing behind.

Under torchrun every process runs ``compress()``; they measure and evaluate shards of each split and add the
sums up (:mod:`rccsnn.distributed`), train through DDP, and process 0 alone writes the run directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader

from rccsnn import distributed
from rccsnn.config import CompressConfig, typed_kwargs, write_yaml
from rccsnn.data import DataSplits, load_data
from rccsnn.errors import UserError, first_line
from rccsnn.masks import bake, find_targets
from rccsnn.quant import bits_of, set_bits, target_bits
from rccsnn.methods import METHODS, CompressionMethod, Constraint, Problem, TimeSteps
from rccsnn.models.checkpoint import LoadedModel, save_checkpoint
from rccsnn.monitor import Monitor, format_table
from rccsnn.provenance import code_label, code_version, environment
from rccsnn.rundir import claimed_run_dir, find_versioned, prepare_run_dir, write_error, write_json
from rccsnn.metrics import check_fit
from rccsnn.resources import RESOURCES, LayerStats, create_resource, measure_stats
from rccsnn.distributed import resolve_device
from rccsnn.trainer import Trainer, evaluate_net, probe_loss, trainer_options

SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "model.pt"


@dataclass
class RunResult:
    """What a compression run produced; ``summary()`` is the content of summary.json."""

    method: str
    schedule: str
    budgets: Dict[str, float]
    resources: Dict[str, Dict[str, float]]
    accuracy: Dict[str, float]
    #: mean task loss per sample on the test split (the model's ``loss`` setting), {"dense", "compressed"}: finer
    #: than the accuracy on a small test split, where one image is a step
    loss: Dict[str, float]
    epochs: int
    wall_seconds: float
    checkpoint: str
    events: list = field(default_factory=list)
    decisions: Dict[str, Any] = field(default_factory=dict)  # {"T": time steps, "bits": {layer: width < 32}}
    code: Dict[str, Any] = field(default_factory=dict)  # the code that ran: rccsnn.provenance.code_version()
    environment: Dict[str, Any] = field(default_factory=dict)  # what it ran on: rccsnn.provenance.environment()

    def summary(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def build_method(cfg: CompressConfig) -> CompressionMethod:
    """The configured method; an option it does not take is a one-line :class:`UserError`."""
    factory = METHODS.get(cfg.method.name)
    if "schedule" in cfg.method.options:  # it would silently lose to (or fight with) method.schedule
        raise UserError("method.options.schedule is not a method option; set method.schedule (--schedule) instead")
    options = typed_kwargs(factory, cfg.method.options, "method.options.")
    return factory(schedule=cfg.method.schedule, **options)


def resource_table(targets, stats: LayerStats, options: Dict[str, Any]) -> Dict[str, float]:
    """Absolute cost of the targets' nonzero weights per inference under every registered resource."""
    return {name: create_resource(name, options).absolute(targets, stats) for name in RESOURCES.names()}


def validate_config(cfg: CompressConfig) -> None:
    """Names, budgets and resource constants, checked without reading the model or the data."""
    cfg.validate()
    for name, consts in cfg.resources.items():
        RESOURCES.create(name, **typed_kwargs(RESOURCES.get(name), consts, f"resources.{name}."))


def prepare(cfg: CompressConfig, loaded: LoadedModel, data: Optional[DataSplits] = None) -> DataSplits:
    """Validate everything that can be checked before any output is written; returns the data (``data`` when
    given, else the configured data set)."""
    validate_config(cfg)
    if data is not None:
        check_fit(loaded, data)
        return data
    data = load_data(cfg.data.name or loaded.spec.data, root=cfg.data.root, download=cfg.data.download,
                     path=cfg.data.path, frames=cfg.data.frames)
    check_fit(loaded, data)
    return data


def default_run_dir(cfg: CompressConfig) -> Path:
    """The first choice of run directory when ``cfg.out`` is not set; versions of it are tried after it."""
    return Path("runs") / "compress" / cfg.run_name()


def find_run_dir(cfg: CompressConfig) -> Path:
    """Where this config's run is (or would go), without claiming it: ``cfg.out``, else the version of the default
    name that holds a run with the same settings, else the first free one."""
    if cfg.out:
        return Path(cfg.out)
    return find_versioned(default_run_dir(cfg), cfg)


def compress(cfg: CompressConfig, loaded: LoadedModel, *, data: Optional[DataSplits] = None, resume: bool = False,
             overwrite: bool = False, progress: bool = True) -> RunResult:
    """Compress ``loaded`` to ``cfg.budgets`` and write the run directory ``cfg.out``.

    The data are ``cfg.data``'s data set, or ``data`` when given (the splits of a user's loaders,
    :mod:`rccsnn.objects`).

    The run directory gets ``model.pt`` (masks baked, the checkpoint format), ``config.yaml`` (resolved),
    TensorBoard events, ``state.pt`` (resume state) and ``summary.json``. It is locked while the run writes it. A
    directory that holds a finished or unfinished run is a :class:`UserError` unless ``resume`` (an unfinished run
    continues) or ``overwrite`` (the run is replaced). Without ``cfg.out`` the run goes to
    :func:`default_run_dir`, or ``-2``, ``-3``, ... after it when that holds a run with other settings
    (``cfg.out`` is set to the directory used).

    Under torchrun every process calls it (the CLI has joined the process group with
    :func:`rccsnn.distributed.start`; an API caller that has not is joined here, with the default timeout);
    process 0 alone claims and writes the run directory.
    """
    t0 = time.perf_counter()
    device = distributed.start(resolve_device(cfg.device))
    distributed.per_process_batch(cfg.data.batch_size)
    validate_config(cfg)
    with contextlib.ExitStack() as held:
        def claim() -> str:
            run = held.enter_context(claimed_run_dir(cfg.out or default_run_dir(cfg), resume=resume,
                                                     overwrite=overwrite, epochs=cfg.optim.epochs,
                                                     settings=None if cfg.out else cfg))
            for note in run.notes:  # stdout: stderr keeps the one line of an error that may follow
                print(f"note: {note}", flush=True)
            return str(run.root)

        cfg.out = distributed.on_main(claim)
        return _compress(cfg, loaded, device, t0, data, resume=resume, progress=progress)


def _compress(cfg: CompressConfig, loaded: LoadedModel, device: torch.device, t0: float,
              given: Optional[DataSplits], *, resume: bool, progress: bool) -> RunResult:
    """:func:`compress` in the run directory ``cfg.out``, which this process (process 0) holds."""
    # Each node reads its own copy of the data: a failure on any process stops all, with its message.
    data = distributed.agreed(lambda: prepare(cfg, loaded, given))
    # Read when this (re)start begins, once for all processes: the code they imported, not what a later edit leaves;
    # a resumed run adds the code of earlier starts that differs (``resumed_from``).
    code = distributed.on_main(code_version)
    method = build_method(cfg)
    spec, net = loaded.spec, loaded.net.to(device)
    if spec.input_shape == ():
        spec.input_shape, spec.num_classes = tuple(data.input_shape), data.num_classes
    # Each process measures and evaluates its shard of a split; the sums of all processes are added up.
    val_loader = DataLoader(distributed.shard(data.val), batch_size=cfg.data.eval_batch_size, shuffle=False,
                            collate_fn=data.collate)
    test_loader = DataLoader(distributed.shard(data.test), batch_size=cfg.data.eval_batch_size, shuffle=False,
                             collate_fn=data.collate)
    targets = find_targets(net, cfg.targets.include, cfg.targets.exclude, cfg.targets.exclude_first)
    fixed: tuple = ()
    if method.whole_network:  # every weight layer counts (and gets its bits decided); those left out stay dense
        prunable = {t.name for t in targets}
        targets = find_targets(net, exclude_first=False)
        fixed = tuple(t.name for t in targets if t.name not in prunable)
    try:
        dense_test = evaluate_net(net, test_loader, spec, device, across_ranks=True)
    except RuntimeError as exc:
        raise UserError(f"the model cannot run on data set '{data.name}': {first_line(exc)}") from None

    torch.manual_seed(distributed.rank_seed(cfg.seed))

    def stats_now() -> LayerStats:
        stats = measure_stats(net, targets, val_loader, spec.T, spec.encoding, device, across_ranks=True,
                              steps=spec.steps)
        # each layer at its weight bit width: its quantizer's while compressing, the recorded one otherwise
        return stats.with_bits(target_bits(targets, spec.bits))

    dense_stats = stats_now()
    dense = resource_table(targets, dense_stats, cfg.resources)
    constraints = []
    for name, budget in cfg.budgets.items():
        if not dense[name] > 0:
            raise UserError(f"the dense model costs 0 {name} on the validation split (no target layer receives "
                            f"a spike), so a {name} budget has nothing to limit; constrain params or macs instead")
        model = create_resource(name, cfg.resources)
        constraints.append(Constraint(resource=model, budget=float(budget), dense=dense[name]))
    method.check(constraints)

    def make_run_dir() -> Path:
        out = prepare_run_dir(cfg.out, resume=resume)
        try:
            write_yaml(cfg, out / "config.yaml")
        except OSError as exc:
            raise write_error(out / "config.yaml", exc) from None
        return out

    # Bound before the run directory is made: a method that cannot serve this problem says so with nothing written.
    method.bind(Problem(net=net, targets=targets, constraints=constraints, stats=dense_stats,
                        measure_stats=stats_now, fixed=fixed,
                        time=TimeSteps(spec=spec, probe_loss=probe_loss(net, data, spec, device,
                                                                        batch_size=cfg.data.eval_batch_size))))
    out = distributed.on_main(make_run_dir)
    # A model whose weights are already quantized stays on its grid while it finetunes (after the masks, which bind
    # attached); a method that decides bits sets its own widths when it starts.
    set_bits(net, spec.bits)

    main = distributed.is_main()
    monitor = Monitor(out if main else None, progress=progress and main)
    options = trainer_options(cfg.optim, cfg.data, cfg.seed, progress, desc=f"{method.name}/{method.schedule}")
    trainer = Trainer(net=net, data=data, spec=spec, options=options, out_dir=out, monitor=monitor,
                      method=method, device=device)
    trainer.starts = [code]
    trainer.fit(resume=resume)
    # Earlier starts of a resumed run that ran other code (None: a state.pt from before starts were recorded).
    earlier = [c or {} for c in trainer.starts[:-1] if c != code]
    if earlier:
        code = {**code, "resumed_from": list({code_label(c): c for c in earlier}.values())}

    spec.bits = bits_of(net)  # the widths the weights are on (their quantizers are baked into them next)
    bake(net)
    final_stats = stats_now()
    compressed = resource_table(targets, final_stats, cfg.resources)
    test = evaluate_net(net, test_loader, spec, device, across_ranks=True)
    resources = {name: {"dense": dense[name], "compressed": compressed[name],
                        "ratio": compressed[name] / dense[name] if dense[name] > 0 else 0.0} for name in dense}
    ckpt = out / CHECKPOINT_FILE
    result = RunResult(method=method.name, schedule=method.schedule, budgets=dict(cfg.budgets),
                       resources=resources, accuracy={"dense": dense_test.accuracy, "compressed": test.accuracy},
                       loss={"dense": dense_test.loss, "compressed": test.loss}, epochs=cfg.optim.epochs,
                       wall_seconds=0.0, checkpoint=str(ckpt), events=method.events,
                       decisions={"T": spec.T, "bits": dict(spec.bits)}, code=code,
                       environment=environment(device, distributed.world_size()))
    compression = {k: v for k, v in result.summary().items() if k not in ("checkpoint", "wall_seconds")}

    def write_outputs() -> float:
        save_checkpoint(ckpt, net, spec, metrics={"test_accuracy": test.accuracy, "test_loss": test.loss,
                                                  "val_accuracy": trainer.best_val},
                        recipe=dataclasses.asdict(cfg), compression=compression)
        monitor.hparams(
            {"method": method.name, "schedule": method.schedule, "epochs": cfg.optim.epochs, "lr": cfg.optim.lr,
             "seed": cfg.seed, **{f"budget_{k}": v for k, v in cfg.budgets.items()}},
            {"test_accuracy": test.accuracy, "test_loss": test.loss,
             **{f"ratio_{k}": v["ratio"] for k, v in resources.items()}},
        )
        monitor.close()
        result.wall_seconds = time.perf_counter() - t0
        write_json(result.summary(), out / SUMMARY_FILE)
        return result.wall_seconds

    result.wall_seconds = distributed.on_main(write_outputs)
    return result


def summary_table(result: RunResult) -> str:
    """The closing console table: accuracy and every resource, dense against compressed."""
    rows = [["accuracy (test)", result.accuracy["dense"], result.accuracy["compressed"], "", ""],
            ["loss (test)", result.loss["dense"], result.loss["compressed"], "", ""]]
    for name, r in result.resources.items():
        budget = result.budgets.get(name)
        rows.append([name, r["dense"], r["compressed"], r["ratio"], "" if budget is None else budget])
    return format_table(["", "dense", "compressed", "ratio", "budget"], rows)
