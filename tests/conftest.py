"""Suite-wide settings: one torch thread per test process.

On a busy 2-core machine (CI), torch's default of one thread per core makes the tiny models
of these tests up to 15× slower through contention; results do not depend on it.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(autouse=True, scope="session")
def _private_autotune_cache(tmp_path_factory):
    """Kernel-choice decisions (sparsetrain.sparse.autotune) go to a fresh directory, never the
    user's cache: each test session measures its own."""
    import os

    saved = os.environ.get("SPARSETRAIN_CACHE_DIR")
    os.environ["SPARSETRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("sparsetrain-cache"))
    yield
    if saved is None:
        os.environ.pop("SPARSETRAIN_CACHE_DIR", None)
    else:
        os.environ["SPARSETRAIN_CACHE_DIR"] = saved
