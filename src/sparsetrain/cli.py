"""The ``sparsetrain`` command line: ``train``, ``sweep``, ``compare``, ``report`` and ``demo``.

The command line is a user of the library: it prints to the terminal; the library only logs.

- ``train``: one run from flags and/or a TOML/YAML/JSON config file, into a run directory
  (``config.json``, ``metrics.jsonl``, ``summary.json``, atomic checkpoints); ``--resume``
  continues a killed run exactly.
- ``sweep``: a grid (methods × densities × seeds × any setting), one run directory each;
  finished runs are skipped, killed ones resumed, failed ones reported without stopping it.
- ``compare``: the quick form of a sweep (one JSON result per run, no checkpoints).
- ``report``: tables (markdown, CSV) and plots from any of the above.
- ``demo``: the curated comparison behind ``make demo``.

``sweep``, ``compare`` and ``demo`` share one grid runner (:mod:`sparsetrain.experiments.grid`)
and differ only in the order of the runs and the layout of their results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import time
import traceback
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

from . import registry
from ._util import parse_value
from .errors import InputError, InputWarning, ScheduleWarning
from .experiments.configfile import is_run_record, load_config, run_settings
from .experiments.paired import check_baseline
from .experiments.report import (  # aggregate, format_table: re-exported for users of the CLI module
    SUP_SUFFIX, aggregate, describe_found, describe_runs, format_table, load_runs, loaded_commit, make_plots, one_setup,
    write_report,
)

__all__ = ["main", "format_table", "aggregate", "load_config", "sweep"]

# help for every RunConfig field (train and sweep generate one flag per field from this)
FIELD_HELP = {
    "model": "model name (lenet300-100/mlp, lenet5, lenet5-caffe, vgg11/16/19, resnet20/32/56, resnet18/34/50, "
             "wrn-22-2; gpt-mini, gpt-micro for text datasets)",
    "dataset": "dataset (fashion-mnist, mnist, cifar10, cifar100, digits, synthetic; text:stdlib, a byte-level "
               "corpus of Python's standard library, for the gpt models)",
    "method": "dense, or an algorithm name with optional arguments, e.g. rigl, dstee:c=0.01:bonus=ucb, set-itop",
    "density": "fraction of prunable weights kept (0.05 = 95%% sparsity)",
    "distribution": "layer-wise densities: erk, er or uniform",
    "epochs": "training epochs",
    "batch_size": "examples per micro-batch",
    "optimizer": "sgd, adam or adamw",
    "lr": "initial learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum (SGD)",
    "weight_decay": "weight decay",
    "schedule": "learning-rate schedule per step: cosine (to 0), multistep, constant",
    "milestones": "multistep: comma-separated fractions of training where the lr is multiplied by --gamma",
    "gamma": "multistep: lr factor at each milestone",
    "warmup_epochs": "linear warm-up from lr/steps to lr over this many epochs",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "accumulate": "micro-batches per optimizer step (gradient accumulation)",
    "amp": "mixed precision: none, bf16 (CPU or GPU autocast), fp16 (CUDA, with a GradScaler)",
    "channels_last": "channels_last memory format for the model and images",
    "device": "torch device: cpu, cuda, cuda:1, ...",
    "augment": "augmentation: none, crop-flip, crop, flip (default: crop-flip for CIFAR, none otherwise)",
    "seed": "random seed (model init, mask, data order)",
    "threads": "torch CPU threads (default: torch's choice)",
    "data_root": "directory holding the dataset files (see the error message of a missing dataset; default: the "
                 "dataset's usual places)",
    "train_subset": "use only the first N training examples (default: all)",
    "checkpoint_every": "also checkpoint every N optimizer steps (0: at the end of each epoch only)",
    "execution": "Linear layers: masked (dense kernels), sparse (CSR, cost follows nnz), auto (sparse where "
                 "measured faster on this machine for the layer's shape, density and batch; cached)",
    "kernels": "CPU kernels of truly sparse layers: auto (per operation and shape the faster of the compiled "
               "kernels and torch's, measured once and cached), native (compiled or an error), torch",
    "sup_tickets": "Sup-tickets: superpose tickets from cyclic final epochs (same epoch budget)",
    "cycles": "Sup-tickets: number of tickets K (default: from --cycle-ratio)",
    "cycle_epochs": "Sup-tickets: epochs per cycle C",
    "cycle_ratio": "Sup-tickets: share of the epochs spent in cycles",
    "ticket_lr": "Sup-tickets: low,high learning rate of the triangular cycle",
    "ticket_drop": "Sup-tickets: share of active weights replaced at each cycle's start",
    "ticket_grow": "Sup-tickets: growth at each cycle's start: gradient, random, algorithm",
    "ticket_beta": "Sup-tickets: exponential-average factor (default: cumulative average)",
    "name": "the run's label in tables (default: the method, +sup-tickets)",
}


def _run_fields():
    from .experiments.config import RunConfig

    return [f for f in fields(RunConfig) if f.name != "algorithm_kwargs"]


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field; only flags given on the command line override the config file."""
    from .experiments.config import RunConfig

    defaults = RunConfig()
    group = parser.add_argument_group("run settings (override the config file)")
    for f in _run_fields():
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        help_ = FIELD_HELP.get(f.name, f.name)
        help_ += "" if "default:" in help_ else f" (default: {shown})"  # a help text may say the default its own way
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_)
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_)  # read by RunConfig
        else:
            typ = type(default) if default is not None else (float if f.name == "ticket_beta" else
                                                             int if f.name in ("threads", "train_subset", "cycles")
                                                             else str)
            group.add_argument(flag, dest=f.name, type=typ, default=argparse.SUPPRESS, help=help_)
    group.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                       help="an algorithm hyper-parameter, e.g. --hp update_interval=200 --hp c=0.01 (repeatable)")


def _check_out(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as an output directory: an :class:`InputError` if it, or a folder above it, is a
    file, or if it cannot be created or written to (checked before anything is written)."""
    out = Path(path)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == out else f" (it would be inside {probe}, a file)"
        raise InputError(f"{flag} {out}: {probe} is a file, not a directory{where}; choose a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: {probe} is not writable (permissions); choose a directory you can write to")
    return out


def _resolve(args: argparse.Namespace, file_cfg: dict[str, Any]) -> dict[str, Any]:
    """Settings: defaults < config file < command-line flags."""
    names = {f.name for f in _run_fields()}
    values = {k: v for k, v in file_cfg.items() if k not in ("algorithm", "grid")}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"unknown setting(s) in the config file: {unknown}; valid: {', '.join(sorted(names))} "
                         "(algorithm hyper-parameters go in an [algorithm] table)")
    values.update({k: v for k, v in vars(args).items() if k in names})
    algo = {str(k).replace("-", "_"): v for k, v in file_cfg.get("algorithm", {}).items()}
    algo.update(_hp(getattr(args, "hp", [])))
    if algo:
        values["algorithm_kwargs"] = algo
    return values


def _hp(items: Sequence[str]) -> dict[str, Any]:
    """The algorithm hyper-parameters of repeated ``--hp KEY=VALUE`` flags."""
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--hp takes KEY=VALUE, e.g. --hp update_interval=200, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def _numbers(flag: str, text: str, kind: type, count: Optional[int] = None) -> list:
    """A comma-separated list of numbers from a flag; an :class:`InputError` naming the flag otherwise."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = None
    if not values or (count is not None and len(values) != count):
        what = f"{count} comma-separated" if count else "comma-separated"
        raise InputError(f"{flag} takes {what} {'integers' if kind is int else 'numbers'}, e.g. "
                         f"{flag} {'0,1,2' if kind is int else '0.1,0.05'}, got {text!r}")
    return values


def _echo(text: str, end: str = "\n") -> None:
    print(text, end=end, flush=True)


# ---------------------------------------------------------------------------- compare and sweep
def _compare(methods, densities, seeds, base: dict[str, Any], out: Path, quiet: bool = False,
             resume: bool = False, baseline: Optional[str] = None) -> list[dict]:
    """``compare``/``demo``: dense first, then density × method × seed; ``out/runs/<tag>.json`` each."""
    from .experiments.grid import ResultFiles, plan_runs, run_grid

    plan = plan_runs(methods, densities, seeds, base, dense_first=True)
    _check_plan_baseline(baseline, plan)
    results, _ = run_grid(plan, ResultFiles(out), skip_finished=resume, echo=None if quiet else _echo)
    return results


_BASELINE_HELP = ("the method (table label) the paired table compares every other with, by seed (default: rigl "
                  "when it was run; dense pairs with every density)")


def _check_plan_baseline(baseline: Optional[str], plan) -> None:
    """A ``--baseline`` no planned run has is an error before anything trains."""
    if baseline is not None:
        from .experiments.config import RunConfig

        check_baseline(baseline, [RunConfig.from_settings(p.settings).label for p in plan])


def _methods(text: str) -> list[str]:
    """The comma-separated ``--methods``; an :class:`InputError` if there are none."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    if not methods:
        raise InputError(f"--methods takes comma-separated methods, e.g. --methods dense,set,rigl, got {text!r}")
    return methods


def _grid_values(items: Sequence[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--grid takes KEY=V1,V2,..., e.g. --grid lr=0.1,0.05, got {item!r}")
        k, v = item.split("=", 1)
        grid[k.strip().replace("-", "_")] = [parse_value(x.strip()) for x in v.split(",") if x.strip()]
    return grid


def sweep(base: dict[str, Any], methods: Sequence[str], densities: Sequence[float], seeds: Sequence[int],
          grid: dict[str, list[Any]], out: Path, progress: bool = False, jobs: int = 1,
          seed_major: bool = False, baseline: Optional[str] = None) -> tuple[list[dict], list[dict], int]:
    """Run the grid into ``out/runs/<tag>/`` (``jobs`` runs at once, every arm of a seed before the
    next seed with ``seed_major``); returns (results, failures, how many runs it trained, the rest
    having been finished before). Never stops on a failed run. Says when ``out/runs`` holds finished
    runs outside this grid (an earlier sweep's), which its report leaves out."""
    from .experiments.grid import RunDirectories, plan_runs, run_grid

    plan = plan_runs(methods, densities, seeds, base, grid, seed_major=seed_major)
    _check_plan_baseline(baseline, plan)
    layout = RunDirectories(out)
    before = sum(layout.finished(item.tag) is not None for item in plan)
    others = {p.parent.name for p in (out / "runs").glob("*/summary.json")} - {item.tag for item in plan}
    if others:
        print(f"sparsetrain sweep: {out / 'runs'} also holds {len(others)} finished run(s) from another sweep; "
              f"this sweep's results.md covers only its own {len(plan)}. For one report of all: sparsetrain "
              f"report {out / 'runs'} --out {out}", file=sys.stderr)
    results, failures = run_grid(plan, layout, keep_going=True, progress=progress and jobs == 1, jobs=jobs,
                                 echo=_echo)
    return results, failures, len(results) - before


# ---------------------------------------------------------------------------- main
def _report_files(out: Path, results, command: str, title: str, protocol: str, wall: Optional[float],
                  commit: Optional[str] = None, trained: Optional[int] = None,
                  baseline: Optional[str] = None) -> tuple[str, list[Path]]:
    table = write_report(out, results, command, title, protocol, wall, commit, trained, baseline)
    try:
        import matplotlib  # noqa: F401 - only to say why there are no plots
    except ImportError:
        print(f"sparsetrain: no plots in {out}: they need matplotlib (pip install matplotlib, or the plot extra)",
              file=sys.stderr)
        return table, []
    return table, make_plots(results, out, title)


def _mark_slow(table: str, out: Path, results) -> str:
    """Mark the rows of runs that took more than twice the median run's wall time (a one-off
    slowdown, e.g. a busy machine) in the table and in ``results.md``, with a note under the table."""
    from .experiments.grid import slow_runs

    slow = slow_runs(results)
    if not slow:
        return table
    lines = table.splitlines()
    notes = []
    for r, ratio in slow:
        label, t = r.get("label", r["config"]["method"]), r["wall_time_s"]
        for i, line in enumerate(lines):
            if line.startswith(f"| {label} |") and line.rstrip().endswith(f"| {t:.1f} |"):
                lines[i] = line.rstrip()[: -len(f" {t:.1f} |")] + f" {t:.1f} (slow) |"
        notes.append(f"(slow) {label}: {t:.0f} s, {ratio:.1f}× the median run; a one-off slowdown (busy "
                     "machine?): its time is not comparable with the others'")
    marked = "\n".join(lines) + "\n\n" + "\n".join(notes)
    md = out / "results.md"
    if md.exists():
        md.write_text(md.read_text().replace(table, marked))
    return marked


def _print_table(table: str, out: Path, plots: Sequence[Path]) -> None:
    print()
    print(table)
    print(f"\ntables: {out.resolve()}/results.md (and results.csv)")
    if plots:
        print("plots:  " + ", ".join(str(p.resolve()) for p in plots))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it or there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    parser = argparse.ArgumentParser(prog="sparsetrain", description="Dynamic sparse training for PyTorch.",
                                     formatter_class=fmt)
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's messages (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", formatter_class=fmt,
                          help="quick comparison on Fashion-MNIST: dense, static, SET, RigL, DST-EE, RigL+Sup-tickets")
    demo.add_argument("--epochs", type=int, default=10, help="epochs per run (at least 3)")
    demo.add_argument("--density", type=float, default=0.05, help="fraction of weights kept (0.05 = 95%% sparsity)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--model", default="lenet300-100", help="model (lenet5-caffe is ~20x slower on 2 cores)")
    demo.add_argument("--out", default="runs/demo", help="output directory for the tables, plots and per-run JSON")
    demo.add_argument("--data-root", default=None, help="directory with the Fashion-MNIST idx files")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch threads per run (default: torch's choice; 1 on a machine busy with other work)")

    train = sub.add_parser("train", formatter_class=fmt, help="one training run into a run directory")
    train.add_argument("--config", default=None, help="TOML/YAML/JSON file of run settings (flags override it)")
    train.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, summary.json, checkpoints)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    train.add_argument("--overwrite", action="store_true", help="discard a run already in --out and start over")
    train.add_argument("--extend", action="store_true",
                       help="train the (finished) run in --out up to a larger --epochs, same settings otherwise; the "
                            "lr and sparsifier schedules are re-planned for the new length from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs (needs tensorboard)")
    train.add_argument("--nproc", type=int, default=1,
                       help="processes for DistributedDataParallel (launched with torchrun; --batch-size is the global "
                            "batch, divisible by nproc)")
    _add_run_flags(train)

    sw = sub.add_parser("sweep", formatter_class=fmt,
                        help="a grid of runs (methods × densities × seeds × settings), resumable; then a report")
    sw.add_argument("--config", default=None, help="TOML/YAML/JSON file: base settings, [algorithm], [grid] lists")
    sw.add_argument("--out", required=True, help="sweep directory (runs/<tag>/ per run, results.md, plots)")
    sw.add_argument("--methods", default="dense,static,set,rigl", help="comma-separated methods (X+sup-tickets allowed)")
    sw.add_argument("--densities", default="0.1,0.05,0.02", help="comma-separated densities")
    sw.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="also vary a setting or algorithm hyper-parameter (repeatable), e.g. --grid lr=0.1,0.05")
    sw.add_argument("--title", default="Sweep", help="title of results.md and the plots")
    sw.add_argument("--protocol", default="see the command", help="protocol line for results.md")
    sw.add_argument("--baseline", default=None, help=_BASELINE_HELP)
    sw.add_argument("--progress", action="store_true", help="progress bars for each run (with --jobs 1)")
    sw.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, each in its own process with cpu_count/jobs threads (unless "
                         "--threads is given); e.g. --jobs 2 --threads 1 on 2 cores")
    sw.add_argument("--seed-major", action="store_true",
                    help="run every method/density/grid value of a seed before the next seed, so paired "
                         "comparisons can be read while a long sweep is still running")
    _add_run_flags(sw)

    cmp_ = sub.add_parser("compare", formatter_class=fmt,
                          help="quick sweep: one JSON result per run (no checkpoints); writes results.md/csv and plots")
    cmp_.add_argument("--methods", default="dense,static,set,rigl", help="comma-separated methods (X+sup-tickets allowed)")
    cmp_.add_argument("--densities", default="0.1,0.05,0.02", help="comma-separated densities")
    cmp_.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    cmp_.add_argument("--model", default="lenet300-100", help="model name")
    cmp_.add_argument("--dataset", default="fashion-mnist", help="dataset name")
    cmp_.add_argument("--epochs", type=int, default=30, help="epochs per run")
    cmp_.add_argument("--batch-size", type=int, default=128, help="batch size")
    cmp_.add_argument("--lr", type=float, default=0.1, help="initial learning rate (cosine to 0)")
    cmp_.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    cmp_.add_argument("--update-interval", type=int, default=None,
                      help="ΔT in optimizer steps for dynamic methods (default: each method's own)")
    cmp_.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                      help="an algorithm hyper-parameter for every method, e.g. --hp drop_fraction=0.5 (repeatable)")
    cmp_.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    cmp_.add_argument("--out", required=True, help="output directory")
    cmp_.add_argument("--title", default="Accuracy comparison", help="title of results.md")
    cmp_.add_argument("--protocol", default="fmnist-mlp (shared/spec/BENCHMARK.md)", help="protocol line for results.md")
    cmp_.add_argument("--baseline", default=None, help=_BASELINE_HELP)
    cmp_.add_argument("--data-root", default=None, help="dataset directory")
    cmp_.add_argument("--resume", action="store_true", help="skip runs whose result already exists in --out")
    cmp_.add_argument("--sup-tickets", action="store_true",
                      help=f"add Sup-tickets to every sparse method (or name single methods as e.g. rigl{SUP_SUFFIX})")
    cmp_.add_argument("--cycles", type=int, default=None, help="Sup-tickets: number of tickets K (default: from --cycle-ratio)")
    cmp_.add_argument("--cycle-epochs", type=int, default=8, help="Sup-tickets: cycle length C in epochs")
    cmp_.add_argument("--cycle-ratio", type=float, default=0.1, help="Sup-tickets: share of the epochs spent in cycles")
    cmp_.add_argument("--ticket-lr", default="0.001,0.005", help="Sup-tickets: triangular cycle's low,high learning rate")

    rep = sub.add_parser("report", formatter_class=fmt,
                         help="aggregate run results from directories into results.md/csv and plots")
    rep.add_argument("dirs", nargs="+", help="directories searched recursively for run results (JSON, summary.json)")
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--title", default="Accuracy comparison", help="title of results.md and the plots")
    rep.add_argument("--protocol", default=None,
                     help="protocol line (default: the runs' model, dataset, epochs, batch and optimizer)")
    rep.add_argument("--baseline", default=None, help=_BASELINE_HELP)
    rep.add_argument("--command-note", default="", help="the command(s) that produced the runs, for results.md")
    rep.add_argument("--methods", default=None, help="only these methods (comma-separated table labels; default: all)")
    rep.add_argument("--densities", default=None, help="only these densities (comma-separated; dense is always kept)")
    rep.add_argument("--dataset", default=None, help="only the runs on this dataset (runs of different datasets or "
                     "models are never averaged together)")
    rep.add_argument("--model", default=None, help="only the runs of this model")
    parser.set_defaults(_subcommands={"demo": demo, "train": train, "sweep": sw, "compare": cmp_, "report": rep})
    return parser


#: What the command line reports as one ``error:`` line (exit code 2): input the library refused
#: (:class:`~sparsetrain.errors.InputError`, raised by validation before any run starts and by
#: checkpoint loading), a missing file or directory, an existing run directory, a missing
#: optional package, and a run in which no topology update fits. Everything else is a bug and
#: keeps its traceback.
USER_ERRORS = (InputError, FileNotFoundError, FileExistsError, ImportError, ScheduleWarning)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``sparsetrain`` / ``python -m sparsetrain``."""
    args, extra = _build_parser().parse_known_args(argv)
    subcommand = vars(args).pop("_subcommands")[args.command]
    if extra:  # said by the subcommand's parser (its usage, its name), with the closest of its flags
        flags = sorted(set(re.findall(r"--[\w-]+", subcommand.format_usage())))
        near = next((registry._near(e.split("=")[0], flags) for e in extra if e.startswith("-")), "")
        if {"-v", "--verbose"} & set(extra):
            near = " (-v/--verbose goes before the subcommand: sparsetrain -v " + args.command + " ...)"
        subcommand.error(f"unrecognized arguments: {' '.join(extra)}{near}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    command = "sparsetrain " + shlex.join(sys.argv[1:] if argv is None else argv)  # copy-pasteable
    start = time.perf_counter()
    commit = loaded_commit()  # the code the runs use, even if the checkout moves on meanwhile
    with warnings.catch_warnings():
        # a library warning is one line; a run in which no topology update fits is refused
        warnings.showwarning = lambda message, category, *rest, **kw: print(
            f"sparsetrain {args.command}: warning: {message}", file=sys.stderr, flush=True)
        warnings.simplefilter("always", InputWarning)
        warnings.simplefilter("error", ScheduleWarning)
        try:
            if args.command == "train" and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
                return _launch(args.nproc, list(sys.argv[1:] if argv is None else argv))
            return _dispatch(args, command, start, commit)
        except USER_ERRORS as e:
            if isinstance(e, ScheduleWarning):
                e = f"{e} (on the command line: --hp update_interval=N, --hp end=..., or more --epochs)"
            print(f"sparsetrain {args.command}: error: {e}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
            return 2
        except KeyboardInterrupt:
            again = {"train": "the same command with --resume continues it exactly from its last checkpoint",
                     "sweep": "the same command continues it (finished runs are skipped, a run stopped midway "
                              "resumes from its last checkpoint)",
                     "compare": "the same command with --resume skips the finished runs"}.get(args.command, "")
            print(f"\nsparsetrain {args.command}: interrupted" + (f"; {again}" if again else ""), file=sys.stderr)
            return 130
        except Exception:
            print(f"sparsetrain {args.command}: internal error (a bug in sparsetrain, not in your input; "
                  "please report it with this traceback):", file=sys.stderr)
            raise


def _launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun (PyTorch's own launcher) with ``nproc`` processes."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sparsetrain", *rest]
    print("launching: " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _dispatch(args, command: str, start: float, commit: str) -> int:
    if args.command == "demo":
        if args.epochs < 3:
            raise InputError(f"--epochs {args.epochs}: the demo needs at least 3 (its Sup-tickets run spends the last 2 "
                             "in cycles of 1 epoch); for a shorter or custom run use sparsetrain compare")
        out = _check_out(args.out)
        out.mkdir(parents=True, exist_ok=True)
        sparsity = 100 * (1 - args.density)
        print(f"sparsetrain demo: {args.model} on Fashion-MNIST, {args.epochs} epochs, {sparsity:.0f}% sparsity, "
              f"seed {args.seed}")
        base = dict(model=args.model, dataset="fashion-mnist", epochs=args.epochs, data_root=args.data_root,
                    cycles=2, cycle_epochs=1, threads=args.threads)
        methods = ["dense", "static", "set", "rigl", "dstee", "rigl" + SUP_SUFFIX]
        results = _compare(methods, [args.density], [args.seed], base, out)
        table, plots = _report_files(out, results, command, "sparsetrain demo",
                                     f"fmnist-mlp settings, {args.epochs} epochs, Sup-tickets: 2 cycles of 1 epoch",
                                     time.perf_counter() - start, commit)
        _print_table(_mark_slow(table, out, results), out, plots)
        return 0
    if args.command == "train":
        from .experiments.config import RunConfig
        from .experiments.grid import result_line
        from .experiments.runner import run

        for other in ("resume", "extend"):
            if args.overwrite and getattr(args, other):
                raise InputError(f"--overwrite starts the run in --out over, --{other} continues it: give one of them")
        out = _check_out(args.out)
        given = file_cfg = load_config(args.config) if args.config else {}
        saved = out / "config.json"
        if args.resume and not saved.exists():  # a typo in --out, or the first start of a requeued job
            warnings.warn(f"--resume: {out} holds no run yet (no config.json), so a new run starts there with the "
                          "settings given; if you meant an existing run, check --out", InputWarning)
        if (args.resume or args.extend) and saved.exists():  # the run's own settings, unless given again
            try:
                own = run_settings(json.loads(saved.read_text()))
            except (ValueError, KeyError, TypeError, AttributeError):
                own = None  # damaged: the run directory's own check names the problem
            if own is not None:
                algo = {**own.pop("algorithm", {}), **file_cfg.get("algorithm", {})}
                file_cfg = {**own, **file_cfg} | ({"algorithm": algo} if algo else {})
        values = _resolve(args, file_cfg)
        cfg = RunConfig.from_settings(values)
        cfg.validate()
        if "grid" in file_cfg:
            warnings.warn(f"the [grid] table of {args.config} has no effect with train (it is read by sweep)",
                          InputWarning)
        from_run = args.config is not None and is_run_record(args.config)  # all settings written out, none typed
        typed = {k for k in given if k not in ("algorithm", "grid") and not from_run} | set(vars(args)) | \
            ({"algorithm_kwargs"} if values.get("algorithm_kwargs") else set())
        for why in cfg.ignored(typed):
            warnings.warn(why, InputWarning)
        import torch.distributed as dist

        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
        if launched:  # a torchrun worker
            dist.init_process_group("nccl" if str(cfg.device).startswith("cuda") else "gloo")
        finished = args.resume and not args.extend and (out / "summary.json").exists()
        try:
            r = run(cfg, out, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.no_progress, tensorboard=args.tensorboard, extend=args.extend)
        finally:
            if launched:
                dist.barrier()
                dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) == 0:
            at = "" if cfg.method == "dense" else f" at density {cfg.density:g}"
            note = " (already finished: nothing trained; --extend with more --epochs trains it longer)" \
                if finished else ""
            print(f"{cfg.label}{at}: " + result_line(r) + note)
            print(f"run directory: {out.resolve()}")
        return 0
    if args.command == "sweep":
        file_cfg = load_config(args.config) if args.config else {}
        base = _resolve(args, file_cfg)
        grid = {str(k).replace("-", "_"): list(v) for k, v in file_cfg.get("grid", {}).items()}
        grid.update(_grid_values(args.grid))
        for key in ("method", "density", "seed"):
            if key in grid:
                raise InputError(f"vary {key} with --{key}s, not --grid")
        methods = _methods(args.methods)
        densities = _numbers("--densities", args.densities, float)
        seeds = _numbers("--seeds", args.seeds, int)
        out = _check_out(args.out)
        if args.jobs < 1:
            raise InputError(f"--jobs must be >= 1 (runs trained at once), got {args.jobs}")
        cores = os.cpu_count() or 1
        if args.jobs > cores:
            warnings.warn(f"--jobs {args.jobs} is more than the {cores} CPU cores here: the runs share them and each "
                          "is slower (no faster overall); --jobs "
                          f"{cores} --threads 1 uses every core once", InputWarning)
        results, failures, trained = sweep(base, methods, densities, seeds, grid, out, progress=args.progress,
                                           jobs=args.jobs, seed_major=args.seed_major, baseline=args.baseline)
        if results:
            table, plots = _report_files(out, results, command, args.title, args.protocol,
                                         time.perf_counter() - start, commit, trained, args.baseline)
            _print_table(table, out, plots)
        if failures:
            print(f"\n{len(failures)} run(s) failed (details in {out / 'failures.jsonl'}):", file=sys.stderr)
            for f in failures:
                print(f"  {f['tag']}: {f['error']}", file=sys.stderr)
            return 1
        return 0
    if args.command == "compare":
        out = _check_out(args.out)
        out.mkdir(parents=True, exist_ok=True)
        lo, hi = _numbers("--ticket-lr", args.ticket_lr, float, count=2)
        base = dict(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, weight_decay=args.weight_decay, threads=args.threads, data_root=args.data_root,
                    cycles=args.cycles, cycle_epochs=args.cycle_epochs, cycle_ratio=args.cycle_ratio,
                    ticket_lr=(lo, hi))
        algo = _hp(args.hp)
        if args.update_interval is not None:
            if algo.get("update_interval", args.update_interval) != args.update_interval:
                raise InputError(f"--update-interval {args.update_interval} and --hp update_interval="
                                 f"{algo['update_interval']} disagree; give one")
            algo["update_interval"] = args.update_interval
        if algo:
            base["algorithm_kwargs"] = algo
        methods = _methods(args.methods)
        if args.sup_tickets:
            methods = [m if m == "dense" or m.endswith(SUP_SUFFIX) else m + SUP_SUFFIX for m in methods]
        densities = _numbers("--densities", args.densities, float)
        seeds = _numbers("--seeds", args.seeds, int)
        results = _compare(methods, densities, seeds, base, out, resume=args.resume, baseline=args.baseline)
        table, plots = _report_files(out, results, command, args.title, args.protocol,
                                     time.perf_counter() - start, commit, baseline=args.baseline)
        _print_table(_mark_slow(table, out, results), out, plots)
        return 0
    if args.command == "report":
        out = _check_out(args.out)
        missing = [d for d in args.dirs if not Path(d).is_dir()]
        if missing:
            raise InputError(f"no such directory: {', '.join(missing)} (report reads the run results below "
                             "the directories it is given)")
        skipped: list = []
        results = found = load_runs(args.dirs, skipped=skipped)
        for path, why in skipped:
            print(f"sparsetrain report: skipped {path}: {why}", file=sys.stderr)
        if args.methods:  # an arm's name, or its full label with a grid variant ("rigl epochs=60")
            keep = {m.strip() for m in args.methods.split(",") if m.strip()}
            results = [r for r in results if (lab := r.get("label", r["config"]["method"])) in keep
                       or lab.partition(" ")[0] in keep]
        if args.densities:
            ds = _numbers("--densities", args.densities, float)
            results = [r for r in results if r["config"]["method"] == "dense"
                       or any(abs(r["config"]["density"] - d) < 1e-9 for d in ds)]
            if all(r["config"]["method"] == "dense" for r in results) and 1.0 not in ds:
                results = []  # the dense reference alone is not what was asked for
        results = one_setup(results, args.dataset, args.model)
        if not found:
            raise InputError(f"no run results found under {', '.join(args.dirs)} (report reads the summary.json "
                             "of each run directory a train, sweep or compare wrote)")
        if not results:
            print(f"no run results found under {', '.join(args.dirs)}" if not found else
                  f"none of the {len(found)} runs under {', '.join(args.dirs)} matches the filters; there are: "
                  + describe_found(found), file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        note = args.command_note or command
        table, plots = _report_files(out, results, note, args.title, args.protocol or describe_runs(results), None,
                                     baseline=args.baseline)
        print(table)
        print(f"\n{len(results)} runs; written to {out}/results.md" + (f" and {len(plots)} plots" if plots else ""))
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
