"""Truly sparse execution: layers whose storage and cost follow the number of nonzeros.

- :class:`SparseLinear`: CSR weight, custom autograd (sparse × dense forward and input
  gradient, value gradient only at the nonzeros, dense gradient only at topology updates);
- :func:`to_sparse` / :func:`to_dense`: convert a model's ``nn.Linear`` layers and back;
- :func:`save_compressed` / :func:`load_compressed`: checkpoints whose size follows nnz;
- :class:`LowRankGrad`: a layer's dense weight gradient kept as its factors (large layers'
  streaming topology updates);
- :mod:`~sparsetrain.sparse.kernels`: the compiled CPU kernels (built on first use, torch's
  kernels otherwise).

A :class:`~sparsetrain.Sparsifier` drives SparseLinear layers exactly like masked-dense ones.
"""

from .export import compressed_size, load_compressed, save_compressed
from .convert import to_dense, to_sparse
from .linear import SparseLinear
from .lowrank import LowRankGrad

__all__ = ["SparseLinear", "LowRankGrad", "to_sparse", "to_dense", "save_compressed", "load_compressed", "compressed_size"]
