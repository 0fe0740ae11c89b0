"""Dataset formats, one module each; :func:`sparsetrain.experiments.data.load_dataset` picks one by name.

* :mod:`.memory` -- :class:`InMemoryDataset` (two tensors) and the split every format returns;
* :mod:`.idx` -- MNIST and Fashion-MNIST idx files (searched, or downloaded MD5-checked);
* :mod:`.cifar` -- CIFAR-10/100 python batches from a directory (read without numpy);
* :mod:`.imagefolder` -- ``root/train/<class>/*`` image folders (Pillow);
* :mod:`.builtin` -- sets that need no files: scikit-learn's ``digits`` and ``synthetic``.

Each format module exposes one ``load_*`` function returning ``(train, test, info)``.
"""
