"""Per-domain tables inside an artifact (format 2: ``.npy`` id tables, a domain's
``tables.json``): round trip and refusal of bad content. Format 1 (JSON ids) is
in ``test_layout_v1.py``, the id tables themselves in ``test_ids.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recxfer.artifacts import (
    ArtifactError,
    domain_dir,
    index_file,
    load_domain,
    read_artifact,
    save_domain,
    write_artifact,
)
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin

FILES = {
    "tables.json", "user_ids.npy", "user_ids_rows.npy", "user_ids_pos.npy", "user_emb.npy",
    "user_origin.npy", "item_ids.npy", "item_ids_rows.npy", "item_ids_pos.npy", "item_emb.npy",
    "item_popularity.npy",
    "seen_indptr.npy", "seen_indices.npy",
}


def make_emb(domain: str = "books", n_users: int = 6, n_items: int = 9, dim: int = 4) -> DomainEmbeddings:
    rng = np.random.default_rng(0)
    users = rng.integers(0, n_users, 20)
    items = rng.integers(0, n_items, 20)
    return DomainEmbeddings(
        domain=domain,
        user_ids=np.array([f"user-{u}" for u in range(n_users)], dtype=object),
        user_emb=rng.standard_normal((n_users, dim)).astype(np.float32),
        user_origin=np.array(
            [UserOrigin.WARM.value if u % 3 else UserOrigin.TRANSFER.value for u in range(n_users)], dtype=object
        ),
        item_ids=np.array([f"item/{j} é" for j in range(n_items)], dtype=object),  # any string survives
        item_emb=rng.standard_normal((n_items, dim)).astype(np.float32),
        seen=SeenItems.from_pairs(n_users, users, items),
        item_popularity=rng.integers(0, 50, n_items).astype(np.int64),
    )


def assert_emb_equal(a: DomainEmbeddings, b: DomainEmbeddings) -> None:
    assert a.domain == b.domain
    assert list(a.user_ids) == list(b.user_ids)
    assert list(a.item_ids) == list(b.item_ids)
    np.testing.assert_array_equal(a.user_emb, b.user_emb)
    np.testing.assert_array_equal(a.item_emb, b.item_emb)
    assert list(a.user_origin) == list(b.user_origin)
    np.testing.assert_array_equal(a.seen.indptr, b.seen.indptr)
    np.testing.assert_array_equal(a.seen.indices, b.seen.indices)
    np.testing.assert_array_equal(a.item_popularity, b.item_popularity)


def test_round_trip(tmp_path) -> None:
    books, movies = make_emb("books"), make_emb("movies.v2", n_users=3, n_items=5, dim=2)
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        save_domain(builder.path, books)
        save_domain(builder.path, movies)
    artifact = read_artifact(tmp_path / "v1")
    assert {rel.rsplit("/", 1)[1] for rel in artifact.manifest["files"] if rel.startswith("domains/books/")} == FILES
    loaded = load_domain(artifact, "books")
    assert_emb_equal(loaded, books)
    assert_emb_equal(load_domain(artifact, "movies.v2"), movies)
    assert loaded.user_emb.dtype == np.float32 and loaded.item_emb.dtype == np.float32
    assert loaded.item_popularity.dtype == np.int64
    assert loaded.seen.indptr.dtype == np.int64 and loaded.seen.indices.dtype == np.int64
    for u in range(books.seen.n_users):
        np.testing.assert_array_equal(loaded.seen.row(u), books.seen.row(u))
    # origin is stored compactly as codes
    codes = np.load(tmp_path / "v1" / "domains/books/user_origin.npy")
    assert codes.dtype == np.uint8
    assert codes.tolist() == [0 if o == "warm" else 1 for o in books.user_origin]


def test_non_string_ids_are_stored_as_strings(tmp_path) -> None:
    emb = make_emb()
    emb = DomainEmbeddings(**{**emb.__dict__, "user_ids": np.arange(len(emb.user_ids))})
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        save_domain(builder.path, emb)
    loaded = load_domain(read_artifact(tmp_path / "v1"), "books")
    assert list(loaded.user_ids) == [str(u) for u in range(len(emb.user_ids))]


def test_missing_domain_refused(tmp_path) -> None:
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        save_domain(builder.path, make_emb("books"))
    with pytest.raises(ArtifactError):
        load_domain(read_artifact(tmp_path / "v1"), "movies")


def _edit_tables(folder, layout: int = 2, drop: str | None = None, **paths: str) -> None:
    """Rewrite ``folder/tables.json``: another ``layout``, a table left out, or
    tables pointed elsewhere."""
    entry = json.loads((folder / "tables.json").read_text())
    entry["layout"] = layout
    entry["tables"].update(paths)
    entry["tables"].pop(drop, None)
    (folder / "tables.json").write_text(json.dumps(entry))


def sealed_with(tmp_path, edit) -> object:
    """An artifact holding ``books`` whose files were edited by hand before sealing."""
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        save_domain(builder.path, make_emb("books"))
        edit(builder.path / domain_dir("books"))
    return read_artifact(tmp_path / "v1")  # checksums match: only the content is bad


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: np.save(d / "user_origin.npy", np.array([0, 1, 2, 0, 0, 1], np.uint8)), id="origin-2"),
        pytest.param(lambda d: np.save(d / "user_origin.npy", np.array([0, 1, 255, 0, 0, 1], np.uint8)), id="origin-255"),
        pytest.param(lambda d: np.save(d / "user_ids.npy", np.arange(6)), id="int-user-ids"),
        pytest.param(lambda d: np.save(d / "item_ids.npy", np.array(["a"] * 9)), id="unicode-item-ids"),
        pytest.param(lambda d: np.save(d / "user_ids.npy", np.array([b"a"] * 6)), id="duplicate-user-ids"),
        pytest.param(lambda d: np.save(d / "user_ids.npy", np.array([b"a", b"b"])), id="ids-wrong-count"),
        pytest.param(lambda d: np.save(d / "user_ids.npy", np.load(d / "user_ids.npy")[::-1].copy()),
                     id="ids-unsorted"),
        pytest.param(lambda d: np.save(d / "user_ids_pos.npy", np.array([0, 1, 2, 3, 4, 6])), id="pos-out-of-range"),
        pytest.param(lambda d: np.save(d / "item_ids_rows.npy", np.zeros(9, np.int64)), id="rows-repeat"),
        pytest.param(lambda d: np.save(d / "item_ids_rows.npy", np.arange(9, dtype=np.int32)), id="rows-int32"),
        pytest.param(lambda d: np.save(d / "item_ids_pos.npy", np.roll(np.load(d / "item_ids_pos.npy"), 1)),
                     id="pos-shifted"),
        pytest.param(lambda d: (d / "tables.json").write_text('{"layout": 2, '), id="tables-bad-json"),
        pytest.param(lambda d: (d / "tables.json").unlink(), id="tables-missing"),
        pytest.param(lambda d: _edit_tables(d, layout=3), id="tables-unknown-layout"),
        pytest.param(lambda d: _edit_tables(d, drop="item_emb"), id="tables-lacks-one"),
        pytest.param(lambda d: _edit_tables(d, item_emb="domains/books/nowhere.npy"), id="tables-unlisted-file"),
        pytest.param(lambda d: _edit_tables(d, item_emb="domains/books/tables.json"), id="tables-not-npy"),
        pytest.param(lambda d: (d / "user_ids.npy").write_bytes((d / "user_ids.npy").read_bytes()[:-3]),
                     id="ids-truncated"),
        pytest.param(lambda d: (d / "seen_indptr.npy").unlink(), id="missing-file"),
        pytest.param(lambda d: (d / "item_emb.npy").write_bytes(b"not numpy"), id="bad-npy"),
        pytest.param(
            lambda d: np.save(d / "item_emb.npy", np.zeros((9, 5), np.float32)), id="dim-mismatch"
        ),
        pytest.param(
            lambda d: np.save(d / "user_emb.npy", np.array([object()] * 6, dtype=object), allow_pickle=True),
            id="pickled-array",
        ),
    ],
)
def test_load_refuses_bad_content(tmp_path, edit) -> None:
    artifact = sealed_with(tmp_path, edit)
    for kwargs in ({}, {"mmap": True, "id_tables": True}):
        with pytest.raises(ArtifactError, match=r"domains/books|'books'"):
            load_domain(artifact, "books", **kwargs)


def test_load_refuses_negative_origin_codes(tmp_path) -> None:
    artifact = sealed_with(
        tmp_path, lambda d: np.save(d / "user_origin.npy", np.array([0, 1, -1, 0, 0, 1], np.int8))
    )
    with pytest.raises(ArtifactError):
        load_domain(artifact, "books")


def test_load_refuses_float_origin_codes(tmp_path) -> None:
    artifact = sealed_with(
        tmp_path, lambda d: np.save(d / "user_origin.npy", np.array([0, 1, 0.5, 0, 0, 1], np.float64))
    )
    with pytest.raises(ArtifactError):
        load_domain(artifact, "books")


def test_load_refuses_one_dimensional_embeddings(tmp_path) -> None:
    artifact = sealed_with(tmp_path, lambda d: np.save(d / "user_emb.npy", np.zeros(6, np.float32)))
    with pytest.raises(ArtifactError):
        load_domain(artifact, "books")


@pytest.mark.parametrize("name", ["a/b", "..", "../books", "books/..", ".", ".hidden", "", "/abs", "a b", "a\\b"])
def test_unsafe_domain_names_rejected(tmp_path, name: str) -> None:
    with pytest.raises(ValueError):
        domain_dir(name)
    with pytest.raises(ValueError):
        index_file(name)
    emb = make_emb(name)
    with pytest.raises(ValueError):
        save_domain(tmp_path, emb)
    assert not (tmp_path / "domains").exists() or not any((tmp_path / "domains").iterdir())
    with write_artifact(tmp_path / "root", {}, "fp", version="v1") as builder:
        save_domain(builder.path, make_emb("books"))
    with pytest.raises(ValueError):
        load_domain(builder.artifact, name)


def test_domain_name_with_trailing_newline_rejected() -> None:
    with pytest.raises(ValueError):
        domain_dir("books\n")


def test_safe_domain_names_accepted() -> None:
    assert domain_dir("books") == "domains/books"
    assert domain_dir("Movies_2.v1-x") == "domains/Movies_2.v1-x"
    assert index_file("books") == "domains/books/index.faiss"
