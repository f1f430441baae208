"""Versioned artifact folders: atomic write, checksum verification, publishing.

An artifact is a folder ``ROOT/<version>/`` holding files and ``manifest.json``::

    {"format": 3, "version": ..., "created_at": ..., "config": {...},
     "data_fingerprint": ..., "metrics": {...},
     "files": {"relative/path": {"sha256": ..., "bytes": ...}, ...}}

It is staged under a hidden temporary name in ``ROOT`` and renamed into place
only when complete, so a final name never holds a partial artifact. The
``ROOT/current`` symlink names the production artifact and is switched with an
atomic rename.

Verification records: the writers (``write_artifact``, ``publish``, ``rollback``),
after hashing every file, write ``<version>/.verified`` (not in the manifest): the
manifest's sha256 and each file's size, inode, mtime and ctime as they were before
hashing. ``read_artifact(path, trust_marker=True)`` (what serving uses: N server
processes would otherwise hash every artifact N times on each reload) skips the
sha256 of the files when that record matches the files now *and* every recorded
ctime is older than the record's own ctime. Any write to a file after it was
recorded sets its ctime to the filesystem's clock at that moment, no earlier than
the record's, so a changed, replaced or copied file (new inode, new ctime) is
hashed again; a record written in the same clock tick as a file is not trusted.
``recxfer info --verify`` and every writer always hash. Serving also records
(``read_artifact(..., record=True)``): the first server process to open an
artifact without a valid record (e.g. one copied to its host) hashes every file
and writes the record, so later processes and reloads do not hash again. Writing
it is best effort: a folder the server cannot write is hashed on every open.

Formats: ``FORMAT`` 3 is written: 2 (``layout.py``: id tables as memory-mappable
``.npy``, a domain's ``tables.json``) plus a transfer's optional ``dae`` term
files, so a release that reads only 2 refuses such an artifact instead of serving
it without the term. 2 and 1 (ids as JSON lists) are still read. Any other is
refused, naming the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recxfer.artifacts.errors import ArtifactError

MANIFEST = "manifest.json"
CURRENT = "current"
VERIFIED = ".verified"  # the writers' verification record (see the module doc)
_VERIFIED_TMP = ".verified.tmp"  # prefix of a record being written (``.verified.tmp-<pid>-<hex>``)
FORMAT = 3  # written
FORMATS = (1, 2, 3)  # read
# Files hashed at once by one verification (hashlib releases the GIL).
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))
_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_VERSION_RE = re.compile(r"(\d{8}T\d{6}Z)-(\d{4})-[0-9a-f]{6}")
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def new_version(now: datetime | None = None, after: str | None = None) -> str:
    """A sortable, unique version name: ``YYYYmmddTHHMMSSZ-<seq>-<6 hex>``.

    Args:
        now: the time to stamp (UTC now by default).
        after: the newest existing version; the result sorts strictly after it even
            within the same second or if the clock went back.
    """
    now = now or datetime.now(timezone.utc)
    stamp, seq = now.strftime("%Y%m%dT%H%M%SZ"), 0
    match = _VERSION_RE.fullmatch(after) if after else None
    if match and match.group(1) >= stamp:
        stamp, seq = match.group(1), int(match.group(2)) + 1
    return f"{stamp}-{seq:04d}-{uuid.uuid4().hex[:6]}"


def _check_version_name(version: str) -> None:
    if not _SAFE_NAME_RE.fullmatch(version) or version == CURRENT:
        raise ArtifactError(
            f"bad artifact version {version!r}: use letters, digits, '_', '.', '-', not {CURRENT!r}"
        )


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def file(self, relative: str) -> Path:
        """Path of a listed file.

        Raises:
            ArtifactError: the file is not in the manifest.
        """
        if relative not in self.manifest["files"]:
            raise ArtifactError(f"{self.path}: artifact has no file {relative!r}")
        return self.path / relative


@contextlib.contextmanager
def write_artifact(
    root: str | Path,
    config: dict[str, Any],
    data_fingerprint: str,
    version: str | None = None,
) -> Iterator["ArtifactBuilder"]:
    """Stage an artifact; on clean exit, checksum, write the manifest and rename it
    to ``ROOT/<version>``. On error the staging folder is removed.

    Usage::

        with write_artifact(root, config, fp) as builder:
            np.save(builder.path / "x.npy", x)
            builder.metrics["books"] = {...}
        builder.artifact  # the final, verified Artifact
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if version is None:
        existing = list_versions(root)
        version = new_version(after=existing[-1] if existing else None)
    _check_version_name(version)
    final = root / version
    if final.exists():
        raise ArtifactError(f"{final}: an artifact with this version already exists")
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{version}-", dir=root))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; servers may run as another user
    builder = ArtifactBuilder(staging, version, config, data_fingerprint)
    try:
        yield builder
        builder._seal()
        os.rename(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    builder.artifact = _verify_and_record(final)


class ArtifactBuilder:
    """A staging folder being filled; see ``write_artifact``."""

    def __init__(self, path: Path, version: str, config: dict[str, Any], fingerprint: str) -> None:
        self.path = path
        self.version = version
        self.config = config
        self.fingerprint = fingerprint
        self.metrics: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.artifact: Artifact | None = None

    def _seal(self) -> None:
        files = {}
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = file.relative_to(self.path).as_posix()
            if rel == MANIFEST:
                raise ArtifactError(f"{MANIFEST} is written by the artifact store, not by callers")
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
            files[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
        manifest = {
            "format": FORMAT,
            "version": self.version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "data_fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "files": files,
            **self.extra,
        }
        manifest_path = self.path / MANIFEST
        with manifest_path.open("w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.path)


def read_artifact(path: str | Path, *, trust_marker: bool = False, record: bool = False) -> Artifact:
    """Open and verify an artifact (a version folder or the ``current`` link).

    Args:
        trust_marker: skip the files' sha256 when the writers' verification record
            (``.verified``, see the module doc) shows they are unchanged since they
            were hashed; sizes, presence and unlisted files are checked either way.
        record: when every file was hashed (no record, or one that no longer
            matches) and all passed, write the record (best effort), so the next
            ``trust_marker`` open does not hash again.

    Raises:
        ArtifactError: no manifest, unreadable manifest, unknown format, a listed
            file missing, of the wrong size or with the wrong sha256, or an
            unlisted file present.
    """
    artifact, stats, manifest_sha = _verify(Path(path), trust_marker)
    if record and stats is not None:
        _write_record(artifact, stats, manifest_sha)
    return artifact


def _verify(path: Path, trust_marker: bool) -> tuple[Artifact, dict[str, list[int]] | None, str]:
    """``read_artifact``; also returns the files' stats taken before hashing them
    (``None`` when the record was trusted and nothing was hashed) and the sha256
    of the manifest bytes verified."""
    path = path.resolve()
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path}: no artifact folder here")
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}; the artifact is partial or not an artifact")
    try:
        manifest_stat = _stat(manifest_path)
        manifest_bytes = manifest_path.read_bytes()
        manifest = json.loads(manifest_bytes.decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path}: manifest is not a JSON object")
    if manifest.get("format") not in FORMATS:
        raise ArtifactError(
            f"{manifest_path}: unknown artifact format {manifest.get('format')!r} "
            f"(this version reads formats {', '.join(map(str, FORMATS))})"
        )
    for key in ("version", "files"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path}: manifest lacks {key!r}")
    listed = manifest["files"]
    if not isinstance(listed, dict):
        raise ArtifactError(f"{manifest_path}: 'files' is not an object")
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    trusted = trust_marker and _record_matches(path, manifest_sha, listed)
    stats: dict[str, list[int]] = {MANIFEST: manifest_stat}
    to_hash: list[tuple[str, Path, str]] = []
    for rel, meta in listed.items():
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise ArtifactError(f"{manifest_path}: file path {rel!r} leaves the artifact")
        if not isinstance(meta, dict) or not {"bytes", "sha256"} <= set(meta):
            raise ArtifactError(f"{manifest_path}: entry of {rel!r} lacks bytes/sha256")
        file = path / rel
        if not file.is_file():
            raise ArtifactError(f"{path}: file {rel!r} listed in the manifest is missing")
        stats[rel] = _stat(file)
        if stats[rel][0] != meta["bytes"]:
            raise ArtifactError(
                f"{path}: file {rel!r} has {stats[rel][0]} bytes, manifest says {meta['bytes']}"
            )
        if not trusted:
            to_hash.append((rel, file, meta["sha256"]))
    if to_hash:
        # Biggest first, so the threads finish together; errors in manifest order.
        by_size = sorted(to_hash, key=lambda entry: -stats[entry[0]][0])
        with ThreadPoolExecutor(min(HASH_THREADS, len(by_size))) as pool:
            digests = dict(zip((rel for rel, _, _ in by_size),
                               pool.map(lambda entry: sha256_file(entry[1]), by_size)))
        for rel, _, expected in to_hash:
            if digests[rel] != expected:
                raise ArtifactError(f"{path}: file {rel!r} fails its sha256 check (corrupt)")
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    unlisted = sorted(
        rel for rel in present - set(listed) - {MANIFEST, VERIFIED}
        if not rel.startswith(_VERIFIED_TMP)
    )
    if unlisted:
        raise ArtifactError(f"{path}: files not in the manifest: {unlisted[:5]}")
    return Artifact(path, manifest), None if trusted else stats, manifest_sha


def _stat(file: Path) -> list[int]:
    """What the verification record compares: size, inode, mtime and ctime (ns)."""
    st = file.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _record_matches(path: Path, manifest_sha: str, listed: dict[str, Any]) -> bool:
    """Whether ``path/.verified`` vouches for the files as they are now."""
    record_path = path / VERIFIED
    try:
        record_ctime = record_path.stat().st_ctime_ns
        record = json.loads(record_path.read_text())
        files = record["files"]
        if record["manifest_sha256"] != manifest_sha:
            return False
        if not isinstance(files, dict) or set(files) != {MANIFEST, *listed}:
            return False
        for rel, recorded in files.items():
            if recorded != _stat(path / rel) or recorded[3] >= record_ctime:
                return False
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    return True


def _verify_and_record(path: Path) -> Artifact:
    """``read_artifact`` hashing every file, then (best effort: a folder this process
    cannot write is left as it is) write the verification record."""
    artifact, stats, manifest_sha = _verify(Path(path), trust_marker=False)
    assert stats is not None
    _write_record(artifact, stats, manifest_sha)
    return artifact


def _write_record(artifact: Artifact, stats: dict[str, list[int]], manifest_sha: str) -> bool:
    """Write ``artifact``'s verification record: the sha256 of the manifest bytes
    verified and the files' ``stats`` taken before they were hashed; best effort
    (False: the folder is not writable). A unique temporary name: several server
    processes may record at once."""
    record = {"manifest_sha256": manifest_sha, "files": stats}
    tmp = artifact.path / f"{_VERIFIED_TMP}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, artifact.path / VERIFIED)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True


def publish(root: str | Path, version: str) -> Path:
    """Point ``ROOT/current`` at ``ROOT/<version>`` atomically (verified first).

    Returns:
        The ``current`` link path.
    """
    root = Path(root)
    _verify_and_record(root / version)
    link = root / CURRENT
    tmp = root / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(version, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    return link


def current_version(root: str | Path) -> str | None:
    """The version ``ROOT/current`` points at, or ``None``."""
    link = Path(root) / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def list_versions(root: str | Path) -> list[str]:
    """Complete artifact versions in ``root``, oldest first (staging folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        and (p / MANIFEST).is_file()
    )


def prune(root: str | Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one.

    Returns:
        The versions deleted.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    current = current_version(root)
    versions = list_versions(root)
    doomed = [v for v in versions[:-keep] if v != current]
    for version in doomed:
        # Renamed away first, so a kill during the delete never leaves a partly
        # deleted folder under a version name (``clean_staging`` removes the rest).
        trash = Path(root) / f"{_TRASH_PREFIX}{version}-{os.urandom(3).hex()}"
        os.rename(Path(root) / version, trash)
        shutil.rmtree(trash)
    return doomed


def clean_staging(root: str | Path) -> list[str]:
    """Remove what killed writers left in ``root``: ``.staging-*`` folders of
    unfinished artifacts, ``.trash-*`` folders of an unfinished prune and
    ``.current-*`` links of an unfinished publish.

    Only safe while no other writer is active (i.e. under the root's lock).

    Returns:
        The names removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        if (
            path.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX))
            and path.is_dir()
            and not path.is_symlink()
        ):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        elif path.name.startswith(f".{CURRENT}-") and path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def rollback(root: str | Path, to: str | None = None) -> tuple[str, str]:
    """Point ``ROOT/current`` back at the previous version (or at ``to``).

    The previous version is the newest complete version older than the current
    one (versions sort by creation time). It is verified (every checksum) before
    the pointer moves; nothing changes when it fails.

    Returns:
        ``(from_version, to_version)``.

    Raises:
        ArtifactError: no current version, no older version, ``to`` unknown, or the
            target fails verification.
    """
    root = Path(root)
    current = current_version(root)
    if current is None:
        raise ArtifactError(f"{root}: no {CURRENT!r} link; nothing to roll back")
    versions = list_versions(root)
    if to is None:
        older = [v for v in versions if v < current]
        if not older:
            raise ArtifactError(f"{root}: no version older than the current {current!r}")
        to = older[-1]
    elif to not in versions:
        raise ArtifactError(f"{root}: no complete artifact version {to!r}; have {versions}")
    if to == current:
        raise ArtifactError(f"{root}: {to!r} is already the current version")
    publish(root, to)  # verifies first; raises naming the bad file
    return current, to
