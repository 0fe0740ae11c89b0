"""PyTorch Lightning callback: attach a Sparsifier to the LightningModule and its optimizer.

```python
from sparsetrain.integrations.lightning import SparsetrainCallback
trainer = pl.Trainer(max_epochs=30, callbacks=[SparsetrainCallback(st.RigL(density=0.1))])
trainer.fit(module)                      # masks, updates and metrics are handled
trainer.fit(module, ckpt_path="last")    # the sparsifier resumes from Lightning's checkpoint
```

The sparsifier's state travels inside Lightning's checkpoints (the callback's ``state_dict``);
``sparsetrain/density``, ``sparsetrain/itop_rate`` and ``sparsetrain/turnover`` are logged to
the trainer's logger after each topology update.
"""

from __future__ import annotations

import logging
import math

from typing import Any, Optional, Union

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - the extra is optional
    try:
        import lightning.pytorch as pl
    except ImportError as e:
        raise ImportError("the Lightning integration needs pytorch-lightning: pip install 'sparsetrain[lightning]'") from e

from ..algorithms import Algorithm
from ..sparsifier import Sparsifier

__all__ = ["SparsetrainCallback"]

log = logging.getLogger(__name__)


class SparsetrainCallback(pl.Callback):
    """Keep the LightningModule sparse with ``algorithm`` while the trainer fits it.

    Args:
        algorithm: an :class:`~sparsetrain.Algorithm` or a registered name (then
            ``sparsifier_kwargs`` may hold the algorithm's arguments, e.g. ``density``).
        optimizer_index: which of the trainer's optimizers holds the sparse parameters. With several
            optimizers and no ``include=``, the weights the others hold stay dense.
        **sparsifier_kwargs: passed to :class:`~sparsetrain.Sparsifier` (``include``, ``exclude``,
            ``dense``, ``track_usage``, ...).

    ``total_steps`` is the trainer's ``estimated_stepping_batches``. After ``fit`` the sparsifier
    is available as ``callback.sparsifier``.
    """

    def __init__(self, algorithm: Union[Algorithm, str], optimizer_index: int = 0, **sparsifier_kwargs: Any):
        super().__init__()
        self.algorithm = algorithm
        self.optimizer_index = optimizer_index
        self.sparsifier_kwargs = sparsifier_kwargs
        self.sparsifier: Optional[Sparsifier] = None
        self._pending: Optional[dict] = None
        self._logged = 0

    @property
    def state_key(self) -> str:
        """Key of this callback's state in Lightning checkpoints (one sparsifier per trainer)."""
        return "SparsetrainCallback"

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.sparsifier is not None:
            self.sparsifier.remove()
        n = len(trainer.optimizers)
        if not 0 <= self.optimizer_index < n:
            raise ValueError(f"SparsetrainCallback(optimizer_index={self.optimizer_index}): the trainer has {n} "
                             f"optimizer(s) (configure_optimizers); give the index, 0 to {n - 1}, of the one that "
                             "holds the sparse parameters")
        optimizer = trainer.optimizers[self.optimizer_index]
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("SparsetrainCallback needs the run's length to plan its topology updates: set "
                             "Trainer(max_steps=...) or max_epochs with a dataloader of known length")
        total = int(total)
        kwargs = dict(self.sparsifier_kwargs)
        if n > 1 and "include" not in kwargs:
            # several optimizers (a GAN's generator and discriminator): by default only the weights of
            # the chosen one are sparse; the others' optimizers would not keep their masks
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            theirs = {id(p) for i, other in enumerate(trainer.optimizers) if i != self.optimizer_index
                      for group in other.param_groups for p in group["params"] if id(p) not in held}
            # by the name a weight is selected under: a truly sparse layer's 1-D ``values`` as "<layer>.weight"
            others = [f"{name}.weight" if name else "weight" for name, m in pl_module.named_modules()
                      if id(getattr(m, "values", None)) in theirs and hasattr(m, "weight_shape")]
            others += [name for name, p in pl_module.named_parameters() if id(p) in theirs and p.dim() >= 2]
            if others:
                log.info("sparsetrain: %d weights belong to other optimizers than #%d and stay dense: %s",
                         len(others), self.optimizer_index, others)
                exclude = kwargs.get("exclude") or []
                kwargs["exclude"] = (list(exclude) if isinstance(exclude, (list, tuple)) else [exclude]) + others
        # on resume Lightning restored the weights and optimizer state before this hook: attach
        # with the saved masks rather than a fresh draw
        self.sparsifier = Sparsifier(pl_module, optimizer, self.algorithm, total_steps=total, state=self._pending,
                                     **kwargs)
        self._pending = None
        self._logged = len(self.sparsifier.history)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sp = self.sparsifier
        if sp is None or len(sp.history) == self._logged:
            return
        record = sp.history[-1]
        self._logged = len(sp.history)
        pl_module.log_dict({
            "sparsetrain/density": float(sp.density),
            "sparsetrain/itop_rate": float(record.get("itop_rate", sp.itop_rate)),
            "sparsetrain/turnover": float(record.get("turnover", 0.0)),
        }, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.sparsifier is not None:
            self.sparsifier.remove()  # the model keeps its sparse weights; hooks are gone

    def state_dict(self) -> dict:
        if self.sparsifier is None:
            return dict(self._pending or {})
        return self.sparsifier.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(state_dict)
        else:
            self._pending = dict(state_dict)
