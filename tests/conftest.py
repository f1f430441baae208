"""Suite-wide settings.

One torch thread: the suite's tensors are small, and on a 2-core machine shared
with other work, torch's default thread count oversubscribes the cores and makes
small ops many times slower (measured 7x-20x here). Tests that need more set it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def hashed_files(monkeypatch) -> list[str]:
    """Names of the files ``recxfer.artifacts.store`` hashes from now on (any order:
    they are hashed in threads)."""
    from recxfer.artifacts import store

    seen: list[str] = []
    real = store.sha256_file

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(store, "sha256_file", counting)
    return seen


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test starts at the suite's torch thread count: code under test that sets
    its own (``runtime.limit_threads``, a server's search threads) must not change
    the float kernels, and so the bit-exact results, of the tests after it."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
