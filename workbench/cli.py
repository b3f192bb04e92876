"""The ``workbench`` command: thin verbs that parse arguments, call the library and print.

Each verb is two functions registered in :data:`VERBS`: ``_args_<verb>(parser)`` adds its
arguments and ``_cmd_<verb>(args)`` runs it and returns the exit status.

The command parses text into values and lets the library check them: a check lives once, in
the library, and the command names the flag where the library names its keyword (a message's
leading keyword and each ``keyword=value`` become ``--flag`` and ``--flag value``:
:func:`_in_flags`). Bounds the library checks only after long work (the report's
``--max-report-files``, lr-find's rates and steps) are also checked as the text is parsed.

Exit status and stderr, never a traceback unless ``WORKBENCH_DEBUG=1`` (then every error's
traceback comes before its line):

- 0: done.
- 2, one line ``error: ...``: the user's mistake: an argparse error, a
  :class:`~workbench._checks.UsageError` (the library's one error type for them: a bad value, a
  missing file it was given, a run already there), or an ``OSError`` of the system
  (not found, not a folder, a folder, permission denied, already exists) on a path the user
  gave, naming the argument that gave it.
- 1, one line ``error: ...``: a failure the user can fix that shows only at run time, which the
  library explains (a ``UsageError`` that is also a ``RuntimeError``: the ImageNet weights
  cannot be downloaded, the loss diverged; the workers of a cluster did not all join; an
  export that does not match its model; a split that kept no class).
- 1, one line ``workbench VERB: failed: TYPE: message (WORKBENCH_DEBUG=1 shows the
  traceback)``: anything else (a Keras error mid-training, a full disk, a bug).
- 130: interrupted (Ctrl+C); the verbs that train say what was kept.

Each verb imports the library it calls inside its function, so that ``workbench predict`` (the
LiteRT fast path) and ``workbench monitor -- CMD`` start without loading Keras or TensorFlow.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback
from pathlib import Path

from workbench._checks import (DEBUG_VARIABLE, MissingPath, PathInTheWay, UsageError,
                               check_folder_path, one_line)
from workbench._cluster import ClusterError
from workbench._quiet import start_keras_quietly

RUNTIME_CHOICES = ("auto", "litert", "onnx", "keras")  # --runtime: what runs a run's model
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, without the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}\n")


def _arg_type(name: str, convert):
    """An argparse type that reports ``name`` and the value received when ``convert`` fails."""

    def parse(text: str):
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"{_without_received(error)}, received: {text!r}") from error

    parse.__name__ = name
    return parse


class _OldFlag(argparse.Action):
    """An option's old name, hidden from ``--help``: it still works for one release, and says
    on stderr which name to use."""

    def __init__(self, option_strings, dest, *, new: str, **options):
        super().__init__(option_strings, dest, **options)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and will be removed in the next release, "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _renamed_option(parser, new: str, old: str, **options) -> None:
    """Adds the option ``new`` and its old name ``old`` as a hidden alias (:class:`_OldFlag`);
    giving both is an error, and ``required`` is met by either."""
    group = parser.add_mutually_exclusive_group(required=options.pop("required", False))
    action = group.add_argument(new, **options)
    group.add_argument(old, dest=action.dest, action=_OldFlag, new=new, help=argparse.SUPPRESS,
                       default=argparse.SUPPRESS, type=options.get("type"),
                       choices=options.get("choices"), metavar=options.get("metavar"))


def _without_received(error: Exception) -> str:
    return str(error).split(", received:")[0]


def _int_at_least(minimum: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value
    return convert


def _positive(unit: str):
    """A converter to a number > 0 whose error names ``unit`` (seconds, megabytes)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number of {unit} > 0") from None
        if not value > 0:
            raise ValueError("must be > 0")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number of {unit}")
        return value
    return convert


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number") from None


# --- split -------------------------------------------------------------------------------------

def _args_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA",
                        help="the dataset folder: one sub-folder per class, or the folder the "
                             "paths in --list are relative to")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for splits.csv, rejected.csv, train/val/test.txt, "
                             "labels.txt and report.md (created; must not be inside DATA)")
    parser.add_argument("--list", metavar="FILE",
                        help="a Caffe list file, 'relative/path label_index' per line")
    parser.add_argument("--labels", metavar="FILE",
                        help="class names, one per line (line i names label index i); "
                             "required with --list")
    parser.add_argument("--min-per-class", type=_arg_type("N", _integer), default=1,
                        metavar="N", help="drop classes with fewer valid images (default 1)")
    parser.add_argument("--val", type=_arg_type("F", _number), metavar="F",
                        help="expected fraction of each class for validation (default 0.1)")
    parser.add_argument("--test", type=_arg_type("F", _number), metavar="F",
                        help="expected fraction of each class for test (default 0.1)")
    parser.add_argument("--counts", metavar="T,V,T",
                        help="exact images per class for train,val,test instead of fractions; "
                             "one may be 'rest', e.g. 10,rest,10")
    parser.add_argument("--seed", type=_arg_type("S", _integer), default=0, metavar="S",
                        help="changes the assignment; the same seed gives the same split "
                             "(default 0)")
    parser.add_argument("--min-side", type=_arg_type("N", _integer), default=8,
                        metavar="N", help="reject images with a shorter side (default 8)")
    parser.add_argument("--workers", type=_arg_type("N", _integer), metavar="N",
                        help="threads that read images (default min(8, CPUs))")
    parser.add_argument("--max-report-files", type=_arg_type("N", _int_at_least(0)), default=50,
                        metavar="N", help="rejected files listed on the terminal (default 50; "
                                          "report.md lists them all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a split folder made with other settings or other images "
                             "(runs trained on it will then evaluate on a different test set); "
                             "the same split again writes nothing")


def _cmd_split(args: argparse.Namespace) -> int:
    from workbench.data.split import NoClassKept, OneClassKept, SplitFolderExists, prepare

    try:
        result = prepare(args.data, args.out, list_file=args.list, labels_file=args.labels,
                         min_per_class=args.min_per_class, val=args.val, test=args.test,
                         counts=args.counts, seed=args.seed, min_side=args.min_side,
                         workers=args.workers, overwrite=args.overwrite)
    except SplitFolderExists as error:  # in flags, not keyword names
        raise PathInTheWay(error.message(overwrite="--overwrite", out="--out")) from None
    except (NoClassKept, OneClassKept) as error:  # the report, then why, in one line
        print(error.result.report(max_files=args.max_report_files), end="")
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(result.report(max_files=args.max_report_files), end="")
    print(result.note)
    return EXIT_OK


# --- train -------------------------------------------------------------------------------------

def _lr_rule(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError("must be PATTERN=MULTIPLIER, e.g. 'conv1*=0'")
    try:
        return pattern, float(value)
    except ValueError:
        raise ValueError("must be PATTERN=MULTIPLIER with a number after '='") from None


def _solver(args: argparse.Namespace):
    """The ``SolverConfig`` of ``--solver`` (the defaults without one) with the options that
    override its fields."""
    from workbench.training.solver import SolverConfig

    solver = SolverConfig() if args.solver is None else SolverConfig.load(args.solver)
    overrides = {"epochs": getattr(args, "epochs", None), "batch_size": args.batch_size,
                 "base_lr": getattr(args, "base_lr", None)}
    return solver.replace(**{k: v for k, v in overrides.items() if v is not None})


def _start(args: argparse.Namespace):
    """The :class:`~workbench.models.StartingPoint` of ``--backbone``, ``--weights``,
    ``--source`` and ``--cut-at``, those given only: it refuses a conflicting combination."""
    from workbench import models

    given = {"backbone": args.backbone, "source": args.source, "cut_at": args.cut_at}
    options = {name: value for name, value in given.items() if value is not None}
    if args.weights is not None:
        options["weights"] = models.weights_argument(args.weights)  # as notebook 03 reads it
    return models.StartingPoint(**options)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming the data, the model and how it trains: train's, shared by lr-find."""
    from workbench.backbones import APPLICATIONS, SMALL_NETWORKS
    from workbench.training.recipes import RECIPES

    parser.add_argument("--splits", required=True, metavar="SPLITS_DIR",
                        help="a folder written by 'workbench split'")
    parser.add_argument("--backbone", metavar="NAME",
                        help=f"a keras.applications network, with its preprocessing (default "
                             f"mobilenet_v2): {', '.join(APPLICATIONS)}; or a small built-in "
                             f"net: {', '.join(SMALL_NETWORKS)}")
    parser.add_argument("--weights", metavar="imagenet|PATH|none",
                        help="backbone weights: imagenet (default; downloaded once), a local "
                             "weights file (machines without internet), or none (random)")
    parser.add_argument("--source", metavar="MODEL.keras",
                        help="transfer from a saved model instead of a backbone (not with "
                             "--backbone or --weights)")
    parser.add_argument("--cut-at", metavar="LAYER",
                        help="layer of --source whose output becomes the features")
    recipes = "; ".join(f"{name}: {recipe.summary}" for name, recipe in RECIPES.items())
    parser.add_argument("--recipe", choices=list(RECIPES), default="two_stage",
                        help=f"which layers learn, how fast, in which stages (default "
                             f"two_stage). {recipes}".replace("%", "%%"))
    parser.add_argument("--lr-mult", type=_arg_type("PATTERN=VALUE", _lr_rule), action="append",
                        default=[], metavar="PATTERN=VALUE",
                        help="extra learning-rate multiplier for layers matching a glob "
                             "pattern, checked before the recipe's (repeatable; 0 freezes; a "
                             "pattern with '/' names weights: '*/bias=2' as in Caffe)")
    parser.add_argument("--decay-mult", type=_arg_type("PATTERN=VALUE", _lr_rule),
                        action="append", default=[], metavar="PATTERN=VALUE",
                        help="weight-decay multiplier (Caffe's decay_mult) for layers or "
                             "weights matching a pattern, e.g. '*/bias=0' (repeatable)")
    parser.add_argument("--solver", metavar="FILE",
                        help="solver settings: a .json file or a Caffe solver.prototxt")
    parser.add_argument("--batch-size", type=_arg_type("N", _integer), metavar="N",
                        help="images per training step (default 32, or the --solver file's); "
                             "lower it when memory runs out")
    parser.add_argument("--image-size", type=_arg_type("N", _integer), default=None,
                        metavar="N", help="side of the square input images (default: the "
                                          "--source model's input, or the side the backbone "
                                          "was made for: 224 for most, 240-600 for the "
                                          "larger efficientnets, 299 for inception and "
                                          "xception, 28 for lenet, 32 for cifar_cnn)")
    parser.add_argument("--seed", type=_arg_type("S", _integer), default=0, metavar="S",
                        help="seeds the new head's initial weights, the order of the images "
                             "and the augmentation: the same seed trains the same run "
                             "(default 0)")


def _args_train(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    _renamed_option(parser, "--run-dir", "--out", required=True, metavar="RUN_DIR",
                    help="the run directory")
    parser.add_argument("--epochs", type=_arg_type("N", _integer), metavar="N",
                        help="passes over the training images (default 10, or the --solver "
                             "file's); at least one per stage of the --recipe")
    parser.add_argument("--base-lr", type=_arg_type("LR", _number), metavar="LR",
                        help="the learning rate of a layer with multiplier 1; the recipe and "
                             "--lr-mult scale it per layer (default 0.01, or the --solver "
                             "file's; 'workbench lr-find' suggests one)")
    parser.add_argument("--augment", default="auto", metavar="auto|on|off[+flip]",
                        help="augment the training images: random resized crops, small "
                             "rotation and colour changes; '+flip' mirrors too (photos, never "
                             "digits or text); '+model' or '+pipeline' says where it runs. "
                             "auto (default): on when the median class has fewer than 100 "
                             "training images")
    parser.add_argument("--class-weight", choices=("balanced",), default=None,
                        help="balanced: weigh each image by images / (classes x images of its "
                             "class), so every class of an imbalanced folder counts alike")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in RUN_DIR from its last checkpoint (same "
                            "settings; a finished run is left as it is)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in RUN_DIR: the new run is trained beside it and "
                            "takes its place only when it finishes")
    parser.add_argument("--distributed", action="store_true",
                        help="this process is one of several workers, on one or several "
                             "machines (JAX backend), started by srun (SLURM) or a "
                             "torchrun-style launcher (RANK, WORLD_SIZE, MASTER_ADDR, "
                             "MASTER_PORT); every worker runs the same command, worker 0 "
                             "writes RUN_DIR (on a filesystem all of them see)")
    parser.add_argument("--join-timeout", type=_arg_type("SECONDS", _positive("seconds")),
                        default=120.0, metavar="SECONDS",
                        help="with --distributed: how long the workers wait for each other to "
                             "start before giving up, naming the missing ones (default 120)")


def _cmd_train(args: argparse.Namespace) -> int:
    from workbench._cluster import joined
    from workbench.runs import RunDir
    from workbench.training.callbacks import TrainingDiverged
    from workbench.training.options import Execution
    from workbench.training.train import RunExists, SettingsChanged, finetune

    start, solver = _start(args), _solver(args)
    if args.resume and not RunDir(check_folder_path("run_dir", args.run_dir)).exists:
        # the library starts a run where there is none; a typo should not
        raise MissingPath(f"--resume needs a run to continue, and --run-dir {args.run_dir!r} "
                          "holds none (no config.json); leave out --resume to start one there")
    try:
        run = finetune(args.splits, args.run_dir, start=start, recipe=args.recipe,
                       lr_mult_rules=dict(args.lr_mult),
                       decay_mult_rules=dict(args.decay_mult) or None, solver=solver,
                       image_size=args.image_size, seed=args.seed, resume=args.resume,
                       overwrite=args.overwrite, augment=args.augment,
                       class_weight=args.class_weight, progress="lines",
                       execution=Execution(strategy="distributed",
                                           join_timeout=args.join_timeout)
                       if args.distributed else None)
    except RunExists as error:  # the library's words are keyword arguments; these are flags
        print(f"error: "
              f"{error.advice(resume='--resume', overwrite='--overwrite', out='--run-dir')}",
              file=sys.stderr)
        return EXIT_USAGE
    except SettingsChanged as error:
        print(f"error: {error.advice(overwrite='--overwrite', out='--run-dir')}",
              file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as error:
        print(f"error: {one_line(error.advice(resume='--resume', base_lr='--base-lr'))}",
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"interrupted: {args.run_dir} still holds the run that was there (the "
              "replacement was not finished)" if args.overwrite else
              f"interrupted: continue with 'workbench train ... --run-dir {args.run_dir} "
              "--resume'",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    cluster = joined()
    if cluster is None or cluster.chief:  # one report, not one per worker
        print(_format_metrics(run.metrics))
        print(f"Run directory: {run.path}")
    return EXIT_OK


def _format_metrics(metrics: dict) -> str:
    keys = ("status", "epochs", "best_epoch", "val_accuracy", "test_accuracy", "test_top5",
            "train_seconds", "images_per_second")
    return "  ".join(f"{key} {metrics[key]}" for key in keys if metrics.get(key) is not None)


# --- lr-find -----------------------------------------------------------------------------------

def _args_lr_find(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--out", metavar="PNG",
                        help="save the plot of loss against learning rate here (a folder: "
                             "as lr_find.png in it)")
    parser.add_argument("--start-lr", type=_arg_type("LR", _positive("learning rate")),
                        default=1e-6, metavar="LR", help="the first rate tried (default 1e-6)")
    parser.add_argument("--end-lr", type=_arg_type("LR", _positive("learning rate")),
                        default=10.0, metavar="LR",
                        help="the last rate tried, unless the loss blows up first (default 10)")
    parser.add_argument("--steps", type=_arg_type("N", _int_at_least(5)), default=100,
                        metavar="N", help="batches from --start-lr to --end-lr (default 100)")


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from workbench._io import atomic_path
    from workbench.training.lr_find import range_test

    finder = range_test(args.splits, start=_start(args), recipe=args.recipe,
                        lr_mult_rules=dict(args.lr_mult),
                        decay_mult_rules=dict(args.decay_mult) or None, solver=_solver(args),
                        image_size=args.image_size, seed=args.seed, start_lr=args.start_lr,
                        end_lr=args.end_lr, steps=args.steps)
    print(finder.describe())
    if args.out:
        out = _figure_path(args.out, Path("lr_find.png"))
        with atomic_path(out) as temporary:
            finder.plot().savefig(temporary, dpi=100)
        print(f"Wrote {out}")
    return EXIT_OK


# --- sample-data -------------------------------------------------------------------------------

def _args_sample_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/sample", metavar="DIR",
                        help="folder for digits/, source/ and target/ (default data/sample)")
    parser.add_argument("--image-size", type=_arg_type("N", _int_at_least(8)), default=32,
                        metavar="N", help="side of the square images (default 32)")
    parser.add_argument("--source-per-class", type=_arg_type("N", _int_at_least(1)),
                        metavar="N", help="rendered images per source letter (default 400)")
    parser.add_argument("--seed", type=_arg_type("S", _integer), default=0, metavar="S")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace dataset folders that exist (each is replaced whole)")


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from workbench.data import sample

    per_class = args.source_per_class or sample.DEFAULT_SOURCE_PER_CLASS
    try:
        summary = sample.write_sample_data(args.out, image_size=args.image_size,
                                           source_per_class=per_class, seed=args.seed,
                                           overwrite=args.overwrite)
    except sample.SampleFolderExists as error:  # in flags, not keyword names
        raise PathInTheWay(error.message(overwrite="--overwrite")) from None
    for name, info in summary.items():
        print(f"{name:7s} {info['images']:6d} images in {info['classes']:3d} classes -> "
              f"{info['path']}")
    return EXIT_OK


# --- monitor, plot-resources -------------------------------------------------------------------

def _args_monitor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for resources.csv (created; appended to if it exists)")
    parser.add_argument("--interval", type=_arg_type("S", _positive("seconds")), default=1.0,
                        metavar="S", help="seconds between samples (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run, after '--'")


def _cmd_monitor(args: argparse.Namespace) -> int:
    from workbench.monitor import monitor_command
    from workbench.runs import RunDir

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("a command to run is required after '--', received: nothing, e.g. "
                         "workbench monitor --out DIR -- python train.py")
    path = RunDir(args.out).resources_path
    try:  # an --out that cannot be written is a usage error, not a missing command
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("a").close()
    except OSError as error:
        raise UsageError(f"--out must be a folder that can be written, received: {args.out!r} "
                         f"({error.strerror})") from None
    try:
        status = monitor_command(command, path, interval=args.interval)
    except FileNotFoundError as error:
        print(f"error: command not found, received: {command[0]!r} ({one_line(error)})",
              file=sys.stderr)
        return 127
    print(f"workbench monitor: exit status {status}; resources in {path}", file=sys.stderr)
    return status


def _args_plot_resources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a folder holding resources.csv (and history.csv, drawn beside it "
                             "if present)")
    parser.add_argument("--out", metavar="PNG",
                        help="the image to write, or a folder to write resources.png in "
                             "(default RUN_DIR/resources.png)")


def _figure_path(out: str | None, default: Path) -> Path:
    """Where an ``--out`` figure goes: ``default`` without one, ``default``'s name inside a
    folder given, and a ``.png`` added to a name without a suffix (what matplotlib would write,
    so that "Wrote ..." names the file written)."""
    if out is None:
        return default
    path = Path(out)
    if path.is_dir():
        return path / default.name
    return path if path.suffix else path.with_name(path.name + ".png")


def _cmd_plot_resources(args: argparse.Namespace) -> int:
    from workbench._io import write_figure
    from workbench.monitor import summarize_resources
    from workbench.plots import resource_dashboard
    from workbench.runs import RunDir

    run = RunDir(args.run_dir)
    frame = run.resources
    if frame is None:
        raise MissingPath(f"RUN_DIR must hold {run.resources_path.name}, received: "
                          f"{args.run_dir!r}")
    history = run.history
    if history is not None and (
            history.empty or not {"epoch", "loss", "accuracy"} <= set(history.columns)):
        history = None
    out = _figure_path(args.out, run.figure_path("resources"))
    write_figure(out, resource_dashboard(frame, history=history))
    summary = summarize_resources(frame)
    print("  ".join(f"{key} {round(value, 1) if isinstance(value, float) else value}"
                    for key, value in summary.items() if value is not None))
    print(f"Wrote {out}")
    return EXIT_OK


# --- evaluate ----------------------------------------------------------------------------------

def _args_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by "
                                                           "'workbench train'")
    parser.add_argument("--split", default="test", metavar="SPLIT",
                        help="train, val or test (default test)")
    parser.add_argument("--model", default="best", metavar="best|final",
                        help="the best checkpoint by validation accuracy, or the final model "
                             "(default best)")
    parser.add_argument("--batch-size", type=_arg_type("N", _int_at_least(1)), default=64,
                        metavar="N", help="images per forward pass (default 64)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average each image with its mirror "
                             "image (not for digits or text)")
    _renamed_option(parser, "--runtime", "--backend", choices=RUNTIME_CHOICES, default="auto",
                    help="what runs the model: auto (default): the run's LiteRT or ONNX export "
                         "when it has one (same numbers to 1e-3, several times faster), else "
                         "Keras")
    parser.add_argument("--raw", action="store_true",
                        help="tabulate the network's raw softmax instead of the probabilities "
                             "calibrated by the run's temperature (the ECE is shown for both)")


def _finish_command(run_dir: str) -> str:
    """How an unfinished run is finished, on the command line."""
    return (f"run the 'workbench train ... --run-dir {run_dir}' that started it again, with "
            "--resume")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from workbench.evaluation import evaluate
    from workbench.runs import RunDir, RunUnfinished

    try:
        report = evaluate(args.run_dir, split=args.split, model=args.model,
                          batch_size=args.batch_size, tta=args.tta, runtime=args.runtime,
                          calibrated=not args.raw)
    except RunUnfinished as error:  # in the command's words
        raise UsageError(error.advice(resume=_finish_command(args.run_dir))) from None
    print(report.format(), end="")
    print(f"Wrote {RunDir(args.run_dir).evaluation_dir(args.split)}")
    return EXIT_OK


# --- predict -----------------------------------------------------------------------------------

def _args_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    parser.add_argument("images", metavar="PATH", nargs="*",
                        help="image files, and folders (searched at every depth, with the file "
                             "rules of scan)")
    parser.add_argument("--list", metavar="FILE", dest="list_file",
                        help="a list file of images: Caffe's 'path label' lines or one path a "
                             "line, relative to --root")
    parser.add_argument("--root", metavar="DIR",
                        help="the folder --list's paths are relative to (default: the list's)")
    parser.add_argument("--out", metavar="FILE",
                        help="write one row per file to FILE (.csv, or .parquet): the path, the "
                             "top-k labels and probabilities, and an error column; resumable "
                             "(killed and run again, files done are skipped)")
    parser.add_argument("--features", metavar="FILE.npy|columns",
                        help="with --out: also each image's pooled backbone features, as a "
                             ".npy (row i is row i of the table) or 'columns' of a .parquet")
    parser.add_argument("--batch-size", type=_arg_type("N", _int_at_least(1)), default=64,
                        metavar="N", help="images per model call (default 64)")
    parser.add_argument("--threads", type=_arg_type("N", _int_at_least(1)), default=None,
                        metavar="N", help="decoding threads (default: min(8, CPUs))")
    parser.add_argument("--cluster", metavar="ADDRESS|slurm",
                        help="with --out: classify on the workers of a Dask scheduler, or of a "
                             "dask-jobqueue SLURM cluster; every worker must see the run, the "
                             "images and the output's folder at the same paths")
    parser.add_argument("--cluster-option", type=_arg_type("KEY=VALUE", _setting),
                        action="append", default=[], metavar="KEY=VALUE",
                        help="a SLURMCluster option with --cluster slurm, e.g. cores=8")
    parser.add_argument("--jobs", type=_arg_type("N", _int_at_least(1)), default=None,
                        metavar="N", help="SLURM jobs with --cluster slurm (default 1)")
    parser.add_argument("--top-k", type=_arg_type("K", _int_at_least(1)), default=5,
                        metavar="K", help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line instead of a table")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average each image with its mirror "
                             "image (not for digits or text)")
    _renamed_option(parser, "--runtime", "--backend", choices=RUNTIME_CHOICES, default="auto",
                    help="what runs the model: auto (default): the faster of the LiteRT and "
                         "ONNX exports on this machine, made on first use, without importing "
                         "TensorFlow once they exist; keras: the .keras model")
    parser.add_argument("--raw", action="store_true",
                        help="the network's raw softmax instead of the probabilities calibrated "
                             "by the run's temperature (the same classes, in the same order)")
    parser.add_argument("--explain", metavar="DIR",
                        help="also write where the model looked for its top class (Grad-CAM, "
                             "from the run's Keras model) as DIR/<image name>.png: the photo "
                             "with its map, the class and its probability (a folder's "
                             "sub-folders mirrored under DIR)")


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from workbench.data.images import ImageRejected
    from workbench.deploy.predict import Classifier

    many = args.list_file or any(os.path.isdir(path) for path in args.images)
    if args.out or many or args.features or args.cluster:
        return _predict_many(args)
    if not args.images:
        raise UsageError("predict needs at least one PATH or --list FILE, received: none")
    classifier = Classifier.load(args.run_dir, runtime=args.runtime)
    failed, names = 0, set()  # names: of the --explain files written
    for path in args.images:
        try:
            top = classifier.predict(path, top_k=args.top_k, tta=args.tta,
                                     calibrated=not args.raw)
            if args.explain:
                stem, count = Path(path).stem, 1
                while (name := stem if count == 1 else f"{stem}-{count}") in names:
                    count += 1  # a second photo of the same name gets "-2", ...
                names.add(name)
                explained = classifier.explain(path, tta=args.tta).save(
                    Path(args.explain) / f"{name}.png")
        except ImageRejected as error:  # one bad file must not stop the others
            failed += 1
            print(json.dumps({"image": path, "error": str(error)}) if args.json
                  else f"{path}: error: {error}", file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            shown = {"explanation": str(explained)} if args.explain else {}
            print(json.dumps({"image": path, "predictions": top, **shown}))
        else:
            print(path)
            for rank, entry in enumerate(top, start=1):
                print(f"  {rank}. {entry['label']:<24} {entry['probability']:7.2%}")
            if args.explain:
                print(f"  where it looked: {explained}")
    return EXIT_FAILED if failed else EXIT_OK


def _predict_many(args: argparse.Namespace) -> int:
    """Folders, list files, --out: the batch job (``workbench.deploy.batch``)."""
    import json

    from workbench.deploy import batch

    if not args.out:
        for name, value in (("--features", args.features), ("--cluster", args.cluster)):
            if value:
                raise UsageError(f"{name} needs --out FILE, received: {name} {value}")
        from workbench.deploy.predict import Classifier

        classifier = Classifier.load(args.run_dir, runtime=args.runtime)
        sources = batch.list_files(args.images, list_file=args.list_file,
                                   list_root=args.root)
        failed = 0
        errors = set()
        for row in classifier.predict_files(sources, top_k=args.top_k, tta=args.tta,
                                            batch_size=args.batch_size, threads=args.threads,
                                            calibrated=not args.raw):
            if row["error"]:
                errors.add(row["path"])
            top = [{"label": row[f"label_{rank}"], "probability": row[f"probability_{rank}"]}
                   for rank in range(1, args.top_k + 1) if row.get(f"label_{rank}") is not None]
            failed += bool(row["error"])
            if args.json:
                shown = {"error": f"{row['error']}: {row['detail']}"} if row["error"] else \
                    {"predictions": top}
                print(json.dumps({"image": row["path"], **shown}))
            elif row["error"]:
                print(f"{row['path']}: error: {row['error']}: {row['detail']}", file=sys.stderr)
            else:
                print(row["path"])
                for rank, entry in enumerate(top, start=1):
                    print(f"  {rank}. {entry['label']:<24} {entry['probability']:7.2%}")
        if args.explain:
            written = batch.explain_files(classifier, sources, args.explain, skip=errors,
                                          tta=args.tta)
            print(f"Where it looked: {written} overlays in {args.explain}")
        return EXIT_FAILED if failed else EXIT_OK
    classifier = None
    if args.explain:  # loaded once, for the table (unless on a cluster) and the maps
        from workbench.deploy.predict import Classifier

        classifier = Classifier.load(args.run_dir, runtime=args.runtime)
    result = batch.predict_to_file(
        args.run_dir, args.images, out=args.out, list_file=args.list_file, list_root=args.root,
        runtime=args.runtime, top_k=args.top_k, batch_size=args.batch_size,
        threads=args.threads, tta=args.tta, calibrated=not args.raw, features=args.features,
        cluster=args.cluster, cluster_options=dict(args.cluster_option) or None, jobs=args.jobs,
        classifier=classifier)
    if result.started_over:
        print(f"Started over: {result.started_over}")
    print(result.format())
    if args.explain:  # after the table: maps cost more than classifying, and need Keras
        table = result.table()
        written = batch.explain_files(
            classifier,
            batch.list_files(args.images, list_file=args.list_file, list_root=args.root),
            args.explain, skip=set(table.loc[table["error"] != "", "path"]), tta=args.tta,
            progress="auto")
        print(f"Where it looked: {written} overlays in {args.explain}")
    return EXIT_OK


# --- export ------------------------------------------------------------------------------------

def _args_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    parser.add_argument("--format", choices=("litert", "saved_model", "onnx"), default="litert",
                        help="litert (TFLite, default), saved_model (TF Serving) or onnx")
    parser.add_argument("--quantize", choices=("auto", "none", "float16", "int8", "int8_dynamic"),
                        default="auto",
                        help="litert only: auto (default): float32 LiteRT and ONNX plus the "
                             "quantized candidates, measured, and one chosen for prediction only "
                             "when faster and as accurate; none: float32 only, final; float16, "
                             "int8 (calibrated on training images) or int8_dynamic: that file")
    parser.add_argument("--model", choices=("best", "final"), default="best",
                        help="best.keras (default) or the final model.keras")
    parser.add_argument("--max-images", type=_arg_type("N", _int_at_least(1)), default=1000,
                        metavar="N", help="test images compared with the Keras model "
                                          "(default 1000)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the comparison with the Keras model (e.g. without the data)")


def _cmd_export(args: argparse.Namespace) -> int:
    from workbench.deploy.export import ExportError, export, export_fast
    from workbench.runs import RunUnfinished

    quantize = None if args.quantize in ("auto", "none") else args.quantize
    try:
        if args.format == "litert" and quantize is None:  # float32: both runtimes, timed
            auto = args.quantize == "auto" and not args.no_check  # candidates need the data
            result = export_fast(args.run_dir, model=args.model, check=not args.no_check,
                                 max_images=args.max_images, quantize="auto" if auto else None)
        else:
            result = export(args.run_dir, format=args.format, quantize=quantize,
                            model=args.model, check=not args.no_check,
                            max_images=args.max_images)
    except RunUnfinished as error:  # in the command's words
        raise UsageError(error.advice(resume=_finish_command(args.run_dir))) from None
    except ExportError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(result.format(), end="")
    return EXIT_OK


# --- serve -------------------------------------------------------------------------------------

def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise ValueError("must be a TCP port, 0-65535")
    return value


def _host(text: str) -> str:
    """An address or a host name that resolves (checked before the model loads)."""
    import socket

    try:
        socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(f"must be an address of this machine or a name that resolves to one "
                         f"({getattr(error, 'strerror', None) or error})") from None
    return text


def _args_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    parser.add_argument("--host", type=_arg_type("HOST", _host), default="127.0.0.1",
                        metavar="HOST",
                        help="address to listen on (default 127.0.0.1, this machine only; "
                             "0.0.0.0 to reach it from a phone on the same network)")
    parser.add_argument("--port", type=_arg_type("PORT", _port), default=8000, metavar="PORT",
                        help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=_arg_type("MB", _positive("megabytes")),
                        default=20.0, metavar="MB",
                        help="largest upload accepted, in MiB (default 20)")
    parser.add_argument("--model", default="best", choices=("best", "final"),
                        help="the best checkpoint by validation accuracy, or the final model "
                             "(default best)")
    limits = parser.add_argument_group(
        "limits", "what one client may cost, so that none can take the service down")
    limits.add_argument("--decode-budget-mb", type=_arg_type("MB", _positive("megabytes")),
                        default=512.0, metavar="MB",
                        help="memory for decoding images, shared by all requests, which wait "
                             "for it in turn (default 512)")
    limits.add_argument("--max-pixels", type=_arg_type("N", _int_at_least(1)), metavar="N",
                        help="largest image accepted (default: what the decode budget can "
                             "decode, at most 64000000)")
    limits.add_argument("--decode-wait", type=_arg_type("S", _positive("seconds")),
                        default=10.0, metavar="S",
                        help="longest wait for decoding memory before a 503 (default 10)")
    limits.add_argument("--upload-timeout", type=_arg_type("S", _positive("seconds")),
                        default=30.0, metavar="S",
                        help="time a client has to send its request headers, then its body; "
                             "stalled connections are closed (default 30)")
    limits.add_argument("--max-connections", type=_arg_type("N", _int_at_least(2)),
                        default=128, metavar="N",
                        help="open connections at once, lowered to fit the open-file limit; at "
                             "most half may be uploads, so /api/health keeps answering "
                             "(default 128)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from workbench.deploy.serve import serve

    def announce(url: str) -> None:
        print(f"Serving {args.run_dir} at {url} (API docs at {url}docs; Ctrl+C to stop)",
              flush=True)

    serve(args.run_dir, host=args.host, port=args.port, model=args.model,
          max_upload_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)),
          decode_budget_bytes=int(args.decode_budget_mb * 1024 * 1024),
          max_pixels=args.max_pixels, decode_wait=args.decode_wait,
          upload_timeout=args.upload_timeout, max_connections=args.max_connections,
          on_ready=announce)
    return EXIT_OK


# --- sweep -------------------------------------------------------------------------------------

def _literal(text: str):
    """A Python literal (16, 0.001, True, [0, 1], 'a b'), or the text itself as a string."""
    import ast

    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _top_level_split(text: str) -> list[str]:
    """Splits at commas outside brackets and quotes: '[0,1],[2]' -> ['[0,1]', '[2]']."""
    parts, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return parts + [text[start:]]


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier() or not value.strip():
        raise ValueError("must be NAME=VALUE with a parameter name, e.g. batch_size=32")
    return name.strip(), value


def _sweep_param(text: str) -> tuple[str, list]:
    name, values = _name_value(text)
    parts = _top_level_split(values)
    if any(not part.strip() for part in parts):
        raise ValueError("must be NAME=V1,V2,... without empty values")
    return name, [_literal(part) for part in parts]


def _setting(text: str) -> tuple[str, object]:
    name, value = _name_value(text)
    return name, _literal(value)


def _args_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK",
                        help="a notebook with a 'parameters' cell that takes run_dir and writes "
                             "run_dir/metrics.json")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the sweep folder: NAME.ipynb and NAME/ per combination, "
                             "results.csv, results.png")
    parser.add_argument("--param", type=_arg_type("NAME=V1,V2", _sweep_param), action="append",
                        required=True, metavar="NAME=V1,V2",
                        help="a swept parameter and its values (repeatable); values are Python "
                             "literals or plain strings; lists as '[0,1],[2]'")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--grid", action="store_true",
                      help="every combination of the values (the default)")
    mode.add_argument("--zip", action="store_true",
                      help="the i-th values of every --param together (equal lengths)")
    parser.add_argument("--set", type=_arg_type("NAME=VALUE", _setting), action="append",
                        default=[], metavar="NAME=VALUE",
                        help="a parameter passed unchanged to every run (repeatable); relative "
                             "paths are relative to the notebook's folder")
    parser.add_argument("--workers", type=_arg_type("N", _int_at_least(1)), metavar="N",
                        help="runs at a time: local processes (default min(2, CPUs); 1 for "
                             "timing studies) or SLURM jobs with --cluster slurm")
    parser.add_argument("--cluster", metavar="ADDRESS|slurm",
                        help="run on Dask: a scheduler address (tcp://host:8786) or 'slurm' for "
                             "a dask-jobqueue SLURM cluster; paths must be shared with it")
    parser.add_argument("--cluster-option", type=_arg_type("KEY=VALUE", _setting),
                        action="append", default=[], metavar="KEY=VALUE",
                        help="a SLURMCluster option with --cluster slurm, e.g. cores=8, "
                             "memory=32GB, walltime=02:00:00 (repeatable)")
    parser.add_argument("--metric", metavar="NAME",
                        help="metric drawn in results.png (default test_accuracy if measured)")
    parser.add_argument("--kernel", default="python3", metavar="NAME",
                        help="the Jupyter kernel that runs the notebook (default python3)")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from workbench.studies.sweep import RESULTS_FILE, combination_name, combinations, sweep

    for option, pairs in (("--param", args.param), ("--set", args.set)):
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UsageError(f"{option} names each parameter once, received {repeated} twice")
    out, mode = Path(args.out), "zip" if args.zip else "grid"
    try:
        result = sweep(args.notebook, out, dict(args.param), mode=mode,
                       fixed=dict(args.set) or None, workers=args.workers,
                       cluster=args.cluster, cluster_options=dict(args.cluster_option) or None,
                       kernel_name=args.kernel)
    except KeyboardInterrupt:
        print(f"interrupted: the finished runs are in {out / RESULTS_FILE}; run the same command "
              "again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    # results.csv also keeps the rows of earlier sweeps into DIR over other values
    ran = {combination_name(values) for values in combinations(dict(args.param), mode=mode)}
    this_sweep = result.table[result.table["name"].isin(ran)]
    failed = int((this_sweep["status"] != "ok").sum())
    wrote = [str(out / RESULTS_FILE)]
    metric = args.metric or result.key_metric()
    if metric is not None and not result.ok.empty:
        result.plot(metric).savefig(out / "results.png", dpi=100)
        wrote.append(str(out / "results.png"))
    print(f"{len(this_sweep) - failed} ok, {failed} failed; wrote {', '.join(wrote)}")
    return EXIT_FAILED if failed else EXIT_OK


# --- registry ----------------------------------------------------------------------------------

# verb -> (one-line help, adds its arguments, runs it and returns the exit status), in the
# order of the workflow: a bare `workbench` lists them so, starting with split
VERBS = {
    "split": ("scan a dataset, reject bad files and write train/val/test splits",
              _args_split, _cmd_split),
    "train": ("fine-tune a pretrained network on a split dataset into a run directory",
              _args_train, _cmd_train),
    "evaluate": ("evaluate a run's model on a split: top-1/top-5, per-class report, confusion, "
                 "worst predictions", _args_evaluate, _cmd_evaluate),
    "predict": ("classify images with a trained run: top-k classes and probabilities",
                _args_predict, _cmd_predict),
    "export": ("export a run's model as LiteRT (TFLite), SavedModel or ONNX, checked against "
               "the Keras model", _args_export, _cmd_export),
    "serve": ("serve a run's model: a phone-friendly page and a JSON API on http://HOST:PORT/",
              _args_serve, _cmd_serve),
    "lr-find": ("the learning-rate range test of train's model on the training split: a "
                "suggested base_lr (writes no run)", _args_lr_find, _cmd_lr_find),
    "sweep": ("run a parameterised notebook over a grid of values (papermill, local processes "
              "or Dask) and collect each run's metrics.json into results.csv", _args_sweep,
              _cmd_sweep),
    "monitor": ("run a command while recording GPU, CPU and RAM use to DIR/resources.csv",
                _args_monitor, _cmd_monitor),
    "plot-resources": ("draw a run's resources.csv as an nvidia-smi-style dashboard",
                       _args_plot_resources, _cmd_plot_resources),
    "sample-data": ("write the offline sample datasets (real digits, rendered letters, the "
                    "cluttered-digits target task)", _args_sample_data, _cmd_sample_data),
}


def _start_workers(args: argparse.Namespace, argv: list[str]) -> None:
    """Joins the other workers of ``train --distributed``, before the backend starts; a worker
    that stops mid-run makes the others exit with the command that resumes (``argv`` again)."""
    import shlex

    from workbench._device import resolve_strategy

    again = [word for word in argv if word != "--overwrite"]
    again += [] if "--resume" in again else ["--resume"]
    resolve_strategy("distributed", join_timeout=args.join_timeout,
                     resume_hint=f"continue on every worker with: "
                                 f"{shlex.join(['workbench', *again])}")


# Verbs that always run Keras; predict, serve and monitor must start without TensorFlow.
STARTS_KERAS = ("train", "lr-find", "evaluate", "export")


def build_parser() -> argparse.ArgumentParser:
    """The ``workbench`` parser with one sub-command per entry of :data:`VERBS`."""
    from workbench import __version__

    parser = _Parser(prog="workbench",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="A notebook-first transfer-learning workbench. The verbs below "
                                 "follow the workflow:\nsplit a folder of images, train on the "
                                 "split, evaluate the run, then predict, export or serve it.",
                     epilog="No images yet? 'workbench sample-data' writes small datasets to "
                            "start with.\n'workbench VERB --help' explains a verb's options.")
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True,
                                  parser_class=_Parser)
    for verb, (summary, add_arguments, run) in VERBS.items():
        sub = verbs.add_parser(verb, help=summary, description=summary)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


# What an OSError from the system means, in words, for its path (not "[Errno 17] File exists")
_OS_ERRORS = {
    FileExistsError: "already exists",
    NotADirectoryError: "lies under a file, where a folder is needed",
    FileNotFoundError: "does not exist",
    IsADirectoryError: "is a folder, where a file is needed",
    PermissionError: "may not be written or read (permission denied)",
}


def _in_words(error: OSError, args: argparse.Namespace) -> str:
    """An OSError the system raised on a path (it has an errno and a file name) in one line:
    what is wrong with which path and which argument gave that path."""
    path = os.fsdecode(error.filename)
    what = next((words for kind, words in _OS_ERRORS.items() if isinstance(error, kind)),
                (error.strerror or "cannot be used").lower())
    if isinstance(error, FileExistsError) and Path(path).is_file():
        what = "is a file, where a folder is needed"
    if isinstance(error, NotADirectoryError):  # name the file in the way
        blocker = next((str(parent) for parent in Path(path).parents if parent.is_file()), None)
        what = f"lies under {blocker!r}, a file, where a folder is needed" if blocker else what
    said = f"{path!r} {what}"
    given = _argument_of(path, args)
    if given is None:
        return said
    name, value = given
    return f"{name} {said}" if Path(value) == Path(path) else f"{name} {value!r}: {said}"


def _argument_of(path: str, args: argparse.Namespace) -> tuple[str, str] | None:
    """The option (``--out``) or positional (``RUN_DIR``) whose value is ``path``, a folder
    holding it or a path inside it, with that value; or None."""
    target = Path(path)
    for dest, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and (
                    Path(item) == target or Path(item) in target.parents
                    or target in Path(item).parents):
                return _ARGUMENT_NAMES.get(dest, f"--{dest.replace('_', '-')}"), item
    return None


_ARGUMENT_NAMES = {"run_dir": "RUN_DIR", "data": "DATA", "images": "IMAGE",
                   "notebook": "NOTEBOOK"}  # the positionals, as the usage lines name them

# The library's keywords that a verb's options give under another name (the others are their
# options' names: val= is --val, cut_at= is --cut-at).
_KEYWORDS = {
    "split": {"list_file": "--list", "labels_file": "--labels"},
    "train": {"run_dir": "--run-dir", "lr_mult_rules": "--lr-mult",
              "decay_mult_rules": "--decay-mult"},
    "lr-find": {"lr_mult_rules": "--lr-mult", "decay_mult_rules": "--decay-mult"},
    "predict": {"list_file": "--list", "list_root": "--root", "out": "--out"},
    "sweep": {"params": "--param", "fixed": "--set", "cluster_options": "--cluster-option",
              "kernel_name": "--kernel"},
}


def _in_flags(message: str, args: argparse.Namespace) -> str:
    """A library message in the command's words: the keywords it starts with (``val must
    ...``, ``val + test must ...``) and each ``keyword=value`` of an option of this verb become
    ``--val must ...``, ``--val + --test must ...`` and ``--val value`` (a positional's name:
    ``DATA``)."""
    names = {dest: _ARGUMENT_NAMES.get(dest, f"--{dest.replace('_', '-')}")
             for dest in vars(args) if dest not in ("verb", "run")}
    names.update(_KEYWORDS.get(args.verb, {}))
    lead = re.match(r"\w+(?: \+ \w+)*(?= )", message)
    if lead:
        terms = [names.get(term, term) for term in lead.group().split(" + ")]
        message = " + ".join(terms) + message[lead.end():]
    for keyword, flag in names.items():
        message = re.sub(rf"(?<![\w\-.'/]){re.escape(keyword)}=", f"{flag} ", message)
    return message


def _user_path_error(error: BaseException, args: argparse.Namespace) -> bool:
    """Whether ``error`` is the system's refusal of a path the user gave (not found, not a
    folder, a folder, permission denied, already exists), not a failure such as a full disk."""
    return (isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                               PermissionError, FileExistsError))
            and error.errno is not None and error.filename is not None
            and _argument_of(os.fsdecode(error.filename), args) is not None)


def _traceback_if_debugging(error: BaseException) -> None:
    """With ``WORKBENCH_DEBUG=1``, every error's traceback before its line."""
    if os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0"):
        traceback.print_exception(error)


def _failed(verb: str, error: BaseException) -> int:
    """Reports a failure in one line (after the traceback with ``WORKBENCH_DEBUG=1``)."""
    _traceback_if_debugging(error)
    print(f"workbench {verb}: failed: {type(error).__name__}: {one_line(error)} "
          f"({DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Runs ``workbench VERB ...``; returns the exit status (the console-script entry point)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    if not (sys.argv[1:] if argv is None else argv):  # a bare `workbench`: what it can do
        build_parser().print_help()
        return EXIT_USAGE
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a one-line usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        if args.verb in STARTS_KERAS:  # without TensorFlow's start-up lines on the terminal
            start_keras_quietly(
                first=(lambda: _start_workers(args, sys.argv[1:] if argv is None else argv))
                if getattr(args, "distributed", False) else None)
        return args.run(args)
    except UsageError as error:  # the user's mistake, in the command's words
        _traceback_if_debugging(error)
        print(f"error: {_in_flags(one_line(error), args)}", file=sys.stderr)
        # one that shows only at run time (weights that cannot be downloaded) is a failure of
        # the run, not of the command line
        return EXIT_FAILED if isinstance(error, RuntimeError) else EXIT_USAGE
    except OSError as error:
        if not _user_path_error(error, args):  # a full disk, a lost mount: a failure
            return _failed(args.verb, error)
        _traceback_if_debugging(error)
        print(f"error: {_in_words(error, args)}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as error:  # the workers did not all join: the message names them
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"workbench {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # anything else failed at run time: one line, not a traceback
        return _failed(args.verb, error)


if __name__ == "__main__":
    sys.exit(main())
