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
