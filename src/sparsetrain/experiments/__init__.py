"""Experiment helpers for sparsetrain: reference models and in-memory datasets.

Submodules (imported on demand, nothing heavy happens here):

* :mod:`sparsetrain.experiments.models` -- model registry (``build_model``).
* :mod:`sparsetrain.experiments.data` -- dataset loading (``load_dataset``) and the
  deterministic in-memory batch iterator ``Loader``.
"""
