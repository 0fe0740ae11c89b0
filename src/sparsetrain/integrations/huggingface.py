"""Hugging Face ``Trainer`` callback: a Sparsifier on the Trainer's model and optimizer.

```python
from sparsetrain.integrations.huggingface import SparsetrainTrainerCallback
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  callbacks=[SparsetrainTrainerCallback(st.RigL(density=0.1))])
trainer.train()                                   # masks, updates, metrics in the logs
trainer.train(resume_from_checkpoint=True)        # the sparsifier resumes from checkpoint-N/
```

The sparsifier's state is written as ``sparsetrain.pt`` into every ``checkpoint-<step>``
directory the Trainer saves, and read back from the checkpoint a resumed run starts from.
``sparsetrain/density``, ``sparsetrain/itop_rate`` and ``sparsetrain/updates`` are added to the
Trainer's logs (its ``log_history`` and the reporting integrations registered after this callback).

**Which checkpoint is being resumed.** The Trainer does not tell callbacks the directory passed to
``train(resume_from_checkpoint=...)``, but it does hand them the ``TrainerState`` it restored
from that checkpoint's ``trainer_state.json``. Before every step the callback records in
``state.stateful_callbacks["sparsetrain"]`` (a public, JSON-saved field) the directory its
state file will be written to and the sparsifier's step; a resumed run reads that record from
the restored state. The state file is searched, in order, at: the callback's ``resume_from``
(set it when the checkpoint was moved or copied), ``args.resume_from_checkpoint``, the recorded
directory, and ``<output_dir>/checkpoint-<global_step>``. A file is accepted only if its step is
the recorded one and the restored weights are zero outside its masks; resuming at a step > 0
without such a file is an error that names the fix (never fresh masks on trained weights).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional, Union

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the extra is optional
    raise ImportError("the Hugging Face integration needs transformers: pip install 'sparsetrain[huggingface]'") from e

from .._util import atomic_save
from ..algorithms import Algorithm
from ..sparsifier import Sparsifier

__all__ = ["SparsetrainTrainerCallback", "STATE_FILE", "STATE_KEY", "FEW_UPDATES"]

STATE_FILE = "sparsetrain.pt"
#: The key of ``TrainerState.stateful_callbacks`` where the callback records where its state goes.
STATE_KEY = "sparsetrain"
#: Fewer topology updates than this in a run is warned about (the mask would barely move).
FEW_UPDATES = 3


class SparsetrainTrainerCallback(TrainerCallback):
    """Keep the Trainer's model sparse with ``algorithm``.

    Args:
        algorithm: an :class:`~sparsetrain.Algorithm` or a registered name.
        resume_from: the checkpoint directory (or its ``sparsetrain.pt``) a resumed run starts
            from, when it is not where it was saved (moved or copied); see the module docstring.
        **sparsifier_kwargs: passed to :class:`~sparsetrain.Sparsifier`.

    ``total_steps`` is the Trainer's ``max_steps``; a run in which fewer than
    :data:`FEW_UPDATES` topology updates fit gets a warning. The sparsifier is
    ``callback.sparsifier``; ``callback.resumed_from`` is the state file a resumed run loaded.
    """

    def __init__(self, algorithm: Union[Algorithm, str], resume_from: Optional[str] = None, **sparsifier_kwargs: Any):
        self.algorithm = algorithm
        self.resume_from = resume_from
        self.sparsifier_kwargs = sparsifier_kwargs
        self.sparsifier: Optional[Sparsifier] = None
        self.resumed_from: Optional[str] = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.sparsifier is not None:
            self.sparsifier.remove()
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if opt is None or model is None:
            raise RuntimeError("SparsetrainTrainerCallback needs the Trainer's model and optimizer at train begin")
        # resuming: the Trainer restored the weights already; attach with the saved masks
        saved = self._resume_state(args, state, model) if state.global_step > 0 else None
        self.sparsifier = Sparsifier(model, opt, self.algorithm, total_steps=int(state.max_steps), state=saved,
                                     **self.sparsifier_kwargs)
        if saved is None:
            _warn_few_updates(self.sparsifier.algorithm, int(state.max_steps))

    def _resume_state(self, args, state, model) -> Mapping[str, Any]:
        """The sparsifier state of the checkpoint being resumed (see the module docstring)."""
        recorded = (state.stateful_callbacks or {}).get(STATE_KEY) or {}
        step = int(recorded.get("step", state.global_step))
        given = args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None
        candidates = [self.resume_from, given, recorded.get("checkpoint"),
                      os.path.join(args.output_dir, f"checkpoint-{state.global_step}")]
        tried: list[str] = []
        for c in dict.fromkeys(c for c in candidates if c):
            path = c if os.path.isfile(c) else os.path.join(c, STATE_FILE)
            if not os.path.isfile(path):
                tried.append(f"{path} (missing)")
                continue
            try:
                saved = torch.load(path, weights_only=True)
            except Exception as e:  # noqa: BLE001 - truncated, overwritten, not a state: try the next one
                tried.append(f"{path} (unreadable: damaged or not a sparsifier state; {type(e).__name__})")
                continue
            problem = _mismatch(saved, step, model) if isinstance(saved, Mapping) else "not a sparsifier state"
            if problem:
                tried.append(f"{path} ({problem})")
                continue
            self.resumed_from = path
            return saved
        raise RuntimeError(
            f"resuming the Trainer at step {state.global_step}, but the sparsifier state of that checkpoint was not "
            f"found (tried: {'; '.join(tried)}). It is saved as {STATE_FILE} in each checkpoint directory; tell the "
            f"callback where the resumed checkpoint is: SparsetrainTrainerCallback(..., resume_from='<checkpoint dir>') "
            "(or set args.resume_from_checkpoint to it), or train without resume_from_checkpoint to start a new "
            "sparse run"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.sparsifier is None or state.stateful_callbacks is None:
            return
        # saved in trainer_state.json by a checkpoint at this step, read back when it is resumed
        state.stateful_callbacks[STATE_KEY] = {
            "checkpoint": os.path.abspath(os.path.join(args.output_dir, f"checkpoint-{state.global_step}")),
            "file": STATE_FILE, "step": int(self.sparsifier.step),
        }

    def on_save(self, args, state, control, **kwargs):
        if self.sparsifier is None:
            return
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(ckpt, exist_ok=True)
        atomic_save(self.sparsifier.state_dict(), os.path.join(ckpt, STATE_FILE))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.sparsifier is None or logs is None:
            return
        ours = {
            "sparsetrain/density": float(self.sparsifier.density),
            "sparsetrain/itop_rate": float(self.sparsifier.itop_rate),
            "sparsetrain/updates": int(self.sparsifier.updates),
        }
        logs.update(ours)  # seen by the reporting callbacks that run after this one
        # the Trainer appended this log to its history before the callbacks ran: add ours there too
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(ours)

    def on_train_end(self, args, state, control, **kwargs):
        if self.sparsifier is not None:
            self.sparsifier.remove()  # the model keeps its sparse weights; hooks are gone


def _mismatch(saved: Mapping[str, Any], step: int, model) -> Optional[str]:
    """Why a saved sparsifier state does not belong to the restored run (``None`` if it does)."""
    if int(saved.get("step", -1)) != step:
        return f"its step is {saved.get('step')}, the resumed checkpoint's {step}"
    params = dict(model.named_parameters())
    for name, layer in saved.get("layers", {}).items():
        p = params.get(name)
        mask = layer.get("mask") if isinstance(layer, Mapping) else None
        if p is None or mask is None or tuple(mask.shape) != tuple(p.shape):
            continue  # compressed layers store their own structure
        with torch.no_grad():
            if bool((p.detach()[~mask.to(p.device, torch.bool)] != 0).any()):
                return f"the restored weights of {name} are nonzero outside its mask"
    return None


def _warn_few_updates(algorithm: Algorithm, total_steps: int) -> None:
    """One sentence when fewer than FEW_UPDATES topology updates fit in the run."""
    if not getattr(algorithm, "dynamic", False) or total_steps <= 0:
        return
    interval = max(1, int(getattr(getattr(algorithm, "update_schedule", None), "interval", 1)))
    fits = 0
    for t in range(interval, total_steps + 1, interval):
        fits += bool(algorithm.is_update_step(t, total_steps))
        if fits >= FEW_UPDATES:
            return
    warnings.warn(
        f"{type(algorithm).__name__}: only {fits} topology update(s) fit in max_steps={total_steps} with "
        f"update_interval={interval}, so the run is close to static training; lower update_interval "
        f"(e.g. {max(1, total_steps // 10)}) or train longer", UserWarning, stacklevel=3)
