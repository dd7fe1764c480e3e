"""Command-line interface: ``rccsnn {train, evaluate, ...}``. Thin: parse, build the config, call the API.

Every mistake a user can make ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional

from rccsnn.version import __version__
from rccsnn.errors import UserError
from rccsnn.rundir import write_json

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_PROCESS_LOST = 1  # another process of a torchrun run stopped; this one aborts
#: Under torchrun, how long a process other than 0 that hit an error waits before printing it itself. Errors are
#: normally the same on every process, and torchrun stops the others as soon as process 0 has printed its copy
#: and exited; a process still alive after this long had an error of its own.
PEER_REPORT_WAIT_S = 10.0

COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    """Register ``fn`` as the handler of subcommand ``name``."""

    def decorator(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn

    return decorator


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------- shared options
def add_data_options(p: argparse.ArgumentParser, default_hint: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="NAME", help=f"data set name ({default_hint})")
    g.add_argument("--data-root", metavar="DIR", help="where torchvision data sets live (default: data)")
    g.add_argument("--data-path", metavar="FILE", help="the .npz file for --data npz")
    g.add_argument("--download", action="store_true", default=None, help="allow torchvision to download the data")


def add_model_file_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model file")
    g.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                   help="architecture of a bare state_dict: a function returning the nn.Module as written "
                        "(single-step or multi-step snntorch network)")
    g.add_argument("--model-steps", choices=("single", "multi"),
                   help="the model's contract: single (forward(x_t [B, ...]), state in init_hidden neurons) or "
                        "multi (forward(x [T, B, ...])); default: detected by one probe forward")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow loading a pickled module (runs code from the file; only for files you trust)")
    g.add_argument("--T", type=int, metavar="STEPS", help="time steps, for files that do not record them")
    g.add_argument("--encoding", help="input encoding (direct, rate, or none for time-major event data), for files "
                                      "that do not record it")
    g.add_argument("--loss", help="training and evaluation loss: ce (spike-count cross-entropy, default), rate_ce, "
                                  "count_mse, mse, mem_ce (output membrane, snntorch tutorial 5), mem_max_ce; "
                                  "default: the one the file records")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def add_measured_model(p: argparse.ArgumentParser, model_help: Optional[str], split: str, split_help: str) -> None:
    """MODEL (unless ``model_help`` is None: the command added it itself), the split it is measured on and the
    batch size, and the data and model-file options: what evaluate, export and report share."""
    if model_help is not None:
        p.add_argument("model_file", metavar="MODEL", help=model_help)
    p.add_argument("--split", choices=("train", "val", "test"), default=split, help=split_help)
    p.add_argument("--batch-size", type=positive_int, default=512)
    add_data_options(p, "default: the one recorded in the checkpoint")
    add_model_file_options(p)


def add_resume_options(p: argparse.ArgumentParser, also: str = "") -> None:
    """--resume and --overwrite: what to do with a run already in --out (by default: refuse to touch it)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its last "
                                                         "finished epoch")
    g.add_argument("--overwrite", action="store_true", help=f"replace the run in --out{also} if there is one "
                                                            "(by default a finished or unfinished run is kept)")


def budget_arg(text: str) -> float:
    from rccsnn.config import check_budget

    try:
        return check_budget(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rccsnn", description="Compress spiking neural networks to a hard resource budget.")
    parser.add_argument("--version", action="version", version=f"rccsnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("train", help="train a dense SNN from a YAML recipe")
    p.add_argument("recipe", help="YAML recipe (see experiments/pretrain_digits.yaml)")
    p.add_argument("--epochs", type=positive_int, help="override optim.epochs")
    p.add_argument("--lr", type=float, help="override optim.lr")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--out", metavar="DIR", help="run directory: TensorBoard events, resolved config, state")
    p.add_argument("--checkpoint", metavar="FILE", help="where to write the trained model (default: OUT/model.pt)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set model.T=8 (repeatable)")
    add_resume_options(p, " (and the --checkpoint file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_data_options(p, "default: the recipe's")

    p = sub.add_parser("evaluate", help="accuracy, parameters, MACs and firing rates of a model file")
    add_measured_model(p, "rccsnn checkpoint, state_dict (+ --model) or pickled module", "test", "default: test")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p = sub.add_parser("compress", help="compress a model file to a hard resource budget")
    p.add_argument("model_file", metavar="MODEL", nargs="?", help="the model to compress (or 'model:' in --config)")
    p.add_argument("--budget", type=budget_arg, metavar="FRACTION",
                   help="budget for --resource as a fraction of the dense cost, in (0, 1]")
    p.add_argument("--resource", help="resource of --budget: params (default), macs, synops or energy")
    p.add_argument("--constraint", action="append", default=[], metavar="RESOURCE=FRACTION",
                   help="a budget on another resource (repeatable; each gets its own dual variable)")
    p.add_argument("--method", help="minimax (default), magnitude or gmp")
    p.add_argument("--schedule", help="joint (default) or sequential (the ablation)")
    p.add_argument("--decide", metavar="LIST",
                   help="what minimax decides, any of sparsity (default), bits, timesteps, e.g. "
                        "sparsity,bits,timesteps (method.options.decide); with bits or timesteps, costs are the "
                        "whole network's, relative to the dense float32 model at its T")
    p.add_argument("--bits-ladder", metavar="LIST",
                   help="the bit widths --decide bits chooses from (default 2,3,4,6,8,16,32; 32 = float32)")
    p.add_argument("--min-T", type=positive_int, metavar="T", dest="min_T",
                   help="fewest time steps --decide timesteps may choose (default 1; method.options.min_T)")
    p.add_argument("--epochs", type=positive_int, help="total epochs, compression and finetuning (default 30)")
    p.add_argument("--lr", type=float, help="Adam learning rate of the weights (default 1e-3)")
    p.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/compress/<model>-<budgets>-<method>-<schedule>-seed<seed>, "
                        "with -2, -3, ... when that holds a run with other settings)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set method.options.lr_z=40 (repeatable)")
    add_resume_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_data_options(p, "default: the one recorded in the checkpoint")
    add_model_file_options(p)
    p.set_defaults(device=None)

    p = sub.add_parser("sweep", help="run a YAML grid of compression settings; results table and Pareto plot")
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="sweep file: base, grid, runs (see experiments/)")
    p.add_argument("--out", metavar="DIR", help="sweep directory (default: the file's 'out', else "
                                                "runs/sweeps/<file stem>)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="points run in parallel processes, sharing the CPU cores (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the points and what would run, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("export", help="write a deployable file: compact sparse weights, or a NIR graph")
    p.add_argument("model_file", metavar="MODEL", help="rccsnn checkpoint or compact file (or state_dict + --model)")
    p.add_argument("--format", choices=("compact", "nir"), default="compact",
                   help="compact (default): nonzero values + bitmask or delta-coded indices; nir: a NIR graph "
                        "(needs pip install 'rccsnn[nir]')")
    p.add_argument("--out", metavar="FILE", required=True, help="the file to write (an existing one only with "
                                                                "--overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--dtype", choices=("float32", "float16", "int8"), default="float32",
                   help="stored weight values (compact only; default float32, which loads back exactly)")
    p.add_argument("--per-channel", action="store_true", help="int8: one scale per output channel")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy check")
    add_measured_model(p, None, "test", "split of the accuracy check before/after (default: test)")

    p = sub.add_parser("report", help="per-layer weights, MACs, SynOps, energy and bytes of a model file")
    add_measured_model(p, "rccsnn checkpoint or compact file (or state_dict + --model)", "val",
                       "split the firing rates and accuracy are measured on (default: val, as the budgets)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")

    return parser


# --------------------------------------------------------------------------------------------- helpers
def data_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    return {"data.name": args.data, "data.root": args.data_root, "data.path": args.data_path,
            "data.download": args.download}


def config_overrides(args: argparse.Namespace, flags: Dict[str, Any]) -> Dict[str, Any]:
    """The dotted-key overrides of a command: the flags that were given (a flag left at None says nothing), then
    every ``--set KEY=VALUE`` on top, so that ``--set`` is never undone by a flag the user did not pass."""
    from rccsnn.config import parse_assignment

    given = {key: value for key, value in {**data_overrides(args), **flags}.items() if value is not None}
    return {**given, **dict(parse_assignment(s) for s in args.set)}


# --------------------------------------------------------------------------------------------- torchrun
def join_run(device_name: str, batch_size: int):
    """Under torchrun, join the other processes (see :func:`rccsnn.distributed.join_launch`); returns the device."""
    from rccsnn import distributed

    return distributed.join_launch(distributed.resolve_device(device_name), batch_size)


def resume_after_restart(resume: bool, out: str) -> bool:
    """Whether to resume: ``--resume``, or a torchrun restart of a run with a state file."""
    from rccsnn import distributed
    from rccsnn.rundir import RunDir

    return distributed.resume_after_restart(resume, RunDir(out).state)


def single_process_only(command_name: str) -> None:
    from rccsnn import distributed

    distributed.single_process_only(command_name)


# --------------------------------------------------------------------------------------------- train
@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from rccsnn import distributed
    from rccsnn.config import TrainConfig, load_config
    from rccsnn.monitor import print_metrics
    from rccsnn.training import find_run_dir, train

    overrides = config_overrides(args, {"optim.epochs": args.epochs, "optim.lr": args.lr, "seed": args.seed,
                                        "out": args.out, "checkpoint": args.checkpoint, "device": args.device})
    cfg = load_config(TrainConfig, args.recipe, overrides)
    join_run(cfg.device, cfg.data.batch_size)
    args.resume = resume_after_restart(args.resume, distributed.on_main(lambda: str(find_run_dir(cfg))))
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print_metrics(f"trained {result.spec.arch} on {result.spec.data}; checkpoint: {result.checkpoint}", result.metrics)
    return 0


# --------------------------------------------------------------------------------------------- evaluate
def model_file_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The model-file and data options of a command, as :func:`rccsnn.loading.load_model_file` takes them."""
    from rccsnn.loading import DataSource

    data = DataSource(name=args.data, root=args.data_root or "data", path=args.data_path, download=bool(args.download))
    return dict(model=args.model, trust=args.trust_checkpoint, data=data, T=args.T, encoding=args.encoding,
                loss=args.loss, steps=args.model_steps)


def load_model_file(args: argparse.Namespace):
    """Load MODEL with the model-file options; files without a spec take it from --data/--T/--encoding."""
    from rccsnn.loading import load_model_file as load

    return load(args.model_file, **model_file_options(args))


def model_and_data(args: argparse.Namespace):
    """The model file and its data set, with the model's encoding checked (what evaluate and report measure on)."""
    from rccsnn.loading import model_and_data as load

    return load(args.model_file, **model_file_options(args))


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from rccsnn.monitor import format_table
    from rccsnn.distributed import resolve_device
    from rccsnn.metrics import evaluate

    single_process_only("evaluate")
    loaded, data = model_and_data(args)
    result = evaluate(loaded, data, args.split, resolve_device(args.device), batch_size=args.batch_size)
    rows = [[k, v] for k, v in result.items() if k != "firing_rates"]
    print(format_table(["metric", "value"], rows))
    print()
    print(format_table(["spiking layer", "firing rate"], [[k, v] for k, v in result["firing_rates"].items()]))
    if args.json:
        write_json(result, args.json)
    return 0


# --------------------------------------------------------------------------------------------- compress
def compress_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """``compress``'s dotted-key overrides: the flags given, the budget flags (which replace the config file's
    budgets), then every ``--set`` (a ``--set budgets.X`` adds to the budget flags)."""
    from rccsnn.config import parse_constraint, read_yaml

    overrides = config_overrides(args, {"model": args.model_file, "method.name": args.method,
                                        "method.schedule": args.schedule, "optim.epochs": args.epochs,
                                        "optim.lr": args.lr, "seed": args.seed, "out": args.out,
                                        "device": args.device, "method.options.decide": args.decide,
                                        "method.options.bits_ladder": args.bits_ladder,
                                        "method.options.min_T": args.min_T})
    budgets = dict(read_yaml(args.config).get("budgets") or {}) if args.config else {}
    if args.resource is not None and args.budget is None:
        raise UserError("--resource needs --budget")
    if args.budget is not None:
        budgets[args.resource or "params"] = args.budget
    for text in args.constraint:
        name, value = parse_constraint(text)
        budgets[name] = value
    return {"budgets": budgets, **overrides} if budgets else overrides


@command("compress")
def cmd_compress(args: argparse.Namespace) -> int:
    from rccsnn import distributed
    from rccsnn.compression import compress, find_run_dir, summary_table
    from rccsnn.config import CompressConfig, load_config

    overrides = compress_overrides(args)
    cfg = load_config(CompressConfig, args.config, overrides)
    args.model_file = cfg.model
    join_run(cfg.device, cfg.data.batch_size)
    from rccsnn.loading import fill_recorded_data

    # On every process: a node that cannot read the model stops the run with its message.
    loaded = distributed.agreed(lambda: load_model_file(args))
    # Before the run directory is named: its settings include the data file.
    fill_recorded_data(cfg.data, loaded, cfg.model)
    # cfg.out stays unset without --out: compress() claims a version of the default name.
    args.resume = resume_after_restart(args.resume, distributed.on_main(lambda: str(find_run_dir(cfg))))
    result = compress(cfg, loaded, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(summary_table(result))
    print(f"compressed model: {result.checkpoint}  ({result.wall_seconds:.1f} s)")
    return 0


# --------------------------------------------------------------------------------------------- sweep
@command("sweep")
def cmd_sweep(args: argparse.Namespace) -> int:
    from rccsnn.sweep import dry_run_table, load_sweep, run_sweep, write_results

    single_process_only("sweep")
    sweep = load_sweep(args.sweep_file, out=args.out, check_files=not args.dry_run)
    if args.dry_run:
        print(dry_run_table(sweep))
        return 0
    outcome = run_sweep(sweep, jobs=args.jobs, progress=not args.no_progress)
    print()
    print(write_results(sweep))
    print(f"sweep directory: {sweep.out} (results.csv, results.md, pareto.png; "
          f"tensorboard --logdir {sweep.out / 'hparams'})")
    if outcome.interrupted:
        print("rccsnn sweep: interrupted; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome.failed:
        print(f"rccsnn sweep: {len(outcome.failed)} of {len(sweep.points)} points failed (see error.txt in their "
              f"run directories); rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------- export
@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from rccsnn.formats import check_destination, check_options, export, summary

    single_process_only("export")
    # Before the model loads, which may take long.
    check_options(args.format, args.dtype, args.per_channel)
    check_destination(args.out, overwrite=args.overwrite)
    loaded = load_model_file(args)
    evaluate = args.format == "compact" and not args.no_eval
    options = model_file_options(args)
    data = options["data"].load(default=loaded.spec.data) if evaluate or not loaded.spec.input_shape else None
    result = export(loaded, args.out, format=args.format, dtype=args.dtype, per_channel=args.per_channel, data=data,
                    split=args.split if evaluate else None, device=args.device, batch_size=args.batch_size,
                    model=args.model, overwrite=args.overwrite)
    print(summary(result))
    return 0


# --------------------------------------------------------------------------------------------- report
@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from rccsnn.distributed import resolve_device
    from rccsnn.metrics import report, report_table

    single_process_only("report")
    loaded, data = model_and_data(args)
    result = report(loaded, data, args.split, resolve_device(args.device), batch_size=args.batch_size,
                    file=args.model_file)
    print(f"{args.model_file}: {result['split']} accuracy {result['accuracy']:.4f} on {result['samples']} samples "
          f"of {result['data']}, T = {result['T']}; energy per inference (45 nm, Horowitz 2014)")
    print(report_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


# --------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    """Run one subcommand; returns the exit code (0, 1 for failed sweep points or a lost torchrun process, 2 for a
    user error, 130 when interrupted). Every error the user can cause is one line on stderr, never a traceback.

    Under torchrun only process 0 prints: the others' output is dropped, and their errors (normally the same
    as process 0's) are printed only if torchrun has not stopped them :data:`PEER_REPORT_WAIT_S` later. A lost
    process is the exception: every process that notices it says so at once.
    """
    import contextlib
    import errno
    import os
    import shlex

    from rccsnn import distributed

    try:
        launch = distributed.launch_from_env()
    except UserError:
        launch = None  # the command itself reports the malformed environment
    quiet = launch is not None and launch.rank > 0

    with contextlib.ExitStack() as silence:
        if quiet:  # torchrun starts every process with the same arguments: one copy of the output is enough
            devnull = silence.enter_context(open(os.devnull, "w"))
            silence.enter_context(contextlib.redirect_stdout(devnull))
            silence.enter_context(contextlib.redirect_stderr(devnull))
        parser = build_parser()
        argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            if quiet and exc.code not in (0, None):
                distributed.wait_to_be_stopped(exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR,
                                               PEER_REPORT_WAIT_S)
            raise
        if not args.command:
            parser.print_help()
            return EXIT_USER_ERROR
    from rccsnn.rundir import NO_SPACE, no_space_message
    from rccsnn.trainer import Interrupted

    # The exact command that continues an interrupted run (the same run directory, from its state.pt).
    resume_argv = [*argv, *([] if "--resume" in argv else ["--resume"])]
    again = shlex.join(["rccsnn", *resume_argv])
    if launch is not None:
        launcher = (f"torchrun --standalone --nproc_per_node={launch.local_world_size}" if launch.single_node
                    else "torchrun <the same rendezvous options>")
        again = f"{launcher} -m {shlex.join(['rccsnn', *resume_argv])}"

    def say(message: str, code: int, wait: bool = True) -> int:
        """Print ``message`` (process 0), or (other processes) wait to be stopped, then print it if still alive."""
        if not quiet:
            print(message, file=sys.stderr, flush=True)
            return code
        if not wait:
            return code
        distributed.wait_to_be_stopped(code, PEER_REPORT_WAIT_S)
        print(f"{message} (process {launch.rank} of {launch.world_size})", file=sys.stderr, flush=True)
        return code

    lost = False
    try:
        with contextlib.ExitStack() as scope:
            scope.enter_context(distributed.sigterm_interrupts())
            if quiet:  # progress, tables and the methods' event lines come from process 0 alone
                scope.enter_context(contextlib.redirect_stdout(scope.enter_context(open(os.devnull, "w"))))
            return COMMANDS[args.command](args)
    except distributed.PeerLost as exc:
        lost = True
        distributed.hold_signals(launch)
        hint = ""
        if args.command in ("train", "compress"):
            hint = f"; epochs that finished are saved in the run's state.pt, continue with: {again}"
        print(f"rccsnn {args.command}: error: {exc}; the run is aborted (torchrun's report names the process "
              f"that failed){hint}", file=sys.stderr, flush=True)
        return EXIT_PROCESS_LOST
    except UserError as exc:
        distributed.hold_signals(launch)
        return say(f"rccsnn {args.command}: error: {exc}", EXIT_USER_ERROR)
    except Interrupted as exc:
        distributed.hold_signals(launch)
        # Every process stops after the same epoch (agreed in Trainer.fit) with this message: no need to wait.
        return say(f"rccsnn {args.command}: {exc}; continue with: {again}", EXIT_INTERRUPTED, wait=False)
    except KeyboardInterrupt:
        distributed.hold_signals(launch)
        hint = ""
        if args.command in ("train", "compress"):
            hint = f" (epochs that finished are saved in the run's state.pt; continue with: {again})"
        if launch is not None:  # torchrun's SIGTERM: it stops every process when one failed or it was stopped
            return say(f"rccsnn {args.command}: stopped by torchrun (another process failed, or torchrun itself "
                       f"was interrupted){hint}", EXIT_INTERRUPTED, wait=False)
        return say(f"rccsnn {args.command}: interrupted{hint}", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader of our output went away (`rccsnn ... | head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # Writes that rccsnn does not route through its own checks (TensorBoard, YAML, plots): a full disk or a
        # path the user may not write is still the user's to fix, in one line.
        if exc.errno in NO_SPACE:
            message = no_space_message(exc.filename)
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
            message = f"{exc.strerror}: {exc.filename}"
        else:
            raise
        distributed.hold_signals(launch)
        return say(f"rccsnn {args.command}: error: {message}", EXIT_USER_ERROR)
    finally:
        if not lost:  # after a lost process the group is broken; leaving it could wait on the dead
            distributed.stop()
