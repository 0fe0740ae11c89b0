"""Hugging Face ``Trainer`` callback: a Sparsifier on the Trainer's model and optimizer.

```python
from sparsetrain.integrations.huggingface import SparsetrainTrainerCallback
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  callbacks=[SparsetrainTrainerCallback(st.RigL(density=0.1))])
trainer.train()                                   # masks, updates, metrics in the logs
trainer.train(resume_from_checkpoint=True)        # the sparsifier resumes from checkpoint-N/
```

The sparsifier's state is written as ``sparsetrain.pt`` into every ``checkpoint-<step>``
directory the Trainer saves, and read back from the checkpoint a resumed run starts from;
``sparsetrain/density``, ``sparsetrain/itop_rate`` and ``sparsetrain/updates`` are added to the
Trainer's logs (its ``log_history`` and the reporting integrations registered after this callback).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the extra is optional
    raise ImportError("the Hugging Face integration needs transformers: pip install 'sparsetrain[huggingface]'") from e

from .._util import atomic_save
from ..algorithms import Algorithm
from ..sparsifier import Sparsifier

__all__ = ["SparsetrainTrainerCallback", "STATE_FILE"]

STATE_FILE = "sparsetrain.pt"


class SparsetrainTrainerCallback(TrainerCallback):
    """Keep the Trainer's model sparse with ``algorithm``.

    Args:
        algorithm: an :class:`~sparsetrain.Algorithm` or a registered name.
        **sparsifier_kwargs: passed to :class:`~sparsetrain.Sparsifier`.

    ``total_steps`` is the Trainer's ``max_steps``. The sparsifier is ``callback.sparsifier``.
    """

    def __init__(self, algorithm: Union[Algorithm, str], **sparsifier_kwargs: Any):
        self.algorithm = algorithm
        self.sparsifier_kwargs = sparsifier_kwargs
        self.sparsifier: Optional[Sparsifier] = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.sparsifier is not None:
            self.sparsifier.remove()
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if opt is None or model is None:
            raise RuntimeError("SparsetrainTrainerCallback needs the Trainer's model and optimizer at train begin")
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        # resuming: the Trainer restored the weights already; attach with the saved masks
        saved = torch.load(path, weights_only=True) if state.global_step > 0 and os.path.exists(path) else None
        self.sparsifier = Sparsifier(model, opt, self.algorithm, total_steps=int(state.max_steps), state=saved,
                                     **self.sparsifier_kwargs)

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
