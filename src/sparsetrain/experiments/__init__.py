"""Experiment helpers for sparsetrain: reference models, in-memory data, runs, grids and reports.

Submodules (imported on demand, nothing heavy happens here):

* :mod:`~sparsetrain.experiments.models` -- model registry (``build_model``).
* :mod:`~sparsetrain.experiments.data` -- dataset loading by name (``load_dataset``); one module
  per format in :mod:`sparsetrain.experiments.datasets`.
* :mod:`~sparsetrain.experiments.loader` -- the deterministic, resumable batch iterator ``Loader``.
* :mod:`~sparsetrain.experiments.config` -- ``RunConfig``, what defines one run.
* :mod:`~sparsetrain.experiments.build` -- data, optimizer, schedule and algorithm from a config.
* :mod:`~sparsetrain.experiments.runner` -- ``run`` and its training loop (``Trainer``).
* :mod:`~sparsetrain.experiments.rundir` -- ``RunDirectory``, a run's files and exact resume.
* :mod:`~sparsetrain.experiments.grid` -- the grid runner behind ``compare`` and ``sweep``.
* :mod:`~sparsetrain.experiments.report` -- tables and plots from run results.
"""
