"""The seeded generator (recxfer/data/synthetic.py) and the committed data_samples/.

Item topics are not returned by ``generate``; they are recovered from the titles,
which are made of two words of the item's topic vocabulary (``TOPIC_WORDS``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recxfer.data import load_data_dir
from recxfer.data.synthetic import (
    DOMAIN_WORDS,
    TOPIC_WORDS,
    SyntheticConfig,
    generate,
    write_samples,
)

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
DOMAINS = ["video", "books", "music"]
WORD_TOPIC = {word: topic for topic, words in enumerate(TOPIC_WORDS) for word in words}


@pytest.fixture(scope="module")
def default_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(SyntheticConfig())


def title_topic(title: str) -> int:
    first, second, noun = title.split(" ")
    topics = {WORD_TOPIC[first.lower()], WORD_TOPIC[second]}
    assert len(topics) == 1, title  # both words come from one topic
    return topics.pop()


def test_topic_words_are_unambiguous() -> None:
    words = [w for ws in TOPIC_WORDS for w in ws]
    assert len(words) == len(set(words))


def test_same_seed_same_data_other_seed_other_data(three_domain_config) -> None:
    small = three_domain_config(n_users=300, seed=5, n_items=(100, 80, 60), mean_interactions=(12.0, 5.0, 5.0))
    a_inter, a_items = generate(small)
    b_inter, b_items = generate(small)
    pd.testing.assert_frame_equal(a_inter, b_inter)
    pd.testing.assert_frame_equal(a_items, b_items)
    c_inter, _ = generate(replace(small, seed=6))
    assert not a_inter.equals(c_inter)


def test_columns_and_sizes(default_data) -> None:
    inter, items = default_data
    assert list(inter.columns) == ["user_id", "item_id", "domain", "timestamp"]
    assert list(items.columns) == ["item_id", "domain", "title"]
    config = SyntheticConfig()
    for spec in config.domains:
        assert (items["domain"] == spec.name).sum() == spec.n_items
        users = inter.loc[inter["domain"] == spec.name, "user_id"].nunique()
        assert users == pytest.approx(spec.user_share * config.n_users, rel=0.08)
        per_user = inter[inter["domain"] == spec.name].groupby("user_id").size()
        assert per_user.min() >= 2
        assert per_user.mean() == pytest.approx(spec.mean_interactions, rel=0.1)


def test_no_duplicate_rows_and_items_cover_interactions(default_data) -> None:
    inter, items = default_data
    keys = list(zip(inter["user_id"], inter["item_id"], inter["domain"]))
    assert len(keys) == len(set(keys))
    catalogue = set(zip(items["item_id"], items["domain"]))
    assert len(catalogue) == len(items)
    assert set(zip(inter["item_id"], inter["domain"])) <= catalogue


def test_titles_carry_the_topic_and_the_domain(default_data) -> None:
    _, items = default_data
    for domain, title in zip(items["domain"], items["title"]):
        title_topic(title)
        assert title.split(" ")[2] in DOMAIN_WORDS[domain]


def test_timestamps_increase_in_each_users_draw_order(default_data) -> None:
    inter, _ = default_data
    last: dict[tuple[str, str], int] = {}
    for user, domain, ts in zip(inter["user_id"], inter["domain"], inter["timestamp"]):
        key = (user, domain)
        assert ts > last.get(key, -1)
        last[key] = ts


@pytest.mark.parametrize("target", ["books", "music"])
def test_a_users_taste_is_shared_across_domains(default_data, target: str) -> None:
    """A user's topic mix in video is much closer to their own mix in the target
    than to another user's: the structure cold-start transfer has to exploit."""
    inter, items = default_data
    n_topics = SyntheticConfig().n_topics
    topic = {
        (i, d): title_topic(t)
        for i, d, t in zip(items["item_id"], items["domain"], items["title"])
    }
    hist: dict[tuple[str, str], list[float]] = {}
    for user, item, domain in zip(inter["user_id"], inter["item_id"], inter["domain"]):
        hist.setdefault((user, domain), [0.0] * n_topics)[topic[(item, domain)]] += 1.0

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    users = sorted(u for (u, d) in hist if d == target)
    assert len(users) > 500
    same = [cosine(hist[(u, "video")], hist[(u, target)]) for u in users]
    shifted = users[1:] + users[:1]  # pair each user with another one
    other = [cosine(hist[(u, "video")], hist[(v, target)]) for u, v in zip(users, shifted)]
    assert np.mean(same) > 0.7
    assert np.mean(same) > 2.0 * np.mean(other)
    assert np.mean(np.array(same) > np.array(other)) > 0.8


def test_popularity_skews_the_items(default_data) -> None:
    inter, _ = default_data
    counts = sorted(Counter(inter.loc[inter["domain"] == "video", "item_id"]).values())
    top_decile = sum(counts[-len(counts) // 10 :])
    assert top_decile > 0.2 * sum(counts)  # well above the 10% of a uniform draw


def test_too_many_topics_raise() -> None:
    with pytest.raises(ValueError, match="n_topics"):
        generate(SyntheticConfig(n_topics=len(TOPIC_WORDS) + 1))


def test_committed_samples_are_reproducible(tmp_path: Path) -> None:
    """data_samples/ is exactly what ``write_samples(SyntheticConfig())`` writes."""
    committed = load_data_dir(SAMPLES, DOMAINS)
    written = write_samples(tmp_path)
    assert sorted(p.name for p in written) == ["interactions.csv", "items.csv"]
    regenerated = load_data_dir(tmp_path, DOMAINS)
    for name in ("interactions", "items"):
        a, b = getattr(committed, name), getattr(regenerated, name)
        assert a is not None and b is not None
        pd.testing.assert_frame_equal(a, b)
    assert committed.fingerprint == regenerated.fingerprint


def test_generate_matches_samples_read_back(default_data, tmp_path: Path) -> None:
    inter, items = default_data
    inter.to_csv(tmp_path / "interactions.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    assert load_data_dir(tmp_path, DOMAINS).fingerprint == load_data_dir(SAMPLES, DOMAINS).fingerprint
