"""Experiment helpers for sparsetrain: reference models, in-memory datasets, runs and grids.

Submodules (imported on demand, nothing heavy happens here):

* :mod:`sparsetrain.experiments.models` -- model registry (``build_model``).
* :mod:`sparsetrain.experiments.data` -- dataset loading by name (``load_dataset``); one module
  per format in :mod:`sparsetrain.experiments.datasets`.
* :mod:`sparsetrain.experiments.loader` -- the deterministic, resumable in-memory batch
  iterator ``Loader``.
"""
