"""Row-position tensors for multi-domain training: one user space, one item space
(domains side by side), and padded interaction histories per user."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recxfer.data.idmap import IdMap


@dataclass(frozen=True)
class MultiDomainIndex:
    """Users and items of several domains as positions.

    Attributes:
        domains: domain names; ``domains[d]``'s items occupy global item positions
            ``offsets[d] .. offsets[d] + len(items[d]) - 1``.
        users: map of every user of every domain (matched by ``user_id``).
        items: per-domain item maps.
        offsets: ``(n_domains,)`` int64 global offset of each domain's items.
        rows: per domain, ``(user_pos (nnz,), global_item_pos (nnz,))`` int64.
        history: ``(n_users, L)`` int64 global item positions, ``-1`` padded; the
            first ``max_history`` columns hold domain 0, the next domain 1, ...
        position_domain: ``(L,)`` int64 domain of each history column.
    """

    domains: tuple[str, ...]
    users: IdMap
    items: dict[str, IdMap]
    offsets: np.ndarray
    rows: dict[str, tuple[np.ndarray, np.ndarray]]
    history: np.ndarray
    position_domain: np.ndarray

    @property
    def n_items_total(self) -> int:
        return int(sum(len(m) for m in self.items.values()))

    def domain_slice(self, domain: str) -> slice:
        """Global item positions of ``domain``."""
        d = self.domains.index(domain)
        start = int(self.offsets[d])
        return slice(start, start + len(self.items[domain]))

    def history_of(self, user_pos: np.ndarray, domains: Sequence[str] | None = None) -> np.ndarray:
        """``(n, L)`` histories of ``user_pos`` keeping only ``domains`` (all if None)."""
        hist = self.history[user_pos].copy()
        if domains is not None:
            keep = np.isin(self.position_domain, [self.domains.index(d) for d in domains])
            hist[:, ~keep] = -1
        return hist

    def has_history(self, domain: str) -> np.ndarray:
        """``(n_users,)`` bool: the user has rows in ``domain``."""
        cols = self.position_domain == self.domains.index(domain)
        return (self.history[:, cols] >= 0).any(axis=1)


def build_multi_domain_index(
    train: pd.DataFrame,
    domains: Sequence[str],
    max_history: int = 50,
    seed: int = 0,
    extra_users: Sequence[str] = (),
) -> MultiDomainIndex:
    """Index ``train`` (canonical rows) over ``domains``.

    Histories keep each user's ``max_history`` latest rows per domain (by
    ``timestamp`` when present, otherwise a seeded random subset).

    Args:
        extra_users: users to include even without rows (they get empty histories).
    """
    rows = train[train["domain"].isin(domains)]
    users = IdMap.from_values(np.concatenate([rows["user_id"].to_numpy(object),
                                              np.asarray(extra_users, dtype=object)]))
    items = {d: IdMap.from_values(rows.loc[rows["domain"] == d, "item_id"]) for d in domains}
    for d in domains:
        if len(items[d]) == 0:
            raise ValueError(f"domain {d!r} has no training rows")
    sizes = np.array([len(items[d]) for d in domains], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rng = np.random.default_rng(seed)
    domain_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    history = np.full((len(users), max_history * len(domains)), -1, dtype=np.int64)
    for d, domain in enumerate(domains):
        part = rows[rows["domain"] == domain]
        user_pos = users.to_idx(part["user_id"])
        item_pos = items[domain].to_idx(part["item_id"]) + offsets[d]
        domain_rows[domain] = (user_pos, item_pos)
        order_key = part["timestamp"].to_numpy() if "timestamp" in part else rng.random(len(part))
        frame = pd.DataFrame({"u": user_pos, "i": item_pos, "t": order_key})
        frame = frame.sort_values(["u", "t"], ascending=[True, False], kind="stable")
        rank = frame.groupby("u", sort=False).cumcount().to_numpy()
        keep = rank < max_history
        history[frame["u"].to_numpy()[keep], d * max_history + rank[keep]] = frame["i"].to_numpy()[keep]
    position_domain = np.repeat(np.arange(len(domains)), max_history)
    return MultiDomainIndex(tuple(domains), users, items, offsets, domain_rows, history, position_domain)
