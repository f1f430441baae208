"""Batch (offline) recommendations straight from an artifact, by the server's code.

``recommend_users_to_file`` answers known users of a domain the way
``Recommend``/``BatchRecommend`` does (``ServingModel.recommend_many``: warm users
by their embedding, cold ``transfer`` users by the item-to-item transfer, the same
seen-item exclusion and filters); ``recommend_histories_to_file`` answers users
known only by a source history the way ``RecommendFromHistory`` does
(``ServingModel.recommend_from_histories``). Nothing here scores: it batches
queries, checks the input up front and writes the answers.

The output has one row per (user, rank): ``user_id`` (string), ``rank`` (int32,
1-based), ``item_id`` (string), ``score`` (float32), users in input order. It is
written to a temporary file in the output's folder and renamed into place
(``os.replace``) only when complete, so an error leaves no partial output (and an
existing file is kept as it was).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recxfer.serve.config import ServeConfig
from recxfer.serve.model import (
    ItemFilter,
    NoHistoryEncoderError,
    Recommendation,
    RecommendQuery,
    ServingModel,
    UnknownDomainError,
    UnknownItemError,
    UnknownUserError,
)

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "rank", "item_id", "score")
FORMATS = (".parquet", ".csv")
DEFAULT_BATCH_SIZE = 1024
DEFAULT_MAX_K = ServeConfig().max_k  # the server's default limit
SHOWN_UNKNOWN = 5  # unknown users named in an error


class BulkInputError(ValueError):
    """The bulk run was refused before anything was written (bad k, domain, users,
    histories, input or output file)."""


@dataclass(frozen=True)
class BulkSummary:
    """What a bulk run wrote.

    Attributes:
        out: the output file.
        users: users with a row in it.
        rows: rows written (``<= users * k``: fewer when fewer items are admissible).
        skipped: users left out as unknown (``skip_unknown``), input order.
        model_version: the artifact that answered.
    """

    out: Path
    users: int
    rows: int
    skipped: tuple[str, ...]
    model_version: str


def check_k(k: int, max_k: int = DEFAULT_MAX_K) -> None:
    """The server's rule: ``1 <= k <= max_k``.

    Raises:
        BulkInputError: naming the range and the value.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BulkInputError(f"k: must be in [1, {max_k}], got {k!r}")


def check_output_path(out: str | Path) -> Path:
    """``out`` as a path whose suffix names a supported format.

    Raises:
        BulkInputError: another suffix, or ``out`` is a folder.
    """
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise BulkInputError(f"{path}: the output must end in {' or '.join(FORMATS)}")
    if path.is_dir():
        raise BulkInputError(f"{path}: is a folder, not a file")
    return path


# --- inputs ---------------------------------------------------------------------------


def _read_table(path: Path, columns: Sequence[str]) -> Any:
    """A CSV/TSV/Parquet file as a pandas frame of strings (ids stay as written)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv"):
        raise BulkInputError(f"{path}: must be .csv, .tsv or .parquet (or .txt for user ids)")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False)
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors (ArrowInvalid)
        raise BulkInputError(f"{path}: cannot be read: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BulkInputError(f"{path}: no column {missing}; columns: {list(frame.columns)}")
    for column in columns:
        values = frame[column]
        empty = (values.isna() | (values.astype(str) == "")).to_numpy()
        if empty.any():
            rows = (np.flatnonzero(empty) + 1)[:SHOWN_UNKNOWN].tolist()
            raise BulkInputError(f"{path}: empty {column} in data rows {rows} (1-based)")
        frame[column] = values.astype(str)
    return frame


def read_user_ids(path: str | Path) -> list[str]:
    """User ids from ``path``: ``.txt`` (one per line, blank lines skipped) or a
    ``.csv``/``.tsv``/``.parquet`` with a ``user_id`` column. Order kept, duplicates
    dropped.

    Raises:
        BulkInputError: unreadable file, no ``user_id`` column, empty ids, no user.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise BulkInputError(f"{path}: cannot be read: {exc}") from exc
    else:
        ids = _read_table(path, ["user_id"])["user_id"].tolist()
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        log.info("%s: %d duplicate user ids dropped", path, len(ids) - len(unique))
    if not unique:
        raise BulkInputError(f"{path}: lists no user")
    return unique


def read_histories(path: str | Path, source_domain: str | None = None) -> dict[str, list[str]]:
    """Source histories from a ``.csv``/``.tsv``/``.parquet`` of ``user_id, item_id``
    rows, oldest first per user (file order, or by a ``timestamp`` column when there
    is one). With a ``domain`` column, only the rows of ``source_domain`` count.

    Returns:
        user id -> item ids, users in order of first appearance.

    Raises:
        BulkInputError: unreadable file, missing columns, empty ids, no row left.
    """
    path = Path(path)
    frame = _read_table(path, ["user_id", "item_id"])
    if "domain" in frame.columns and source_domain is not None:
        frame = frame[frame["domain"].astype(str) == source_domain]
        if frame.empty:
            raise BulkInputError(f"{path}: no row of domain {source_domain!r} (column 'domain')")
    if frame.empty:
        raise BulkInputError(f"{path}: holds no history row")
    order = list(dict.fromkeys(frame["user_id"].tolist()))  # users by first appearance
    if "timestamp" in frame.columns:
        try:
            stamps = frame["timestamp"].astype("int64")
        except (TypeError, ValueError) as exc:
            raise BulkInputError(f"{path}: timestamp must be integers: {exc}") from exc
        frame = frame.assign(timestamp=stamps).sort_values("timestamp", kind="stable")
    histories: dict[str, list[str]] = {user: [] for user in order}
    for user, item in zip(frame["user_id"].tolist(), frame["item_id"].tolist()):
        histories[user].append(item)
    return histories


# --- output ---------------------------------------------------------------------------


class _AtomicTableWriter:
    """Writes batches to ``.<name>.<pid>.tmp`` beside ``out``; ``commit`` renames it
    onto ``out``, ``abort`` removes it."""

    def __init__(self, out: Path) -> None:
        import pyarrow as pa

        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        self.schema = pa.schema([("user_id", pa.string()), ("rank", pa.int32()),
                                 ("item_id", pa.string()), ("score", pa.float32())])
        self._parquet = out.suffix.lower() == ".parquet"
        if self._parquet:
            import pyarrow.parquet as pq

            self._writer: Any = pq.ParquetWriter(self.tmp, self.schema)
        else:
            self._writer = open(self.tmp, "w", newline="", encoding="utf-8")
            self._writer.write(",".join(COLUMNS) + "\n")

    def write(self, user_ids: np.ndarray, ranks: np.ndarray, item_ids: np.ndarray,
              scores: np.ndarray) -> None:
        import pyarrow as pa

        if not len(ranks):
            return
        table = pa.Table.from_arrays(
            [pa.array(user_ids, pa.string()), pa.array(ranks, pa.int32()),
             pa.array(item_ids, pa.string()), pa.array(scores, pa.float32())],
            schema=self.schema,
        )
        if self._parquet:
            self._writer.write_table(table)
        else:
            table.to_pandas().to_csv(self._writer, header=False, index=False)

    def commit(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the write already failed; removing matters
            pass
        self.tmp.unlink(missing_ok=True)


def _rows(users: Sequence[str], recs: Sequence[Recommendation]) -> tuple[np.ndarray, ...]:
    """``(user_ids, ranks, item_ids, scores)`` of a batch, one row per (user, rank)."""
    lengths = np.array([len(r.item_ids) for r in recs], dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        empty = np.zeros(0, dtype=object)
        return empty, np.zeros(0, np.int32), empty, np.zeros(0, np.float32)
    user_col = np.repeat(np.asarray(users, dtype=object), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    ranks = (np.arange(total, dtype=np.int64) - starts + 1).astype(np.int32)
    items = np.concatenate([np.asarray(r.item_ids, dtype=object) for r in recs])
    scores = np.concatenate([np.asarray(r.scores, dtype=np.float32) for r in recs])
    return user_col, ranks, items.astype(str).astype(object), scores


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)


def _write_batches(
    out: Path,
    users: Sequence[str],
    answer: Callable[[Sequence[str]], Sequence[Recommendation]],
    batch_size: int,
    desc: str,
    progress: bool,
) -> int:
    """Answers ``users`` in batches of ``batch_size`` into ``out`` (atomically);
    returns the rows written."""
    writer = _AtomicTableWriter(out)
    rows = 0
    try:
        batches = range(0, len(users), batch_size)
        with _progress(len(batches), desc, progress) as bar:
            for start in batches:
                chunk = users[start : start + batch_size]
                recs = answer(chunk)
                columns = _rows(chunk, recs)
                writer.write(*columns)
                rows += len(columns[1])
                bar.update(1)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return rows


def _unknown_error(unknown: Sequence[str], total: int, what: str) -> BulkInputError:
    shown = ", ".join(repr(u) for u in unknown[:SHOWN_UNKNOWN])
    more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
    return BulkInputError(
        f"{len(unknown)} of {total} users {what}: {shown}{more}; nothing written "
        "(skip_unknown / --skip-unknown leaves them out)"
    )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BulkInputError(f"batch_size: must be an int >= 1, got {batch_size!r}")


def _domain(model: ServingModel, name: str, what: str = "domain") -> None:
    try:
        model.domain(name)
    except UnknownDomainError as exc:
        raise BulkInputError(f"{what}: {exc.args[0]}") from None


# --- the two runs ---------------------------------------------------------------------


def recommend_users_to_file(
    model: ServingModel,
    domain: str,
    user_ids: Sequence[str] | None,
    k: int,
    out: str | Path,
    *,
    exclude_seen: bool = True,
    item_filter: ItemFilter | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_unknown: bool = False,
    max_k: int = DEFAULT_MAX_K,
    progress: bool = False,
) -> BulkSummary:
    """Top-``k`` items of ``domain`` for known users, as ``BatchRecommend`` answers
    them, written to ``out`` (``.parquet`` or ``.csv``).

    Args:
        user_ids: the users (duplicates dropped, order kept); ``None``: every user
            of the domain, in the artifact's order.
        exclude_seen: leave out each user's training items (the RPC's default).
        item_filter: an allow- or deny-list applied to every user.
        skip_unknown: leave out users unknown in ``domain`` (listed in the summary)
            instead of refusing the run.
        max_k: the largest ``k`` accepted (the server's default limit).
        progress: show a progress bar over the batches (stderr).

    Raises:
        BulkInputError: ``k`` out of range, unknown domain, unknown users (without
            ``skip_unknown``), bad output path; raised before anything is written.
    """
    path = check_output_path(out)
    check_k(k, max_k)
    _check_batch_size(batch_size)
    _domain(model, domain)
    served = model.domains[domain]
    users = (list(dict.fromkeys(str(u) for u in user_ids)) if user_ids is not None
             else [str(u) for u in served.emb.user_ids.tolist()])
    unknown = [u for u in users if u not in served.user_rows]
    if unknown and not skip_unknown:
        raise _unknown_error(unknown, len(users), f"are unknown in domain {domain!r}")
    if unknown:
        known = set(unknown)
        users = [u for u in users if u not in known]
        log.warning("%d unknown users skipped (e.g. %s)", len(unknown), unknown[:SHOWN_UNKNOWN])

    def answer(chunk: Sequence[str]) -> list[Recommendation]:
        queries = [RecommendQuery(u, domain, k, exclude_seen, item_filter) for u in chunk]
        results = model.recommend_many(queries)
        for result in results:
            if isinstance(result, UnknownUserError):  # checked above; the model is read-only
                raise BulkInputError(str(result.args[0]))
        return results  # type: ignore[return-value]

    rows = _write_batches(path, users, answer, batch_size, f"recommend {domain}", progress)
    return BulkSummary(path, len(users), rows, tuple(unknown), model.version)


def recommend_histories_to_file(
    model: ServingModel,
    histories: Mapping[str, Sequence[str]],
    source_domain: str,
    target_domain: str,
    k: int,
    out: str | Path,
    *,
    item_filter: ItemFilter | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_unknown: bool = False,
    max_k: int = DEFAULT_MAX_K,
    progress: bool = False,
) -> BulkSummary:
    """Top-``k`` items of ``target_domain`` for users known only by a history in
    ``source_domain``, as ``RecommendFromHistory`` answers each (unknown item ids
    ignored; no seen-item exclusion: the users are new), written to ``out``.

    Args:
        histories: user id -> source item ids, oldest first (``read_histories``).
        skip_unknown: leave out users none of whose history ids is known in
            ``source_domain`` instead of refusing the run.

    Raises:
        BulkInputError: ``k`` out of range, unknown domains, unknown histories
            (without ``skip_unknown``), an artifact that cannot answer a history
            (no inductive user encoder and no transfer from ``source_domain``),
            bad output path; raised before anything is written.
    """
    path = check_output_path(out)
    check_k(k, max_k)
    _check_batch_size(batch_size)
    _domain(model, source_domain, "source_domain")
    _domain(model, target_domain, "domain")
    if source_domain == target_domain:
        raise BulkInputError(f"source_domain: must differ from the target domain {target_domain!r}")
    if not histories:
        raise BulkInputError("histories: no user")
    try:  # refuses an artifact that cannot answer at all, before any output exists
        model.recommend_from_histories(source_domain, [], target_domain, k, item_filter)
    except NoHistoryEncoderError as exc:
        raise BulkInputError(f"histories: {exc}") from None
    source = model.domains[source_domain]
    users = list(histories)
    unknown = [u for u in users if source.item_positions(histories[u]).size == 0]
    if unknown and not skip_unknown:
        raise _unknown_error(unknown, len(users), f"have no item known in domain {source_domain!r}")
    if unknown:
        known = set(unknown)
        users = [u for u in users if u not in known]
        log.warning("%d users with unknown histories skipped (e.g. %s)", len(unknown),
                    unknown[:SHOWN_UNKNOWN])

    def answer(chunk: Sequence[str]) -> list[Recommendation]:
        results = model.recommend_from_histories(
            source_domain, [histories[u] for u in chunk], target_domain, k, item_filter
        )
        for result in results:
            if isinstance(result, UnknownItemError):  # checked above
                raise BulkInputError(str(result.args[0]))
        return results  # type: ignore[return-value]

    rows = _write_batches(path, users, answer, batch_size,
                          f"recommend {source_domain}->{target_domain}", progress)
    return BulkSummary(path, len(users), rows, tuple(unknown), model.version)

