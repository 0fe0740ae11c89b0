"""One topology update: drop and grow on every sparse layer, by a *rule*.

A rule is anything with the update half of the :class:`~sparsetrain.Algorithm` interface:
``needs_dense_grad``, ``grow_init``, ``stream_growth``, ``drop_fraction(step, total)``,
``on_update_start(layers, ctx)``, ``plan(layers, ctx)``, ``select_drop(layer, k, ctx)`` and
``select_grow(layer, k, available, ctx)``. The attached algorithm is the rule of its scheduled
updates; :class:`ForcedUpdate` is the rule of a one-off update asked for with
``Sparsifier.request_update`` (Sup-tickets' cycle starts).

:func:`run_update` sequences one update over the layers, each realised by its storage:

1. counters brought up to date, layers without a gradient left alone;
2. the rule's ``on_update_start`` and ``plan`` (how many to drop and grow per layer);
3. per layer, either the storage's streaming update (a large compressed layer whose rule has a
   ``stream_growth``; the rule's optional ``stream_pruned`` / ``stream_drop_score`` /
   ``stream_grow_score`` hooks refine it, see :mod:`sparsetrain.storage.streaming`) or the dense
   path: the rule's selections on the dense view, checked for consistency, grown weights initialised (zero or noise), and the
   new mask committed by the storage with its optimizer-state moves;
4. one record: grown, turnover, exploration and exploitation degrees, R_s, density, per layer.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any, Optional

import torch

from . import capture, scores
from .algorithms.base import UpdateContext
from .masks import LayerState
from .sparse.lowrank import LowRankGrad

if TYPE_CHECKING:  # pragma: no cover
    from .sparsifier import Sparsifier

__all__ = ["ForcedUpdate", "FORCED_GROW", "FORCED_DROP", "run_update", "layer_record", "dense_path_layers",
           "streaming_warning"]

log = logging.getLogger(__name__)

#: growth rules of a forced update
FORCED_GROW = ("gradient", "random", "algorithm")
#: drop rules of a forced update
FORCED_DROP = ("magnitude",)


class ForcedUpdate:
    """Drop ``drop_fraction`` of every sparse layer's active weights by magnitude and regrow as many
    by ``grow``: ``"gradient"`` (largest dense |g|), ``"random"``, or ``"algorithm"`` (the attached
    algorithm's own growth, e.g. DST-EE's acquisition). Regrown weights start as the algorithm's
    ``grow_init`` says. Per-layer counts stay exact."""

    def __init__(self, algorithm, drop_fraction: float, grow: str = "gradient", drop: str = "magnitude"):
        p = float(drop_fraction)
        if not 0.0 <= p <= 1.0 or not math.isfinite(p):
            raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}")
        if grow not in FORCED_GROW:
            raise ValueError(f"unknown grow rule {grow!r}; valid: {', '.join(FORCED_GROW)}")
        if drop not in FORCED_DROP:
            raise ValueError(f"unknown drop rule {drop!r}; valid: {', '.join(FORCED_DROP)}")
        self.algorithm = algorithm
        self.fraction, self.grow, self.drop = p, grow, drop

    def as_dict(self) -> dict[str, Any]:
        """The request as saved in a checkpoint (``Sparsifier.state_dict()["forced_update"]``)."""
        return {"drop_fraction": self.fraction, "grow": self.grow, "drop": self.drop}

    @property
    def label(self) -> str:
        return f"{self.drop}/{self.grow}"

    @property
    def needs_dense_grad(self) -> bool:
        return self.grow == "gradient" or (self.grow == "algorithm" and self.algorithm.needs_dense_grad)

    @property
    def grow_init(self) -> str:
        return self.algorithm.grow_init

    @property
    def stream_growth(self) -> Optional[str]:
        """``"random"`` / ``"gradient"``: a large compressed layer takes the streaming update
        (magnitude drop; ``grow="algorithm"`` streams when the algorithm's own growth does, e.g.
        DST-EE's acquisition, GraNet's gradient or MEST's random growth), else ``None``."""
        if self.drop != "magnitude" or self.grow_init != "zero":
            return None
        if self.grow == "algorithm":
            return getattr(self.algorithm, "stream_growth", None)
        return self.grow

    def stream_grow_score(self, layer: LayerState, ctx: UpdateContext, scale):
        """The algorithm's streaming grow score for ``grow="algorithm"`` (see
        :mod:`sparsetrain.storage.streaming`); ``None``: ``|∂L/∂W|`` itself."""
        if self.grow != "algorithm":
            return None
        make = getattr(self.algorithm, "stream_grow_score", None)
        return make(layer, ctx, scale) if make is not None else None

    def drop_fraction(self, step: int, total_steps: Optional[int]) -> float:
        return self.fraction

    def on_update_start(self, layers, ctx: UpdateContext) -> None:
        if self.grow == "algorithm":
            self.algorithm.on_update_start(layers, ctx)

    def plan(self, layers, ctx: UpdateContext) -> dict[str, tuple[int, int]]:
        return {l.name: (int(round(ctx.drop_fraction * l.n_active)),) * 2 for l in layers if not l.is_dense}

    def select_drop(self, layer: LayerState, k: int, ctx: UpdateContext) -> torch.Tensor:
        return scores.select_lowest(scores.magnitude(layer.weight), layer.mask, k)

    def select_grow(self, layer: LayerState, k: int, available: torch.Tensor, ctx: UpdateContext) -> torch.Tensor:
        if self.grow == "gradient":
            return scores.select_highest(scores.gradient_magnitude(layer.grad_buffer), available, k)
        if self.grow == "random":
            return scores.select_random(available, k, ctx.generator)
        return self.algorithm.select_grow(layer, k, available, ctx)


def dense_path_layers(layers, rule) -> list[str]:
    """The large compressed (index-backed) layers whose updates by ``rule`` take the dense path now:
    each of their updates forms the dense weight, gradient and scores (4 bytes per position each).
    That is every such layer when the rule cannot stream (its ``stream_growth`` is ``None``), and
    a layer denser than 25% with any rule."""
    return [l.name for l in layers if l.index_backed and not l.frozen and not l.is_dense
            and l.storage.stream_growth(l, rule) is None]


def streaming_warning(layers, algorithm, track_usage: bool = False) -> Optional[str]:
    """A message naming what on large compressed layers is dense-sized in memory, or ``None`` when
    their updates stream in memory ∝ nnz (SET, RigL, DST-EE, GraNet, MEST with their default
    zero regrowth, on layers sparser than 25%).

    Names the algorithm's own dense state when it has one (``algorithm.dense_note``, e.g. SNFS's
    momentum of the dense gradient at every position), the layers whose updates cannot stream and
    why, and the layers denser than 25% (they take the dense path until they are sparser: GraNet
    prunes them there). ``track_usage`` is accepted for compatibility: usage counters of such
    layers are index-backed (12 bytes per ever-active position) and never dense-sized."""
    layers = list(layers)
    dense = dense_path_layers(layers, algorithm)
    if not dense:
        return None
    gib = max(l.numel for l in layers if l.name in dense) * 4 / 2**30
    name = type(algorithm).__name__
    cost = f"each update forms dense float tensors (weight, gradient, scores) of up to {gib:.2f} GiB each"
    if getattr(algorithm, "stream_growth", None) is None:
        note = getattr(algorithm, "dense_note", None)
        why = note if note else (
            "only magnitude drop (or MEST's |w| + λ|g|, GraNet's global magnitude pruning) with random, gradient "
            "or DST-EE growth and zero regrowth streams; this configuration (grow_init='init', SET's signed "
            "drop, global ranking or changed criteria) does not")
        return (f"sparsetrain: {name}'s topology updates cannot stream on the large compressed layer(s) "
                f"{', '.join(dense)}: {why}; {cost}")
    return (f"sparsetrain: the large compressed layer(s) {', '.join(dense)} are denser than 25%: while they are, "
            f"{name}'s updates take the dense path there (they stream once a layer is sparser, e.g. after GraNet's "
            f"pruning): {cost}")


def layer_record(k_drop: int, k_grow: int, n_before: int, fresh: int, changed: int,
                 exploitation: Optional[float] = None, newly: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """One layer's entry in an update record: dropped, grown, turnover (positions newly active over
    the active count before), exploration (grown never active before, over grown), exploitation
    (mean |g| of the grown over that of the available positions); ``_fresh``/``_changed`` are
    private counts for the update's totals, ``_newly`` the flat positions made newly active (for
    the survival metric of the next update)."""
    info: dict[str, Any] = {"dropped": k_drop, "grown": k_grow, "turnover": changed / max(n_before, 1),
                            "_fresh": fresh, "_changed": changed, "_newly": newly}
    if k_grow:
        info["exploration"] = fresh / k_grow
    if exploitation is not None:
        info["exploitation"] = exploitation
    return info


def _skip_reason(rule, layers: list[LayerState], t: int, manual: bool) -> Optional[tuple[str, str, str]]:
    """Why this update cannot run, as ``(record's "skipped", message, fix)``, or ``None``: a non-finite
    captured gradient, a non-finite weight (a bad batch: magnitudes cannot be ranked, whatever the
    rule), or no gradient at all for a rule that grows by it."""
    fix = " (check the learning rate / loss scaling)"
    sparse = [l for l in layers if not l.is_dense]
    if rule.needs_dense_grad and sparse and all(l.grad_buffer is None for l in sparse):
        if manual:
            return "no gradient", ("sp.update() called outside an optimizer step has no dense gradient to grow by "
                                   "(one is captured only for a step an update follows): call "
                                   "sp.request_update(...) before the step instead, or grow='random'"), ""
        return "no gradient", (f"no sparse layer received a gradient before step {t} (optimizer.step() without "
                               "loss.backward()?)"), ""
    bad = capture.first_nonfinite(layers) if rule.needs_dense_grad else None
    if bad is not None:
        return "non-finite gradient", f"non-finite gradient in {bad} at step {t}", fix
    bad = next((l.name for l in sparse if not bool(torch.isfinite(l.param).all())), None)
    if bad is not None:
        return "non-finite weight", f"non-finite weight in {bad} after step {t}", fix
    return None


@torch.no_grad()
def run_update(sp: "Sparsifier", rule, manual: bool = False) -> dict[str, Any]:
    """Run one topology update of ``sp`` by ``rule`` now; append and return its record."""
    t = sp.step
    forced = isinstance(rule, ForcedUpdate)
    p_t = rule.drop_fraction(t, sp.total_steps)
    record: dict[str, Any] = {"step": t, "drop_fraction": p_t}
    if forced:
        record["forced"] = rule.label
    layers = list(sp.layers.values())
    problem = _skip_reason(rule, layers, t, manual)
    if problem is not None:
        why, detail, fix = problem
        warnings.warn(f"sparsetrain: {detail}; topology update skipped, masks unchanged{fix}", RuntimeWarning,
                      stacklevel=3)
        record.update(skipped=why, grown=0, turnover=0.0, itop_rate=sp.itop_rate)
        sp.history.append(record)
        return record
    if rule.needs_dense_grad and not sp.algorithm.dense_grad_every_step:
        sp.dense_grad_steps += 1
    ctx = UpdateContext(step=t, total_steps=sp.total_steps, drop_fraction=p_t, generator=sp.generator,
                        update_index=sp.updates + 1)
    streaming = {l.name: g for l in layers if (g := l.storage.stream_growth(l, rule)) is not None}
    dense_view = [l for l in layers if l.name not in streaming]
    for layer in dense_view:
        layer.storage.begin_update()
        if isinstance(layer.grad_buffer, LowRankGrad):  # captured as factors, ranked on the dense path
            layer.grad_buffer = layer.grad_buffer.dense()
    try:
        return _update_layers(sp, rule, t, ctx, record, streaming)
    finally:
        for layer in dense_view:
            layer.storage.end_update()


def _update_layers(sp: "Sparsifier", rule, t: int, ctx: UpdateContext, record: dict[str, Any],
                   streaming: dict[str, str]) -> dict[str, Any]:
    for layer in sp.layers.values():
        layer.flush(t)
    candidates, no_gradient = [], []
    for layer in sp.layers.values():
        if rule.needs_dense_grad and layer.grad_buffer is None and not layer.is_dense:
            log.warning("sparsetrain: %s received no gradient before step %d; its topology is kept", layer.name, t)
            no_gradient.append(layer.name)
            continue
        candidates.append(layer)
    if no_gradient:
        record["no_gradient"] = no_gradient
    # per-update bookkeeping first (DST-EE's rounds, GraNet's view of all layers), then the plan
    rule.on_update_start(sp.layers, ctx)
    plan = rule.plan(candidates, ctx)
    totals = {"fresh": 0, "changed": 0, "active": 0, "grown": 0}
    exploit_num, exploit_w = 0.0, 0
    per_layer: dict[str, dict[str, Any]] = {}
    newly: dict[str, Optional[torch.Tensor]] = {}
    for layer in candidates:
        k_drop, k_grow = plan.get(layer.name, (0, 0))
        k_drop = max(0, min(int(k_drop), layer.n_active))
        if k_drop == 0 and k_grow == 0:
            continue
        n_before = layer.n_active
        if layer.name in streaming:
            info = layer.storage.stream_update(layer, k_drop, k_grow, streaming[layer.name], sp.generator,
                                               sp.optimizer, rule, ctx)
        else:
            info = _dense_layer(sp, rule, layer, k_drop, k_grow, ctx)
        grown = int(info["grown"])
        layer.n_active = n_before - k_drop + grown
        totals["fresh"] += info.pop("_fresh")
        totals["changed"] += info.pop("_changed")
        newly[layer.name] = info.pop("_newly")
        totals["active"] += n_before
        totals["grown"] += grown
        if "exploitation" in info:
            exploit_num += info["exploitation"] * grown
            exploit_w += grown
        per_layer[layer.name] = info
    sp.updates += 1
    survival = _survival(sp, newly, per_layer)
    record.update(
        grown=totals["grown"],
        turnover=totals["changed"] / totals["active"] if totals["active"] else 0.0,
        exploration=totals["fresh"] / totals["grown"] if totals["grown"] else 0.0,
        itop_rate=sp.itop_rate,
        density=sp.density,
        layers=per_layer,
    )
    if exploit_w:
        record["exploitation"] = exploit_num / exploit_w
    if survival is not None:
        record["survival"] = survival
    sp.history.append(record)
    log.debug("sparsetrain update at step %d: p=%.4f turnover=%.4f R_s=%.4f", t, record["drop_fraction"],
              record["turnover"], record["itop_rate"])
    return record


def _survival(sp: "Sparsifier", newly: dict[str, Optional[torch.Tensor]],
              per_layer: dict[str, dict[str, Any]]) -> Optional[float]:
    """The fraction of the weights the previous update made newly active that are still active
    after this one (ITOP's "reliable exploration"), overall (returned) and per layer (into
    ``per_layer``); then remember this update's newly active positions for the next one."""
    kept = total = 0
    for layer in sp.layers.values():
        prev = layer.last_grown
        if prev is not None and prev.numel():
            alive = int(torch.count_nonzero(layer.is_active(prev)))
            kept, total = kept + alive, total + prev.numel()
            if layer.name in per_layer:  # layers this update changed; the total counts every layer
                per_layer[layer.name]["survival"] = alive / prev.numel()
        new = newly.get(layer.name)
        layer.last_grown = (new.detach().to(torch.int64).cpu() if new is not None
                            else torch.zeros(0, dtype=torch.int64))
    return kept / total if total else None


def _dense_layer(sp: "Sparsifier", rule, layer: LayerState, k_drop: int, k_grow: int,
                 ctx: UpdateContext) -> dict[str, float]:
    """Drop and grow one layer on its dense view by the rule's selections; returns its update
    record (private keys ``_fresh``/``_changed`` for the totals)."""
    old = layer.mask
    dropped = rule.select_drop(layer, k_drop, ctx) if k_drop else torch.zeros_like(old)
    after_drop = old & ~dropped
    available = ~after_drop
    k_grow = max(0, min(int(k_grow), int(torch.count_nonzero(available))))
    grown = rule.select_grow(layer, k_grow, available, ctx) if k_grow else torch.zeros_like(old)
    new = after_drop | grown
    if int(torch.count_nonzero(new)) != layer.n_active - k_drop + k_grow or bool((grown & after_drop).any()):
        # an algorithm bug, never user input
        name = type(getattr(rule, "algorithm", rule)).__name__
        raise RuntimeError(f"{name} selected an inconsistent drop/grow set in {layer.name}")
    newly = new & ~old
    n_new = int(torch.count_nonzero(newly))
    fresh = int(torch.count_nonzero(~layer.ever_at(grown.reshape(-1).nonzero().squeeze(1)))) if k_grow else 0
    exploit = None
    if k_grow and layer.grad_buffer is not None:
        g = layer.grad_buffer.abs()
        n_avail = int(torch.count_nonzero(available))
        # means over positions by sums (boolean indexing of a large layer is slow)
        base = float(g.sum() - (g * after_drop).sum()) / max(n_avail, 1)
        if base > 0:
            exploit = float((g * grown).sum()) / k_grow / base
    info = layer_record(k_drop, k_grow, layer.n_active, fresh, n_new, exploit,
                        newly=newly.reshape(-1).nonzero().squeeze(1))
    kept = old & new
    weight = layer.weight  # the dense view: the parameter itself, or the storage's copy
    weight.mul_(kept)
    if rule.grow_init == "init" and layer.init_std > 0:
        noise = torch.randn(weight.shape, generator=sp.generator).to(weight.device, weight.dtype)
        weight.add_(noise * layer.init_std * newly)
    layer.storage.commit(layer, new, kept, sp.optimizer)
    layer.set_mask(new)
    layer.mark_ever(new)
    return info

