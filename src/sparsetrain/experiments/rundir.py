"""A run directory: the folder that holds one run's files, written so that a kill never corrupts it.

==========================  ==================================================================
``config.json``             the resolved settings, library/torch/Python versions, steps per epoch
``metrics.jsonl``           one JSON line per epoch and per topology update
``summary.json``            the finished run's result (its presence means "finished")
``checkpoint_last.pt``      everything needed to continue exactly (every epoch end, and every
                            ``checkpoint_every`` steps)
``checkpoint_best.pt``      the best-accuracy model with its masks
``tensorboard/``            with ``tensorboard=True``
==========================  ==================================================================

Every file is replaced atomically (temporary file and rename); the metrics lines written after
the last checkpoint are dropped when a run resumes, so the log always matches the checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Optional

import torch

from .. import __version__
from .._util import atomic_save, atomic_write_text
from .config import RunConfig

__all__ = ["RunDirectory", "RunExistsError", "RUN_FILES", "CHECKPOINT_FORMAT", "MODEL_FORMAT", "json_safe"]

#: ``format`` of ``checkpoint_last.pt`` (a resumable training state).
CHECKPOINT_FORMAT = "sparsetrain.run/1"
#: ``format`` of ``checkpoint_best.pt`` (a model and its masks).
MODEL_FORMAT = "sparsetrain.model/1"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint_last.pt", "checkpoint_best.pt")


class RunExistsError(FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values (tuples become lists, tensors lists, anything else its ``str``)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))


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
        if resume and (out / "config.json").exists():
            saved = json.loads((out / "config.json").read_text())["config"]
            ours = json_safe(asdict(cfg))
            diff = sorted(k for k in set(saved) | set(ours) if k != "threads" and saved.get(k) != ours.get(k))
            if diff:
                raise ValueError(
                    f"cannot resume {out}: its run used different settings for {diff} "
                    f"(saved {[saved.get(k) for k in diff]}, now {[ours.get(k) for k in diff]}); "
                    "resume with the same settings or use --overwrite"
                )
        return self.checkpoint() if resume else None

    def checkpoint(self) -> Optional[dict[str, Any]]:
        """The saved training state (``checkpoint_last.pt``, loaded to the CPU), or ``None`` if there is none."""
        path = self.path / "checkpoint_last.pt"
        if not path.exists():
            return None
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a sparsetrain run checkpoint")
        return ckpt

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
        """Write ``checkpoint_last.pt``: ``state`` stamped with the format and the metrics log's length."""
        atomic_save({"format": CHECKPOINT_FORMAT, **state, "metric_lines": self.metric_lines},
                    self.path / "checkpoint_last.pt")

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
