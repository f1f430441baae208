"""Data at scale (issue 11): Parquet partitions through pyarrow's dataset API, the
split on integer codes (equal to the string-based split it replaced), ids mapped
once, and the sparse synthetic generator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recxfer.data import DataValidationError, IdMap, cold_start_split, load_data_dir, read_interactions
from recxfer.data.split import stable_unit
from recxfer.data.synthetic import TOPIC_WORDS, DomainSpec, SyntheticConfig, generate


# --------------------------------------------------------------------------- reference
# The split as it was before it worked on integer codes (string ``isin`` and a
# groupby per target), copied verbatim apart from names: the definition of the
# results the coded split must reproduce.
def _old_stable_unit(keys, salt):
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def _old_overlapping_users(interactions, source, target):
    by_domain = interactions.groupby("domain")["user_id"].unique()
    return np.sort(np.intersect1d(by_domain.get(source, []), by_domain.get(target, [])))


def old_cold_start_split(interactions, source, targets, cold_share=0.2, valid_share=0.5, seed=0,
                         method="random"):
    rng = np.random.default_rng(seed)
    drop = np.zeros(len(interactions), dtype=bool)
    valid, test = {}, {}
    for target in targets:
        users = _old_overlapping_users(interactions, source, target)
        if method == "hash":
            unit = _old_stable_unit([str(u) for u in users], f"{seed}:{target}")
            valid_users = users[unit < cold_share * valid_share]
            test_users = users[(unit >= cold_share * valid_share) & (unit < cold_share)]
        else:
            n_cold = int(round(cold_share * len(users)))
            cold = rng.permutation(users)[:n_cold]
            n_valid = int(round(valid_share * n_cold))
            valid_users, test_users = cold[:n_valid], cold[n_valid:]
        in_target = (interactions["domain"] == target).to_numpy()
        is_valid = in_target & interactions["user_id"].isin(valid_users).to_numpy()
        is_test = in_target & interactions["user_id"].isin(test_users).to_numpy()
        valid[target] = interactions[is_valid].reset_index(drop=True)
        test[target] = interactions[is_test].reset_index(drop=True)
        drop |= is_valid | is_test
    return interactions[~drop].reset_index(drop=True), valid, test


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    interactions, _ = generate(SyntheticConfig(
        n_users=300, seed=5,
        domains=(DomainSpec("video", 80, 1.0, 8.0), DomainSpec("books", 50, 0.6, 4.0),
                 DomainSpec("music", 40, 0.5, 3.0)),
    ))
    # shuffled rows, ids that sort differently as strings and as numbers
    interactions["user_id"] = interactions["user_id"].str.replace("u00", "", regex=False)
    return interactions.sample(frac=1.0, random_state=3).reset_index(drop=True)


@pytest.mark.parametrize("method", ["random", "hash"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_coded_split_equals_the_string_split(frame, method: str, seed: int) -> None:
    split = cold_start_split(frame, "video", ("books", "music"), 0.3, 0.5, seed, method)
    train, valid, test = old_cold_start_split(frame, "video", ("books", "music"), 0.3, 0.5, seed,
                                              method)
    pd.testing.assert_frame_equal(split.train, train)
    for target in ("books", "music"):
        pd.testing.assert_frame_equal(split.valid[target], valid[target])
        pd.testing.assert_frame_equal(split.test[target], test[target])
        assert len(valid[target]) and len(test[target])


def test_split_of_a_missing_domain_still_raises(frame) -> None:
    with pytest.raises(ValueError, match="no overlapping users"):
        cold_start_split(frame, "video", ("films",))


def test_stable_unit_equals_the_per_key_loop() -> None:
    keys = ["u1", "", "ü-ñ", "x" * 300, "7"]
    np.testing.assert_array_equal(stable_unit(keys, "3:books"), _old_stable_unit(keys, "3:books"))
    assert stable_unit([], "s").shape == (0,)


# --------------------------------------------------------------------------- parquet
def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[sorted(frame.columns)].astype({c: str for c in ("user_id", "item_id", "domain")})
    return frame.sort_values(sorted(frame.columns), kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    interactions, _ = generate(SyntheticConfig(
        n_users=200, seed=2,
        domains=(DomainSpec("video", 60, 1.0, 6.0), DomainSpec("books", 30, 0.6, 3.0)),
    ))
    interactions["weight"] = np.float32(1.5)
    return interactions


def test_partitioned_folder_reads_like_a_single_file(rows, tmp_path: Path) -> None:
    single = tmp_path / "single.parquet"
    rows.to_parquet(single, index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 4)):
        rows.iloc[part].to_parquet(folder / f"part-{i:04d}.parquet", index=False)
    a, b = read_interactions(single), read_interactions(folder)
    pd.testing.assert_frame_equal(_canonical(a), _canonical(b))
    assert len(b) == len(rows)


def test_hive_partitioned_dataset_reads_like_a_single_file(rows, tmp_path: Path) -> None:
    single = tmp_path / "interactions.parquet"
    rows.to_parquet(single, index=False)
    folder = tmp_path / "hive"
    pq.write_to_dataset(pa.Table.from_pandas(rows, preserve_index=False), folder,
                        partition_cols=["domain"])
    (folder / "_SUCCESS").write_text("")
    hive = read_interactions(folder, domains=["video", "books"])
    pd.testing.assert_frame_equal(_canonical(read_interactions(single)), _canonical(hive))
    data = tmp_path / "data"
    data.mkdir()
    folder.rename(data / "interactions")
    assert len(load_data_dir(data, ["video", "books"]).interactions) == len(rows)


def test_parquet_columns_are_checked_on_the_schema_and_projected(rows, tmp_path: Path) -> None:
    extra = tmp_path / "extra.parquet"
    rows.assign(score=1).to_parquet(extra, index=False)
    with pytest.raises(DataValidationError, match=r"unexpected column\(s\) \['score'\]") as exc:
        read_interactions(extra)
    assert str(extra) in str(exc.value)
    missing = tmp_path / "missing.parquet"
    rows.drop(columns="item_id").to_parquet(missing, index=False)
    with pytest.raises(DataValidationError, match="missing column") as exc:
        read_interactions(missing)
    assert str(missing) in str(exc.value)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataValidationError, match="cannot be read as interactions"):
        read_interactions(broken)


def test_parquet_validation_still_names_file_and_line(rows, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    rows.iloc[:50].to_parquet(folder / "a.parquet", index=False)
    bad = rows.iloc[50:100].copy()
    bad.iloc[3, bad.columns.get_loc("user_id")] = "u\x00x"
    bad.to_parquet(folder / "b.parquet", index=False)
    with pytest.raises(DataValidationError, match="control") as exc:
        read_interactions(folder)
    assert str(folder / "b.parquet") in str(exc.value) and "[5]" in str(exc.value)


# --------------------------------------------------------------------------- ids, generator
def test_idmap_codes_a_column_once_like_the_object_path(rows) -> None:
    column = rows["user_id"].astype("str")
    idmap = IdMap.from_values(column)
    assert idmap.ids.tolist() == sorted(set(column))
    np.testing.assert_array_equal(idmap.to_idx(column), idmap.to_idx(column.to_numpy(object)))
    probe = pd.Series(["zz", column.iloc[0]], dtype="str")
    assert idmap.lookup(probe).tolist() == [-1, idmap.to_idx([column.iloc[0]])[0]]
    with pytest.raises(KeyError, match="'zz'"):
        idmap.to_idx(probe)


def test_sparse_generator_draws_distinct_items_with_the_taste_structure() -> None:
    domains = (DomainSpec("video", 2000, 1.0, 20.0), DomainSpec("books", 800, 0.6, 6.0))
    config = SyntheticConfig(n_users=1500, seed=3, domains=domains, sparse=True)
    interactions, items = generate(config)
    again, _ = generate(config)
    pd.testing.assert_frame_equal(interactions, again)  # seeded
    assert not interactions.duplicated(["user_id", "item_id", "domain"]).any()
    assert set(interactions["domain"]) == {"video", "books"}
    known = set(zip(items["item_id"], items["domain"]))
    assert set(zip(interactions["item_id"], interactions["domain"])) <= known
    per_user = interactions[interactions["domain"] == "video"].groupby("user_id").size()
    assert 15 < per_user.mean() < 25 and per_user.min() >= 2
    word_topic = {w: t for t, words in enumerate(TOPIC_WORDS) for w in words}
    topic = items.assign(topic=[word_topic[t.split()[1]] for t in items["title"]])
    merged = interactions.merge(topic, on=["item_id", "domain"])
    top = merged.groupby(["user_id", "topic"]).size().groupby("user_id").max()
    share = float((top / merged.groupby("user_id").size()).mean())
    dense, dense_items = generate(SyntheticConfig(n_users=1500, seed=3, domains=domains))
    dense_topic = dense_items.assign(topic=[word_topic[t.split()[1]] for t in dense_items["title"]])
    merged = dense.merge(dense_topic, on=["item_id", "domain"])
    top = merged.groupby(["user_id", "topic"]).size().groupby("user_id").max()
    dense_share = float((top / merged.groupby("user_id").size()).mean())
    assert abs(share - dense_share) < 0.05, (share, dense_share)  # the same law
    unique = generate(SyntheticConfig(n_users=50, seed=3, domains=domains, sparse=True,
                                      unique_titles=True))[1]
    assert unique["title"].is_unique

