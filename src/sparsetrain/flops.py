"""Forward FLOPs by forward hooks, dense and sparse, and training FLOPs per method.

Convention (as in the DST literature): one multiply-accumulate counts as one FLOP. Counted:

- **weight layers**: Linear, Conv1d/2d/3d and their transposed forms, compressed
  :class:`SparseLinear`, and Hugging-Face-style ``Conv1D`` (GPT-2's projections; recognised by
  duck typing, see :func:`sparsetrain.selection.is_conv1d_like`). Each weight entry is used once
  per output position, so

      dense FLOPs  = positions × numel(W)        sparse FLOPs = positions × nnz(W)

  where ``positions`` is the number of output elements per example divided by the number of
  output channels (``1`` per example for a Linear layer on a vector, ``T`` on a sequence of
  length ``T``, ``H_out·W_out`` for a Conv2d; for a transposed convolution ``H_in·W_in``, the
  input positions, each of which meets every weight once);
- **attention products** ``QKᵀ`` and ``AV`` (``2·T·S·d`` per example for ``T`` queries, ``S``
  keys and ``d = heads × head_dim``, the full score matrix even under a causal mask). They do not
  depend on weight sparsity, so they count the same in the dense and the sparse total. They are
  counted in modules that say how much attention they computed — the public extension point is a
  method ``attention_macs(inputs, output) -> float`` on the module (the MACs of its attention
  products for the call, whole batch), see :data:`ATTENTION_METHOD` — and, without it, in
  ``nn.MultiheadAttention`` and in self-attention modules shaped like Hugging Face's
  (``GPT2Attention``: class name ending in ``Attention``, ``num_heads`` and ``head_dim``
  attributes, output ``(B, T, d)``). Any other module whose class name ends in ``Attention``
  (Hugging Face's ``LlamaAttention``, ``BertSelfAttention``, ``T5Attention``, cross-attention,
  a user's own) is *measured*: torch's public FLOP counter
  (``torch.utils.flop_counter.FlopCounterMode``) sees the batched matmuls and fused attention
  kernels its forward runs. A recognised module inside another one is not counted twice;
- **recurrent layers** ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and their cells: each weight matrix
  (``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``, both directions; a cell's ``weight_ih``,
  ``weight_hh``) is used once per time step, so ``positions`` is the number of time steps per
  example (packed sequences: their total length divided by the batch; a cell: its calls). The
  gate nonlinearities and products are not counted. A recurrent layer (and
  ``nn.MultiheadAttention``) also says what the batch is: for a sequence-first
  (``batch_first=False``) or unbatched input, "per example" is per sequence, for every layer of
  the report.

Norms, activations, softmax, embeddings lookups and pooling are not counted. Numbers are per
example (the example input's first dimension is the batch).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from torch import nn

from ._util import uncompiled
from .errors import InputError, InputWarning
from .selection import default_kind, is_conv1d_like
from .sparse.linear import SparseLinear

__all__ = ["LayerFlops", "FlopsReport", "flops", "training_flops_per_step", "COUNTED_MODULES", "ATTENTION_METHOD",
           "attention_macs"]

#: Module types whose weight FLOPs are counted.
COUNTED_MODULES = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)

#: The method a module defines to have its attention products counted:
#: ``module.attention_macs(inputs, output) -> float``, the multiply-accumulates of ``QKᵀ`` and
#: ``AV`` of that call (whole batch), given the forward hook's positional ``inputs`` and ``output``.
ATTENTION_METHOD = "attention_macs"


def _padded(x):
    """A nested tensor (nn.TransformerEncoder's fast path with a padding mask) as its padded tensor."""
    return x.to_padded_tensor(0.0) if getattr(x, "is_nested", False) else x


def _first(x):
    return _padded(x[0] if isinstance(x, (tuple, list)) else x)


def attention_macs(module: nn.Module, inputs: tuple, output, kwargs: Optional[Mapping] = None) -> Optional[float]:
    """The MACs of ``QKᵀ`` and ``AV`` of one call of ``module`` (whole batch), or ``None`` if the
    module is not a recognised attention module (see the module docstring)."""
    kwargs = kwargs or {}
    method = getattr(module, ATTENTION_METHOD, None)
    if callable(method):
        return float(method(inputs, output))
    if isinstance(module, nn.MultiheadAttention):
        out = _first(output)
        query = _padded(inputs[0] if inputs else kwargs.get("query"))
        key = _padded(inputs[1] if len(inputs) > 1 else kwargs.get("key", query))
        if out.dim() == 2:  # unbatched (L, E)
            return 2.0 * out.shape[0] * key.shape[0] * module.embed_dim
        seq = 1 if module.batch_first else 0
        return 2.0 * out.shape[1 - seq] * out.shape[seq] * key.shape[seq] * module.embed_dim
    if _shaped_like_gpt2(module):
        out = _first(output)
        if torch.is_tensor(out) and out.dim() == 3:  # self-attention: (B, T, d), T keys per query
            b, t, _ = out.shape
            return 2.0 * b * t * t * int(module.num_heads) * int(module.head_dim)
    return None


def _mha_projections(mod: nn.MultiheadAttention, name: str, inputs, kwargs, output, batch: int, masks, report) -> None:
    out = _first(output)
    query = _padded(inputs[0] if inputs else kwargs.get("query"))
    key = _padded(inputs[1] if len(inputs) > 1 else kwargs.get("key", query))
    seq = 0 if out.dim() == 2 or not mod.batch_first else 1
    tokens_q = out.numel() / mod.embed_dim / batch
    tokens_k = tokens_q * key.shape[seq] / out.shape[seq]
    prefix = f"{name}." if name != "<model>" else ""
    weights = [(f"{prefix}out_proj.weight", mod.out_proj.weight, tokens_q)]
    if mod.in_proj_weight is not None:  # q on the queries, k and v on the keys
        weights.append((f"{prefix}in_proj_weight", mod.in_proj_weight, (tokens_q + 2 * tokens_k) / 3))
    else:
        weights += [(f"{prefix}q_proj_weight", mod.q_proj_weight, tokens_q), (f"{prefix}k_proj_weight", mod.k_proj_weight,
                    tokens_k), (f"{prefix}v_proj_weight", mod.v_proj_weight, tokens_k)]
    for pname, w, positions in weights:
        nnz = int(masks[pname].sum()) if pname in masks else w.numel()
        prev = report.layers.get(pname)
        if prev is None:
            report.layers[pname] = LayerFlops(pname, positions, w.numel(), nnz)
        else:
            prev.positions += positions


def _declares(module: nn.Module) -> bool:
    """An attention module whose products are counted from what it says (its method, MHA, GPT-2's shape)."""
    return callable(getattr(module, ATTENTION_METHOD, None)) or isinstance(module, nn.MultiheadAttention) or \
        _shaped_like_gpt2(module)


def _is_attention(module: nn.Module) -> bool:
    return _declares(module) or _measured(module)


def _shaped_like_gpt2(module: nn.Module) -> bool:
    return type(module).__name__.endswith("Attention") and hasattr(module, "num_heads") and \
        hasattr(module, "head_dim") and not getattr(module, "is_cross_attention", False)


def _measured(module: nn.Module) -> bool:
    """An attention module that does not say what it computed: its products are measured. One that
    holds a module that does (a wrapper around ``nn.MultiheadAttention``) is a container: the inner
    module is counted (MHA's projections run inside its functional call, seen by no Linear hook)."""
    return type(module).__name__.endswith("Attention") and not _declares(module) and \
        not any(_declares(m) for m in module.modules() if m is not module)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs (2 per MAC) of ``softmax(QKᵀ)V``; the CPU kernel has no formula in torch's counter."""
    lead = 1
    for d in query_shape[:-2]:
        lead *= int(d)
    return 2 * lead * int(query_shape[-2]) * int(key_shape[-2]) * (int(query_shape[-1]) + int(value_shape[-1]))


def _product_counter():
    """torch's public FLOP counter (a dispatch mode: it sees the operators a module's forward runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    extra = {getattr(aten, n): _sdpa_flops for n in ("_scaled_dot_product_flash_attention_for_cpu",)
             if hasattr(aten, n)}
    return FlopCounterMode(display=False, custom_mapping=extra)


def _products(counter) -> float:
    """The MACs so far of activation × activation products: batched matmuls and fused attention
    (weight layers run as ``mm``/``addmm``/convolutions and are not among them)."""
    counts = counter.flop_counts.get("Global", {})
    return sum(v for op, v in counts.items() if "bmm" in str(op) or "attention" in str(op)) / 2.0


@dataclass
class LayerFlops:
    """Forward FLOPs of one weight layer, per example."""

    name: str
    positions: float
    numel: int
    nnz: int

    @property
    def per_weight(self) -> float:
        """FLOPs contributed by one active weight entry (its number of output positions)."""
        return self.positions

    @property
    def dense(self) -> float:
        """Dense forward FLOPs of this layer."""
        return self.positions * self.numel

    @property
    def sparse(self) -> float:
        """Sparse forward FLOPs of this layer (only the active weights)."""
        return self.positions * self.nnz


@dataclass
class FlopsReport:
    """Forward FLOPs per example: ``dense`` (f_D), ``sparse`` (f_S), per weight layer and per
    attention module (``attention``: module name -> MACs of ``QKᵀ`` and ``AV`` per example)."""

    layers: dict[str, LayerFlops] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)

    @property
    def dense(self) -> float:
        """f_D: dense forward FLOPs per example (weight layers and attention products)."""
        return sum(l.dense for l in self.layers.values()) + sum(self.attention.values())

    @property
    def sparse(self) -> float:
        """f_S: sparse forward FLOPs per example (unmasked layers and attention count fully)."""
        return sum(l.sparse for l in self.layers.values()) + sum(self.attention.values())

    @property
    def fraction(self) -> float:
        """Inference FLOPs fraction f_S / f_D."""
        return self.sparse / self.dense if self.dense else 1.0

    def __getitem__(self, key: str) -> float:
        return {"dense": self.dense, "sparse": self.sparse, "fraction": self.fraction}[key]


@torch.no_grad()
def flops(model: nn.Module, example_input, masks: Optional[Mapping[str, torch.Tensor]] = None) -> FlopsReport:
    """Count forward FLOPs of ``model`` on ``example_input``: a tensor, a tuple of arguments, or a
    mapping of keyword arguments (a Hugging Face batch: ``st.flops(model, {"input_ids": ids})``,
    run as ``model(**example_input)``). The batch size is the first dimension of the first tensor.

    ``masks`` maps fully-qualified parameter names (``"fc1.weight"``) to bool masks; a layer
    without a mask counts fully (dense). The report's keys are the weight parameters' names,
    so they match ``Sparsifier.masks``. The model runs once in eval mode (no gradients).
    """
    model = uncompiled(model)  # torch.compile(m): counted on m, eagerly (the same function; hooks in a
    # compiled forward would break its graph), with m's names
    masks = {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v for k, v in (masks or {}).items()}
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)} | {
        f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    unknown = sorted(set(masks) - names)
    if unknown:
        raise InputError(f"st.flops: masks= names {', '.join(map(repr, unknown[:3]))}"
                         f"{f' and {len(unknown) - 3} more' if len(unknown) > 3 else ''}, which "
                         f"{'is' if len(unknown) == 1 else 'are'} not a parameter of the model; keys are full parameter "
                         "names such as 'fc1.weight' (sp.masks gives them)")
    groups: dict[int, list[str]] = {}  # a tied parameter's mask under every one of its names
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    for names in groups.values():
        key = next((n for n in names if n in masks), None)
        if key is not None:
            masks.update({n: masks[key] for n in names})
    report = FlopsReport()
    handles = []
    packed = isinstance(example_input, nn.utils.rnn.PackedSequence)  # a namedtuple, but one argument
    kwargs = dict(example_input) if isinstance(example_input, Mapping) else {}
    args = () if kwargs else example_input if isinstance(example_input, tuple) and not packed else (example_input,)
    if isinstance(example_input, Mapping) and not kwargs:
        raise ValueError("st.flops: example_input is an empty mapping: give the model's inputs, e.g. "
                         "{'input_ids': ids}")
    lead = args[0] if args else kwargs
    if isinstance(lead, Mapping):  # keyword arguments, or one dict argument: its first tensor
        lead = next((v for v in lead.values() if torch.is_tensor(v)), None)
    if isinstance(lead, nn.utils.rnn.PackedSequence):  # a recurrent model's packed batch
        batch = int(lead.batch_sizes[0])
    else:
        batch = int(lead.shape[0]) if torch.is_tensor(lead) and lead.dim() > 0 else 1

    def make_hook(pname: str, module: nn.Module):
        def hook(mod, inputs, output):
            out = _first(output)
            channels = (module.out_features if isinstance(module, (nn.Linear, SparseLinear)) else
                        module.nf if is_conv1d_like(module) else module.out_channels)
            positions = out.numel() / batch / channels
            if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # each input position meets every weight once (out_channels/groups x kernel per in-channel):
                # its output positions would over-count by the stride's fill and the kernel's overlap
                positions = _first(inputs).numel() / batch / module.in_channels
            if isinstance(module, SparseLinear):  # compressed: its stored entries are its nonzeros
                numel, stored = module.weight_shape.numel(), module.nnz
            else:
                numel = stored = module.weight.numel()
            nnz = int(masks[pname].sum()) if pname in masks else stored
            prev = report.layers.get(pname)
            if prev is None:
                report.layers[pname] = LayerFlops(pname, positions, numel, nnz)
            else:  # a module called several times per forward (shared weights)
                prev.positions += positions

        return hook

    def attention_hook(name: str):
        def hook(mod, inputs, kwargs, output):
            macs = attention_macs(mod, inputs, output, kwargs)
            if macs is not None:
                report.attention[name] = report.attention.get(name, 0.0) + macs / batch
            if isinstance(mod, nn.MultiheadAttention):  # its projections run inside F.multi_head_attention_forward
                _mha_projections(mod, name, inputs, kwargs, output, batch, masks, report)
                out = _first(output)  # it also says what the batch is (sequence-first or unbatched inputs)
                seen_batch.add(1 if out.dim() == 2 else int(out.shape[0 if mod.batch_first else 1]))

        return hook

    seen_batch: set[int] = set()  # what recurrent and attention layers say the batch is (sequence-first, unbatched)

    def rnn_hook(name: str):
        def hook(mod, inputs, output):
            out = _first(output)
            if isinstance(out, nn.utils.rnn.PackedSequence):
                steps, true_batch = out.data.shape[0], int(out.batch_sizes[0])
            elif isinstance(mod, nn.RNNCellBase):  # one step per call: (B, H), or (H,) unbatched
                steps = true_batch = out.shape[0] if out.dim() == 2 else 1
            elif out.dim() == 2:  # an unbatched sequence (T, H)
                steps, true_batch = out.shape[0], 1
            else:
                steps, true_batch = out.shape[0] * out.shape[1], out.shape[0 if mod.batch_first else 1]
            seen_batch.add(int(true_batch))
            prefix = f"{name}." if name else ""
            for wname, w in mod.named_parameters(recurse=False):
                if default_kind(mod, wname) is None:
                    continue
                pname = prefix + wname
                nnz = int(masks[pname].sum()) if pname in masks else w.numel()
                prev = report.layers.get(pname)
                if prev is None:
                    report.layers[pname] = LayerFlops(pname, steps / batch, w.numel(), nnz)
                else:
                    prev.positions += steps / batch

        return hook

    counter: list = []  # torch's FLOP counter, when an attention module's products are measured
    unseen: list[str] = []  # measured attention modules in which it saw no product
    started: dict[str, list[float]] = {}

    def measure_start(name: str):
        def hook(mod, inputs):
            started.setdefault(name, []).append(_products(counter[0]))
        return hook

    def measure_end(name: str):
        def hook(mod, inputs, output):
            macs = _products(counter[0]) - started[name].pop()
            report.attention[name] = report.attention.get(name, 0.0) + macs / batch
            if macs == 0 and name not in unseen:
                unseen.append(name)
        return hook

    counted: list[str] = []
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            handles.append(module.register_forward_hook(rnn_hook(mod_name)))
        if isinstance(module, SparseLinear) or is_conv1d_like(module) or (
                isinstance(module, COUNTED_MODULES) and getattr(module, "weight", None) is not None):
            pname = f"{mod_name}.weight" if mod_name else "weight"
            handles.append(module.register_forward_hook(make_hook(pname, module)))
        if _is_attention(module) and not any(mod_name.startswith(c + ".") or not c for c in counted):
            counted.append(mod_name)
            if _measured(module):  # e.g. Hugging Face's LlamaAttention, BertSelfAttention, T5Attention
                handles.append(module.register_forward_pre_hook(measure_start(mod_name or "<model>")))
                handles.append(module.register_forward_hook(measure_end(mod_name or "<model>")))
            else:
                handles.append(module.register_forward_hook(attention_hook(mod_name or "<model>"), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        if any(_measured(m) for m in model.modules()):
            counter.append(_product_counter())
        with counter[0] if counter else contextlib.nullcontext():
            try:
                model(*args, **kwargs)
            except TypeError as e:
                if kwargs and "argument" in str(e):
                    raise InputError(f"st.flops ran model(**example_input) with a mapping and the model refused it "
                                     f"({e}); to give the mapping as one positional argument, pass it in a tuple: "
                                     "st.flops(model, (batch,))") from e
                raise
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    first = lead if torch.is_tensor(lead) else None
    if len(seen_batch) == 1 and (true := seen_batch.pop()) != batch and first is not None and (
            true == 1 or (first.dim() > 1 and first.shape[1] == true)):  # unbatched, or sequence-first
        # the input's first dimension was not the batch (a sequence-first or unbatched recurrent
        # model): per example is per sequence, as the recurrent layers say
        for layer in report.layers.values():
            layer.positions *= batch / true
        report.attention = {k: v * batch / true for k, v in report.attention.items()}
    if unseen:
        warnings.warn(f"st.flops: no attention product seen in {', '.join(unseen)}: its QKᵀ/AV run in operators "
                      "torch's FLOP counter has no formula for (a custom or third-party kernel), so they count 0; "
                      "give the module an attention_macs(inputs, output) method (docs/metrics.md)", InputWarning,
                      stacklevel=2)
    return report


def training_flops_per_step(method: str, f_sparse: float, f_dense: float, update_interval: int = 100) -> float:
    """Training FLOPs per step by the spec's formulas (§1.7); backward ≈ 2 × forward.

    ``method`` is ``"dense"``, ``"static"``/``"set"``/``"mest"`` (3 f_S), ``"snfs"``
    (2 f_S + f_D) or ``"rigl"``/``"dstee"`` ((3 f_S ΔT + 2 f_S + f_D)/(ΔT + 1)).
    :meth:`sparsetrain.Sparsifier.training_flops` gives the exact count of an actual run.
    """
    m = method.lower()
    if m == "dense":
        return 3.0 * f_dense
    if m in ("static", "set", "mest"):
        return 3.0 * f_sparse
    if m == "snfs":
        return 2.0 * f_sparse + f_dense
    if m in ("rigl", "dstee"):
        dt = update_interval
        return (3.0 * f_sparse * dt + 2.0 * f_sparse + f_dense) / (dt + 1)
    raise ValueError(f"no training-FLOPs formula for {method!r}; known: dense, static, set, mest, snfs, rigl, dstee")
