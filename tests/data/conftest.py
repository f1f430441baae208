"""Shared helpers of the data tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from recxfer.data.synthetic import DomainSpec, SyntheticConfig


def _three_domain_config(
    n_users: int, seed: int, n_items: tuple[int, int, int], mean_interactions: tuple[float, float, float]
) -> SyntheticConfig:
    """A small generator config with the default domains and user shares: video (every
    user), books (0.6 of them) and music (0.5); ``n_items`` and ``mean_interactions``
    are given in that order."""
    shares = {"video": 1.0, "books": 0.6, "music": 0.5}
    return SyntheticConfig(
        n_users=n_users,
        seed=seed,
        domains=tuple(
            DomainSpec(name, items, share, mean)
            for (name, share), items, mean in zip(shares.items(), n_items, mean_interactions, strict=True)
        ),
    )


@pytest.fixture(scope="session")
def three_domain_config() -> Callable[..., SyntheticConfig]:
    """``three_domain_config(n_users, seed, n_items, mean_interactions)``: see ``_three_domain_config``."""
    return _three_domain_config
