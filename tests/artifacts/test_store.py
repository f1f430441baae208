"""Artifact store: atomic write, verification, publish, listing, pruning."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from recxfer.artifacts import store
from recxfer.artifacts.errors import ArtifactError
from recxfer.artifacts.store import (
    CURRENT,
    MANIFEST,
    current_version,
    list_versions,
    new_version,
    prune,
    publish,
    read_artifact,
    write_artifact,
)

CONFIG = {"dim": 8, "domains": ["books", "movies"]}
FINGERPRINT = "sha256:feedface"
PAYLOAD = {"a.bin": bytes(range(256)) * 4, "sub/b.txt": b"hello\n", "sub/deep/c.json": b'{"x": 1}'}


def make(root: Path, version: str, metrics: dict | None = None) -> Path:
    with write_artifact(root, CONFIG, FINGERPRINT, version=version) as builder:
        for rel, data in PAYLOAD.items():
            (builder.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (builder.path / rel).write_bytes(data)
        builder.metrics.update(metrics or {"books": {"recall@10": 0.5}})
    assert builder.artifact is not None and builder.artifact.version == version
    return root / version


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# ----------------------------------------------------------------------------- write


@pytest.mark.parametrize("older", [1, 2])
def test_artifacts_of_older_formats_are_still_read(tmp_path, monkeypatch, older) -> None:
    monkeypatch.setattr(store, "FORMAT", older)
    path = make(tmp_path / "artifacts", "old")
    monkeypatch.undo()
    assert json.loads((path / MANIFEST).read_text())["format"] == older
    assert read_artifact(path).version == "old"


def test_write_produces_version_folder_with_manifest(tmp_path) -> None:
    root = tmp_path / "artifacts"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    path = make(root, "v1")
    assert entries(root) == ["v1"]  # no staging folder left behind
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == store.FORMAT == 3
    assert manifest["version"] == "v1"
    assert manifest["config"] == CONFIG
    assert manifest["data_fingerprint"] == FINGERPRINT
    assert manifest["metrics"] == {"books": {"recall@10": 0.5}}
    created = datetime.fromisoformat(manifest["created_at"])
    assert created.tzinfo is not None and before <= created <= datetime.now(timezone.utc)
    assert set(manifest["files"]) == set(PAYLOAD)
    for rel, data in PAYLOAD.items():
        assert (path / rel).read_bytes() == data
        assert manifest["files"][rel] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    artifact = read_artifact(path)
    assert artifact.manifest == manifest
    assert artifact.file("sub/b.txt") == path / "sub/b.txt"
    with pytest.raises(ArtifactError):
        artifact.file("nope.txt")


def test_builder_extra_keys_land_in_manifest(tmp_path) -> None:
    with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
        (builder.path / "x").write_bytes(b"x")
        builder.extra["git_sha"] = "abc123"
    assert read_artifact(tmp_path / "v1").manifest["git_sha"] == "abc123"


def test_default_version_is_generated(tmp_path) -> None:
    with write_artifact(tmp_path, {}, "fp") as builder:
        (builder.path / "x").write_bytes(b"x")
    assert re.fullmatch(r"\d{8}T\d{6}Z-\d{4}-[0-9a-f]{6}", builder.version)
    assert list_versions(tmp_path) == [builder.version]


def test_exception_inside_with_leaves_nothing(tmp_path) -> None:
    root = tmp_path / "artifacts"
    with pytest.raises(RuntimeError, match="boom"):
        with write_artifact(root, CONFIG, FINGERPRINT, version="v1") as builder:
            (builder.path / "half.bin").write_bytes(b"partial")
            staging = builder.path
            assert staging.parent == root and staging.name.startswith(".")
            raise RuntimeError("boom")
    assert not staging.exists()
    assert not (root / "v1").exists()
    assert entries(root) == []
    assert list_versions(root) == []


def test_caller_may_not_write_the_manifest(tmp_path) -> None:
    with pytest.raises(ArtifactError, match=MANIFEST):
        with write_artifact(tmp_path, {}, "fp", version="v1") as builder:
            (builder.path / MANIFEST).write_text("{}")
    assert entries(tmp_path) == []


def test_existing_version_refused(tmp_path) -> None:
    make(tmp_path, "v1")
    before = (tmp_path / "v1" / MANIFEST).read_bytes()
    with pytest.raises(ArtifactError, match="exists"):
        make(tmp_path, "v1")
    assert entries(tmp_path) == ["v1"]
    assert (tmp_path / "v1" / MANIFEST).read_bytes() == before


# ----------------------------------------------------------------------------- verify


def flip_byte(path: Path) -> None:
    target = path / "a.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    target = path / "sub/b.txt"
    target.write_bytes(target.read_bytes()[:-1])


def remove_file(path: Path) -> None:
    (path / "sub/deep/c.json").unlink()


def add_file(path: Path) -> None:
    (path / "sub/extra.bin").write_bytes(b"not listed")


def add_hidden_file(path: Path) -> None:
    (path / ".hidden").write_bytes(b"not listed")


def remove_manifest(path: Path) -> None:
    (path / MANIFEST).unlink()


def garbage_manifest(path: Path) -> None:
    (path / MANIFEST).write_bytes(b"\x00{not json")


def undecodable_manifest(path: Path) -> None:
    (path / MANIFEST).write_bytes(b"\xff\xfe\xfa")


def unknown_format(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format"] = 99  # (a future format: refused, naming what this version reads)
    (path / MANIFEST).write_text(json.dumps(manifest))


def no_format(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["format"]
    (path / MANIFEST).write_text(json.dumps(manifest))


def no_files_key(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["files"]
    (path / MANIFEST).write_text(json.dumps(manifest))


def wrong_listed_size(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["a.bin"]["bytes"] += 1
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_byte, "sha256"),
        (truncate, "bytes"),
        (remove_file, "missing"),
        (add_file, "not in the manifest"),
        (add_hidden_file, "not in the manifest"),
        (remove_manifest, "partial"),
        (garbage_manifest, "unreadable"),
        (undecodable_manifest, "unreadable"),
        (unknown_format, r"unknown artifact format 99 \(this version reads formats 1, 2, 3\)"),
        (no_format, "format"),
        (no_files_key, "files"),
        (wrong_listed_size, "bytes"),
    ],
)
def test_read_refuses_damaged_artifact(tmp_path, damage, message: str) -> None:
    path = make(tmp_path, "v1")
    read_artifact(path)  # intact first
    damage(path)
    with pytest.raises(ArtifactError, match=message):
        read_artifact(path)


@pytest.mark.parametrize("content", ["[]", "null", '"v1"', "42"])
def test_read_refuses_non_object_manifest(tmp_path, content: str) -> None:
    path = make(tmp_path, "v1")
    (path / MANIFEST).write_text(content)
    with pytest.raises(ArtifactError):
        read_artifact(path)


def test_read_refuses_missing_folder(tmp_path) -> None:
    with pytest.raises(ArtifactError):
        read_artifact(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError):
        read_artifact(tmp_path / "file")


# ----------------------------------------------------------------------------- publish


def test_publish_switches_current(tmp_path) -> None:
    assert current_version(tmp_path) is None
    make(tmp_path, "v1")
    make(tmp_path, "v2")
    link = publish(tmp_path, "v1")
    assert link == tmp_path / CURRENT and link.is_symlink()
    assert os.readlink(link) == "v1"  # relative: the root can be moved or mounted elsewhere
    assert current_version(tmp_path) == "v1"
    assert read_artifact(link).version == "v1"
    publish(tmp_path, "v2")
    assert current_version(tmp_path) == "v2"
    assert read_artifact(tmp_path / CURRENT).version == "v2"
    # no temporary links left behind
    assert entries(tmp_path) == [CURRENT, "v1", "v2"]


def test_publish_refuses_corrupt_version(tmp_path) -> None:
    make(tmp_path, "v1")
    make(tmp_path, "v2")
    publish(tmp_path, "v1")
    flip_byte(tmp_path / "v2")
    with pytest.raises(ArtifactError):
        publish(tmp_path, "v2")
    assert current_version(tmp_path) == "v1"
    with pytest.raises(ArtifactError):
        publish(tmp_path, "v3")  # does not exist
    assert current_version(tmp_path) == "v1"
    assert entries(tmp_path) == [CURRENT, "v1", "v2"]


def test_publish_failure_during_switch_keeps_current(tmp_path, monkeypatch) -> None:
    make(tmp_path, "v1")
    make(tmp_path, "v2")
    publish(tmp_path, "v1")

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(store.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        publish(tmp_path, "v2")
    assert current_version(tmp_path) == "v1"
    assert entries(tmp_path) == [CURRENT, "v1", "v2"]


def test_publish_uses_an_atomic_rename(tmp_path, monkeypatch) -> None:
    """``current`` is never removed then re-created: a rename of a new link over it."""
    make(tmp_path, "v1")
    make(tmp_path, "v2")
    publish(tmp_path, "v1")
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        if Path(dst).name == CURRENT:
            assert os.readlink(tmp_path / CURRENT) == "v1"  # still the old target until the rename
        calls.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", spy)
    publish(tmp_path, "v2")
    to_current = [c for c in calls if c[1] == CURRENT]  # (the other: v2's .verified record)
    assert len(to_current) == 1 and to_current[0][0].startswith(".")
    assert all(c[1] in (CURRENT, store.VERIFIED) for c in calls)


# ----------------------------------------------------------------------------- listing and pruning


def test_list_versions_ignores_staging_and_junk(tmp_path) -> None:
    assert list_versions(tmp_path / "missing") == []
    make(tmp_path, "20240102T000000Z-bbbbbb")
    make(tmp_path, "20240101T000000Z-aaaaaa")
    publish(tmp_path, "20240101T000000Z-aaaaaa")  # the ``current`` symlink is not a version
    staging = tmp_path / ".staging-20240103T000000Z-cccccc-xyz"
    staging.mkdir()
    (staging / MANIFEST).write_text("{}")  # even a staging folder with a manifest
    (tmp_path / "no-manifest").mkdir()
    (tmp_path / "stray-file").write_text("x")
    assert list_versions(tmp_path) == ["20240101T000000Z-aaaaaa", "20240102T000000Z-bbbbbb"]


def test_list_versions_ignores_a_crashed_write(tmp_path) -> None:
    make(tmp_path, "v1")
    with pytest.raises(KeyboardInterrupt):
        with write_artifact(tmp_path, {}, "fp", version="v2") as builder:
            (builder.path / "x").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list_versions(tmp_path) == ["v1"]
    assert entries(tmp_path) == ["v1"]


def versions(n: int) -> list[str]:
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return [new_version(base + timedelta(days=i)) for i in range(n)]


def test_new_version_sorts_by_time() -> None:
    names = versions(5)
    assert names == sorted(names)
    assert len(set(new_version(datetime(2024, 1, 1, tzinfo=timezone.utc)) for _ in range(20))) == 20


def test_prune_keeps_newest_and_never_current(tmp_path) -> None:
    v = versions(5)
    for name in v:
        make(tmp_path, name)
    publish(tmp_path, v[0])  # rolled back to the oldest
    deleted = prune(tmp_path, keep=2)
    assert deleted == [v[1], v[2]]
    assert list_versions(tmp_path) == [v[0], v[3], v[4]]
    assert current_version(tmp_path) == v[0]
    read_artifact(tmp_path / CURRENT)
    assert prune(tmp_path, keep=2) == []  # idempotent


def test_prune_without_current(tmp_path) -> None:
    v = versions(4)
    for name in v:
        make(tmp_path, name)
    assert prune(tmp_path, keep=3) == [v[0]]
    assert prune(tmp_path, keep=1) == [v[1], v[2]]
    assert list_versions(tmp_path) == [v[3]]
    assert prune(tmp_path, keep=5) == []


def test_prune_keep_below_one_raises(tmp_path) -> None:
    make(tmp_path, "v1")
    with pytest.raises(ValueError):
        prune(tmp_path, keep=0)
    assert list_versions(tmp_path) == ["v1"]


def test_versions_written_in_the_same_second_keep_their_order(tmp_path, monkeypatch) -> None:
    frozen = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen

    suffixes = iter(["ffffff", "000000"])  # the random part happens to decrease
    monkeypatch.setattr(store, "datetime", FrozenDatetime)
    monkeypatch.setattr(store.uuid, "uuid4", lambda: uuid.UUID(next(suffixes) + "00" * 13))
    written = []
    for _ in range(2):
        with write_artifact(tmp_path, {}, "fp") as builder:
            (builder.path / "x").write_bytes(b"x")
        written.append(builder.version)
    assert list_versions(tmp_path) == written  # oldest first
    assert prune(tmp_path, keep=1) == [written[0]]  # the newest one survives


# ----------------------------------------------------------------------------- clean-up, rollback


def test_clean_staging_removes_leftovers_of_killed_writers(tmp_path) -> None:
    root = tmp_path / "artifacts"
    make(root, "v1")
    publish(root, "v1")
    (root / ".staging-v2-abc123").mkdir()
    (root / ".staging-v2-abc123" / "half.npy").write_bytes(b"x")
    os.symlink("v1", root / ".current-deadbeef")
    (root / ".trash-v0-0a0b0c" / "domains").mkdir(parents=True)  # a prune killed mid-delete
    (root / ".work").mkdir()  # not the store's business
    assert store.clean_staging(root) == [".current-deadbeef", ".staging-v2-abc123", ".trash-v0-0a0b0c"]
    assert entries(root) == [".work", CURRENT, "v1"]
    assert store.clean_staging(tmp_path / "missing") == []


def test_rollback_goes_to_the_previous_version_and_on_back(tmp_path) -> None:
    root = tmp_path / "artifacts"
    for version in ("v1", "v2", "v3"):
        make(root, version)
    publish(root, "v3")
    assert store.rollback(root) == ("v3", "v2")
    assert current_version(root) == "v2"
    assert store.rollback(root) == ("v2", "v1")
    with pytest.raises(ArtifactError, match="no version older"):
        store.rollback(root)
    assert store.rollback(root, to="v3") == ("v1", "v3")
    with pytest.raises(ArtifactError, match="no complete artifact version 'v9'"):
        store.rollback(root, to="v9")


def test_rollback_verifies_the_target_first(tmp_path) -> None:
    root = tmp_path / "artifacts"
    make(root, "v1")
    make(root, "v2")
    publish(root, "v2")
    flip_byte(root / "v1")
    with pytest.raises(ArtifactError, match="sha256"):
        store.rollback(root)
    assert current_version(root) == "v2"  # nothing moved


def test_rollback_without_current(tmp_path) -> None:
    make(tmp_path, "v1")
    with pytest.raises(ArtifactError, match="nothing to roll back"):
        store.rollback(tmp_path)
