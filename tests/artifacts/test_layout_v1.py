"""Format-1 artifacts (ids as JSON lists, no ``tables.json``), as earlier versions
wrote them, are still read: by ``load_domain`` as before, and by serving with
in-memory id tables; their bad content is refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recxfer.artifacts import ArtifactError, domain_dir, load_domain, read_artifact, store, write_artifact
from recxfer.artifacts.ids import IdTable
from recxfer.types import DomainEmbeddings, SeenItems, UserOrigin


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
        item_ids=np.array([f"item/{j} é" for j in range(n_items)], dtype=object),
        item_emb=rng.standard_normal((n_items, dim)).astype(np.float32),
        seen=SeenItems.from_pairs(n_users, users, items),
        item_popularity=rng.integers(0, 50, n_items).astype(np.int64),
    )


def assert_emb_equal(a: DomainEmbeddings, b: DomainEmbeddings) -> None:
    assert a.domain == b.domain
    assert list(a.user_ids) == list(b.user_ids) and list(a.item_ids) == list(b.item_ids)
    np.testing.assert_array_equal(a.user_emb, b.user_emb)
    np.testing.assert_array_equal(a.item_emb, b.item_emb)
    assert list(a.user_origin) == list(b.user_origin)
    np.testing.assert_array_equal(a.seen.indptr, b.seen.indptr)
    np.testing.assert_array_equal(a.seen.indices, b.seen.indices)
    np.testing.assert_array_equal(a.item_popularity, b.item_popularity)


def save_domain_v1(folder: Path, emb: DomainEmbeddings) -> None:
    """The format-1 writer (the layout before ``tables.json``)."""
    out = folder / domain_dir(emb.domain)
    out.mkdir(parents=True, exist_ok=True)
    (out / "user_ids.json").write_text(json.dumps([str(u) for u in emb.user_ids]))
    (out / "item_ids.json").write_text(json.dumps([str(i) for i in emb.item_ids]))
    arrays = {
        "user_emb": emb.user_emb.astype(np.float32),
        "user_origin": np.array([0 if o == "warm" else 1 for o in emb.user_origin], np.uint8),
        "item_emb": emb.item_emb.astype(np.float32),
        "item_popularity": emb.item_popularity.astype(np.int64),
        "seen_indptr": emb.seen.indptr.astype(np.int64),
        "seen_indices": emb.seen.indices.astype(np.int64),
    }
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array, allow_pickle=False)


def write_v1(root: Path, monkeypatch, *domains: DomainEmbeddings, edit=None, version="v1"):
    """A format-1 artifact of ``domains`` (``edit(folder)`` before sealing)."""
    with monkeypatch.context() as patch:
        patch.setattr(store, "FORMAT", 1)
        with write_artifact(root, {}, "fp", version=version) as builder:
            for emb in domains:
                save_domain_v1(builder.path, emb)
            builder.extra["domains"] = {
                emb.domain: {"users": len(emb.user_ids), "items": len(emb.item_ids),
                             "dim": int(emb.item_emb.shape[1]), "index": {"factory": "Flat", "file": None}}
                for emb in domains
            }
            if edit is not None:
                edit(builder.path / domain_dir(domains[0].domain))
    assert builder.artifact.manifest["format"] == 1
    return builder.artifact


def test_a_format_1_artifact_is_read_as_before(tmp_path, monkeypatch) -> None:
    books = make_emb("books")
    artifact = write_v1(tmp_path, monkeypatch, books)
    loaded = load_domain(read_artifact(artifact.path), "books")
    assert loaded.user_ids.dtype == object and loaded.item_ids.dtype == object
    assert_emb_equal(loaded, books)
    mapped = load_domain(artifact, "books", mmap=True, id_tables=True)
    assert isinstance(mapped.item_ids, IdTable) and mapped.item_ids.tolist() == list(books.item_ids)
    assert mapped.user_ids.get("user-3") == 3 and isinstance(mapped.item_emb, np.memmap)


def test_serving_answers_a_format_1_artifact_like_a_format_2_one(tmp_path, monkeypatch) -> None:
    from recxfer.artifacts import save_domain
    from recxfer.serve import ServingModel

    books = make_emb("books", n_users=8, n_items=30)
    old = write_v1(tmp_path / "old", monkeypatch, books)
    with write_artifact(tmp_path / "new", {}, "fp", version="v1") as builder:
        save_domain(builder.path, books)
        builder.extra["domains"] = old.manifest["domains"]
    models = [ServingModel.from_artifact(a.path, device="cpu", max_k=10)
              for a in (old, builder.artifact)]
    for user in books.user_ids:
        a, b = (m.recommend(user, "books", 7) for m in models)
        assert list(a.item_ids) == list(b.item_ids) and a.user_origin == b.user_origin
        np.testing.assert_allclose(a.scores, b.scores)
    sims = [m.similar_items("books", books.item_ids[4], 5) for m in models]
    assert list(sims[0].item_ids) == list(sims[1].item_ids)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "user_ids.json").write_text(json.dumps([1, 2, 3, 4, 5, 6])), "user_ids.json"),
        (lambda d: (d / "item_ids.json").write_text(json.dumps(["a", None] + ["b"] * 7)), "item_ids.json"),
        (lambda d: (d / "user_ids.json").write_text(json.dumps({"0": "user-0"})), "user_ids.json"),
        (lambda d: (d / "user_ids.json").write_text('["user-0", '), "'books'"),
        (lambda d: (d / "user_ids.json").write_text(json.dumps(["a", "b"])), "'books'"),
        (lambda d: (d / "item_ids.json").unlink(), "item_ids.json"),
    ],
)
def test_format_1_bad_ids_are_refused(tmp_path, monkeypatch, edit, message) -> None:
    artifact = write_v1(tmp_path, monkeypatch, make_emb("books"), edit=edit)
    for kwargs in ({}, {"mmap": True, "id_tables": True}):
        with pytest.raises(ArtifactError, match=message):
            load_domain(artifact, "books", **kwargs)


def test_format_1_duplicate_ids_are_refused_by_serving(tmp_path, monkeypatch) -> None:
    from recxfer.serve import ServingModel

    def duplicate(folder: Path) -> None:
        (folder / "item_ids.json").write_text(json.dumps(["a"] * 9))

    artifact = write_v1(tmp_path, monkeypatch, make_emb("books"), edit=duplicate)
    with pytest.raises(ArtifactError, match="duplicate ids"):
        ServingModel.from_artifact(artifact.path, device="cpu")
