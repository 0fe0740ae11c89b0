"""Masked dense storage: the weight is an ordinary dense parameter; the mask zeroes it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from .base import Hooks, Storage

if TYPE_CHECKING:  # pragma: no cover
    from ..masks import LayerState

__all__ = ["MaskedStorage"]


class MaskedStorage(Storage):
    """A dense parameter kept sparse by its mask.

    A tensor hook masks the gradient during ``backward()`` (so the optimizer, clipping and
    everything between backward and step see masked gradients) and hands the dense gradient over
    when it is wanted; after every step the masked weights and every optimizer-state tensor shaped
    like the weight are multiplied by the mask (with ``nan_safe``, set to zero by selection, so a
    NaN there is cleared too). ``mask_mul`` is the mask in the weight's dtype (multiplying by a
    float mask is ~10× faster than by a bool one). A topology update also zeroes the last gradient
    at the weights it drops, so ``.grad`` is zero off the mask after every step.
    """

    kind = "masked"

    def __init__(self, param: torch.nn.Parameter, shape: Optional[torch.Size] = None):
        super().__init__(param, param.shape if shape is None else shape)
        self.mask_mul: Optional[torch.Tensor] = None
        self._mask: Optional[torch.Tensor] = None
        self._nan_safe = False

    def mask_changed(self, mask: torch.Tensor) -> None:
        self._mask = mask
        self.mask_mul = mask.to(self.param.dtype)

    def _sync(self, layer: "LayerState") -> None:
        mm = self.mask_mul
        if mm is None or mm.device != self.param.device or mm.dtype != self.param.dtype or self._mask is not layer.mask:
            layer.sync_device()

    def attach(self, layer: "LayerState", hooks: Hooks) -> None:
        self._nan_safe = hooks.nan_safe

        def on_grad(grad: torch.Tensor):
            if not hooks.enabled():
                return None
            if hooks.capturing():
                hooks.capture(layer, grad)
            mm = self.mask_mul
            if mm is None or mm.device != grad.device or mm.dtype != grad.dtype:
                # the model was moved or cast (model.to(torch.bfloat16)) after attaching: a mask in
                # another dtype would change the gradient's dtype, which autograd refuses
                layer.sync_device()
            if hooks.nan_safe:
                # selection, not multiplication: a NaN/inf at a masked position must not survive
                return torch.where(layer.mask, grad, 0.0)
            return grad * self.mask_mul

        self._handles.append(self.param.register_hook(on_grad))

    @torch.no_grad()
    def enforce(self, layer: "LayerState", optimizer: torch.optim.Optimizer) -> None:
        if layer.is_dense:
            return
        self._sync(layer)
        if self._nan_safe:  # selection: a NaN/inf that reached a masked weight or its state is cleared too
            off = ~layer.mask
            self.param.masked_fill_(off, 0.0)
            for t in self.state_tensors(optimizer, self.param):
                t.masked_fill_(off, 0)
            return
        self.param.mul_(self.mask_mul)
        for t in self.state_tensors(optimizer, self.param):
            t.mul_(self.mask_mul)

    def dense_weight(self) -> torch.Tensor:
        return self.param

    def dense_grad(self) -> Optional[torch.Tensor]:
        return self.param.grad

    @torch.no_grad()
    def mask_grad(self, layer: "LayerState") -> None:
        g = self.param.grad
        if g is None or layer.is_dense:
            return
        self._sync(layer)
        if self._nan_safe or g.dtype != self.mask_mul.dtype or g.device != self.mask_mul.device:
            g.masked_fill_(~layer.mask.to(g.device), 0)  # selection: a NaN at a masked weight is cleared too
        else:
            g.mul_(self.mask_mul)

    def grad_at_active(self, layer: "LayerState", grad) -> torch.Tensor:
        self._sync(layer)
        return grad * self.mask_mul

    @torch.no_grad()
    def commit(self, layer: "LayerState", new: torch.Tensor, kept: torch.Tensor,
               optimizer: torch.optim.Optimizer) -> None:
        # fresh optimizer state for grown weights, zero state for dropped ones (by selection: an
        # update is rare, and a NaN in a dropped weight's state must not survive as NaN·0)
        for t in self.state_tensors(optimizer, self.param):
            t.masked_fill_(~kept.to(t.device), 0)
        if self.param.grad is not None:  # the last gradient at dropped weights: masked like the weights
            self.param.grad.masked_fill_(~new.to(self.param.grad.device), 0)
        state = optimizer.state.get(self.param)
        if state:
            fresh = self.fresh_state_values(optimizer, self.param)
            grown = new & ~kept if fresh else None
            for key, value in fresh.items():
                t = state.get(key)
                if torch.is_tensor(t) and t.shape == self.param.shape:
                    t.masked_fill_(grown.to(t.device), value)
