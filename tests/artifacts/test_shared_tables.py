"""The user table is stored once: a domain whose user ids (and embeddings) equal an
earlier domain's byte for byte points its ``tables.json`` at that domain's files,
and a load given one ``cache`` opens them once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recxfer.artifacts import ArtifactError, load_domain, read_artifact, save_domain, write_artifact
from recxfer.artifacts.ids import IdTable
from recxfer.types import DomainEmbeddings, SeenItems

USERS = ["u3", "u1", "u2", "u0"]


def _domain(name: str, rng: np.random.Generator, user_emb: np.ndarray, users=USERS,
            origins=None) -> DomainEmbeddings:
    n_items = 5
    return DomainEmbeddings(
        domain=name,
        user_ids=np.array(users, dtype=object),
        user_emb=user_emb,
        user_origin=np.array(origins or ["warm"] * len(users), dtype=object),
        item_ids=np.array([f"{name}-{j}" for j in range(n_items)], dtype=object),
        item_emb=rng.standard_normal((n_items, user_emb.shape[1])).astype(np.float32),
        seen=SeenItems.from_pairs(len(users), np.arange(len(users)), np.arange(len(users)) % n_items),
        item_popularity=np.ones(n_items, np.int64),
    )


def _write(tmp_path, *domains: DomainEmbeddings):
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        for emb in domains:
            save_domain(builder.path, emb)
    return builder.artifact


def _tables(artifact, domain: str) -> dict[str, str]:
    return json.loads((artifact.path / f"domains/{domain}/tables.json").read_text())["tables"]


def _check_round_trip(artifact, *domains: DomainEmbeddings) -> None:
    for emb in domains:
        loaded = load_domain(artifact, emb.domain)
        assert list(loaded.user_ids) == list(emb.user_ids)
        np.testing.assert_array_equal(loaded.user_emb, emb.user_emb)
        assert list(loaded.user_origin) == list(emb.user_origin)
        assert list(loaded.item_ids) == list(emb.item_ids)


def test_same_users_and_embeddings_are_stored_once(tmp_path) -> None:
    rng = np.random.default_rng(0)
    user_emb = rng.standard_normal((4, 3)).astype(np.float32)
    src = _domain("src", rng, user_emb)
    tgt = _domain("tgt", rng, user_emb.copy(), origins=["warm", "transfer", "warm", "transfer"])
    artifact = _write(tmp_path, src, tgt)
    tables = _tables(artifact, "tgt")
    for name in ("user_ids", "user_ids_rows", "user_ids_pos", "user_emb"):
        assert tables[name] == f"domains/src/{name}.npy"
    assert tables["user_origin"] == "domains/tgt/user_origin.npy"  # per domain
    files = artifact.manifest["files"]
    assert not any(rel.startswith("domains/tgt/user_") and rel != "domains/tgt/user_origin.npy"
                   for rel in files)
    _check_round_trip(artifact, src, tgt)

    cache: dict = {}
    a = load_domain(artifact, "src", mmap=True, id_tables=True, cache=cache)
    b = load_domain(artifact, "tgt", mmap=True, id_tables=True, cache=cache)
    assert isinstance(a.user_ids, IdTable) and a.user_ids is b.user_ids
    assert a.user_emb is b.user_emb and isinstance(a.user_emb, np.memmap)
    assert a.item_ids is not b.item_ids
    assert list(b.user_origin) == ["warm", "transfer", "warm", "transfer"]


def test_same_users_other_embeddings_share_the_ids_only(tmp_path) -> None:
    rng = np.random.default_rng(1)
    src = _domain("src", rng, rng.standard_normal((4, 3)).astype(np.float32))
    tgt = _domain("tgt", rng, rng.standard_normal((4, 3)).astype(np.float32))
    artifact = _write(tmp_path, src, tgt)
    tables = _tables(artifact, "tgt")
    assert tables["user_ids"] == "domains/src/user_ids.npy"
    assert tables["user_emb"] == "domains/tgt/user_emb.npy"
    _check_round_trip(artifact, src, tgt)


@pytest.mark.parametrize("change", ["users", "order", "dtype_bits"])
def test_other_users_are_stored_apart(tmp_path, change) -> None:
    rng = np.random.default_rng(2)
    user_emb = rng.standard_normal((4, 3)).astype(np.float32)
    src = _domain("src", rng, user_emb)
    if change == "users":
        tgt = _domain("tgt", rng, user_emb, users=["u3", "u1", "u2", "u9"])
    elif change == "order":  # the same set in another row order is another table
        tgt = _domain("tgt", rng, user_emb[::-1].copy(), users=USERS[::-1])
    else:  # -0.0 == 0.0 but not the same bytes: not shared
        zero = np.zeros((4, 3), np.float32)
        src = _domain("src", rng, zero)
        tgt = _domain("tgt", rng, -zero)
    artifact = _write(tmp_path, src, tgt)
    tables = _tables(artifact, "tgt")
    if change == "dtype_bits":
        assert tables["user_ids"] == "domains/src/user_ids.npy"
        assert tables["user_emb"] == "domains/tgt/user_emb.npy"
        assert np.signbit(load_domain(artifact, "tgt").user_emb).all()
    else:
        assert all(path.startswith("domains/tgt/") for path in tables.values())
    _check_round_trip(artifact, src, tgt)


def test_a_corrupt_shared_file_fails_every_domain_naming_it(tmp_path) -> None:
    rng = np.random.default_rng(3)
    user_emb = rng.standard_normal((4, 3)).astype(np.float32)
    artifact = _write(tmp_path, _domain("src", rng, user_emb), _domain("tgt", rng, user_emb))
    path = artifact.path / "domains/src/user_ids.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"'domains/src/user_ids.npy' fails its sha256"):
        read_artifact(artifact.path)


def test_a_table_pointing_outside_the_artifact_is_refused(tmp_path) -> None:
    rng = np.random.default_rng(4)
    emb = _domain("src", rng, rng.standard_normal((4, 3)).astype(np.float32))
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        save_domain(builder.path, emb)
        file = builder.path / "domains/src/tables.json"
        entry = json.loads(file.read_text())
        entry["tables"]["user_emb"] = "../elsewhere/user_emb.npy"
        file.write_text(json.dumps(entry))
    with pytest.raises(ArtifactError, match="has no file '../elsewhere/user_emb.npy'"):
        load_domain(read_artifact(tmp_path / "v1"), "src")

