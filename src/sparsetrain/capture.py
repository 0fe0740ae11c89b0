"""Dense-gradient capture: the gradient a topology update ranks growth by.

Growth by gradient (RigL, DST-EE, GraNet, ...) needs ``∂L/∂W`` at *every* position, masked ones
included, but only at the steps a topology update follows. The storages hand it over from
``backward()`` (a masked layer's tensor hook sees the dense gradient before masking it; a
compressed layer forms ``∂L/∂yᵀ x`` or keeps its factors) and this module keeps it:

- :func:`accumulate` (the storages' gradient hooks) stages this backward's dense gradient; the
  buffer will continue only if ``.grad`` is exactly what the last accumulation left (same tensor,
  same version), so ``zero_grad`` or a step skipped by GradScaler starts afresh;
- :func:`record_signature` (a post-accumulate-grad hook) adds the staged gradient to
  ``layer.grad_buffer`` and remembers ``.grad``'s tensor and version. Only a backward that
  accumulates into ``.grad`` counts: a ``torch.autograd.grad`` call between backward and step
  (a gradient penalty, a probe) runs the gradient hooks too, but its gradient is never staged in;
- :func:`adopt_assigned` (before the step) takes a ``.grad`` the user assigned instead of
  accumulating it (``p.grad = g``): it is masked like a backward's and, at a step an update
  follows, the gradient the hooks last saw (``g = torch.autograd.grad(...)``: the hooks mask
  ``g`` but see it dense) or else the assigned one becomes the captured gradient;
- :func:`match_optimizer_scale` brings the buffer to the scale the optimizer sees (GradScaler's
  unscaling and gradient clipping rescale ``.grad`` in place after backward);
- :func:`first_nonfinite` names a layer whose captured gradient has a NaN or infinity.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Iterable, Optional

import torch

from .masks import LayerState
from .sparse.lowrank import LowRankGrad

__all__ = ["accumulate", "record_signature", "adopt_assigned", "match_optimizer_scale", "first_nonfinite",
           "clear"]


def accumulate(layer: LayerState, grad: Any, step: int) -> None:
    """Stage this backward's dense gradient (a tensor or :class:`LowRankGrad`) for the step's buffer;
    :func:`record_signature` adds it once autograd has accumulated ``.grad``."""
    g = layer.param.grad
    fresh = (
        layer.grad_buffer is None
        or layer.grad_buffer_step != step
        or g is None
        or not _recorded(layer, g, version=True)
    )
    grad = grad.detach() if torch.is_tensor(grad) else grad  # a LowRankGrad holds detached factors
    layer.grad_pending = (grad, fresh, step)


def record_signature(layer: LayerState, param: torch.Tensor, step: int) -> None:
    """After ``.grad`` was accumulated: add the staged gradient to the buffer and remember which
    tensor and version of ``.grad`` the buffer matches."""
    pending, layer.grad_pending = layer.grad_pending, None
    if pending is not None:
        grad, fresh, step = pending
        layer.grad_buffer = grad if fresh or layer.grad_buffer is None else layer.grad_buffer + grad
        layer.grad_buffer_step = step
    if param.grad is not None:
        _record(layer, param.grad)
        layer.grad_accumulated_at = step


def _record(layer: LayerState, g: torch.Tensor) -> None:
    # the tensor itself (a weak reference), not its address: a freed .grad's memory is often reused
    layer.grad_signature = (weakref.ref(g), g._version)


def _recorded(layer: LayerState, g: torch.Tensor, version: bool) -> bool:
    sig = layer.grad_signature
    return bool(sig) and sig[0]() is g and (not version or sig[1] == g._version)


def adopt_assigned(layer: LayerState, step: int, capturing: bool) -> None:
    """Before and after the optimizer step (a closure assigns ``.grad`` inside it): if ``.grad`` is
    not a tensor a backward accumulated or this function saw (the user assigned it), mask it like a
    backward's gradient and, when ``capturing``, take it as the step's dense gradient (in place of
    one no backward captured)."""
    g = layer.param.grad
    if g is None or _recorded(layer, g, version=False):
        return
    if layer.grad_accumulated_at == step:
        # a backward accumulated this step, and .grad was replaced since by a masked copy (DDP's
        # gradient_as_bucket_view): nothing to mask or capture
        _record(layer, g)
        return
    pending, layer.grad_pending = layer.grad_pending, None
    if capturing and (layer.grad_buffer is None or layer.grad_buffer_step != step):
        if pending is not None and pending[2] == step:
            # torch.autograd.grad's gradient went through the hooks (so the assigned one is masked):
            # the dense gradient the hooks saw is the captured one
            layer.grad_buffer, layer.grad_buffer_step = pending[0], step
        elif layer.storage.kind == "masked":  # assigned from elsewhere: dense as given
            layer.grad_buffer, layer.grad_buffer_step = g.detach().clone(), step
    layer.storage.mask_grad(layer)
    _record(layer, g)


def match_optimizer_scale(layers: Iterable[LayerState], step: int) -> None:
    """Scale each captured gradient so that its active part has the norm of ``.grad``; drop stale ones."""
    for layer in layers:
        buf, g = layer.grad_buffer, layer.param.grad
        if buf is None or g is None or layer.grad_buffer_step != step:
            layer.grad_buffer = None
            continue
        seen = torch.linalg.vector_norm(layer.storage.grad_at_active(layer, buf))
        actual = torch.linalg.vector_norm(g)
        if float(seen) > 0:
            ratio = float(actual) / float(seen)
            if math.isfinite(ratio) and abs(ratio - 1.0) > 1e-6:
                layer.grad_buffer = buf * ratio


def first_nonfinite(layers: Iterable[LayerState]) -> Optional[str]:
    """The name of the first sparse layer whose captured gradient is not finite, or ``None``."""
    for layer in layers:
        if layer.is_dense:
            continue
        buf = layer.grad_buffer
        if isinstance(buf, LowRankGrad):
            if not buf.isfinite():
                return layer.name
        elif buf is not None and not bool(torch.isfinite(buf).all()):
            return layer.name
    return None


def clear(layers: Iterable[LayerState]) -> None:
    """Forget the captured gradients (after the step that used them)."""
    for layer in layers:
        layer.grad_buffer = None
