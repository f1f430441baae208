"""What is in an artifacts root or one artifact, for operators (``recxfer info``).

Reads manifests only (fast: no checksums, no arrays) unless ``verify=True``, in
which case every version is verified as a server would (``read_artifact``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recxfer.artifacts.errors import ArtifactError
from recxfer.artifacts.store import CURRENT, MANIFEST, current_version, list_versions, read_artifact

# The metrics a root's listing shows per version (all of them are in an artifact's own info).
SUMMARY_METRICS = ("recall@10", "ndcg@10", "recall@50")
# Reference rows of a metrics table, left out of the summary.
_BASELINES = frozenset({"popularity", "production"})


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is an artifact folder (or a link to one), not a root."""
    return (Path(path) / MANIFEST).is_file()


def disk_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], float] = {}
        for key, value in tree.items():
            out.update(_flatten(value, (*prefix, str(key))))
        return out
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def metrics_summary(metrics: Any) -> dict[str, float]:
    """The ``SUMMARY_METRICS`` of the trained model(s), baselines left out:
    ``"cold_start/books/model/recall@50" -> value`` (paths as in the manifest)."""
    return {
        "/".join(path): value for path, value in _flatten(metrics).items()
        if path[-1] in SUMMARY_METRICS and not _BASELINES & set(path[:-1])
    }


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path / MANIFEST}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path / MANIFEST}: manifest is not a JSON object")
    return manifest


def _method(manifest: dict[str, Any]) -> str | None:
    config = manifest.get("config")
    return config.get("method") if isinstance(config, dict) else None


def _status(manifest: dict[str, Any]) -> str | None:
    nightly = manifest.get("nightly")
    return nightly.get("status") if isinstance(nightly, dict) else None


def _verified(path: Path) -> str:
    try:
        read_artifact(path)
    except ArtifactError as exc:
        return f"failed: {exc}"
    return "ok"


def artifact_info(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """One artifact: version, when, method, domains (role, users, items, dim,
    index), transfers, user encoder, metrics, files and size on disk.

    Raises:
        ArtifactError: no readable manifest there.
    """
    link = Path(path)
    path = link.resolve()
    if not is_artifact(path):
        raise ArtifactError(f"{link}: no {MANIFEST}; not an artifact")
    manifest = _read_manifest(path)
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    domains = {}
    for name, meta in (manifest.get("domains") or {}).items():
        index = meta.get("index") or {}
        domains[name] = {
            "role": meta.get("role"), "users": meta.get("users"), "items": meta.get("items"),
            "dim": meta.get("dim"), "index": index.get("factory"),
            "index_recall": index.get("recall"),
            "transfer_from": (meta.get("transfer") or {}).get("source"),
        }
    root_current = current_version(path.parent)
    info: dict[str, Any] = {
        "path": str(path),
        "version": manifest.get("version"),
        "current": root_current is not None and root_current == path.name,
        "created_at": manifest.get("created_at"),
        "method": _method(manifest),
        "status": _status(manifest),
        "device": manifest.get("device"),
        "data_fingerprint": manifest.get("data_fingerprint"),
        "domains": domains,
        "transfers": manifest.get("transfer") or {},
        "user_encoder": manifest.get("user_encoder"),
        "metrics": manifest.get("metrics") or {},
        "files": len(files),
        "manifest_bytes": sum(int(m.get("bytes", 0)) for m in files.values() if isinstance(m, dict)),
        "disk_bytes": disk_bytes(path),
    }
    if verify:
        info["verified"] = _verified(path)
    return info


def root_info(root: str | Path, verify: bool = False) -> dict[str, Any]:
    """An artifacts root: which version is current and, per version (oldest
    first), when, method, status, summary metrics and size on disk.

    Raises:
        ArtifactError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such folder (not an artifacts root nor an artifact)")
    current = current_version(root)
    versions = []
    for version in list_versions(root):
        path = root / version
        entry: dict[str, Any] = {"version": version, "current": version == current}
        try:
            manifest = _read_manifest(path)
        except ArtifactError as exc:
            entry["error"] = str(exc)
            manifest = {}
        entry.update({
            "created_at": manifest.get("created_at"),
            "method": _method(manifest),
            "status": _status(manifest),
            "metrics": metrics_summary(manifest.get("metrics") or {}),
            "disk_bytes": disk_bytes(path),
        })
        if verify:
            entry["verified"] = _verified(path)
        versions.append(entry)
    return {
        "root": str(root.absolute()),
        CURRENT: current,
        "current_missing": current is not None and not (root / current).is_dir(),
        "versions": versions,
        "disk_bytes": disk_bytes(root),
    }


def human_bytes(n: int) -> str:
    """``1536 -> '1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_root_info(info: dict[str, Any]) -> str:
    """Text form of ``root_info``: one line per version (``*`` marks current),
    then its summary metrics."""
    lines = [f"root {info['root']}: {len(info['versions'])} version(s), "
             f"current {info[CURRENT] or '(none)'}, {human_bytes(info['disk_bytes'])} on disk"]
    if info["current_missing"]:
        lines.append(f"  warning: {CURRENT} points at {info[CURRENT]}, which is not in the root")
    for v in info["versions"]:
        mark = "*" if v["current"] else " "
        extra = "".join(f"  {k} {v[k]}" for k in ("method", "status", "verified") if v.get(k))
        lines.append(f"{mark} {v['version']}  {v['created_at'] or '?'}  "
                     f"{human_bytes(v['disk_bytes'])}{extra}")
        if v.get("error"):
            lines.append(f"    error: {v['error']}")
        for name, value in v["metrics"].items():
            lines.append(f"    {name} {value:.4f}")
    return "\n".join(lines)


def format_artifact_info(info: dict[str, Any]) -> str:
    """Text form of ``artifact_info``."""
    lines = [
        f"artifact {info['version']}{' (current)' if info['current'] else ''}: {info['path']}",
        f"  created {info['created_at']}, method {info['method']}, device {info['device']}"
        + (f", status {info['status']}" if info["status"] else ""),
        f"  {info['files']} files, {human_bytes(info['disk_bytes'])} on disk, "
        f"data fingerprint {info['data_fingerprint']}",
    ]
    if "verified" in info:
        lines.append(f"  verified: {info['verified']}")
    if info["domains"]:
        lines.append("  domains:")
        for name, d in info["domains"].items():
            recall = d["index_recall"] or {}
            recall_text = ", ".join(f"{k} {v}" for k, v in recall.items() if k != "queries")
            lines.append(
                f"    {name} ({d['role']}): {d['users']} users, {d['items']} items, dim {d['dim']}, "
                f"index {d['index']}" + (f" ({recall_text})" if recall_text else "")
                + (f", transfer from {d['transfer_from']}" if d["transfer_from"] else "")
            )
    for target, t in info["transfers"].items():
        terms = ", ".join(f"{n} {_num(w)}" for n, w in zip(t.get("names", []), t.get("weights", [])))
        lines.append(f"  transfer {t.get('source')} -> {target}: {terms or '(no terms)'}; popularity "
                     f"{_num(t.get('pop_weight'))}, embedding {_num(t.get('embedding_weight'))}"
                     + (f", head: {t['head']} top {t.get('head_size')}" if t.get("head") else ""))
    encoder = info["user_encoder"]
    if isinstance(encoder, dict) and encoder:
        lines.append("  user encoder: " + ", ".join(f"{k} {v}" for k, v in encoder.items()
                                                   if not isinstance(v, (dict, list))))
    flat = _flatten(info["metrics"])
    if flat:
        lines.append("  metrics:")
        for path, value in flat.items():
            lines.append(f"    {'/'.join(path)} {value:.4f}")
    return "\n".join(lines)
