"""A run directory: the folder that holds one run's files, written so that a kill never corrupts it.

==========================  ==================================================================
``config.json``             the resolved settings, library/torch/Python versions, steps per epoch
``metrics.jsonl``           one JSON line per epoch and per topology update
``summary.json``            the finished run's result (its presence means "finished")
``checkpoint_last.pt``      everything needed to continue exactly (every epoch end, and every
                            ``checkpoint_every`` steps), with a checksum of its contents
``checkpoint_prev.pt``      the checkpoint before it (a damaged ``checkpoint_last.pt`` falls back
                            to it on resume, with a warning)
``checkpoint_best.pt``      the best-accuracy model with its masks
``tensorboard/``            with ``tensorboard=True``
==========================  ==================================================================

Every file is replaced atomically (temporary file and rename); the metrics lines written after
the last checkpoint are dropped when a run resumes, so the log always matches the checkpoint.
A new checkpoint is written in full before the last one becomes ``checkpoint_prev.pt``.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Optional

import torch

from .. import __version__
from .._util import atomic_save, atomic_write_text
from ..checkpoint import checksum
from ..errors import InputError, InputWarning
from .config import RunConfig

__all__ = ["RunDirectory", "RunExistsError", "RUN_FILES", "CHECKPOINT_FORMAT", "MODEL_FORMAT", "json_safe", "complete_settings"]

#: ``format`` of ``checkpoint_last.pt`` (a resumable training state).
CHECKPOINT_FORMAT = "sparsetrain.run/1"
#: ``format`` of ``checkpoint_best.pt`` (a model and its masks).
MODEL_FORMAT = "sparsetrain.model/1"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint_last.pt", "checkpoint_prev.pt",
             "checkpoint_best.pt")


class RunExistsError(FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


def complete_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Saved run settings with every setting a later version added at its default (an older run
    resumes and reports alike: the added setting did not exist for it, so it ran with what is now
    the default)."""
    return {**json_safe(asdict(RunConfig())), **config}


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values (tuples become lists, tensors lists, anything else its ``str``)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))


class _Foreign(InputError):
    """A readable file that is not a run checkpoint: refused, not a reason to fall back."""


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A run checkpoint from ``path``; an :class:`~sparsetrain.errors.InputError` saying what is wrong
    if it is truncated, not a run checkpoint, or damaged (checksum)."""
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # torch's message is about weights_only, which is not the problem
        raise InputError(f"{path} cannot be read (not a torch checkpoint: overwritten or damaged)") from None
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad pickle, ...: all mean "damaged"
        first = (str(e).splitlines() or [""])[0][:120]
        raise InputError(f"{path} cannot be read (not a torch checkpoint: {type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise _Foreign(f"{path} is not a sparsetrain run checkpoint (it was replaced by another file): "
                       "point --out at the run's own directory, or start over with --overwrite")
    if "checksum" in ckpt and checksum(ckpt) != ckpt["checksum"]:
        raise InputError(f"{path} is damaged (its checksum does not match its contents)")
    return ckpt


class RunDirectory:
    """The folder of one run: checks before a run starts, then every file the run writes.

    Life of a run: :meth:`finished` (a resumed, finished run just returns its summary),
    :meth:`prepare` (refuse to clobber, overwrite, or check that a resume uses the same settings;
    returns the checkpoint to continue from), :meth:`open` (config, metrics log, TensorBoard),
    then :meth:`log`, :meth:`save_checkpoint` and :meth:`save_best` while training,
    :meth:`write_summary` at the end and :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        #: lines in ``metrics.jsonl`` (a checkpoint records it, so a resume drops later ones)
        self.metric_lines = 0
        self._metrics: Optional[IO[str]] = None
        self._writer: Any = None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # ------------------------------------------------------------------ before the run

    def _meta(self) -> dict[str, Any]:
        """``config.json`` of the run in this directory; an :class:`~sparsetrain.errors.InputError` if it
        is damaged (not JSON, or without the run's settings)."""
        path = self.path / "config.json"
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            meta = e
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise InputError(f"{path} is damaged or not a run's config.json ({'not JSON' if isinstance(meta, Exception) else 'no settings in it'}), "
                             "so the run cannot be continued: start over with --overwrite, or choose another --out")
        return meta

    def finished(self) -> Optional[dict[str, Any]]:
        """The summary of a finished run in this directory, or ``None``."""
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    def prepare(self, cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> Optional[dict[str, Any]]:
        """Create or check the directory for a run of ``cfg``; return the checkpoint to resume from, if any.

        A directory holding a run is an error (:class:`RunExistsError`) unless ``resume`` (the
        saved settings must equal ``cfg``'s, ``threads`` aside) or ``overwrite`` (the run files
        are deleted).
        """
        out = self.path
        existing = [f for f in RUN_FILES if (out / f).exists()]
        if existing and not (resume or overwrite):
            raise RunExistsError(
                f"{out} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
                "--overwrite to start over, or choose another --out"
            )
        if overwrite and not resume:
            for f in RUN_FILES:
                (out / f).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            return None
        self.check_settings(cfg)
        ckpt = self.checkpoint()
        self._check_own(ckpt)
        return ckpt

    def _check_own(self, ckpt: Optional[dict[str, Any]]) -> None:
        """Refuse a checkpoint whose settings are not this directory's (copied from another run);
        ``threads`` and ``epochs`` aside (``--extend`` raises the epochs before the next save)."""
        theirs = ckpt.get("config") if isinstance(ckpt, dict) else None
        if not isinstance(theirs, dict) or not (self.path / "config.json").exists():
            return
        saved, theirs = complete_settings(self._meta()["config"]), complete_settings(theirs)
        diff = sorted(k for k in set(saved) | set(theirs) if k not in ("threads", "epochs")
                      and saved.get(k) != theirs.get(k))
        if diff:
            raise InputError(
                f"{self.path}: its checkpoint was saved by a run with other settings than this directory's config.json "
                f"({', '.join(f'{k}: {theirs.get(k)!r} in the checkpoint, {saved.get(k)!r} here' for k in diff[:4])}"
                f"{', ...' if len(diff) > 4 else ''}): it comes from another run. Put back this run's checkpoint, or "
                "start over with --overwrite")

    def check_settings(self, cfg: RunConfig) -> None:
        """Refuse to continue (or report) the run in this directory with other settings than its own
        (``threads`` aside), finished or not."""
        if not (self.path / "config.json").exists():
            return
        saved = complete_settings(self._meta()["config"])
        ours = json_safe(asdict(cfg))
        diff = sorted(k for k in set(saved) | set(ours) if k != "threads" and saved.get(k) != ours.get(k))
        if diff:
            done = (self.path / "summary.json").exists()
            extend = " (to train a finished run longer, pass --extend with a larger --epochs)" \
                if done and diff == ["epochs"] else ""
            raise InputError(
                f"cannot resume {self.path}: its {'finished ' if done else ''}run used different settings for "
                f"{diff} (saved {[saved.get(k) for k in diff]}, now {[ours.get(k) for k in diff]}); resume with "
                f"the same settings or use --overwrite{extend}"
            )

    def prepare_extend(self, cfg: RunConfig) -> dict[str, Any]:
        """Check that ``cfg`` extends the run in this directory (only ``epochs`` differs, and is larger;
        ``threads`` aside), mark the run unfinished, record the extension in ``config.json`` and
        return the checkpoint to continue from."""
        if not (self.path / "config.json").exists():
            raise InputError(f"--extend: {self.path} holds no run to extend; train it first (without --extend)")
        meta = self._meta()
        saved, ours = meta["config"], json_safe(asdict(cfg))
        diff = sorted(k for k in set(saved) | set(ours) if k not in ("threads", "epochs") and saved.get(k) != ours.get(k))
        if diff:
            raise InputError(f"--extend changes only --epochs, but {diff} differ from the run in {self.path} "
                             f"(saved {[saved.get(k) for k in diff]}); give the run's own settings and a larger --epochs")
        if cfg.epochs <= int(saved["epochs"]):
            raise InputError(f"--extend needs more --epochs than the run's {saved['epochs']}, got {cfg.epochs}")
        if cfg.sup_tickets:
            raise InputError("--extend does not apply to Sup-tickets runs (their cycles are planned at the end of "
                             "the epoch budget); train a new run with more --epochs")
        ckpt = self.checkpoint()
        if ckpt is None:
            raise InputError(f"--extend: {self.path} has no checkpoint to continue from; train a new run")
        (self.path / "summary.json").unlink(missing_ok=True)
        meta["extended_from"] = list(meta.get("extended_from", [])) + [int(saved["epochs"])]
        meta["config"] = ours
        atomic_write_text(json.dumps(meta, indent=1), self.path / "config.json")
        return ckpt

    def checkpoint(self) -> Optional[dict[str, Any]]:
        """The saved training state (loaded to the CPU), or ``None`` if there is none.

        ``checkpoint_last.pt`` if it is intact (readable, its checksum matching); if it is truncated,
        damaged or missing, ``checkpoint_prev.pt``, with an :class:`~sparsetrain.errors.InputWarning`;
        an :class:`~sparsetrain.errors.InputError` if neither is intact, or if a file is readable
        but not a run checkpoint (another file put in its place).
        """
        last, prev = self.path / "checkpoint_last.pt", self.path / "checkpoint_prev.pt"
        if not last.exists() and not prev.exists():
            return None
        problems = []
        for path in (last, prev):
            if not path.exists():
                problems.append(f"{path.name} is missing")
                continue
            try:
                ckpt = _load_checkpoint(path)
            except _Foreign:
                raise
            except InputError as e:
                problems.append(str(e))
                continue
            if path is prev:
                warnings.warn(f"{problems[0]}; resuming from the previous checkpoint {prev} instead "
                              f"(epoch {int(ckpt['epoch'])}, step {int(ckpt['step'])})", InputWarning, stacklevel=2)
            return ckpt
        raise InputError(f"cannot resume {self.path}: {'; '.join(problems)}; start over with --overwrite")

    # ------------------------------------------------------------------ during the run

    def open(self, cfg: RunConfig, ckpt: Optional[dict[str, Any]], *, steps_per_epoch: int, total_steps: int,
             tensorboard: bool = False) -> "RunDirectory":
        """Start writing: ``config.json`` for a new run, the metrics log cut back to the checkpoint's
        lines (none for a new run), and a TensorBoard writer if asked for."""
        if ckpt is None:
            meta = {"config": json_safe(asdict(cfg)), "label": cfg.label, "sparsetrain": __version__,
                    "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
                    "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
            atomic_write_text(json.dumps(meta, indent=1), self.path / "config.json")
        self.metric_lines = int(ckpt["metric_lines"]) if ckpt is not None else 0
        path = self.path / "metrics.jsonl"
        lines = path.read_text().splitlines(keepends=True)[:self.metric_lines] if path.exists() else []
        atomic_write_text("".join(lines), path)  # drop lines written after the checkpoint
        self._metrics = open(path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self._writer = SummaryWriter(str(self.path / "tensorboard"))
        return self

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with a ``type``: ``"epoch"`` or ``"update"``) to the metrics log and TensorBoard."""
        if self._metrics is not None:
            self._metrics.write(json.dumps(json_safe(record)) + "\n")
            self._metrics.flush()
            self.metric_lines += 1
        if self._writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._writer.add_scalar(f"{record['type']}/{k}", v, record.get("step", 0))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint_last.pt``: ``state`` stamped with the format, the metrics log's length and
        a checksum; written in full to a temporary file first, then the previous one becomes
        ``checkpoint_prev.pt`` and the new one takes its place (each step an atomic rename)."""
        obj = {"format": CHECKPOINT_FORMAT, **state, "metric_lines": self.metric_lines}
        obj["checksum"] = checksum(obj)
        last = self.path / "checkpoint_last.pt"
        tmp = last.with_name(last.name + ".tmp")
        torch.save(obj, tmp)
        if last.exists():
            os.replace(last, self.path / "checkpoint_prev.pt")
        os.replace(tmp, last)

    def save_best(self, model: dict[str, Any], masks: Any, *, epoch: int, test_acc: float) -> None:
        """Write ``checkpoint_best.pt``: a model state dict and its masks (``None`` for dense)."""
        atomic_save({"format": MODEL_FORMAT, "epoch": epoch, "test_acc": test_acc, "model": model, "masks": masks},
                    self.path / "checkpoint_best.pt")

    def close(self) -> None:
        """Close the metrics log and the TensorBoard writer (the files stay valid at any point)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ after the run

    def write_summary(self, result: dict[str, Any]) -> None:
        """Write ``summary.json``, which marks the run as finished."""
        atomic_write_text(json.dumps(json_safe(result), indent=1), self.path / "summary.json")
