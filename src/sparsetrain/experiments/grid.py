"""One grid runner behind ``sparsetrain compare``, ``sweep`` and ``demo``.

A grid is a list of :class:`PlannedRun` (methods × densities × seeds × any setting, each with a
tag, see :func:`plan_runs`) and a layout that says where each run's result lives:

* :class:`ResultFiles` (``compare``, ``demo``): ``<out>/runs/<tag>.json``, the run trained in
  memory (no checkpoints), the file written atomically when the run ends;
* :class:`RunDirectories` (``sweep``): ``<out>/runs/<tag>/``, a run directory each, so an
  interrupted run resumes exactly.

:func:`run_grid` runs the plan in order, skipping runs whose result exists, and either stops at
the first failure or records it (``<out>/failures.jsonl``) and goes on; with ``jobs > 1`` it runs
that many runs at once, each in its own process (results are identical to a serial grid: every
run is seeded by its own settings). It prints nothing itself: progress lines go to an ``echo``
callback.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .._util import atomic_write_text
from ..errors import InputError, ScheduleWarning
from .config import SUP_SUFFIX, RunConfig

__all__ = ["PlannedRun", "plan_runs", "run_tag", "split_label", "ResultFiles", "RunDirectories", "run_grid",
           "result_line", "check_plan", "slow_runs"]

#: ``echo(text, end="\n")``: where a grid's progress lines go (the CLI prints them)
Echo = Callable[..., None]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a grid: its tag (file or directory name) and its settings (for :meth:`RunConfig.from_settings`)."""

    tag: str
    settings: dict[str, Any]


def run_tag(settings: dict[str, Any], grid_keys: Sequence[str] = ()) -> str:
    """``<method>[+sup-tickets]-d<density>-s<seed>`` and ``-<key>=<value>`` per grid key, e.g.
    ``rigl-d0.05-s0`` or ``dstee-d0.1-s1-c=0.01`` (``/`` and spaces are not kept)."""
    method = settings["method"]
    if settings.get("sup_tickets") and not method.endswith(SUP_SUFFIX):
        method += SUP_SUFFIX
    tag = f"{method}-d{float(settings.get('density', 1.0)):g}-s{settings.get('seed', 0)}"
    for k in grid_keys:
        tag += f"-{k}={settings[k]}" if k in settings else f"-{k}={settings['algorithm_kwargs'][k]}"
    return tag.replace("/", "_").replace(" ", "")


def plan_runs(methods: Sequence[str], densities: Sequence[float], seeds: Sequence[int], base: dict[str, Any],
              grid: Optional[dict[str, list[Any]]] = None, *, dense_first: bool = False,
              seed_major: bool = False) -> list[PlannedRun]:
    """Every combination of method, density, grid values and seed, on top of the ``base`` settings.

    A method may be labelled, ``LABEL=SPEC`` (see :func:`split_label`), to name an arm of
    algorithm options in the report and the run directories.

    ``dense`` runs once per seed (density 1). A grid key that is a :class:`RunConfig` field sets
    that field; any other is an algorithm hyper-parameter; with a grid each variant is its own
    row in the report (``name = "<method> key=value ..."``). The order is method, density, grid
    values, seed; with ``dense_first`` (``compare``'s order) the dense runs come first, then
    density, method, grid values, seed; ``seed_major`` runs every other combination of a seed
    before the next seed (same order within a seed).
    """
    grid = grid or {}
    for what, flag, values in [("density", "--densities", densities), ("seed", "--seeds", seeds)] + \
            [(f"grid value of {k}", f"--grid {k}=...", v) for k, v in grid.items()]:
        twice = sorted({repr(v) for i, v in enumerate(values) if v in list(values)[:i]})
        if twice:
            raise InputError(f"{flag} lists the {what} {', '.join(twice)} twice: list each once")
    setting_names = {f.name for f in fields(RunConfig)}
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) or [()]
    # dense has no algorithm: it runs once per value of the grid's run settings (lr, epochs, ...), not
    # once per algorithm hyper-parameter value (None marks a key that does not apply)
    dense_combos = list(dict.fromkeys(tuple(v if k in setting_names else None for k, v in zip(keys, c))
                                      for c in combos))
    if dense_first:
        order = [("dense", 1.0, c, s) for c in dense_combos for s in seeds if "dense" in methods]
        order += [(m, d, c, s) for d in densities for m in methods if m != "dense" for c in combos for s in seeds]
    else:
        order = [(m, d, c, s) for m in methods for d in ([1.0] if m == "dense" else densities)
                 for c in (dense_combos if m == "dense" else combos) for s in seeds]
    if seed_major:  # every arm of seed 0, then seed 1, ...: paired comparisons usable mid-sweep
        rank = {s: i for i, s in enumerate(seeds)}
        order.sort(key=lambda o: rank[o[3]])
    plan = []
    for arm, density, combo, seed in order:
        label, method = split_label(arm)
        values = {**base, "method": method, "density": density, "seed": seed}
        algo = dict(values.get("algorithm_kwargs", {}))
        used = [(k, v) for k, v in zip(keys, combo) if not (method == "dense" and k not in setting_names)]
        for k, v in used:
            if k in setting_names:
                values[k] = v
            else:  # anything else is an algorithm hyper-parameter
                algo[k] = v
        if algo:
            values["algorithm_kwargs"] = algo
        if used:  # grid variants are separate rows of the report
            values["name"] = (label or method) + "".join(f" {k}={v}" for k, v in used)
        elif label:
            values["name"] = label
        plan.append(PlannedRun(run_tag({**values, "method": label or method}, [k for k, _ in used]), values))
    first: dict[str, str] = {}
    for (arm, _, _, _), run in zip(order, plan):
        if run.tag in first:
            same = "the same method" if first[run.tag] == arm else f"methods {first[run.tag]!r} and {arm!r}"
            raise InputError(f"the grid has the run {run.tag} twice ({same}): list each method, density and seed "
                             "once, and give method arms different labels (LABEL=SPEC)")
        first[run.tag] = arm
    return plan


def split_label(arm: str) -> tuple[Optional[str], str]:
    """``"LABEL=SPEC"`` names a method spec (its rows, tags and run directories say LABEL):
    ``"rigl-ref=rigl:update_interval=1200:end=none"`` -> ``("rigl-ref", "rigl:update_interval=1200:end=none")``;
    a spec ending in ``+sup-tickets`` adds that suffix to the label. A plain spec (``"dstee:c=0.01"``,
    where every ``=`` follows a ``:``) has no label: ``(None, spec)``."""
    head, eq, spec = arm.partition("=")
    if not eq or ":" in head:
        return None, arm
    label, spec = head.strip(), spec.strip()
    if not label or not spec:
        raise InputError(f"method {arm!r}: a labelled method is LABEL=SPEC, e.g. 'rigl-ref=rigl:update_interval=1200'")
    if spec.endswith(SUP_SUFFIX) and not label.endswith(SUP_SUFFIX):
        label += SUP_SUFFIX
    return label, spec


class ResultFiles:
    """``compare``'s layout: one JSON result per run in ``<out>/runs/<tag>.json``; runs train in
    memory (no checkpoints), and a killed run leaves no half-written result."""

    skip_note = "already done, skipped"

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)

    def path(self, tag: str) -> Path:
        """Where the result of the run ``tag`` is written."""
        return self.out / "runs" / f"{tag}.json"

    def finished(self, tag: str) -> Optional[dict[str, Any]]:
        """The saved result of ``tag``, or ``None``."""
        path = self.path(tag)
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, cfg: RunConfig, tag: str, progress: bool = False,
            on_epoch: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
        """Train ``cfg`` and save its result (``on_epoch(record)`` after every epoch)."""
        from .runner import run

        result = run(cfg, on_epoch=on_epoch)
        atomic_write_text(json.dumps(result, indent=1), self.path(tag))
        return result


class RunDirectories:
    """``sweep``'s layout: a run directory per run in ``<out>/runs/<tag>/`` (``summary.json`` marks
    it finished); an interrupted run resumes exactly."""

    skip_note = "done, skipped"

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)

    def path(self, tag: str) -> Path:
        """The run directory of ``tag``."""
        return self.out / "runs" / tag

    def finished(self, tag: str) -> Optional[dict[str, Any]]:
        """The summary of ``tag`` if that run finished, or ``None``."""
        path = self.path(tag) / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, cfg: RunConfig, tag: str, progress: bool = False,
            on_epoch: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
        """Train ``cfg`` into its run directory, continuing it if it was interrupted."""
        from .runner import run

        return run(cfg, self.path(tag), resume=True, progress=progress, on_epoch=on_epoch)


def check_plan(plan: Sequence[PlannedRun]) -> None:
    """Validate every run of ``plan`` before the first one starts: its settings
    (:meth:`RunConfig.validate`, an :class:`~sparsetrain.errors.InputError` naming the run) and, for
    sparse runs, whether a topology update fits (a :class:`~sparsetrain.errors.ScheduleWarning`,
    which the command line makes an error). Loads each dataset once to count its examples."""
    from .data import load_dataset

    sizes: dict[tuple, int] = {}
    for item in plan:
        try:
            cfg = RunConfig.from_settings(item.settings)
            cfg.validate()
            if cfg.method == "dense":
                continue
            key = (cfg.dataset, cfg.data_root)
            if key not in sizes:
                sizes[key] = len(load_dataset(cfg.dataset, root=cfg.data_root)[0])
            cfg.check_schedule(sizes[key])
        except InputError as e:
            raise InputError(f"run {item.tag}: {e}") from None
        except ScheduleWarning as e:
            raise ScheduleWarning(f"run {item.tag}: {e}") from None


def slow_runs(results: Sequence[dict[str, Any]], factor: float = 2.0) -> list[tuple[dict[str, Any], float]]:
    """The runs whose wall time is more than ``factor`` × the median of all of them, with that ratio
    (a one-off slowdown, e.g. a busy machine, whose time is not comparable with its peers')."""
    times = sorted(r["wall_time_s"] for r in results if r.get("wall_time_s"))
    if len(times) < 3:
        return []
    mid = len(times) // 2
    median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    return [(r, r["wall_time_s"] / median) for r in results
            if median > 0 and r.get("wall_time_s", 0) > factor * median]


def result_line(r: dict[str, Any]) -> str:
    """A run's result in one line: accuracy, density, R_s and wall time."""
    return (f"acc {100 * r['test_acc']:.2f}%  density {r['density']:.4f}  R_s {r['itop_rate']:.3f}  "
            f"({r['wall_time_s']:.1f}s)")


def _silent(text: str, end: str = "\n") -> None:
    pass


def _run_in_worker(layout: ResultFiles | RunDirectories, settings: dict[str, Any], tag: str,
                   threads: int) -> dict[str, Any]:
    """One run of a parallel grid, in a worker process (``threads`` intra-op threads unless the
    run's own ``threads`` setting says otherwise)."""
    import torch

    cfg = RunConfig.from_settings(settings)
    if not cfg.threads:
        torch.set_num_threads(threads)
    return layout.run(cfg, tag, False)


def _record_failure(layout, failures: list, tag: str, e: BaseException, tb: str) -> None:
    failures.append({"tag": tag, "error": f"{type(e).__name__}: {e}", "traceback": tb})
    with open(layout.out / "failures.jsonl", "a") as f:
        f.write(json.dumps(failures[-1]) + "\n")


class _TimeLeft:
    """A rough time left for a grid, for its progress lines: the epochs still to train times the
    seconds per epoch of the runs finished so far in this invocation, over the runs trained at once
    (runs in progress count whole, so it errs long)."""

    def __init__(self, todo: Sequence[tuple[int, PlannedRun]], jobs: int):
        self.left = {i: float(item.settings.get("epochs") or 1) for i, item in todo}
        self.jobs, self.spent, self.trained = jobs, 0.0, 0.0

    def finished(self, i: int, result: Optional[dict[str, Any]]) -> str:
        epochs = self.left.pop(i, 0.0)
        if result is not None and result.get("wall_time_s") and epochs:
            self.spent += float(result["wall_time_s"])
            self.trained += epochs
        if not self.left or not self.trained:
            return ""
        s = sum(self.left.values()) * self.spent / self.trained / min(self.jobs, len(self.left))
        return f"  [≈ {s / 3600:.1f} h left]" if s >= 5400 else f"  [≈ {max(1, round(s / 60))} min left]"


def _run_parallel(todo: list[tuple[int, PlannedRun]], n: int, layout, jobs: int, keep_going: bool,
                  echo: Echo) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done: dict[int, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    # spawn, not fork: a forked child of a process that already ran torch's thread pools can hang
    ctx = multiprocessing.get_context("spawn")
    queue = list(todo)
    eta = _TimeLeft(todo, jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        running = {}

        def submit():
            while queue and len(running) < jobs:
                i, item = queue.pop(0)
                echo(f"[{i}/{n}] {item.tag} started")
                running[pool.submit(_run_in_worker, layout, item.settings, item.tag, threads)] = (i, item)

        submit()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                i, item = running.pop(fut)
                try:
                    done[i] = fut.result()
                except Exception as e:  # noqa: BLE001 - reported like a serial grid's failure
                    if not keep_going:
                        for f in running:
                            f.cancel()
                        queue.clear()
                        raise
                    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                    _record_failure(layout, failures, item.tag, e, tb)
                    echo(f"[{i}/{n}] {item.tag} FAILED: {type(e).__name__}: {e}" + eta.finished(i, None))
                    continue
                echo(f"[{i}/{n}] {item.tag} " + result_line(done[i]) + eta.finished(i, done[i]))
            submit()
    return done, failures


def run_grid(plan: Sequence[PlannedRun], layout: ResultFiles | RunDirectories, *, skip_finished: bool = True,
             keep_going: bool = False, progress: bool = False, jobs: int = 1,
             echo: Optional[Echo] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``plan`` in order into ``layout``; return ``(results, failures)``.

    A run whose result exists is skipped (its result returned) when ``skip_finished``. A failing
    run raises, or with ``keep_going`` is recorded (tag, error, traceback) in the failures and in
    ``<out>/failures.jsonl`` and the grid goes on. Every run's settings are checked before the first
    run starts (:func:`check_plan`). ``echo(text, end=...)`` receives a line when a run starts
    (``[i/n] tag ...``), one per epoch (without progress bars) and one with its result. With ``jobs > 1``, that many runs train at
    once in worker processes, each with ``cpu_count // jobs`` threads unless its settings give
    ``threads``; results come back in plan order (no per-run progress bars then).
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InputError(f"jobs must be a positive integer (runs trained at once), got {jobs!r}")
    echo = echo or _silent
    check_plan([item for item in plan if not (skip_finished and layout.finished(item.tag) is not None)])
    (layout.out / "runs").mkdir(parents=True, exist_ok=True)
    if jobs > 1:
        known: dict[int, dict[str, Any]] = {}
        todo = []
        for i, item in enumerate(plan, 1):
            prev = layout.finished(item.tag) if skip_finished else None
            if prev is not None:
                known[i] = prev
                echo(f"[{i}/{len(plan)}] {item.tag}: {layout.skip_note}")
            else:
                todo.append((i, item))
        done, failures = _run_parallel(todo, len(plan), layout, jobs, keep_going, echo) if todo else ({}, [])
        known.update(done)
        return [known[i] for i in sorted(known)], failures
    results: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    finished = {i: layout.finished(item.tag) if skip_finished else None for i, item in enumerate(plan, 1)}
    eta = _TimeLeft([(i, item) for i, item in enumerate(plan, 1) if finished[i] is None], 1)
    for i, item in enumerate(plan, 1):
        head = f"[{i}/{len(plan)}] {item.tag}"
        done = finished[i]
        if done is not None:
            results.append(done)
            echo(f"{head}: {layout.skip_note}")
            continue
        cfg = RunConfig.from_settings(item.settings)
        echo(f"{head} ...")
        started = time.perf_counter()

        def on_epoch(record, cfg=cfg, started=started):  # a line per epoch: a long run never looks stuck
            if not progress:
                echo(f"    epoch {record['epoch']}/{cfg.epochs}: test acc {100 * record['test_acc']:.2f}%, "
                     f"train loss {record['train_loss']:.4f} ({time.perf_counter() - started:.0f}s)")

        try:
            result = layout.run(cfg, item.tag, progress, on_epoch)
        except Exception as e:  # noqa: BLE001 - with keep_going a failed run is reported and the grid goes on
            if not keep_going:
                raise
            _record_failure(layout, failures, item.tag, e, traceback.format_exc())
            echo(f"{head} FAILED: {type(e).__name__}: {e}" + eta.finished(i, None))
            continue
        results.append(result)
        echo(f"{head} " + result_line(result) + eta.finished(i, result))
    return results, failures
