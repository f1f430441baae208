"""Opening an artifact in the server: the first load hashes and records, later
loads reuse the record; id tables are mapped (``IdTable``), a user table the
domains share is opened once; a corrupt or partial copy (a flipped byte in an id
table, a truncated or missing file) is refused naming the file, and the old
model keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recxfer.artifacts import CURRENT, ArtifactError, publish
from recxfer.artifacts.ids import IdTable
from recxfer.artifacts.store import VERIFIED
from recxfer.serve import ArtifactWatcher, ModelHolder, ServingModel
from recxfer.v1 import recommender_pb2 as pb


def _copy_without_record(src: Path, root: Path, version: str) -> Path:
    """``src`` copied to ``root/version`` as a deploy would (new inodes, no record)."""
    dst = root / version
    shutil.copytree(src, dst)
    (dst / VERIFIED).unlink(missing_ok=True)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["version"] = version
    (dst / "manifest.json").write_text(json.dumps(manifest))  # (bytes checked by size only there)
    time.sleep(0.05)  # past the filesystem clock's tick
    return dst


def _switch(root: Path, version: str) -> None:
    """Point ``current`` at ``version`` without verifying (as a copy tool would)."""
    tmp = root / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(version, tmp)
    os.replace(tmp, root / CURRENT)


def test_first_load_records_and_the_next_loads_reuse(tmp_path, make_artifact, domains, hashed_files):
    built = make_artifact(tmp_path / "built", domains, version="v1")
    path = _copy_without_record(built.path, tmp_path / "served", "v1")
    hashed_files.clear()
    first = ServingModel.from_artifact(path, device="cpu")
    assert "user_emb.npy" in hashed_files and (path / VERIFIED).is_file()
    hashed_files.clear()
    second = ServingModel.from_artifact(path, device="cpu")
    assert hashed_files == []
    for model in (first, second):
        rec = model.recommend("alice", "books", 3)
        assert [type(i) for i in rec.item_ids] == [str, str, str]
    assert list(first.recommend("alice", "books", 5).item_ids) == list(second.recommend("alice", "books", 5).item_ids)


def test_id_tables_are_mapped_and_a_shared_user_table_is_opened_once(tmp_path, make_artifact, domains):
    books = domains["books"]
    same_users = {"books": books, "books_copy": replace(books, domain="books_copy")}
    artifact = make_artifact(tmp_path, same_users, version="v1")
    tables = json.loads((artifact.path / "domains/books_copy/tables.json").read_text())["tables"]
    assert tables["user_emb"] == "domains/books/user_emb.npy"
    model = ServingModel.from_artifact(artifact.path, device="cpu")
    a, b = model.domains["books"], model.domains["books_copy"]
    assert isinstance(a.user_rows, IdTable) and a.user_rows is b.user_rows is a.emb.user_ids
    assert all(isinstance(array, np.memmap) for array in a.user_rows.arrays())
    assert a.emb.user_emb is b.emb.user_emb
    assert a.item_rows is not b.item_rows
    for user in books.user_ids:
        x, y = model.recommend(user, "books", 4), model.recommend(user, "books_copy", 4)
        assert list(x.item_ids) == list(y.item_ids) and x.user_origin == y.user_origin
    assert a.max_item_id_bytes == max(len(i.encode()) for i in books.item_ids)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        # A flipped byte in an id table: the first load's checksum catches it.
        (lambda p: _flip(p / "domains/books/user_ids.npy"), r"'domains/books/user_ids.npy' fails its sha256"),
        (lambda p: _flip(p / "domains/books/item_ids_rows.npy"),
         r"'domains/books/item_ids_rows.npy' fails its sha256"),
        (lambda p: _flip(p / "domains/video/tables.json", at=5), r"'domains/video/tables.json' fails its sha256"),
        # Partial copies: a truncated or a missing file.
        (lambda p: _truncate(p / "domains/books/item_ids.npy"), r"'domains/books/item_ids.npy' has \d+ bytes"),
        (lambda p: _truncate(p / "domains/books/tables.json"), r"'domains/books/tables.json' has \d+ bytes"),
        (lambda p: (p / "domains/video/user_ids_pos.npy").unlink(),
         r"'domains/video/user_ids_pos.npy' listed in the manifest is missing"),
    ],
)
def test_a_corrupt_or_partial_copy_is_refused_and_the_old_model_keeps_serving(
    tmp_path, make_artifact, domains, start_server, damage, message
):
    root = tmp_path / "root"
    built = make_artifact(root, domains, version="v1")
    publish(root, "v1")
    holder = ModelHolder()
    watcher = ArtifactWatcher(root, holder)
    running = start_server(holder)
    assert watcher.check_now() and holder.get().version == "v1"
    bad = _copy_without_record(built.path, root, "v2")
    damage(bad)
    _switch(root, "v2")
    assert watcher.check_now() is False
    assert holder.get().version == "v1"
    assert watcher.last_error is not None and _matches(message, watcher.last_error)
    with pytest.raises(ArtifactError, match=message):
        ServingModel.from_artifact(bad, device="cpu")
    response = running.stub.Recommend(pb.RecommendRequest(user_id="alice", domain="books", k=3), timeout=5)
    assert response.model_version == "v1" and len(response.items) == 3
    assert not (bad / VERIFIED).exists()  # a refused load records nothing


def test_a_file_changed_after_the_first_load_is_hashed_again(tmp_path, make_artifact, domains, hashed_files):
    built = make_artifact(tmp_path / "built", domains, version="v1")
    path = _copy_without_record(built.path, tmp_path / "served", "v1")
    ServingModel.from_artifact(path, device="cpu")  # records
    target = path / "domains/books/user_ids.npy"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    with target.open("r+b") as handle:  # in place, same size
        handle.write(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    hashed_files.clear()
    with pytest.raises(ArtifactError, match=r"'domains/books/user_ids.npy' fails its sha256"):
        ServingModel.from_artifact(path, device="cpu")
    assert "user_ids.npy" in hashed_files


def _flip(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None
