"""Checksums verified at the first load, with the result recorded: an artifact
without a (valid) verification record, e.g. one copied to a serving host, is
hashed by the first ``read_artifact(trust_marker=True, record=True)``, which then
writes the record; later opens reuse it until a file changes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from recxfer.artifacts import ArtifactError, read_artifact, store, write_artifact
from recxfer.artifacts.store import MANIFEST, VERIFIED

FILES = {"a.bin": b"a" * 5000, "sub/b.npy": b"b" * 300, "sub/c.json": b"{}"}


def copied(tmp_path: Path) -> Path:
    """An artifact as after a copy to another host: its files, no record; one
    clock tick older than anything written next."""
    with write_artifact(tmp_path / "built", {}, "fp", version="v1") as builder:
        for rel, data in FILES.items():
            (builder.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (builder.path / rel).write_bytes(data)
    path = tmp_path / "served" / "v1"
    shutil.copytree(builder.artifact.path, path)
    (path / VERIFIED).unlink()
    time.sleep(0.05)  # past the filesystem clock's tick
    return path


def test_the_first_load_hashes_and_records_the_next_reuses(tmp_path, hashed_files) -> None:
    path = copied(tmp_path)
    hashed_files.clear()  # (the writer hashed them too)
    read_artifact(path, trust_marker=True, record=True)
    assert sorted(hashed_files) == ["a.bin", "b.npy", "c.json"]
    record = json.loads((path / VERIFIED).read_text())
    assert set(record["files"]) == {MANIFEST, *FILES}
    hashed_files.clear()
    for _ in range(3):
        assert read_artifact(path, trust_marker=True, record=True).version == "v1"
    assert hashed_files == []
    assert not [p for p in path.iterdir() if p.name.startswith(".verified.tmp")]


def test_without_record_nothing_is_written(tmp_path, hashed_files) -> None:
    path = copied(tmp_path)
    read_artifact(path, trust_marker=True)
    assert not (path / VERIFIED).exists()
    read_artifact(path, record=True)  # no trust: hashed, and recorded
    assert (path / VERIFIED).exists()


def test_a_file_changed_after_the_record_is_hashed_again_and_refused(tmp_path, hashed_files) -> None:
    path = copied(tmp_path)
    read_artifact(path, trust_marker=True, record=True)
    target = path / "sub" / "b.npy"
    before = target.stat()
    with target.open("r+b") as handle:  # same size, one byte flipped
        handle.write(b"X")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with mtime put back
    hashed_files.clear()
    with pytest.raises(ArtifactError, match=r"file 'sub/b.npy' fails its sha256 check"):
        read_artifact(path, trust_marker=True, record=True)
    assert sorted(hashed_files) == ["a.bin", "b.npy", "c.json"]
    # The refused load recorded nothing new: it is refused again, every time.
    with pytest.raises(ArtifactError, match="sha256"):
        read_artifact(path, trust_marker=True, record=True)


def test_a_corrupt_copy_is_refused_at_the_first_load(tmp_path) -> None:
    path = copied(tmp_path)
    data = bytearray((path / "a.bin").read_bytes())
    data[100] ^= 0x40
    (path / "a.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"file 'a.bin' fails its sha256 check \(corrupt\)"):
        read_artifact(path, trust_marker=True, record=True)
    assert not (path / VERIFIED).exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "a.bin").write_bytes(FILES["a.bin"][:-1]), r"file 'a.bin' has 4999 bytes, manifest says 5000"),
        (lambda p: (p / "sub/b.npy").unlink(), r"file 'sub/b.npy' listed in the manifest is missing"),
        (lambda p: (p / MANIFEST).unlink(), "no manifest.json; the artifact is partial"),
        (lambda p: (p / MANIFEST).write_text('{"format": 2, '), "unreadable manifest"),
    ],
)
def test_partial_files_are_refused_even_with_a_valid_record(tmp_path, damage, message) -> None:
    path = copied(tmp_path)
    read_artifact(path, trust_marker=True, record=True)
    damage(path)
    with pytest.raises(ArtifactError, match=message):
        read_artifact(path, trust_marker=True, record=True)


def test_recording_is_best_effort(tmp_path, monkeypatch, hashed_files) -> None:
    path = copied(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(store.os, "replace", refuse)
    assert read_artifact(path, trust_marker=True, record=True).version == "v1"
    assert not (path / VERIFIED).exists()
    assert not [p for p in path.iterdir() if p.name.startswith(".verified.tmp")]


def test_a_record_left_half_written_is_not_an_unlisted_file(tmp_path) -> None:
    path = copied(tmp_path)
    (path / ".verified.tmp-123-abcd").write_text("{")  # a recorder killed mid-write
    read_artifact(path, trust_marker=True, record=True)
    (path / ".verified.tmpfoo").write_text("x")
    read_artifact(path)
    (path / "sub" / ".verified.tmp-1").write_text("x")  # only at the top level
    with pytest.raises(ArtifactError, match="not in the manifest"):
        read_artifact(path)
