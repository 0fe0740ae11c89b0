"""The Sparsifier: attaches an algorithm to a model and its optimizer and keeps them sparse.

It works through public PyTorch hooks only, so the training loop does not change:

- a tensor hook on every sparse parameter masks its gradient during ``backward()`` (the
  optimizer, gradient clipping and everything between backward and step see masked
  gradients) and, only when the coming optimizer step is followed by a topology update that
  needs it, keeps the dense gradient (summed over micro-batches);
- an optimizer step pre-hook, at update steps, brings the dense gradient to the scale the
  optimizer sees (GradScaler's unscaling, gradient clipping) and checks it is finite;
- an optimizer step post-hook counts the step, zeroes masked weights and every optimizer
  state tensor shaped like a sparse weight, and runs the topology update on schedule.

A step skipped by ``torch.amp.GradScaler`` never calls ``optimizer.step()``, so it is not
counted and does not advance any schedule.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import warnings
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import distributions, scores
from .algorithms import Algorithm, UpdateContext, make_algorithm
from .masks import LARGE_LAYER, LayerState, random_mask, sample_positions
from .sparse.linear import LowRankGrad, SparseLinear, form_dense_grad

__all__ = ["Sparsifier", "DEFAULT_SPARSE_MODULES", "STATE_FORMAT"]

log = logging.getLogger(__name__)

#: entries of the dense gradient formed at once by a streaming gradient-growth update (64 MiB in float32)
GRADIENT_BLOCK = 1 << 24

#: Module types whose ``weight`` is sparse by default (spec §1.1).
DEFAULT_SPARSE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Version tag written into :meth:`Sparsifier.state_dict`.
STATE_FORMAT = "sparsetrain.sparsifier/1"

Selector = Union[str, type, Callable[[str, nn.Parameter, nn.Module], bool]]

# optimizer -> the Sparsifier attached to it (two sparsifiers on one optimizer would fight)
_FORCED_GROW = ("gradient", "random", "algorithm")
_FORCED_DROP = ("magnitude",)
_ATTACHED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, Sparsifier]" = weakref.WeakKeyDictionary()


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return False
    return isinstance(t, DTensor)


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple, set)):
        return list(x)
    return [x]


def _matches(selector: Selector, name: str, param: nn.Parameter, module: nn.Module, attr: str) -> bool:
    """Whether a selector (glob on the parameter name, module type, or predicate) matches."""
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    if isinstance(selector, type):
        return isinstance(module, selector) and attr == "weight"
    if callable(selector):
        return bool(selector(name, param, module))
    raise TypeError(f"a selector must be a name glob, a module type or a predicate, got {selector!r}")


class Sparsifier:
    """Keep ``model`` sparse while ``optimizer`` trains it, moving connections per ``algorithm``.

    Args:
        model: any ``nn.Module``.
        optimizer: any ``torch.optim.Optimizer`` holding the sparse parameters.
        algorithm: an :class:`~sparsetrain.algorithms.Algorithm` (``st.RigL(density=0.1)``) or a
            registered name (``"rigl"``), in which case ``algorithm_kwargs`` build it.
        total_steps: the number of optimizer steps of the run (needed by schedules that end at a
            fraction of training or anneal over it).
        include: which parameters are sparse: name globs (``"features.*.weight"``), module types
            (the module's ``weight``), or predicates ``f(name, param, module) -> bool``. Default:
            the weights of Linear and Conv1d/2d/3d modules.
        exclude: the same kinds of selectors, removed from the sparse set.
        dense: name globs of sparse layers pinned dense (kept in the density budget).
        track_usage: keep per-weight usage counters (steps active); costs 4 bytes per weight,
            nothing per step.
        nan_safe: mask gradients by selection (``torch.where``) so that a NaN/inf gradient at a
            masked position can never reach a masked weight. The default multiplies by the mask
            (3–10× cheaper on CPU), where NaN·0 = NaN: a non-finite gradient confined to masked
            positions would then reach those weights (see ``docs/correctness.md``).
        distributed: with ``torch.distributed`` initialised and more than one rank (``"auto"``) or
            ``True``: the captured dense gradients are averaged across ranks (as DDP averages
            ``.grad``) before growth, and every update verifies with a checksum that all ranks
            chose the same masks (a divergence raises, naming the layer). ``False``: ranks are
            independent runs.
        process_group: the ``torch.distributed`` group (default: the world).
        state: a :meth:`state_dict` to attach with, for a model (and optimizer) whose trained state
            was already restored — as trainers restore checkpoints before callbacks run: the saved
            masks are used from the start, so no fresh mask is drawn or enforced on the restored
            weights. Equivalent to ``load_state_dict(state)`` right after construction otherwise.

    Attributes:
        masks: dict of fully-qualified parameter name -> bool mask.
        history: list of per-update records (plain dicts).
        step: optimizer steps counted so far.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        algorithm: Union[Algorithm, str] = "rigl",
        *,
        total_steps: Optional[int] = None,
        include: Union[Selector, Sequence[Selector], None] = None,
        exclude: Union[Selector, Sequence[Selector], None] = None,
        dense: Union[str, Sequence[str], None] = None,
        track_usage: bool = True,
        nan_safe: bool = False,
        distributed: Union[bool, str] = "auto",
        process_group: Any = None,
        state: Optional[Mapping[str, Any]] = None,
        **algorithm_kwargs: Any,
    ):
        if isinstance(algorithm, str):
            algorithm = make_algorithm(algorithm, **algorithm_kwargs)
        elif algorithm_kwargs:
            raise TypeError(
                f"unexpected arguments {sorted(algorithm_kwargs)}: pass them to the algorithm, "
                f"e.g. st.{type(algorithm).__name__}(..., {next(iter(algorithm_kwargs))}=...)"
            )
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"algorithm must be an Algorithm or a registered name, got {type(algorithm).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if optimizer in _ATTACHED:
            raise RuntimeError(
                "a Sparsifier is already attached to this optimizer; call .remove() on it first "
                "(or load its state with load_state_dict instead of building a second one)"
            )
        if total_steps is not None and int(total_steps) <= 0:
            raise ValueError(f"total_steps must be a positive number of optimizer steps, got {total_steps}")
        self.model = model
        self.optimizer = optimizer
        self.algorithm = algorithm
        self.total_steps = int(total_steps) if total_steps is not None else None
        self.algorithm.check_total_steps(self.total_steps)
        self.track_usage = bool(track_usage)
        self.nan_safe = bool(nan_safe)
        if distributed not in (True, False, "auto"):
            raise ValueError(f"distributed must be True, False or 'auto', got {distributed!r}")
        self.distributed = distributed
        self.process_group = process_group
        self.step = 0
        self.updates = 0
        self.dense_grad_steps = 0
        self.history: list[dict[str, Any]] = []
        self.updates_paused = False
        self._forced: Optional[dict[str, Any]] = None
        self._reduced_at = -1
        self.generator = torch.Generator().manual_seed(self.algorithm.seed)
        self._enabled = True
        self._handles: list[Any] = []

        named, self._sparse_modules = self._select(model, include, exclude)
        meta = [n for n, p in named if p.is_meta]
        if meta:
            raise ValueError(
                f"parameter(s) {meta[:3]}{'...' if len(meta) > 3 else ''} are on the meta device (no data): "
                "materialise the model first (model.to_empty(device=...) and initialise it, or load its weights), "
                "then attach the Sparsifier"
            )
        sharded = [n for n, p in named if _is_dtensor(p)]
        if sharded:
            raise ValueError(
                f"parameter(s) {sharded[:3]} are sharded DTensors (FSDP / tensor parallelism), which the sparsifier "
                "does not support yet: masks and topology updates need the full tensors. Use DistributedDataParallel "
                "(see docs/distributed.md, which also says what FSDP support would take)"
            )
        self._check_optimizer(named)
        self.layers: dict[str, LayerState] = {}
        if state is not None:
            self._check_state_format(state)
        self._init_layers(named, _as_list(dense), state)
        self._attach()
        if state is not None:
            self.load_state_dict(state)  # ends by enforcing the saved masks
        else:
            self.apply_masks()
        log.info("sparsetrain: %s on %d layers, density %.4f", algorithm, len(self.layers), self.density)

    # ------------------------------------------------------------------ selection / init
    @staticmethod
    def _select(model, include, exclude) -> tuple[list[tuple[str, nn.Parameter]], dict[str, SparseLinear]]:
        include, exclude = _as_list(include), _as_list(exclude)
        sparse_modules: dict[str, SparseLinear] = {}
        chosen: list[tuple[str, nn.Parameter]] = []
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            for attr, param in module.named_parameters(recurse=False):
                if isinstance(module, SparseLinear) and attr == "values":
                    attr = "weight"  # a compressed weight is selected and reported under its dense name
                name = f"{mod_name}.{attr}" if mod_name else attr
                if id(param) in seen:
                    continue  # a tied / shared weight is one sparse parameter, under its first name
                if include:
                    hit = any(_matches(s, name, param, module, attr) for s in include)
                else:
                    hit = isinstance(module, DEFAULT_SPARSE_MODULES + (SparseLinear,)) and attr == "weight"
                if not hit or any(_matches(s, name, param, module, attr) for s in exclude):
                    continue
                seen.add(id(param))
                if not param.requires_grad:
                    log.info("sparsetrain: %s is frozen (requires_grad=False); left dense", name)
                    continue
                chosen.append((name, param))
                if isinstance(module, SparseLinear) and param is module.values:
                    sparse_modules[name] = module
        if not chosen:
            raise ValueError(
                "no prunable parameter matched: by default the weights of Linear and Conv1d/2d/3d modules "
                "are sparse; pass include=[...] with parameter-name globs (e.g. 'encoder.*.weight'), module "
                "types or a predicate, and check that exclude=[...] does not remove everything"
            )
        return chosen, sparse_modules

    def _check_optimizer(self, named):
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in named if id(p) not in held]
        if missing:
            raise ValueError(
                f"parameter(s) {', '.join(missing)} are sparse but not held by the optimizer, so their "
                "masks could not be enforced; create the optimizer over model.parameters() (or add them "
                f"with optimizer.add_param_group), or leave them dense with exclude={missing!r}"
            )

    def _init_layers(self, named, dense_globs, state: Optional[Mapping[str, Any]] = None):
        names = [n for n, _ in named]
        compressed = self._sparse_modules
        shapes = [compressed[n].weight_shape if n in compressed else p.shape for n, p in named]
        pinned = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in dense_globs)]
        start_density = self.algorithm.initial_density
        dens = distributions.layer_densities(
            names, shapes, start_density, self.algorithm.distribution, dense=pinned,
            power=self.algorithm.erk_power,
        )
        sizes = {n: shape.numel() for n, shape in zip(names, shapes)}
        total = None
        if isinstance(self.algorithm.distribution, str):
            total = int(round(start_density * sum(sizes.values())))
        counts = distributions.layer_counts(dens, sizes, total)
        # Scored initial masks (SNIP, GraSP, ...) come from the algorithm; random otherwise.
        with self.hooks_disabled():
            if compressed and getattr(self.algorithm, "needs_batch", False):
                raise ValueError(
                    f"{type(self.algorithm).__name__} scores its initial mask on dense weights; choose the mask on "
                    "the dense model first, then convert with st.sparse.to_sparse(model, masks=sp.masks)"
                )
            # the algorithms see every weight with its dense shape (no data needed: scored masks are refused)
            seen = [(n, torch.empty(compressed[n].weight_shape, device="meta", dtype=p.dtype) if n in compressed
                     else p) for n, p in named]
            given = self.algorithm.initial_masks(self.model, seen, counts, self.generator)
            del seen
        for (name, param), shape in zip(named, shapes):
            module = compressed.get(name)
            deferred = module is not None and module.deferred
            with torch.no_grad():
                if deferred:  # no weights yet: they are drawn below, at the chosen positions only
                    dense_w, init_std = None, module.init_bound(max(counts[name], 1) / shape.numel()) / math.sqrt(3.0)
                else:
                    dense_w = module.dense_weight() if module is not None else param.detach()
                    init_std = float(dense_w.float().std()) if dense_w.numel() > 1 else 0.0
            target = dens[name]
            saved = state["layers"].get(name) if state is not None else None
            if saved is not None and list(saved["shape"]) == list(shape):
                mask = saved["mask"].to(param.device, torch.bool).clone()  # load_state_dict completes the rest
            elif given is not None and name in given:
                mask = given[name].to(param.device, torch.bool).reshape(shape).clone()
                target = float(torch.count_nonzero(mask)) / shape.numel()
            else:
                mask = random_mask(shape, counts[name], self.generator, param.device)
            if deferred:
                if saved is not None:  # load_state_dict brings the values
                    values = torch.zeros(int(torch.count_nonzero(mask)), dtype=param.dtype)
                else:
                    b = module.init_bound(max(int(torch.count_nonzero(mask)), 1) / shape.numel())
                    values = torch.rand(int(torch.count_nonzero(mask)), generator=self.generator,
                                        dtype=param.dtype).mul_(2 * b).sub_(b)
                module.set_structure(mask, values.to(param.device), reallocate=True)
            elif module is not None:  # keep only the chosen weights: memory ∝ nnz from here on
                module.set_structure(mask, dense_w[mask], reallocate=True)
                del dense_w
            self.layers[name] = LayerState(
                name=name,
                param=param,
                target_density=target,
                pinned=name in pinned,
                n_active=int(torch.count_nonzero(mask)),
                mask=mask,
                ever_active=mask.clone(),
                counter=torch.zeros(shape, dtype=torch.int32, device=param.device) if self.track_usage else None,
                init_std=init_std,
                shape=shape,
                sparse_module=module,
            )

    # ------------------------------------------------------------------ hooks
    def _attach(self):
        for layer in self.layers.values():
            if layer.sparse_module is not None:
                # gradients exist only at the nonzeros: nothing to mask; the dense gradient comes
                # from the layer's backward when a topology update needs it
                layer.sparse_module.dense_grad_request = lambda: self._enabled and self._capture_next()
                layer.sparse_module.dense_grad_sink = self._make_dense_sink(layer)
            else:
                self._handles.append(layer.param.register_hook(self._make_grad_hook(layer)))
            self._handles.append(layer.param.register_post_accumulate_grad_hook(self._make_accumulated_hook(layer)))
        self._handles.append(self.optimizer.register_step_pre_hook(self._pre_step))
        self._handles.append(self.optimizer.register_step_post_hook(self._post_step))
        _ATTACHED[self.optimizer] = self

    def remove(self) -> None:
        """Detach every hook; the model keeps its current (sparse) weights."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for layer in self.layers.values():
            if layer.sparse_module is not None:
                layer.sparse_module.dense_grad_request = None
                layer.sparse_module.dense_grad_sink = form_dense_grad
        if _ATTACHED.get(self.optimizer) is self:
            del _ATTACHED[self.optimizer]

    @contextlib.contextmanager
    def hooks_disabled(self):
        """Context in which gradients are neither masked nor captured (e.g. for saliency passes)."""
        prev, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = prev

    def _capture_next(self) -> bool:
        alg = self.algorithm
        if alg.dense_grad_every_step:
            return True
        if self._forced is not None:
            return self._grow_needs_grad(self._forced["grow"])
        return alg.needs_dense_grad and self._scheduled(self.step + 1)

    def _scheduled(self, step: int) -> bool:
        return not self.updates_paused and self.algorithm.is_update_step(step, self.total_steps)

    def _grow_needs_grad(self, grow: str) -> bool:
        return grow == "gradient" or (grow == "algorithm" and self.algorithm.needs_dense_grad)

    # ------------------------------------------------------------------ manual control
    def pause_updates(self, paused: bool = True) -> None:
        """Stop (or, with ``paused=False``, resume) the algorithm's scheduled topology updates.

        Masks, weights and counters keep being maintained; only the periodic drop-and-grow stops.
        Sup-tickets' cyclic phase uses this. Saved in :meth:`state_dict`.
        """
        self.updates_paused = bool(paused)

    def request_update(self, drop_fraction: float, grow: str = "gradient", drop: str = "magnitude") -> None:
        """Run one drop-and-grow of ``drop_fraction`` of every layer's active weights after the next step.

        The update happens in the hook of the next ``optimizer.step()``, so gradient growth sees that
        step's dense gradient (captured only for that step). ``grow`` is ``"gradient"`` (top |g|),
        ``"random"`` or ``"algorithm"`` (the attached algorithm's own growth rule, e.g. DST-EE's
        acquisition); ``drop`` is ``"magnitude"`` (the lowest |w|). Per-layer counts stay exact.
        The request is saved in :meth:`state_dict`.
        """
        p = float(drop_fraction)
        if not 0.0 <= p <= 1.0 or not math.isfinite(p):
            raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}")
        if grow not in _FORCED_GROW:
            raise ValueError(f"unknown grow rule {grow!r}; valid: {', '.join(_FORCED_GROW)}")
        if drop not in _FORCED_DROP:
            raise ValueError(f"unknown drop rule {drop!r}; valid: {', '.join(_FORCED_DROP)}")
        self._forced = {"drop_fraction": p, "grow": grow, "drop": drop}

    def _capture(self, layer: LayerState, grad: torch.Tensor) -> None:
        # Dense gradient for growth; micro-batches of one step are summed. The buffer continues
        # only if .grad is exactly what our last accumulation left (same tensor, same version):
        # zero_grad (either way) or a step skipped by GradScaler and followed by zero_grad start
        # afresh.
        g = layer.values_param.grad
        fresh = (
            layer.grad_buffer is None
            or layer.grad_buffer_step != self.step
            or g is None
            or layer.grad_signature != (g.data_ptr(), g._version)
        )
        grad = grad.detach() if torch.is_tensor(grad) else grad  # a LowRankGrad holds detached factors
        layer.grad_buffer = grad if fresh else layer.grad_buffer + grad
        layer.grad_buffer_step = self.step

    def _make_dense_sink(self, layer: LayerState):
        def sink(gyt: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
            if self._stream_growth(layer, self._forced) == "gradient":
                # a large layer's streaming update ranks growth from the factors, block by block
                self._capture(layer, LowRankGrad(gyt.detach(), x.detach()))
                return None
            dense = torch.mm(gyt, x)
            self._capture(layer, dense)
            return dense

        return sink

    def _make_grad_hook(self, layer: LayerState):
        def hook(grad: torch.Tensor):
            if not self._enabled:
                return None
            if self._capture_next():
                self._capture(layer, grad)
            if layer.mask_mul.device != grad.device:
                layer.sync_device()
            if self.nan_safe:
                # selection, not multiplication: a NaN/inf at a masked position must not survive
                return torch.where(layer.mask, grad, 0.0)
            return grad * layer.mask_mul

        return hook

    def _make_accumulated_hook(self, layer: LayerState):
        def hook(param: torch.Tensor):
            if self._enabled and layer.grad_buffer is not None and param.grad is not None:
                layer.grad_signature = (param.grad.data_ptr(), param.grad._version)

        return hook

    # ------------------------------------------------------------------ distributed (torch.distributed)
    def _group(self):
        """The process group to agree with, or ``None`` for a single process."""
        if self.distributed is False or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            if self.distributed is True:
                raise RuntimeError("Sparsifier(distributed=True) needs torch.distributed.init_process_group() first")
            return None
        group = self.process_group
        if torch.distributed.get_world_size(group) < 2 and self.distributed == "auto":
            return None
        return group if group is not None else torch.distributed.group.WORLD

    def _all_reduce_dense_grads(self, group) -> None:
        """Average the captured dense gradients over the ranks: growth sees DDP's gradient."""
        layers = [l for l in self.layers.values() if not l.is_dense]
        if not layers:
            return
        present = [l.grad_buffer is not None and l.grad_buffer_step == self.step for l in layers]
        for l, ok in zip(layers, present):
            if ok and isinstance(l.grad_buffer, LowRankGrad):
                # factors cannot be summed across ranks: averaging needs the dense gradient
                l.grad_buffer = l.grad_buffer.dense()
        ref = next((l.grad_buffer for l, ok in zip(layers, present) if ok), None)
        dtype = ref.dtype if ref is not None else layers[0].param.dtype
        device = ref.device if ref is not None else layers[0].param.device
        # one collective: every layer's gradient, then one "this rank had it" flag per layer
        flat = torch.cat([
            (l.grad_buffer.reshape(-1).to(dtype) if ok else torch.zeros(l.numel, dtype=dtype, device=device))
            for l, ok in zip(layers, present)
        ] + [torch.tensor([float(ok) for ok in present], dtype=dtype, device=device)])
        torch.distributed.all_reduce(flat, group=group)
        flags = flat[-len(layers):].tolist()
        flat /= torch.distributed.get_world_size(group)
        offset = 0
        for l, seen in zip(layers, flags):
            part = flat[offset:offset + l.numel].view(l.shape)
            offset += l.numel
            if seen > 0:
                l.grad_buffer = part
                l.grad_buffer_step = self.step

    def _reduce_once(self, group) -> None:
        """All-reduce this step's dense gradients once, where they exist (see :meth:`_post_step`)."""
        if self._reduced_at == self.step:
            return
        if any(l.grad_buffer is not None and l.grad_buffer_step == self.step for l in self.layers.values()):
            self._all_reduce_dense_grads(group)
            self._reduced_at = self.step

    def _verify_masks(self, group) -> None:
        """Compare a checksum of every layer's mask across ranks; raise naming the first divergence."""
        sums = []
        for l in self.layers.values():
            idx = l.mask.reshape(-1).nonzero().reshape(-1).to(torch.int64)
            sums.append([int(((idx * 2654435761) % 2147483647).sum()), int(idx.numel())])
        # on the masks' device: where the backend communicates (CUDA for NCCL)
        mine = torch.tensor(sums, dtype=torch.int64, device=next(iter(self.layers.values())).mask.device)
        gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(gathered, mine, group=group)
        for rank, other in enumerate(gathered):
            if not torch.equal(other.cpu(), mine.cpu()):
                row = int((other.cpu() != mine.cpu()).any(1).nonzero()[0])
                name = list(self.layers)[row]
                raise RuntimeError(
                    f"sparsetrain: the masks of {name} differ between this rank and rank {rank} after the update at "
                    f"step {self.step}: every rank needs the same algorithm seed and the same gradients (wrap the model "
                    "in DistributedDataParallel; give every rank the same seed)"
                )

    def _pre_step(self, optimizer, args, kwargs):
        if not self._enabled or not self._capture_next():
            return
        group = self._group()
        if group is not None:
            self._reduce_once(group)
        # Bring the dense gradient to the scale the optimizer sees: GradScaler unscales .grad in
        # place and clipping rescales it after backward; both are per-step scalings we propagate.
        for layer in self.layers.values():
            buf, g = layer.grad_buffer, layer.param.grad
            if buf is None or g is None or layer.grad_buffer_step != self.step:
                layer.grad_buffer = None
                continue
            if isinstance(buf, LowRankGrad):
                seen = torch.linalg.vector_norm(buf.at(layer.sparse_module))
            else:
                seen = torch.linalg.vector_norm(buf[layer.mask] if layer.mask_mul is None else buf * layer.mask_mul)
            actual = torch.linalg.vector_norm(g)
            if float(seen) > 0:
                ratio = float(actual) / float(seen)
                if math.isfinite(ratio) and abs(ratio - 1.0) > 1e-6:
                    layer.grad_buffer = buf * ratio

    def _post_step(self, optimizer, args, kwargs):
        if not self._enabled:
            return
        if self._capture_next():
            # optimizers stepped with a closure (Lightning) run backward inside step(), after
            # the pre-step hook: the dense gradients are averaged across ranks here instead
            group = self._group()
            if group is not None:
                self._reduce_once(group)
        self.step += 1
        self.apply_masks()
        if self.algorithm.dense_grad_every_step:
            # e.g. SNFS's momentum of dense gradients; every such step costs a dense weight gradient
            self.dense_grad_steps += 1
            self.algorithm.on_step(self.layers, self.step)
        updated = True
        if self._forced is not None:
            forced, self._forced = self._forced, None
            self.update(**forced)
        elif self._scheduled(self.step):
            self.update()
        else:
            updated = False
        if updated:
            group = self._group()
            if group is not None:
                self._verify_masks(group)
        for layer in self.layers.values():
            layer.grad_buffer = None

    # ------------------------------------------------------------------ enforcement
    def _state_tensors(self, param: nn.Parameter) -> Iterable[torch.Tensor]:
        state = self.optimizer.state.get(param)
        if not state:
            return ()
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == param.shape]

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked weight and every optimizer-state tensor shaped like a sparse weight."""
        for layer in self.layers.values():
            if layer.is_dense or layer.sparse_module is not None:  # compressed: nothing stored off the mask
                continue
            if layer.mask_mul.device != layer.param.device:
                layer.sync_device()
            layer.param.mul_(layer.mask_mul)
            for t in self._state_tensors(layer.param):
                t.mul_(layer.mask_mul)

    # ------------------------------------------------------------------ topology update
    def _grads_finite(self) -> Optional[str]:
        for layer in self.layers.values():
            if layer.is_dense:
                continue
            buf = layer.grad_buffer
            if isinstance(buf, LowRankGrad):
                if not buf.isfinite():
                    return layer.name
            elif buf is not None and not bool(torch.isfinite(buf).all()):
                return layer.name
        return None

    @torch.no_grad()
    def update(self, drop_fraction: Optional[float] = None, grow: Optional[str] = None,
               drop: str = "magnitude") -> dict[str, Any]:
        """Run one drop-and-grow topology update now (normally called on schedule by the hooks).

        With no arguments this is the algorithm's own update. With ``drop_fraction`` (see
        :meth:`request_update`, which is how to get a dense gradient for it) every sparse layer
        drops that fraction of its active weights by ``drop`` and regrows as many by ``grow``.
        """
        t = self.step
        forced = drop_fraction is not None
        if forced:
            grow = grow or "gradient"
            if grow not in _FORCED_GROW or drop not in _FORCED_DROP:
                raise ValueError(f"grow must be one of {_FORCED_GROW} and drop one of {_FORCED_DROP}")
            p_t = float(drop_fraction)
            needs_grad = self._grow_needs_grad(grow)
        else:
            p_t = self.algorithm.drop_fraction(t, self.total_steps)
            needs_grad = self.algorithm.needs_dense_grad
        record: dict[str, Any] = {"step": t, "drop_fraction": p_t}
        if forced:
            record["forced"] = f"{drop}/{grow}"
        if needs_grad:
            bad = self._grads_finite()
            if bad is not None:
                warnings.warn(
                    f"sparsetrain: non-finite gradient in {bad} at step {t}; topology update skipped, "
                    "masks unchanged (check the learning rate / loss scaling)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                record.update(skipped="non-finite gradient", grown=0, turnover=0.0, itop_rate=self.itop_rate)
                self.history.append(record)
                return record
            if not self.algorithm.dense_grad_every_step:
                self.dense_grad_steps += 1
        ctx = UpdateContext(step=t, total_steps=self.total_steps, drop_fraction=p_t, generator=self.generator,
                            update_index=self.updates + 1)
        how = {"drop_fraction": p_t, "grow": grow, "drop": drop} if forced else None
        streaming = {l.name: g for l in self.layers.values() if (g := self._stream_growth(l, how)) is not None}
        for layer in self.layers.values():  # factors captured for a layer that does not stream after all
            if layer.name not in streaming and isinstance(layer.grad_buffer, LowRankGrad):
                layer.grad_buffer = layer.grad_buffer.dense()
        compressed = [l for l in self.layers.values() if l.sparse_module is not None and l.name not in streaming]
        for layer in compressed:  # the algorithms see a dense weight, once per update
            dense = layer.sparse_module.dense_weight()
            g = layer.sparse_module.values.grad
            if g is not None:
                full = torch.zeros(layer.shape.numel(), dtype=g.dtype, device=g.device)
                full[layer.sparse_module.flat_index()] = g[: layer.sparse_module.nnz]
                dense.grad = full.view(layer.shape)
            layer.param = dense
        try:
            return self._run_update(t, p_t, record, ctx, forced, grow, needs_grad, streaming)
        finally:
            for layer in compressed:
                layer.param = layer.sparse_module.values

    def _stream_growth(self, layer: LayerState, forced: Optional[Mapping[str, Any]]) -> Optional[str]:
        """``"random"`` or ``"gradient"`` if ``layer`` takes the streaming update of the coming
        topology update (see :meth:`_stream_layer`), else ``None``. ``forced``: the forced
        update's arguments, or ``None`` for the algorithm's own update."""
        if layer.sparse_module is None or layer.numel <= LARGE_LAYER or layer.is_dense:
            return None
        if 4 * layer.n_active >= layer.numel:  # the dense path ranks differently there
            return None
        if forced is not None:
            ok = (forced.get("drop") == "magnitude" and forced.get("grow") in ("random", "gradient")
                  and self.algorithm.grow_init == "zero")
            return forced["grow"] if ok else None
        return self.algorithm.stream_growth

    def _run_update(self, t, p_t, record, ctx, forced, grow, needs_grad, streaming=None) -> dict[str, Any]:
        streaming = streaming or {}
        for layer in self.layers.values():
            layer.flush(t)
        candidates = []
        for layer in self.layers.values():
            if needs_grad and layer.grad_buffer is None and not layer.is_dense:
                log.warning("sparsetrain: %s received no gradient before step %d; its topology is kept", layer.name, t)
                continue
            candidates.append(layer)
        # per-update bookkeeping first (DST-EE's rounds, GraNet's view of all layers), then the plan
        if forced:
            if grow == "algorithm":
                self.algorithm.on_update_start(self.layers, ctx)
            plan = {l.name: (int(round(p_t * l.n_active)),) * 2 for l in candidates if not l.is_dense}
        else:
            self.algorithm.on_update_start(self.layers, ctx)
            plan = self.algorithm.plan(candidates, ctx)
        grown_total = new_total = changed_total = active_total = 0
        exploit_num = 0.0
        exploit_w = 0
        per_layer: dict[str, dict[str, float]] = {}
        for layer in candidates:
            k_drop, k_grow = plan.get(layer.name, (0, 0))
            k_drop = max(0, min(int(k_drop), layer.n_active))
            if k_drop == 0 and k_grow == 0:
                continue
            n_before = layer.n_active
            if layer.name in streaming:
                info = self._stream_layer(layer, k_drop, k_grow, streaming[layer.name])
            else:
                info = self._dense_layer(layer, k_drop, k_grow, ctx, forced, grow)
            grown = int(info["grown"])
            layer.n_active = n_before - k_drop + grown
            new_total += info.pop("_fresh")
            changed_total += info.pop("_changed")
            active_total += n_before
            grown_total += grown
            if "exploitation" in info:
                exploit_num += info["exploitation"] * grown
                exploit_w += grown
            per_layer[layer.name] = info
        self.updates += 1
        record.update(
            grown=grown_total,
            turnover=changed_total / active_total if active_total else 0.0,
            exploration=new_total / grown_total if grown_total else 0.0,
            itop_rate=self.itop_rate,
            density=self.density,
            layers=per_layer,
        )
        if exploit_w:
            record["exploitation"] = exploit_num / exploit_w
        self.history.append(record)
        log.debug("sparsetrain update at step %d: p=%.4f turnover=%.4f R_s=%.4f", t, p_t, record["turnover"], record["itop_rate"])
        return record

    def _dense_layer(self, layer: LayerState, k_drop: int, k_grow: int, ctx: UpdateContext, forced: bool,
                     grow: Optional[str]) -> dict[str, float]:
        """Drop and grow one layer on dense-shaped tensors (the algorithm's selections, or the forced
        rule); returns its update record (private keys ``_fresh``/``_changed`` for the totals)."""
        old = layer.mask
        if not k_drop:
            dropped = torch.zeros_like(old)
        elif forced:
            dropped = scores.select_lowest(scores.magnitude(layer.param), old, k_drop)
        else:
            dropped = self.algorithm.select_drop(layer, k_drop, ctx)
        after_drop = old & ~dropped
        available = ~after_drop
        k_grow = max(0, min(int(k_grow), int(torch.count_nonzero(available))))
        if not k_grow:
            grown = torch.zeros_like(old)
        elif forced and grow == "gradient":
            grown = scores.select_highest(scores.gradient_magnitude(layer.grad_buffer), available, k_grow)
        elif forced and grow == "random":
            grown = scores.select_random(available, k_grow, self.generator)
        else:
            grown = self.algorithm.select_grow(layer, k_grow, available, ctx)
        new = after_drop | grown
        if int(torch.count_nonzero(new)) != layer.n_active - k_drop + k_grow or bool((grown & after_drop).any()):
            # an algorithm bug, never user input
            raise RuntimeError(f"{type(self.algorithm).__name__} selected an inconsistent drop/grow set in {layer.name}")
        newly = new & ~old
        n_new = int(torch.count_nonzero(newly))
        fresh = int(torch.count_nonzero(grown & ~layer.ever_active)) if k_grow else 0
        info: dict[str, float] = {"dropped": k_drop, "grown": k_grow, "turnover": n_new / max(layer.n_active, 1),
                                  "_fresh": fresh, "_changed": n_new}
        if k_grow:
            info["exploration"] = fresh / k_grow
            if layer.grad_buffer is not None:
                g = layer.grad_buffer.abs()
                n_avail = int(torch.count_nonzero(available))
                # means over positions by sums (boolean indexing of a large layer is slow)
                base = float(g.sum() - (g * after_drop).sum()) / max(n_avail, 1)
                if base > 0:
                    info["exploitation"] = float((g * grown).sum()) / k_grow / base
        self._apply_new_mask(layer, new, old & new, newly)
        return info

    def _apply_new_mask(self, layer: LayerState, new, kept, newly) -> None:
        param = layer.param  # for a compressed layer: its dense materialisation during the update
        param.mul_(kept)
        if self.algorithm.grow_init == "init" and layer.init_std > 0:
            noise = torch.randn(param.shape, generator=self.generator).to(param.device, param.dtype)
            param.add_(noise * layer.init_std * newly)
        if layer.sparse_module is not None:
            self._restructure(layer, new)
        else:
            # fresh optimizer state for grown weights, zero state for dropped ones
            for t in self._state_tensors(param):
                t.mul_(kept)
        layer.set_mask(new)
        layer.ever_active |= new

    @torch.no_grad()
    def _stream_layer(self, layer: LayerState, k_drop: int, k_grow: int, growth: str = "random") -> dict[str, float]:
        """Magnitude drop and random or gradient growth of a compressed large layer, in memory
        proportional to nnz plus the layer's bool masks (no dense float tensor: the weight, its
        gradient and the scores are never materialised).

        Selects exactly what the dense path selects: the ``k_drop`` active weights of lowest
        magnitude (the same ranking of the same row-major values) and ``k_grow`` positions drawn
        by :func:`~sparsetrain.masks.sample_positions` from the same generator state, which is
        also what SET uses for large masked-dense layers — or, with ``growth="gradient"``, the
        ``k_grow`` available positions of largest dense-gradient magnitude, ranked block of rows
        by block of rows from the gradient's factors (:class:`~sparsetrain.sparse.LowRankGrad`);
        the same set as the dense ranking up to exact ties.
        """
        module = layer.sparse_module
        flat, nnz = module.flat_index(), module.nnz
        values = module.active_values().detach()
        keep = torch.ones(nnz, dtype=torch.bool, device=flat.device)
        if k_drop >= nnz:
            keep.fill_(False)
        elif k_drop > 0:
            keep[torch.topk(values.abs().float(), k_drop, largest=False, sorted=False).indices] = False
        old = layer.mask.reshape(-1)
        taken = old.clone()
        taken[flat[~keep]] = False  # after the drop; becomes the new mask below
        k_grow = max(0, min(int(k_grow), taken.numel() - (nnz - k_drop)))
        exploit = None
        if growth == "gradient":
            grown, exploit = self._top_gradient_positions(layer, taken, k_grow)
            taken[grown] = True
        else:
            grown = sample_positions(taken.numel(), k_grow, self.generator, taken)
        fresh = int(torch.count_nonzero(~layer.ever_active.reshape(-1)[grown])) if k_grow else 0
        # grown positions start at zero, except one dropped and regrown in this same update, which
        # keeps its value (and, in _restructure, its optimizer state), as on the dense path
        regrown = old[grown]
        grown_values = torch.zeros(k_grow, dtype=values.dtype, device=values.device)
        if bool(regrown.any()):
            grown_values[regrown] = values[torch.searchsorted(flat, grown[regrown])]
        new_flat, order = torch.sort(torch.cat([flat[keep], grown]))
        new_values = torch.cat([values[keep], grown_values])[order]
        new = taken.view(layer.shape)
        self._restructure(layer, new, new_values, new_flat)
        layer.set_mask(new)
        layer.ever_active.reshape(-1)[grown] = True
        changed = k_grow - int(torch.count_nonzero(regrown))
        info: dict[str, float] = {"dropped": k_drop, "grown": k_grow, "turnover": changed / max(nnz, 1),
                                  "_fresh": fresh, "_changed": changed}
        if k_grow:
            info["exploration"] = fresh / k_grow
        if exploit is not None:
            info["exploitation"] = exploit
        return info

    def _top_gradient_positions(self, layer: LayerState, taken: torch.Tensor, k: int):
        """The ``k`` positions not in ``taken`` (flat bool) of largest ``|∂L/∂W|``, computed from the
        captured factors in blocks of rows of about 2²⁴ entries; also the exploitation degree
        (mean |g| of the grown over mean |g| of the available positions), or ``None``."""
        grad = layer.grad_buffer  # factors; a dense tensor under DDP (averaged across ranks)
        if grad is None:
            raise RuntimeError(f"{layer.name}: no gradient captured for its streaming update")
        out_f, in_f = layer.shape
        block = max(1, GRADIENT_BLOCK // max(in_f, 1))
        best_v = torch.empty(0, dtype=torch.float32, device=taken.device)
        best_p = torch.empty(0, dtype=torch.int64, device=taken.device)
        total_avail, n_avail = 0.0, 0
        for r0 in range(0, out_f, block):
            r1 = min(out_f, r0 + block)
            g = grad.rows(r0, r1).abs_() if isinstance(grad, LowRankGrad) else grad[r0:r1].abs()
            g = g.float().reshape(-1)
            busy = taken[r0 * in_f:r1 * in_f].nonzero().squeeze(1)  # active after the drop: ~nnz
            free = g.numel() - busy.numel()
            n_avail += free
            if free:
                total_avail += float(g.sum()) - float(g[busy].sum())
            g.index_fill_(0, busy, float("-inf"))
            kk = min(k, free)
            if kk <= 0:
                continue
            # only entries above the running k-th best can enter the top k
            floor = float(best_v.min()) if best_v.numel() >= k else None
            v, i = scores.topk_large(g, kk, floor=floor)
            best_v, best_p = torch.cat([best_v, v]), torch.cat([best_p, i + r0 * in_f])
            if best_v.numel() > k:
                keep = torch.topk(best_v, k, sorted=False).indices
                best_v, best_p = best_v[keep], best_p[keep]
        exploit = None
        if k and n_avail and total_avail > 0:
            exploit = float(best_v.sum()) / k / (total_avail / n_avail)
        return best_p, exploit

    def _restructure(self, layer: LayerState, new, new_values: Optional[torch.Tensor] = None,
                     new_flat: Optional[torch.Tensor] = None) -> None:
        """Rebuild a compressed layer's CSR for mask ``new`` (values: ``new_values`` in row-major
        order, default the dense materialisation at ``new``) and move its optimizer state along."""
        module = layer.sparse_module
        values = module.values
        old_flat, old_nnz = module.flat_index(), module.nnz
        state = self.optimizer.state.get(values) or {}
        moved = {}
        if any(torch.is_tensor(v) and v.shape == values.shape for v in state.values()):
            # where each new position sits in the old (sorted, row-major) pattern: kept positions
            # take their state, grown ones start fresh; O(nnz), no dense temporaries
            if new_flat is None:
                new_flat = new.reshape(-1).nonzero().squeeze(1)
            at = torch.searchsorted(old_flat, new_flat).clamp_(max=max(old_nnz - 1, 0))
            found = (old_flat[at] == new_flat) if old_nnz else torch.zeros_like(new_flat, dtype=torch.bool)
            for key, v in state.items():
                if torch.is_tensor(v) and v.shape == values.shape:
                    moved[key] = torch.where(found, v[:old_nnz][at] if old_nnz else 0, 0).to(v.dtype)
        resized = module.set_structure(new, layer.param[new] if new_values is None else new_values)
        if resized:
            log.warning("sparsetrain: %s outgrew its compressed capacity; its values were reallocated (safe only "
                        "when no autograd graph that used them is still alive)", layer.name)
        for key, v in moved.items():
            if resized:
                state[key] = v
            else:  # same tensors, same size: the pattern's state first, zero padding after
                state[key][: v.numel()] = v
                state[key][v.numel():] = 0
        if values.grad is not None:
            values.grad = None  # it belonged to the old structure

    # ------------------------------------------------------------------ metrics
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Fully-qualified parameter name -> bool mask (``True`` = active)."""
        return {n: layer.mask for n, layer in self.layers.items()}

    @property
    def density(self) -> float:
        """Realised global density over the sparse parameters."""
        return sum(l.n_active for l in self.layers.values()) / sum(l.numel for l in self.layers.values())

    @property
    def itop_rate(self) -> float:
        """R_s: fraction of sparse-parameter weights active at least once (initial mask included)."""
        ever = sum(int(torch.count_nonzero(l.ever_active)) for l in self.layers.values())
        return ever / sum(l.numel for l in self.layers.values())

    def usage_counters(self) -> dict[str, torch.Tensor]:
        """Per-weight number of optimizer steps active so far (``track_usage=True``)."""
        if not self.track_usage:
            raise RuntimeError("usage counters are not tracked: construct the Sparsifier with track_usage=True")
        for layer in self.layers.values():
            layer.flush(self.step)
        return {n: l.counter for n, l in self.layers.items()}

    def metrics(self) -> dict[str, Any]:
        """Global and per-layer metrics as plain numbers (see ``docs/metrics.md``)."""
        last = next((h for h in reversed(self.history) if "skipped" not in h), None)
        return {
            "step": self.step,
            "updates": self.updates,
            "density": self.density,
            "itop_rate": self.itop_rate,
            "turnover": last["turnover"] if last else 0.0,
            "active": sum(l.n_active for l in self.layers.values()),
            "total": sum(l.numel for l in self.layers.values()),
            "layer_density": {n: l.density for n, l in self.layers.items()},
            "layer_itop_rate": {n: int(torch.count_nonzero(l.ever_active)) / max(l.numel, 1) for n, l in self.layers.items()},
        }

    def training_flops(self, report) -> dict[str, float]:
        """Training FLOPs of the steps so far, from a :func:`sparsetrain.flops` report.

        Counts forward+backward as 3 forward passes of the *actual* per-layer active counts
        over time, plus at each dense-gradient step the extra dense weight-gradient cost
        (``f_D - f_S``), as in spec §1.7. Returns ``{"sparse", "dense", "fraction"}`` in FLOPs
        per training example.
        """
        for layer in self.layers.values():
            layer.flush(self.step)
        steps = max(self.step, 1)
        fixed = report.dense - sum(report.layers[n].dense for n in self.layers if n in report.layers)
        sparse_sum = 0.0
        for n, layer in self.layers.items():
            per_weight = report.layers[n].per_weight if n in report.layers else 0.0
            sparse_sum += per_weight * (layer.active_steps if self.step else layer.n_active)
        mean_fs = fixed + sparse_sum / steps
        sparse_total = 3.0 * mean_fs * steps + self.dense_grad_steps * (report.dense - report.sparse)
        dense_total = 3.0 * report.dense * steps
        return {"sparse": sparse_total, "dense": dense_total, "fraction": sparse_total / dense_total}

    def summary(self, file=None) -> str:
        """A readable per-layer table (shape, target and realised density, R_s); also written to ``file``."""
        m = self.metrics()
        rows = [("layer", "shape", "active", "target", "density", "R_s")]
        for n, l in self.layers.items():
            rows.append((n, "x".join(map(str, l.shape)), f"{l.n_active}/{l.numel}",
                         f"{l.target_density:.4f}", f"{l.density:.4f}", f"{m['layer_itop_rate'][n]:.4f}"))
        rows.append(("total", "", f"{m['active']}/{m['total']}", f"{self.algorithm.density:.4f}",
                     f"{m['density']:.4f}", f"{m['itop_rate']:.4f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.algorithm!r}  step {self.step}, {self.updates} topology updates"]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        text = "\n".join(lines)
        if file is not None:
            file.write(text + "\n")
        return text

    def __repr__(self) -> str:
        return f"Sparsifier({self.algorithm!r}, layers={len(self.layers)}, step={self.step}, density={self.density:.4f})"

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Masks, usage counters, ever-active masks, schedule position, RNG state and history.

        Only tensors and plain containers, so ``torch.load(..., weights_only=True)`` reads it.
        """
        layers = {}
        for n, l in self.layers.items():
            l.flush(self.step)
            layers[n] = {
                "shape": list(l.shape),
                "n_active": l.n_active,
                "target_density": l.target_density,
                "mask": l.mask.clone(),
                "ever_active": l.ever_active.clone(),
                "counter": l.counter.clone() if l.counter is not None else None,
                "count_step": l.count_step,
                "active_steps": l.active_steps,
                "init_std": l.init_std,
            }
        return {
            "format": STATE_FORMAT,
            "algorithm": self.algorithm.name,
            "config": {k: v for k, v in self.algorithm.config().items() if isinstance(v, (int, float, str, type(None)))},
            "step": self.step,
            "updates": self.updates,
            "dense_grad_steps": self.dense_grad_steps,
            "total_steps": self.total_steps,
            "rng_state": self.generator.get_state(),
            "history": [dict(h) for h in self.history],
            "updates_paused": self.updates_paused,
            "forced_update": dict(self._forced) if self._forced is not None else None,
            "layers": layers,
            "algorithm_state": self.algorithm.state_dict(),
        }

    @staticmethod
    def _check_state_format(state) -> None:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "not a sparsetrain Sparsifier state (missing format tag "
                f"{STATE_FORMAT!r}); pass the dict returned by Sparsifier.state_dict()"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; checks that it comes from the same model and layers."""
        self._check_state_format(state)
        saved = state["layers"]
        ours, theirs = set(self.layers), set(saved)
        if ours != theirs:
            raise ValueError(
                "this checkpoint is from a different model or sparse-layer selection: "
                f"missing here {sorted(theirs - ours)}, not in checkpoint {sorted(ours - theirs)}; "
                "build the same model with the same include/exclude before loading"
            )
        for n, s in saved.items():
            shape = list(self.layers[n].shape)
            if list(s["shape"]) != shape:
                raise ValueError(
                    f"checkpoint shape of {n} is {s['shape']} but the model's is {shape}: this checkpoint "
                    "comes from a different model"
                )
        if state["algorithm"] != self.algorithm.name:
            warnings.warn(
                f"sparsetrain: loading a {state['algorithm']!r} state into a {self.algorithm.name!r} sparsifier",
                RuntimeWarning,
                stacklevel=2,
            )
        for n, s in saved.items():
            l = self.layers[n]
            dev = l.param.device
            l.set_mask(s["mask"].to(dev, torch.bool).clone())
            l.n_active = int(s["n_active"])
            l.target_density = float(s["target_density"])
            l.ever_active = s["ever_active"].to(dev, torch.bool).clone()
            if self.track_usage:
                c = s.get("counter")
                l.counter = c.to(dev, torch.int32).clone() if c is not None else torch.zeros(l.shape, dtype=torch.int32, device=dev)
            l.count_step = int(s["count_step"])
            l.active_steps = int(s["active_steps"])
            l.init_std = float(s["init_std"])
            l.grad_buffer = None
            if int(torch.count_nonzero(l.mask)) != l.n_active:
                raise ValueError(f"corrupt checkpoint: mask of {n} has {int(torch.count_nonzero(l.mask))} active weights, expected {l.n_active}")
        self.step = int(state["step"])
        self.updates = int(state["updates"])
        self.dense_grad_steps = int(state["dense_grad_steps"])
        if state.get("total_steps") is not None and self.total_steps is None:
            self.total_steps = int(state["total_steps"])
        self.generator.set_state(state["rng_state"])
        self.history = [dict(h) for h in state["history"]]
        self.updates_paused = bool(state.get("updates_paused", False))
        forced = state.get("forced_update")
        self._forced = dict(forced) if forced is not None else None
        self.algorithm.load_state_dict(state.get("algorithm_state", {}))
        self.apply_masks()
