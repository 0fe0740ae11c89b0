"""The storage interface: how one sparse weight is held, and how a mask is realised on it.

The engine (:class:`~sparsetrain.Sparsifier`, :mod:`~sparsetrain.update`) and the algorithms
speak *masks on dense shapes*. A :class:`Storage` turns such a mask into stored weights:

- :meth:`Storage.attach` installs the per-layer hooks (gradient masking and capture);
- :meth:`Storage.enforce` runs after every optimizer step (keeps masked entries at zero);
- :meth:`Storage.dense_weight` / :meth:`Storage.dense_grad` give the dense view an update
  scores, materialised once per update between :meth:`Storage.begin_update` and
  :meth:`Storage.end_update`;
- :meth:`Storage.commit` realises a new mask, moving the optimizer state along (kept entries
  keep theirs, grown entries start from zero state);
- :meth:`Storage.stream_growth` says whether a growth rule can run on the storage itself
  without dense temporaries (large compressed layers), and :meth:`Storage.stream_update` runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..masks import LayerState

__all__ = ["Storage", "Hooks"]

class Hooks:
    """What a storage's hooks call back into (implemented by the Sparsifier).

    ``capturing()``: whether this backward's dense gradient is wanted; ``capture(layer, grad)``:
    hand it over (a tensor or a :class:`~sparsetrain.sparse.LowRankGrad`); ``enabled()``: whether
    the sparsifier acts at all (see ``Sparsifier.hooks_disabled``); ``nan_safe``: mask gradients
    by selection instead of multiplication; ``stream_growth(layer)``: the streaming growth of the
    coming update (``"gradient"``, ``"random"`` or ``None``).
    """

    nan_safe: bool = False

    def enabled(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def capturing(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def capture(self, layer: "LayerState", grad: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def stream_growth(self, layer: "LayerState") -> Optional[str]:  # pragma: no cover - interface
        raise NotImplementedError

class Storage:
    """Base class of the per-layer storages (see the module docstring).

    Attributes:
        param: the parameter the optimizer holds.
        shape: the weight's dense shape.
        kind: a short name for summaries (``"masked"``, ``"compressed"``, ``"streaming"``).
    """

    kind = "base"
    #: the module holding the weight in a form of its own (a SparseLinear), if any
    module: Optional[torch.nn.Module] = None
    #: whether the storage's sorted index of active positions *is* the layer's active set, so
    #: the layer keeps no dense bool mask and a packed ever-active map (see ``LayerState``)
    index_backed = False

    def __init__(self, param: torch.nn.Parameter, shape: torch.Size):
        self.param = param
        self.shape = torch.Size(shape)
        self._handles: list[Any] = []

    # -- life cycle ----------------------------------------------------------------------
    def attach(self, layer: "LayerState", hooks: Hooks) -> None:
        """Install this layer's hooks (gradient masking, dense-gradient capture)."""
        raise NotImplementedError

    def detach(self) -> None:
        """Remove what :meth:`attach` installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def initial_weight(self) -> Optional[torch.Tensor]:
        """The dense weight before any mask (``None`` if it does not exist yet: deferred init)."""
        return self.param.detach()

    def realise(self, layer: "LayerState", optimizer: torch.optim.Optimizer,
                values: Optional[torch.Tensor] = None) -> None:
        """Make the stored weight follow ``layer.mask`` when the layer is set up. ``values``: the
        active weights in row-major order, for a storage that holds no weight yet. (A masked
        storage does nothing here: the Sparsifier's first :meth:`enforce` zeroes it.)"""

    def mask_changed(self, mask: torch.Tensor) -> None:
        """Refresh whatever the storage derives from the mask (called by ``LayerState.set_mask``)."""

    def holds_pattern(self) -> bool:
        """Whether the storage holds a pattern of its own that :meth:`dense_mask` can read."""
        return False

    def dense_mask(self) -> torch.Tensor:
        """The active set as a dense bool tensor, made from the storage's own pattern."""
        raise NotImplementedError(f"{type(self).__name__} keeps no pattern of its own")

    def enforce(self, layer: "LayerState", optimizer: torch.optim.Optimizer) -> None:
        """After every optimizer step: nothing stored off the mask may be nonzero."""

    # -- the dense view of an update ------------------------------------------------------
    def begin_update(self) -> None:
        """A topology update starts: :meth:`dense_weight` and :meth:`dense_grad` may be materialised."""

    def end_update(self) -> None:
        """The update is over: drop what :meth:`begin_update` materialised."""

    def dense_weight(self) -> torch.Tensor:
        """The weight with its dense shape; writes to it before :meth:`commit` are committed."""
        raise NotImplementedError

    def dense_grad(self) -> Optional[torch.Tensor]:
        """The last gradient with the weight's dense shape (zeros off the mask), or ``None``."""
        raise NotImplementedError

    def mask_grad(self, layer: "LayerState") -> None:
        """Zero ``.grad`` off the mask (a gradient assigned instead of accumulated by backward); a
        storage whose gradient exists only at its nonzeros has nothing to do."""

    def grad_at_active(self, layer: "LayerState", grad: Any) -> torch.Tensor:
        """A captured dense gradient restricted to the active entries (for its norm)."""
        return grad[layer.mask]

    def commit(self, layer: "LayerState", new: torch.Tensor, kept: torch.Tensor,
               optimizer: torch.optim.Optimizer) -> None:
        """Realise mask ``new`` from :meth:`dense_weight` (already zero at dropped entries); the
        optimizer state of ``kept`` entries stays, every other entry's state is zero."""
        raise NotImplementedError

    # -- streaming updates ------------------------------------------------------------------
    def stream_growth(self, layer: "LayerState", rule: Any) -> Optional[str]:
        """``"random"`` or ``"gradient"`` if ``rule``'s update of this layer runs on the storage
        itself (:meth:`stream_update`), without dense temporaries; ``None``: the dense path."""
        return None

    def stream_update(self, layer: "LayerState", k_drop: int, k_grow: int, growth: str,
                      generator: torch.Generator, optimizer: torch.optim.Optimizer, rule: Any = None,
                      ctx: Any = None) -> dict[str, float]:
        """Drop ``k_drop`` and grow ``k_grow`` weights of ``layer`` by ``rule`` (``growth`` growth)
        without dense temporaries (see :mod:`sparsetrain.storage.streaming`)."""
        raise NotImplementedError(f"{type(self).__name__} does not stream updates")

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def state_tensors(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> Iterable[torch.Tensor]:
        """Every optimizer-state tensor of ``param`` shaped like it (momentum, Adam's moments, ...)."""
        state = optimizer.state.get(param)
        if not state:
            return ()
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == param.shape]

    @staticmethod
    def unmasked_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[str]:
        """The state keys of ``param`` holding more than a scalar but not shaped like it (factored or
        flattened state: Adafactor's row/column moments, LBFGS's direction history), which masks
        cannot reach."""
        def shaped(v):
            if isinstance(v, (list, tuple)):
                return any(torch.is_tensor(x) and x.numel() > 1 for x in v)
            return torch.is_tensor(v) and v.numel() > 1 and v.shape != param.shape

        return sorted(k for k, v in (optimizer.state.get(param) or {}).items() if shaped(v))

    @staticmethod
    def fresh_state_values(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, float]:
        """The nonzero values a *new* parameter's weight-shaped state starts from, by state key, for
        the optimizers that start one away from zero: Rprop's ``step_size`` (the group's ``lr``) and
        Adagrad's ``sum`` (``initial_accumulator_value``). Regrown weights get these, not zero
        (a zero Rprop step size would leave them at ``step_size_min`` for good)."""
        group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            return {}
        out: dict[str, float] = {}
        if isinstance(optimizer, torch.optim.Rprop):
            out["step_size"] = float(group["lr"])
        elif isinstance(optimizer, torch.optim.Adagrad):
            out["sum"] = float(group.get("initial_accumulator_value", 0.0))
        return {k: v for k, v in out.items() if v != 0.0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)})"
