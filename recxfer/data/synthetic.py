"""Seeded generator of a small cross-domain dataset with a known shared structure.

Structure (what a transfer method can exploit, and what a test can check):

* ``n_topics`` latent topics. Every user ``u`` has one taste vector
  ``theta_u ~ Dirichlet(alpha)`` over topics, **shared by all domains**; a small
  ``alpha`` makes tastes peaked (one or two favourite topics).
* Every item belongs to one topic and has a popularity ``p_i`` (log-normal). Its
  title is made of words from its topic's vocabulary (plus a domain word), so
  text carries the topic too.
* A user's rows in a domain are drawn without replacement with
  ``P(i | u) ∝ p_i ** pop_power * (theta_u[topic_i] + noise)``: taste dominates,
  popularity adds a realistic skew.
* ``video`` is the rich source domain: every user has about ``source_mean``
  interactions. ``books`` and ``music`` are sparse targets: only a share of users
  appear (``target_user_share``), with about ``target_mean`` interactions each.
* Hence a user's source history predicts their target taste, which is exactly
  what cold-start transfer must learn; popularity alone does not know the topic.

Timestamps increase with each user's draw order. Cold-start users are *not* marked
here: ``recxfer.data.split.cold_start_split`` holds out a seeded share of the
overlapping users of each target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TOPIC_WORDS: tuple[tuple[str, ...], ...] = (
    ("space", "galaxy", "rocket", "orbit", "planet", "alien", "star", "comet"),
    ("love", "romance", "heart", "wedding", "kiss", "summer", "letters", "promise"),
    ("murder", "detective", "crime", "alibi", "clue", "shadow", "case", "witness"),
    ("dragon", "wizard", "sword", "kingdom", "quest", "magic", "castle", "rune"),
    ("war", "soldier", "battle", "empire", "general", "siege", "front", "medal"),
    ("cooking", "kitchen", "recipe", "bread", "spice", "feast", "garden", "harvest"),
    ("football", "match", "goal", "league", "coach", "champion", "season", "stadium"),
    ("jazz", "blues", "swing", "night", "saxophone", "club", "velvet", "smoke"),
    ("ocean", "island", "sail", "storm", "harbour", "wave", "pirate", "reef"),
    ("robot", "code", "machine", "circuit", "network", "signal", "future", "chrome"),
)
DOMAIN_WORDS = {
    "video": ("Show", "Movie", "Series", "Documentary"),
    "books": ("Novel", "Chronicles", "Tales", "Stories"),
    "music": ("Album", "Sessions", "Songs", "Live"),
}


@dataclass(frozen=True)
class DomainSpec:
    """Size of one generated domain."""

    name: str
    n_items: int
    user_share: float  # share of users present in the domain
    mean_interactions: float  # per present user (Poisson mean, at least 2)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of ``generate``; defaults give the committed ``data_samples/``."""

    n_users: int = 2000
    n_topics: int = 8
    alpha: float = 0.15
    pop_power: float = 0.5
    noise: float = 0.02
    seed: int = 7
    domains: tuple[DomainSpec, ...] = field(
        default_factory=lambda: (
            DomainSpec("video", 600, 1.0, 25.0),
            DomainSpec("books", 400, 0.6, 7.0),
            DomainSpec("music", 300, 0.5, 7.0),
        )
    )
    # Large data: draw each user's items from the same P(i | u) without the dense
    # (users x items) matrix (a mixture over topics, repeats rejected in draw order),
    # titles vectorised. A different stream of random numbers than the dense draw.
    sparse: bool = False
    unique_titles: bool = False  # append the item number to every title (no repeats)


def generate(config: SyntheticConfig = SyntheticConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the dataset.

    Returns:
        ``(interactions, items)``: interactions with columns
        ``user_id, item_id, domain, timestamp``; items with ``item_id, domain, title``.
    """
    if config.n_topics > len(TOPIC_WORDS):
        raise ValueError(f"n_topics must be <= {len(TOPIC_WORDS)}")
    rng = np.random.default_rng(config.seed)
    theta = rng.dirichlet(np.full(config.n_topics, config.alpha), size=config.n_users)  # (U, T)
    user_ids = np.array([f"u{u:05d}" for u in range(config.n_users)], dtype=object)
    rows: list[pd.DataFrame] = []
    items: list[pd.DataFrame] = []
    for spec in config.domains:
        topic = rng.integers(0, config.n_topics, size=spec.n_items)  # (I,)
        popularity = rng.lognormal(0.0, 1.0, size=spec.n_items)  # (I,)
        item_ids = np.array([f"{spec.name[0]}{i:05d}" for i in range(spec.n_items)], dtype=object)
        titles = _titles_vectorised(rng, topic, spec.name) if config.sparse \
            else _titles(rng, topic, spec.name)
        if config.unique_titles:
            titles = [f"{t} {i}" for i, t in enumerate(titles)]
        items.append(pd.DataFrame({"item_id": item_ids, "domain": spec.name, "title": titles}))
        present = np.flatnonzero(rng.random(config.n_users) < spec.user_share)
        counts = np.clip(rng.poisson(spec.mean_interactions, size=len(present)), 2, spec.n_items)
        weight = popularity**config.pop_power  # (I,)
        if config.sparse:
            user_rows, chosen, rank = _sparse_draws(rng, theta[present], topic, weight, counts,
                                                    config.noise)
            rows.append(pd.DataFrame({
                "user_id": user_ids[present[user_rows]],
                "item_id": item_ids[chosen],
                "domain": spec.name,
                "timestamp": 1_700_000_000 + rank * 3600 + rng.integers(0, 3600, size=len(rank)),
            }))
            continue
        affinity = theta[present][:, topic] + config.noise  # (U_d, I)
        probs = affinity * weight
        probs /= probs.sum(axis=1, keepdims=True)
        # Gumbel top-k draws each user's items without replacement, all users at once.
        keys = np.log(probs) - np.log(-np.log(rng.random(probs.shape)))  # (U_d, I)
        order = np.argsort(-keys, axis=1)
        user_rows = np.repeat(np.arange(len(present)), counts)
        rank = np.concatenate([np.arange(c) for c in counts])
        rows.append(
            pd.DataFrame(
                {
                    "user_id": user_ids[present[user_rows]],
                    "item_id": item_ids[order[user_rows, rank]],
                    "domain": spec.name,
                    "timestamp": 1_700_000_000 + rank * 3600 + rng.integers(0, 3600, size=len(rank)),
                }
            )
        )
    return pd.concat(rows, ignore_index=True), pd.concat(items, ignore_index=True)


def _sparse_draws(
    rng: np.random.Generator,
    theta: np.ndarray,
    topic: np.ndarray,
    weight: np.ndarray,
    counts: np.ndarray,
    noise: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's ``counts[u]`` distinct items drawn from ``P(i | u) ∝ weight_i *
    (theta[u, topic_i] + noise)`` in memory linear in the draws.

    ``P`` is a mixture: topic ``t`` with weight ``theta[u, t] * W_t`` (``W_t`` the
    total weight of its items), or with weight ``noise * W`` any item, then an item
    of the component in proportion to ``weight``. Draws with replacement, keeping
    each item's first draw in order, are a draw without replacement (the same
    law as the Gumbel top-k of the dense path); a user whose oversampled draws hold
    fewer distinct items than asked keeps those.

    Returns:
        ``(user_row, item, rank)``, each ``(n_rows,)``: rank is the draw order.
    """
    n_topics = theta.shape[1]
    topic_weight = np.bincount(topic, weights=weight, minlength=n_topics)  # (T,)
    comp = np.concatenate([theta * topic_weight, np.full((len(theta), 1), noise * weight.sum())],
                          axis=1)  # (U, T + 1)
    comp_cdf = np.cumsum(comp, axis=1)
    comp_cdf /= comp_cdf[:, -1:]
    by_topic = np.argsort(topic, kind="stable")  # items grouped by topic
    starts = np.concatenate([[0], np.cumsum(np.bincount(topic, minlength=n_topics))])
    within_cdf = np.cumsum(weight[by_topic])  # per topic block, made relative below
    block_lo = np.concatenate([[0.0], within_cdf])[starts[:-1]]  # (T,)
    all_cdf = np.cumsum(weight) / weight.sum()
    extra = np.ceil(counts * 1.5 + 8).astype(np.int64)  # draws per user (oversampled)
    owner = np.repeat(np.arange(len(theta)), extra)  # (n_draws,)
    # component of each draw: one searchsorted in the users' CDFs laid end to end
    # (user u's CDF shifted to [u, u + 1]), no (draws x components) array
    flat = (comp_cdf + np.arange(len(theta))[:, None]).ravel()  # (U * (T + 1),)
    found = np.searchsorted(flat, owner + rng.random(len(owner)), side="left")
    c = np.minimum(found - owner * (n_topics + 1), n_topics)
    u = rng.random(len(owner))
    item = np.empty(len(owner), dtype=np.int64)
    any_item = c == n_topics
    item[any_item] = np.minimum(np.searchsorted(all_cdf, u[any_item], side="right"), len(weight) - 1)
    t = c[~any_item]
    target = block_lo[t] + u[~any_item] * (within_cdf[starts[t + 1] - 1] - block_lo[t])
    pos = np.searchsorted(within_cdf, target, side="right")
    item[~any_item] = by_topic[np.clip(pos, starts[t], starts[t + 1] - 1)]
    # keep each (user, item)'s first draw, in draw order, up to counts[user]
    key = owner * len(weight) + item
    order = np.lexsort((np.arange(len(key)), key))
    first = np.ones(len(key), dtype=bool)
    first[order[1:]] = key[order[1:]] != key[order[:-1]]
    owner, item = owner[first], item[first]
    starts_u = np.searchsorted(owner, np.arange(len(theta)))
    rank = np.arange(len(owner)) - starts_u[owner]
    keep = rank < counts[owner]
    return owner[keep], item[keep], rank[keep]


def _titles_vectorised(rng: np.random.Generator, topic: np.ndarray, domain: str) -> list[str]:
    """Titles as ``_titles`` makes them (two distinct words of the item's topic and a
    domain noun), drawn for all items at once."""
    nouns = np.asarray(DOMAIN_WORDS.get(domain, ("Item",)), dtype=object)
    words = np.asarray(TOPIC_WORDS, dtype=object)  # (topics, 8)
    first = rng.integers(0, words.shape[1], size=len(topic))
    second = (first + rng.integers(1, words.shape[1], size=len(topic))) % words.shape[1]
    noun = nouns[rng.integers(0, len(nouns), size=len(topic))]
    a, b = words[topic, first], words[topic, second]
    return [f"{x.title()} {y} {z}" for x, y, z in zip(a, b, noun)]


def _titles(rng: np.random.Generator, topic: np.ndarray, domain: str) -> list[str]:
    nouns = DOMAIN_WORDS.get(domain, ("Item",))
    titles = []
    for t in topic:
        words = rng.choice(TOPIC_WORDS[t], size=2, replace=False)
        titles.append(f"{words[0].title()} {words[1]} {nouns[rng.integers(len(nouns))]}")
    return titles


def write_samples(out_dir: str | Path, config: SyntheticConfig = SyntheticConfig()) -> list[Path]:
    """Write ``interactions.csv`` and ``items.csv`` into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    interactions, items = generate(config)
    paths = [out / "interactions.csv", out / "items.csv"]
    interactions.to_csv(paths[0], index=False)
    items.to_csv(paths[1], index=False)
    return paths
