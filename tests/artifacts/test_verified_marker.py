"""The writers' verification record (``<version>/.verified``): serving
(``read_artifact(trust_marker=True)``) skips re-hashing files unchanged since a
writer hashed them, and hashes again whatever changed."""

from __future__ import annotations

import json
import os
import time

import pytest

from recxfer.artifacts import ArtifactError, publish, read_artifact, write_artifact
from recxfer.artifacts import store
from recxfer.artifacts.store import MANIFEST, VERIFIED


def make(root, version: str = "v1"):
    with write_artifact(root, config={}, data_fingerprint="x", version=version) as builder:
        (builder.path / "a.bin").write_bytes(b"a" * 1000)
        (builder.path / "sub").mkdir()
        (builder.path / "sub" / "b.bin").write_bytes(b"b" * 10)
    return builder.artifact.path


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The files ``store`` hashes, in order."""
    seen: list[str] = []
    real = store.sha256_file

    def counting(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(store, "sha256_file", counting)
    return seen


def recorded(root, version: str = "v1"):
    """An artifact whose record is trusted: written one clock tick after its files."""
    path = make(root, version)
    time.sleep(0.05)  # past the filesystem clock's tick
    publish(root, version)  # verifies (hashes) and records again
    return path


def test_writers_record_and_serving_trusts_an_unchanged_artifact(tmp_path, hashes):
    path = recorded(tmp_path)
    record = json.loads((path / VERIFIED).read_text())
    assert set(record["files"]) == {MANIFEST, "a.bin", "sub/b.bin"}
    hashes.clear()
    artifact = read_artifact(path, trust_marker=True)
    assert artifact.version == "v1" and hashes == []
    read_artifact(path)  # without trust: every file hashed
    assert sorted(hashes) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("keep_times", [False, True])
def test_a_changed_file_is_hashed_again(tmp_path, hashes, keep_times):
    path = recorded(tmp_path)
    file = path / "a.bin"
    before = file.stat()
    with file.open("r+b") as handle:  # same size, one byte different
        handle.write(b"z")
    if keep_times:  # mtime put back: the ctime still moves
        os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ArtifactError, match="sha256"):
        read_artifact(path, trust_marker=True)


def test_a_replaced_file_or_manifest_is_hashed_again(tmp_path, hashes):
    path = recorded(tmp_path)
    (path / "sub" / "b.bin").unlink()
    (path / "sub" / "b.bin").write_bytes(b"b" * 10)  # same bytes, new inode
    hashes.clear()
    read_artifact(path, trust_marker=True)
    assert sorted(hashes) == ["a.bin", "b.bin"]

    path = recorded(tmp_path, "v2")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["metrics"] = {"edited": 1}
    (path / MANIFEST).write_text(json.dumps(manifest))
    hashes.clear()
    read_artifact(path, trust_marker=True)
    assert sorted(hashes) == ["a.bin", "b.bin"]


def test_trust_needs_a_record_younger_than_every_file_and_well_formed(tmp_path, hashes):
    path = make(tmp_path)  # files and record microseconds apart: often one clock tick
    record = json.loads((path / VERIFIED).read_text())
    younger = max(stat[3] for stat in record["files"].values()) < (path / VERIFIED).stat().st_ctime_ns
    hashes.clear()
    read_artifact(path, trust_marker=True)
    assert (hashes == []) == younger

    for garbage in ("{", "[]", '{"files": 3, "manifest_sha256": "x"}'):
        (path / VERIFIED).write_text(garbage)
        hashes.clear()
        read_artifact(path, trust_marker=True)
        assert sorted(hashes) == ["a.bin", "b.bin"]


def test_the_record_is_not_an_unlisted_file_but_others_are(tmp_path):
    path = recorded(tmp_path)
    assert (path / VERIFIED).is_file()
    read_artifact(path)
    (path / ".other").write_text("x")
    with pytest.raises(ArtifactError, match="not in the manifest"):
        read_artifact(path, trust_marker=True)
