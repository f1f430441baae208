"""Row-position arrays for multi-domain training: one user space, one item space
(domains side by side), and every user's latest items per domain as CSR.

Histories are stored sparse (``indptr``/``indices``, int32 item positions: memory
grows with the interactions, not with ``users x domains x max_history``) and are
gathered into the padded ``(n, n_domains * max_history)`` layout only for the
users a step or an export chunk needs (``gather``, ``HistoryTensors.gather``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

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
        rows: per domain, ``(user_pos (nnz,), global_item_pos (nnz,))`` int32.
        indptr: ``(n_users * n_domains + 1,)`` int64 CSR row pointers; CSR row
            ``u * n_domains + d`` holds user ``u``'s (at most ``max_history``)
            latest items of domain ``d``, latest first.
        indices: ``(nnz_history,)`` int32 global item positions.
        max_history: items kept per user and domain (the padded width per domain).
    """

    domains: tuple[str, ...]
    users: IdMap
    items: dict[str, IdMap]
    offsets: np.ndarray
    rows: dict[str, tuple[np.ndarray, np.ndarray]]
    indptr: np.ndarray
    indices: np.ndarray
    max_history: int

    @property
    def n_items_total(self) -> int:
        return int(sum(len(m) for m in self.items.values()))

    @property
    def position_domain(self) -> np.ndarray:
        """``(L,)`` int64 domain of each padded history column: the first
        ``max_history`` columns hold domain 0, the next domain 1, ..."""
        return np.repeat(np.arange(len(self.domains), dtype=np.int64), self.max_history)

    @property
    def lengths(self) -> np.ndarray:
        """``(n_users, n_domains)`` int64 history lengths."""
        return np.diff(self.indptr).reshape(len(self.users), len(self.domains))

    @property
    def history(self) -> np.ndarray:
        """``(n_users, L)`` int64 dense padded histories (``-1`` pads), built on every
        access: a reference view for small data and tests; training and export
        gather the users they need (``gather``)."""
        return self.gather(np.arange(len(self.users)))

    def domain_slice(self, domain: str) -> slice:
        """Global item positions of ``domain``."""
        d = self.domains.index(domain)
        start = int(self.offsets[d])
        return slice(start, start + len(self.items[domain]))

    def gather(self, user_pos: np.ndarray, domains: Sequence[str] | None = None) -> np.ndarray:
        """``(n, L)`` int64 padded histories of ``user_pos`` (``-1`` pads), keeping
        only ``domains`` (all if ``None``); a new array."""
        keep = None if domains is None else [self.domains.index(d) for d in domains]
        return gather_padded(self.indptr, self.indices, np.asarray(user_pos, np.int64),
                             len(self.domains), self.max_history, keep)

    def history_of(self, user_pos: np.ndarray, domains: Sequence[str] | None = None) -> np.ndarray:
        """``(n, L)`` histories of ``user_pos`` keeping only ``domains`` (all if None)."""
        return self.gather(user_pos, domains)

    def has_history(self, domain: str) -> np.ndarray:
        """``(n_users,)`` bool: the user has rows in ``domain``."""
        return self.lengths[:, self.domains.index(domain)] > 0


def gather_padded(
    indptr: np.ndarray,
    indices: np.ndarray,
    user_pos: np.ndarray,
    n_domains: int,
    max_history: int,
    keep_domains: Sequence[int] | None = None,
) -> np.ndarray:
    """CSR histories (see ``MultiDomainIndex``) of ``user_pos`` in the padded layout:
    ``(n, n_domains * max_history)`` int64, ``-1`` pads; domain ``d``'s items at
    columns ``d * max_history ...``, latest first. Vectorised (no loop over users)."""
    user_pos = np.asarray(user_pos, np.int64).ravel()
    n = len(user_pos)
    out = np.full((n, n_domains * max_history), -1, dtype=np.int64)
    doms = np.arange(n_domains, dtype=np.int64) if keep_domains is None \
        else np.asarray(keep_domains, np.int64)
    if n == 0 or len(doms) == 0:
        return out
    seg = (user_pos[:, None] * n_domains + doms[None, :]).ravel()  # (n * k,)
    start, length = indptr[seg], indptr[seg + 1] - indptr[seg]
    total = int(length.sum())
    if total == 0:
        return out
    first = np.repeat(np.cumsum(length) - length, length)  # (total,)
    within = np.arange(total, dtype=np.int64) - first
    row = np.repeat(np.repeat(np.arange(n, dtype=np.int64), len(doms)), length)
    col = np.repeat(np.tile(doms * max_history, n), length) + within
    out[row, col] = indices[np.repeat(start, length) + within]
    return out


class HistoryTensors:
    """The CSR histories of an index as tensors on one device, gathered per batch.

    ``gather(users)`` gives exactly ``index.gather(users)`` as a ``(B, L)`` int64
    tensor: work proportional to the batch's history entries.
    """

    def __init__(self, index: MultiDomainIndex, device: torch.device) -> None:
        self.n_domains = len(index.domains)
        self.max_history = index.max_history
        self.indptr = torch.as_tensor(index.indptr, dtype=torch.int64, device=device)
        self.indices = torch.as_tensor(index.indices, device=device)  # int32
        self.device = device

    def gather_compact(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` user positions -> ``(hist, domain)``, both ``(B, W)`` int64, where
        ``W`` is the longest history in the batch (at least 1): each row holds the
        user's domain-0 items (latest first), then domain 1's, ..., then ``-1`` pads;
        ``domain`` is each entry's domain (``-1`` at pads). The same items as
        ``gather`` without its fixed ``n_domains * max_history`` width, so the
        step's tensors follow the batch's real history entries."""
        users = users.to(self.device, torch.int64)
        n, k, width_max = users.shape[0], self.n_domains, self.max_history
        dev = self.device
        seg = users[:, None] * k + torch.arange(k, device=dev)[None, :]  # (B, k)
        start = self.indptr[seg]
        length = self.indptr[seg + 1] - start  # (B, k)
        offset = torch.cumsum(length, 1) - length  # (B, k) first column of each domain block
        width = max(1, int(length.sum(1).max())) if n else 1
        steps = torch.arange(width_max, device=dev)  # (L,)
        valid = steps[None, None, :] < length[:, :, None]  # (B, k, L)
        src = (start[:, :, None] + steps)[valid]  # (nnz,)
        col = (offset[:, :, None] + steps)[valid]
        row = torch.arange(n, device=dev)[:, None, None].expand(n, k, width_max)[valid]
        dom = torch.arange(k, device=dev)[None, :, None].expand(n, k, width_max)[valid]
        hist = torch.full((n, width), -1, dtype=torch.int64, device=dev)
        domain = torch.full((n, width), -1, dtype=torch.int64, device=dev)
        hist[row, col] = self.indices.index_select(0, src).to(torch.int64)
        domain[row, col] = dom
        return hist, domain

    def gather(self, users: torch.Tensor) -> torch.Tensor:
        """``(B,)`` user positions -> ``(B, L)`` int64 padded histories."""
        users = users.to(self.device, torch.int64)
        n, k = users.shape[0], self.n_domains
        out = torch.full((n, k * self.max_history), -1, dtype=torch.int64, device=self.device)
        if n == 0:
            return out
        seg = (users[:, None] * k + torch.arange(k, device=self.device)[None, :]).reshape(-1)
        start = self.indptr[seg]
        length = self.indptr[seg + 1] - start  # (n * k,)
        total = int(length.sum())
        if total == 0:
            return out
        first = torch.repeat_interleave(torch.cumsum(length, 0) - length, length, output_size=total)
        within = torch.arange(total, device=self.device) - first
        row = torch.repeat_interleave(
            torch.arange(n, device=self.device).repeat_interleave(k), length, output_size=total)
        col_base = (torch.arange(k, device=self.device) * self.max_history).repeat(n)
        col = torch.repeat_interleave(col_base, length, output_size=total) + within
        src = torch.repeat_interleave(start, length, output_size=total) + within
        out[row, col] = self.indices[src].to(torch.int64)
        return out


def build_multi_domain_index(
    train: pd.DataFrame,
    domains: Sequence[str],
    max_history: int = 50,
    seed: int = 0,
    extra_users: Sequence[str] = (),
) -> MultiDomainIndex:
    """Index ``train`` (canonical rows) over ``domains``.

    Histories keep each user's ``max_history`` latest rows per domain (by
    ``timestamp`` when present, otherwise a seeded random subset; ties keep the
    rows' order). Ids are mapped to integer codes once per column; everything
    after that works on int arrays.

    Args:
        extra_users: users to include even without rows (they get empty histories).
    """
    domains = tuple(domains)
    n_domains = len(domains)
    codes, uniques = pd.factorize(train["domain"])  # integer codes once, then int arrays
    domain_code = pd.Index(list(domains), dtype=object).get_indexer(
        np.asarray(uniques, dtype=object))[codes] if len(codes) else np.zeros(0, np.int64)
    rows = train[domain_code >= 0]
    domain_code = domain_code[domain_code >= 0].astype(np.int64)
    user_col = rows["user_id"]
    users = IdMap.from_values(user_col) if not len(extra_users) else IdMap.from_values(
        pd.concat([pd.Series(pd.unique(user_col), dtype=object),
                   pd.Series(np.asarray(extra_users, dtype=object), dtype=object)]))
    user_pos_all = users.to_idx(user_col)  # (n,) int64
    items: dict[str, IdMap] = {}
    item_pos_all = np.empty(len(rows), dtype=np.int64)
    order_key = np.empty(len(rows), dtype=np.float64 if "timestamp" not in rows else np.int64)
    rng = np.random.default_rng(seed)
    masks = [domain_code == d for d in range(n_domains)]
    for d, domain in enumerate(domains):
        items[domain] = IdMap.from_values(rows["item_id"][masks[d]])
        if len(items[domain]) == 0:
            raise ValueError(f"domain {domain!r} has no training rows")
    sizes = np.array([len(items[d]) for d in domains], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    domain_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for d, domain in enumerate(domains):
        mask = masks[d]
        item_pos = items[domain].to_idx(rows["item_id"][mask]) + offsets[d]
        item_pos_all[mask] = item_pos
        domain_rows[domain] = (user_pos_all[mask].astype(np.int32), item_pos.astype(np.int32))
        # the same draws as before (one per row of each domain, in domain order)
        order_key[mask] = rows["timestamp"].to_numpy()[mask] if "timestamp" in rows \
            else rng.random(int(mask.sum()))
    # latest first within (user, domain); np.lexsort is stable: ties keep row order
    order = np.lexsort((-order_key, domain_code, user_pos_all))
    seg = user_pos_all[order] * n_domains + domain_code[order]  # (n,) CSR row of each entry
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]]) if len(seg) else np.zeros(0, np.int64)
    run = np.diff(np.r_[starts, len(seg)])
    rank = np.arange(len(seg)) - np.repeat(starts, run)
    keep = rank < max_history
    counts = np.bincount(seg[keep], minlength=len(users) * n_domains)
    indptr = np.zeros(len(users) * n_domains + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = item_pos_all[order][keep].astype(np.int32)
    return MultiDomainIndex(domains, users, items, offsets, domain_rows, indptr, indices,
                            int(max_history))
