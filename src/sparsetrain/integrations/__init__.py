"""Trainer integrations (optional extras, imported lazily).

- :mod:`sparsetrain.integrations.lightning`: ``SparsetrainCallback`` for PyTorch Lightning
  (``pip install 'sparsetrain[lightning]'``);
- :mod:`sparsetrain.integrations.huggingface`: ``SparsetrainTrainerCallback`` for the Hugging
  Face ``Trainer`` (``pip install 'sparsetrain[huggingface]'``).

Importing this package imports neither framework.
"""
