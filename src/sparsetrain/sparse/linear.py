"""A Linear layer that stores and computes with its nonzeros only (spec §6).

:class:`SparseLinear` keeps the weight as CSR: ``values`` (the trainable parameter, one entry
per nonzero, in row-major order), ``crow_indices``/``col_indices``, and an explicit transposed
structure (``t_crow_indices``, ``t_col_indices`` and ``t_perm``, the position of each
transposed entry in ``values``) for the input gradient. Its autograd function computes

- forward ``y = x Wᵀ`` as the sparse × dense product ``(W xᵀ)ᵀ``;
- ``∂L/∂x = (Wᵀ ∂L/∂yᵀ)ᵀ`` with the stored transpose (multiplying by ``W.t()`` is very slow);
- ``∂L/∂values`` only at the nonzeros, with ``torch.sparse.sampled_addmm``;
- the dense weight gradient ``∂L/∂yᵀ x`` only when asked for (a topology update with gradient
  growth is due): a :class:`~sparsetrain.Sparsifier` installs that request and receives it.

Optimizer state of ``values`` is nnz-sized. The same Sparsifier and algorithms drive the layer:
at a topology update the layer's storage (:class:`~sparsetrain.storage.CompressedStorage`) materialises
the dense weight once, the algorithm selects drop and grow exactly as for a masked-dense layer, and
the storage rebuilds the structure with :meth:`SparseLinear.set_structure`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import InputError
from . import autotune, kernels

__all__ = ["SparseLinear", "form_dense_grad"]

# torch marks CSR as beta; the kernels used here are the stable, documented ones.
warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support is in beta", category=UserWarning)


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _csr(crow, col, values, size):
    return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def form_dense_grad(gyt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The default ``SparseLinear.dense_grad_sink``: the dense weight gradient ``gyt @ x``."""
    return torch.mm(gyt, x)


def _layout(t: torch.Tensor) -> str:
    """``c`` (contiguous), ``t`` (the transposed view of a contiguous matrix) or ``s`` (other strides)."""
    return "c" if t.is_contiguous() else ("t" if t.dim() == 2 and t.t().is_contiguous() else "s")


def _pick(op: str, allowed: bool, rows: int, cols: int, batch: int, nnz: int, native, fallback, m=None,
          layout: str = "") -> bool:
    """Whether to run ``op`` on the compiled kernels: only where they are ``allowed`` (CPU float32,
    backend not ``torch``); with the ``auto`` backend, where they were measured faster than torch's
    kernels for this shape class and operand ``layout`` (:mod:`sparsetrain.sparse.autotune`; the
    layout is remembered on the layer ``m`` for :func:`~sparsetrain.sparse.autotune.layer_kernels`)."""
    if not allowed or kernels.backend() != "auto":
        return allowed
    if m is not None:
        m.__dict__.setdefault("kernel_layouts", {})[op] = layout  # (layers pickled before it existed)
        # per batch size too: training's and evaluation's layouts differ (the first layer's input)
        m.__dict__.setdefault("kernel_layouts_by_batch", {})[(op, batch)] = layout
    return autotune.prefer_native(op, rows, cols, batch, nnz, native, fallback, layout=layout)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, module, row_major):
        # Returns yᵀ (out × B, contiguous: the kernels' natural layout) or, with row_major, y (B × out,
        # contiguous, written so by the kernel). For 2-d inputs the caller takes yᵀ's transpose as a
        # view, so a following SparseLinear (through bias, ReLU, ... which keep the layout) gets an
        # input whose transpose is already contiguous; inputs of other shapes (a transformer's
        # (B, T, D)) get row-major outputs, as attention kernels and LayerNorm need.
        m = module
        allowed = kernels.use_native(x, values) and (bias is None or kernels.use_native(bias))

        def native():  # the bias is added in the kernel (no extra pass over the output)
            return kernels.spmm(m.crow_indices, m.col_indices, values, x.t(), m.out_features, bias=bias,
                                row_major=row_major)

        def fallback():
            yt = torch.mm(_csr(m.crow_indices, m.col_indices, values, m.weight_shape), _contiguous(x.t()))
            yt = yt + bias[:, None] if bias is not None else yt
            return yt.t().contiguous() if row_major else yt

        use = _pick("spmm", allowed, m.out_features, m.in_features, x.shape[0], values.numel(), native, fallback, m,
                    f"{_layout(x.t())}>{'r' if row_major else 'c'}")
        out = native() if use else fallback()
        ctx.module, ctx.native, ctx.row_major = module, allowed, row_major
        ctx.save_for_backward(x, values)
        return out

    @staticmethod
    def backward(ctx, grad):
        if torch.is_autocast_enabled(grad.device.type):  # a backward called inside an autocast region
            with torch.autocast(grad.device.type, enabled=False):
                return _SparseLinearFn._backward(ctx, grad)
        return _SparseLinearFn._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        x, values = ctx.saved_tensors
        m, row_major = ctx.module, ctx.row_major
        gyt = grad.t() if row_major else grad  # out × B, contiguous or a transposed view
        gx = gvals = gbias = None
        if ctx.needs_input_grad[2]:
            gbias = gyt.sum(1)
        # a backward with create_graph=True (a gradient penalty) runs in grad mode: the compiled kernels
        # have no autograd of their own, so torch's differentiable products are used there
        allowed = ctx.native and kernels.use_native(gyt) and not torch.is_grad_enabled()
        # the compiled kernels pack gyt once for both products (a transposed view is packed
        # directly, no transposed copy); torch's take one contiguous copy
        gp = _Once(lambda: kernels.pack(gyt))
        rows = _Once(lambda: _contiguous(gyt))
        if ctx.needs_input_grad[0]:
            def native(xp=None):  # Wᵀ's structure, the values read through t_perm (gathered once)
                return kernels.spmm_packed(m.t_crow_indices, m.t_col_indices, values,
                                           kernels.pack(gyt) if xp is None else xp, gyt.shape[1], m.in_features,
                                           perm=m.t_perm, row_major=row_major)

            def fallback(g=None):
                wt = _csr(m.t_crow_indices, m.t_col_indices, values[m.t_perm], (m.in_features, m.out_features))
                gxt = torch.mm(wt, _contiguous(gyt) if g is None else g)
                return gxt.t().contiguous() if row_major else gxt

            # measured each with its own layout change (pack / contiguous copy) included; run on the
            # operands shared with the value gradient
            use = _pick("spmm_t", allowed, m.in_features, m.out_features, gyt.shape[1], values.numel(), native,
                        fallback, m, f"{_layout(gyt)}>{'r' if row_major else 'c'}")
            gx = native(gp()) if use else fallback(rows())
            if not row_major:
                gx = gx.t()
        if ctx.needs_input_grad[1]:
            want = m.dense_grad_request
            # only at topology-update steps: the sink gets the gradient's factors and returns the
            # dense product if it formed one (a large layer's streaming update never does)
            dense = m.dense_grad_sink(gyt, x) if want is not None and want() else None
            if dense is not None:
                gvals = dense.reshape(-1)[m.flat_index()]
            else:
                gvals = _sampled_grad(m, values, gyt, x, allowed, gp, rows)
        return gx, gvals, gbias, None, None


class _Once:
    """A value computed on first call and kept (an operand shared by the backward's products)."""

    __slots__ = ("make", "value")

    def __init__(self, make):
        self.make, self.value = make, None

    def __call__(self):
        if self.value is None:
            self.value = self.make()
        return self.value


def _sampled_grad(m: "SparseLinear", values: torch.Tensor, gyt: torch.Tensor, x: torch.Tensor,
                  allowed: bool, gp=None, rows=None) -> torch.Tensor:
    """``(gyt @ x)`` at the stored entries of ``m`` (row-major, nnz): the value gradient, on the
    compiled kernels where ``allowed`` and (backend ``auto``) measured faster; ``gp``/``rows``
    give gyt packed / contiguous when already formed."""
    def native(gpacked=None):  # x (B × in) packed from its transposed view: no transposed copy
        return kernels.sddmm_packed(m.crow_indices, m.col_indices, kernels.pack(gyt) if gpacked is None else gpacked,
                                    kernels.pack(x.t()), x.shape[0])

    def fallback(g=None):
        # the pattern's values are ignored with beta=0 (finite weights): no nnz-sized allocation
        pattern = _csr(m.crow_indices, m.col_indices, values.detach(), m.weight_shape)
        return torch.sparse.sampled_addmm(pattern, _contiguous(gyt) if g is None else g, _contiguous(x),
                                          beta=0.0).values()

    # measured each with its own layout change included (see the input gradient's)
    use = _pick("sddmm", allowed, m.out_features, m.in_features, x.shape[0], values.numel(), native, fallback, m,
                f"{_layout(gyt)}{_layout(x)}")
    if use:
        return native(gp() if gp is not None else None)
    return fallback(rows() if rows is not None else None)


def _forget_grad_accumulator(param: torch.Tensor) -> None:
    """Make the next graph that uses ``param`` (just resized) create a fresh gradient accumulator.

    Autograd keeps one accumulator node per leaf while any graph holds it, and that node checks
    incoming gradients against the shape the leaf had when the node was made. A graph from before
    a resize (the previous step's ``loss``, still referenced while the next forward runs) would
    otherwise hand the new graph the old node, and its backward fails with "returned an invalid
    gradient ... expected shape compatible with [old nnz]". Assigning ``.data`` of another dtype
    drops the cached node (a resize alone does not); the parameter's hooks live on the tensor and
    stay. Graphs from before the resize keep their old node and must not be backpropagated
    through afterwards (their values are gone). This relies on autograd's behaviour, not a
    documented contract (tests/test_new_user_sparse.py catches a change), and anything that holds
    the old node, such as DDP's reducer hooks, is disconnected: a compressed layer that changes
    size is not supported under DDP."""
    data = param.data
    other = torch.float64 if data.dtype != torch.float64 else torch.float32
    param.data = torch.empty(0, dtype=other, device=data.device)
    param.data = data


def _as_mask(mask, shape: torch.Size, name: str = "mask") -> torch.Tensor:
    """``mask`` checked to be a mask of ``shape``: bool, or 0/1 values of another dtype (made bool)."""
    if not torch.is_tensor(mask):
        raise InputError(f"{name} must be a bool tensor of shape {tuple(shape)}, not {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"{name} of shape {tuple(mask.shape)} for a weight of shape {tuple(shape)}: give a bool "
                         "mask of the weight's shape (out_features, in_features)")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or mask.dtype in (torch.int8, torch.int16, torch.int32,
                                                                            torch.int64, torch.uint8):
            if bool(((mask != 0) & (mask != 1)).any()):
                raise InputError(f"{name} has values other than 0 and 1: give a bool mask (True where a weight is "
                                 "kept), e.g. scores > threshold")
        mask = mask != 0
    return mask


def _rows(crow: torch.Tensor) -> torch.Tensor:
    """Row index of every stored entry of a CSR structure (int64)."""
    crow = crow.to(torch.int64)
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow[1:] - crow[:-1])


def _structure(mask: torch.Tensor, index_dtype: torch.dtype):
    """CSR and transposed-CSR index tensors of a bool ``mask`` (out × in)."""
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: the order of ``weight[mask]``
    return _structure_of(rows, cols, mask.shape, index_dtype)


def _structure_of(rows: torch.Tensor, cols: torch.Tensor, shape, index_dtype: torch.dtype):
    """CSR and transposed-CSR index tensors of the entries ``(rows, cols)`` (row-major order)."""
    out_f, in_f = shape
    # counts per row and column from the entries (a reduction over the dense mask would widen it
    # to int64: 8 bytes per position)
    crow = torch.zeros(out_f + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=out_f), 0)
    # transpose: entries sorted by (col, row); t_perm maps them to positions in values. The entries
    # are row-major, so a stable sort by column alone gives that order (cheaper than sorting a
    # combined col·out + row key)
    t_perm = torch.sort(cols, stable=True).indices
    t_crow = torch.zeros(in_f + 1, dtype=torch.int64, device=rows.device)
    t_crow[1:] = torch.cumsum(torch.bincount(cols, minlength=in_f), 0)
    return (crow.to(index_dtype), cols.to(index_dtype), t_crow.to(index_dtype),
            rows.index_select(0, t_perm).to(index_dtype), t_perm.to(index_dtype))


class SparseLinear(nn.Module):
    """``nn.Linear`` whose weight is stored and multiplied as CSR (only the nonzeros).

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        weight: initial dense weight (out × in); default: ``nn.Linear``'s initialisation.
        mask: bool mask of the nonzeros to keep; default: all (a dense pattern until a
            :class:`~sparsetrain.Sparsifier` assigns its mask).
        index_dtype: ``torch.int32`` (default, half the index memory) or ``torch.int64``.
        deferred: allocate no weight at all: a :class:`~sparsetrain.Sparsifier` attached next picks
            the positions (random mask) and draws only those values, from ``nn.Linear``'s default
            initialisation ``U(-1/√in, 1/√in)``. Memory then follows nnz from the start, which is
            what lets a layer too large to hold densely be trained (see :func:`to_sparse` with a
            meta-device model).
        init: for a deferred layer, the scale of the values drawn: ``"dense"`` (``nn.Linear``'s
            ``U(-1/√in, 1/√in)``, what masking a dense layer gives) or ``"sparse"`` (the same
            divided by ``√density``: the variance a unit would get from its *sparse* fan-in, as
            Evci et al. (2022) recommend; at 99% sparsity and beyond a dense-scaled init makes the
            signal vanish through a few layers).

    The trainable parameters are ``values`` (nnz,) and ``bias``; ``weight_shape`` is the dense
    shape. ``state_dict()`` holds values and the index buffers (a compressed checkpoint).
    """

    #: whether the stored pattern is a mask a :class:`~sparsetrain.Sparsifier` attached next starts
    #: from: one given to ``to_sparse(masks=...)``, loaded from a compressed state, or left by an
    #: earlier Sparsifier. Not a pattern taken from a dense weight's zeros, nor a dense pattern.
    given_pattern: bool = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                 index_dtype: torch.dtype = torch.int32, deferred: bool = False, init: str = "dense",
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight_shape = torch.Size((self.out_features, self.in_features))
        if index_dtype not in (torch.int32, torch.int64):
            raise InputError(f"index_dtype={index_dtype} is not supported: use torch.int32 (the default, half the index "
                             "memory) or torch.int64")
        self.index_dtype = index_dtype
        self._deferred = bool(deferred)
        if init not in ("dense", "sparse"):
            raise ValueError(f"unknown init {init!r}: use 'dense' (nn.Linear's scale) or 'sparse' (scaled by 1/√density)")
        self.init = init
        if self._deferred:
            if weight is not None or mask is not None:
                raise ValueError("deferred=True draws the weights when a Sparsifier attaches: pass no weight or mask")
            weight = torch.empty(self.weight_shape, device="meta", dtype=dtype)  # shape and dtype only
        elif weight is None:
            weight = torch.empty(self.weight_shape, device=device, dtype=dtype)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if tuple(weight.shape) != tuple(self.weight_shape):
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(self.weight_shape)}")
        if mask is not None:
            mask = _as_mask(mask, self.weight_shape)
        home = torch.device(device) if self._deferred and device is not None else (
            torch.device("cpu") if self._deferred else weight.device)
        for name in ("crow_indices", "col_indices", "t_crow_indices", "t_col_indices", "t_perm"):
            self.register_buffer(name, torch.empty(0, dtype=index_dtype, device=home))
        self._flat: Optional[torch.Tensor] = None
        if self._deferred:
            # no weights yet: a Sparsifier attached next chooses the positions and draws the values there
            self.values = nn.Parameter(torch.empty(0, device=home, dtype=weight.dtype))
            self._dense_pattern, self._nnz = False, 0
        elif mask is None:
            # dense pattern: no index structure yet (a Sparsifier attached next assigns the mask), the
            # same memory as nn.Linear, computed densely
            self.values = nn.Parameter(weight.detach().reshape(-1).clone())
            self._dense_pattern, self._nnz = True, self.values.numel()
        else:
            self.values = nn.Parameter(weight.detach()[mask.to(weight.device)].clone())
            self._dense_pattern = False
            self._set_indices(mask.to(weight.device))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=home, dtype=weight.dtype))
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)
        # installed by a Sparsifier: whether this backward should hand over the dense weight
        # gradient ∂L/∂W = gyᵀ x, and the receiver, called with its factors (gyᵀ, x) and returning
        # the dense product if it formed one
        self.dense_grad_request: Optional[Callable[[], bool]] = None
        self.dense_grad_sink: Callable[[torch.Tensor, torch.Tensor], Optional[torch.Tensor]] = form_dense_grad
        #: operand layouts of the last call of each kernel operation (the autotune key's layout part)
        self.kernel_layouts: dict[str, str] = {}

    # ------------------------------------------------------------------ structure
    def _set_indices(self, mask: Optional[torch.Tensor], flat: Optional[torch.Tensor] = None) -> None:
        if flat is not None:
            crow, col, t_crow, t_col, t_perm = _structure_of(
                torch.div(flat, self.in_features, rounding_mode="floor"), flat % self.in_features,
                self.weight_shape, self.index_dtype)
        else:
            crow, col, t_crow, t_col, t_perm = _structure(mask, self.index_dtype)
        self.crow_indices, self.col_indices = crow, col
        self.t_crow_indices, self.t_col_indices, self.t_perm = t_crow, t_col, t_perm
        self._nnz = int(col.numel())
        self._dense_pattern = self._deferred = False
        self._flat = None

    @property
    def deferred(self) -> bool:
        """Whether the layer has no weights yet (they are drawn when a Sparsifier attaches)."""
        return self._deferred

    def init_bound(self, density: float = 1.0) -> float:
        """Half-width of the uniform initialisation of a deferred layer: ``1/√in_features``
        (``nn.Linear``'s default), divided by ``√density`` when ``init="sparse"``."""
        if self.in_features <= 0:
            return 0.0
        scale = 1.0 / math.sqrt(max(density, 1e-12)) if self.init == "sparse" else 1.0
        return scale / math.sqrt(self.in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None,
                    index_dtype: torch.dtype = torch.int32, device=None, init: str = "dense") -> "SparseLinear":
        """A SparseLinear holding ``linear``'s weight (at ``mask``; default: every position, to be
        assigned a mask by a Sparsifier) and bias. A meta-device ``linear`` gives a ``deferred``
        layer on ``device`` (default CPU) with a freshly initialised bias and no weights yet
        (``init``: see the class)."""
        if linear.weight.is_meta:  # a model built on the meta device: nothing to copy, nothing allocated
            if mask is not None:
                raise ValueError("a meta-device Linear has no weights to keep at a mask: convert it without one")
            return cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       index_dtype=index_dtype, deferred=True, init=init, device=device, dtype=linear.weight.dtype)
        # built without a bias and given linear's: converting draws no random numbers (the global
        # RNG stream, and so a seeded run's later draws, is the same with or without conversion)
        m = cls(linear.in_features, linear.out_features, bias=False,
                weight=linear.weight.detach(), mask=mask, index_dtype=index_dtype)
        m.values.requires_grad_(linear.weight.requires_grad)  # a frozen layer stays frozen
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return m

    @property
    def dense_pattern(self) -> bool:
        """Whether no mask was assigned yet (all positions stored, computed densely)."""
        return self._dense_pattern

    @property
    def nnz(self) -> int:
        """Number of nonzeros (positions in the pattern)."""
        return self._nnz

    @property
    def capacity(self) -> int:
        """Length of ``values``: ``nnz`` plus zero padding left by pruning (see :meth:`set_structure`)."""
        return int(self.values.numel())

    def active_values(self) -> torch.Tensor:
        """The first ``nnz`` entries of ``values`` (the pattern's values, row-major)."""
        return self.values if self._nnz == self.values.numel() else self.values[: self._nnz]

    def mask(self) -> torch.Tensor:
        """The dense bool mask of stored positions."""
        if self._dense_pattern:
            return torch.ones(self.weight_shape, dtype=torch.bool, device=self.values.device)
        out = torch.zeros(self.weight_shape.numel(), dtype=torch.bool, device=self.values.device)
        out[self.flat_index()] = True
        return out.view(self.weight_shape)

    def flat_index(self) -> torch.Tensor:
        """Row-major flat positions of the nonzeros (cached until the structure changes)."""
        if self._deferred:  # no entries yet
            return torch.empty(0, dtype=torch.int64, device=self.values.device)
        if self._flat is None or self._flat.numel() != self._nnz:
            if self._dense_pattern:
                self._flat = torch.arange(self._nnz, device=self.values.device)
                return self._flat
            self._flat = _rows(self.crow_indices) * self.in_features + self.col_indices.to(torch.int64)
        return self._flat

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor (zeros off the pattern); a copy."""
        if self._dense_pattern:
            return self.values.detach().view(self.weight_shape).clone()
        w = torch.zeros(self.weight_shape.numel(), dtype=self.values.dtype, device=self.values.device)
        w[self.flat_index()] = self.active_values().detach()
        return w.view(self.weight_shape)

    @torch.no_grad()
    def set_structure(self, mask: torch.Tensor, values: torch.Tensor, reallocate: bool = False) -> bool:
        """Replace the pattern by ``mask`` with ``values`` (row-major, ``values.numel() == mask.sum()``).

        ``values`` keeps its ``Parameter`` identity, so an optimizer holding it keeps working. It
        also keeps its *size* whenever the new pattern fits (a shrinking pattern, e.g. GraNet's
        pruning, leaves zero padding at the end that no gradient or optimizer step changes): autograd
        caches a parameter's shape while any graph that used it is alive, so resizing it during
        training is not safe. It is resized (to exactly ``nnz``) when ``reallocate`` is true — on
        attach and load, before any graph exists — or when the pattern outgrows the capacity.
        Returns whether ``values`` was resized. Optimizer state is the caller's business (the
        Sparsifier remaps it).
        """
        mask = mask.to(self.values.device, torch.bool)
        if tuple(mask.shape) != tuple(self.weight_shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(self.weight_shape)}")
        n = int(torch.count_nonzero(mask))
        if values.numel() != n:
            raise ValueError(f"{values.numel()} values for a mask with {n} entries")
        self._set_indices(mask)
        return self._put_values(values, n, reallocate)

    @torch.no_grad()
    def set_structure_at(self, flat: torch.Tensor, values: torch.Tensor, reallocate: bool = False) -> bool:
        """:meth:`set_structure` from the sorted, distinct row-major flat positions ``flat`` of the
        pattern (int64) instead of a dense mask: memory ∝ nnz."""
        flat = flat.to(self.values.device, torch.int64).reshape(-1)
        n = flat.numel()
        if values.numel() != n:
            raise ValueError(f"{values.numel()} values for {n} positions")
        if n and (int(flat[0]) < 0 or int(flat[-1]) >= self.weight_shape.numel() or bool((flat[1:] <= flat[:-1]).any())):
            raise ValueError("positions must be sorted, distinct and inside the weight")
        self._set_indices(None, flat)
        self._flat = flat
        return self._put_values(values, n, reallocate)

    def _put_values(self, values: torch.Tensor, n: int, reallocate: bool) -> bool:
        values = values.detach().to(self.values.dtype).reshape(-1)
        if reallocate or n > self.values.numel():
            resized = n != self.values.numel()
            self.values.data = values.clone()
            if resized:
                _forget_grad_accumulator(self.values)
            return True
        self.values.data[:n] = values
        self.values.data[n:] = 0
        return False

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        adopted = prefix + "weight" in state_dict and prefix + "values" not in state_dict
        if adopted:
            self._adopt_dense_weight(state_dict, prefix)
        if prefix + "t_perm" not in state_dict and prefix + "col_indices" in state_dict:
            # a compressed checkpoint stores only the CSR; rebuild the transpose
            crow = state_dict[prefix + "crow_indices"].to(torch.int64)
            col = state_dict[prefix + "col_indices"].to(torch.int64)
            if col.numel():
                mask = torch.zeros(self.weight_shape, dtype=torch.bool)
                mask[_rows(crow), col] = True
                _, _, t_crow, t_col, t_perm = _structure(mask, state_dict[prefix + "col_indices"].dtype)
            else:
                t_crow = t_col = t_perm = torch.empty(0, dtype=state_dict[prefix + "col_indices"].dtype)
            state_dict[prefix + "t_crow_indices"] = t_crow
            state_dict[prefix + "t_col_indices"] = t_col
            state_dict[prefix + "t_perm"] = t_perm
        # the pattern may differ from ours (another update, another nnz): adopt its sizes first
        key = prefix + "values"
        if key in state_dict and state_dict[key].shape != self.values.shape:
            self.values.data = torch.empty_like(state_dict[key], device=self.values.device)
            _forget_grad_accumulator(self.values)
        for name in ("crow_indices", "col_indices", "t_crow_indices", "t_col_indices", "t_perm"):
            k = prefix + name
            if k in state_dict:
                setattr(self, name, torch.empty_like(state_dict[k], device=self.values.device))
        self._flat = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        n = self.weight_shape.numel()
        self._deferred = False
        self._dense_pattern = self.col_indices.numel() == 0 and self.values.numel() == n and n > 0
        self._nnz = n if self._dense_pattern else int(self.col_indices.numel())
        # a compressed state's pattern is a mask (a trained one); a dense weight's zeros are not
        self.given_pattern = not self._dense_pattern and not adopted

    def _adopt_dense_weight(self, state_dict, prefix: str) -> None:
        """A dense ``weight`` entry (an ``nn.Linear`` / masked-dense checkpoint) as this layer's
        entries: the pattern is the weight's nonzeros (all positions if it has no zeros); a
        Sparsifier resumed from its saved state then restores its own masks."""
        w = state_dict.pop(prefix + "weight")
        if tuple(w.shape) != tuple(self.weight_shape):
            raise InputError(f"{prefix}weight has shape {tuple(w.shape)} in the checkpoint, but this "
                             f"{self._label()} is {tuple(self.weight_shape)}: load it into a model of the same shape")
        w = w.detach().to(self.values.device, self.values.dtype)
        mask = w != 0
        if bool(mask.all()):  # a dense pattern: no index structure, as a freshly converted layer
            empty = torch.empty(0, dtype=self.index_dtype)
            parts = (w.reshape(-1),) + (empty,) * 5
        else:
            parts = (w[mask],) + _structure(mask, self.index_dtype)
        for name, t in zip(("values", "crow_indices", "col_indices", "t_crow_indices", "t_col_indices", "t_perm"),
                           parts):
            state_dict[prefix + name] = t

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._deferred:
            raise RuntimeError(f"{self.__class__.__name__}({self.in_features}, {self.out_features}) has no weights yet "
                               "(deferred initialisation): attach a sparsetrain.Sparsifier first, which draws them")
        if self._dense_pattern:  # before a mask is assigned: an ordinary dense layer
            return nn.functional.linear(x, self.values.view(self.weight_shape), self.bias)
        if torch.compiler.is_compiling():  # the kernels and the autotuning are not traceable: a graph break
            return _eager_runner()(self, x)
        self._check_input(x)
        if torch.is_autocast_enabled(x.device.type):
            # the sparse products have no low-precision kernels (torch's CSR product on CPU has no
            # bfloat16/float16): computed in the layer's dtype, as autocast does for its float32 ops
            with torch.autocast(x.device.type, enabled=False):
                return self._sparse_forward(x.to(self.values.dtype) if x.is_floating_point() else x)
        return self._sparse_forward(x)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.device != self.values.device:
            raise InputError(f"{self._label()} is on {self.values.device} but got an input on {x.device}: move one of "
                             f"them (model.to({str(x.device)!r}) or x.to({str(self.values.device)!r})), as nn.Linear "
                             "requires")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InputError(f"{self._label()} got an input of shape {tuple(x.shape)}: its last dimension must be "
                             f"in_features={self.in_features}, not {x.shape[-1] if x.dim() else 'a scalar'}")
        dtype = self.values.dtype
        if self.values.device.type == "cpu" and dtype not in (torch.float32, torch.float64):
            raise InputError(f"{self._label()} holds {str(dtype).replace('torch.', '')} values, but the sparse products "
                             "on CPU exist in float32 and float64 only: keep the model in float32 "
                             "(model.float()) and use torch.autocast for mixed precision (the sparse layers then "
                             "compute in float32)")
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputError(f"{self._label()} got a {str(x.dtype).replace('torch.', '')} input but holds "
                             f"{str(dtype).replace('torch.', '')} values: convert the input (x.to({dtype})) or the "
                             f"model (model.to(...)), as nn.Linear requires")

    def _label(self) -> str:
        return f"{self.__class__.__name__}({self.in_features}, {self.out_features})"

    def _sparse_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(math.prod(lead), self.in_features)  # (not -1: in_features may be 0)
        if x.dim() == 2:
            # a view of the kernels' row-major yᵀ: a following SparseLinear reads it without a copy
            return _SparseLinearFn.apply(x2, self.active_values(), self.bias, self, False).t()
        # (B, T, D) and other leading shapes: row-major as nn.Linear returns it (written so by the
        # kernel), since what follows in a transformer (attention kernels, LayerNorm, views) needs a
        # unit stride in the last dimension
        y = _SparseLinearFn.apply(x2, self.active_values(), self.bias, self, True)
        return y.view(*lead, self.out_features)

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with the same function (dense weight with zeros); draws no random numbers."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device="meta", dtype=self.values.dtype)  # no initialisation drawn: replaced below
        lin.weight = nn.Parameter(self.dense_weight(), requires_grad=self.values.requires_grad)
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=self.bias.requires_grad)
        return lin

    def __getstate__(self):
        # a copy or a pickle of the layer is not attached to the Sparsifier of this one: its
        # backward must not hand gradients to that Sparsifier (and its closures do not pickle)
        state = dict(super().__getstate__())
        state["dense_grad_request"] = None
        state["dense_grad_sink"] = form_dense_grad
        return state

    def extra_repr(self) -> str:
        n = self.weight_shape.numel()
        pad = f", capacity={self.capacity}" if self.capacity != self.nnz else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.nnz} ({self.nnz / max(n, 1):.4f}){pad}")


def _run_eagerly(module: SparseLinear, x: torch.Tensor) -> torch.Tensor:
    """A SparseLinear's forward outside a compiled region (``torch.compile`` breaks the graph here)."""
    return module.forward(x)


_EAGER: list = []


def _eager_runner():
    # torch.compiler.disable imports torch._dynamo (seconds): wrapped on first use under
    # torch.compile, where dynamo is loaded anyway, not when sparsetrain is imported
    if not _EAGER:
        _EAGER.append(torch.compiler.disable(_run_eagerly))
    return _EAGER[0]


def __getattr__(name: str):
    # to_sparse/to_dense moved to sparse/convert.py and LowRankGrad to sparse/lowrank.py; the old
    # import paths keep working (with a DeprecationWarning)
    moved = {"to_sparse": "convert", "to_dense": "convert", "LowRankGrad": "lowrank"}
    if name in moved:
        import importlib

        warnings.warn(f"sparsetrain.sparse.linear.{name} moved: import it from sparsetrain.sparse", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(f".{moved[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
