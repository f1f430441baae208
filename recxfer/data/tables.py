"""Read and validate the canonical interactions and items tables.

Interactions: ``user_id``, ``item_id``, ``domain`` and optionally ``weight``
(positive float) and ``timestamp`` (integer). Items: ``item_id``, ``domain``,
``title`` and optionally ``text``. Ids are read as strings whatever their look,
so ``"007"`` and ``7`` stay distinct and match across files; an id with a control
character (NUL, tab, newline, DEL, ...) inside is refused. Timestamps must be
integers within int64 (``1e25`` is refused, never wrapped by a cast).

Errors name the file, the column and the line(s): the file's line for CSV/TSV
(the header is line 1, so the first data row is line 2), the same number for
Parquet (data row + 1).

Files may be CSV (``.csv``), TSV (``.tsv``/``.txt``) or Parquet (``.parquet``), or a
folder of such files (e.g. Parquet partitions), which are concatenated; a folder
with no such files directly inside may be a Hive-partitioned Parquet dataset
(``interactions/domain=video/part-0.parquet``: the folder names give columns).
Parquet goes through pyarrow's dataset API: a file's columns are checked on its
schema before its data is read, and only the table's columns are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recxfer.data.errors import DataValidationError

INTERACTION_REQUIRED = ("user_id", "item_id", "domain")
INTERACTION_OPTIONAL = ("weight", "timestamp")
ITEM_REQUIRED = ("item_id", "domain", "title")
ITEM_OPTIONAL = ("text",)
_ID_COLUMNS = ("user_id", "item_id", "domain")
_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": None}
_CONTROL = r"[\x00-\x1f\x7f-\x9f]"  # C0 controls (NUL, tab, newline, ...), DEL, C1 controls
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TableSpec:
    """Columns one table must and may have."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]


INTERACTIONS = TableSpec("interactions", INTERACTION_REQUIRED, INTERACTION_OPTIONAL)
ITEMS = TableSpec("items", ITEM_REQUIRED, ITEM_OPTIONAL)


def _is_partition_dir(path: Path) -> bool:
    """A Hive-style partition folder (``domain=video``), as Spark/pyarrow write them."""
    return path.is_dir() and "=" in path.name and not path.name.startswith(("_", "."))


def _partition_files(path: Path) -> list[Path]:
    """Parquet files under ``key=value`` folders of ``path`` (any depth), sorted;
    names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are skipped."""
    found: list[Path] = []
    for sub in sorted(p for p in path.iterdir() if _is_partition_dir(p)):
        found += sorted(p for p in sub.iterdir() if p.is_file() and p.suffix == ".parquet"
                        and not p.name.startswith(("_", ".")))
        found += _partition_files(sub)
    return found


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        if not files:
            files = _partition_files(path)  # a partitioned Parquet dataset
        if not files:
            raise DataValidationError(
                f"{path}: folder holds no {'/'.join(sorted(_SUFFIXES))} files"
            )
        return files
    if not path.exists():
        raise DataValidationError(f"{path}: no such file")
    if path.suffix not in _SUFFIXES:
        raise DataValidationError(
            f"{path}: unsupported format {path.suffix!r}; use one of {sorted(_SUFFIXES)}"
        )
    return [path]


def _partition_base(file: Path, source: Path) -> Path | None:
    """``source`` when ``file`` lies in its Hive partition folders, else ``None``."""
    if source.is_dir() and file.parent != source and _is_partition_dir(file.parent):
        return source
    return None


def _read_parquet(path: Path, spec: TableSpec, base: Path | None) -> pd.DataFrame:
    """One Parquet file through pyarrow's dataset API: the columns are checked on the
    file's schema (plus ``key=value`` partition folders under ``base``) before any
    data is read, and only the table's columns are read (column projection)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset([str(path)], format="parquet",
                         partitioning="hive" if base is not None else None,
                         partition_base_dir=str(base) if base is not None else None)
    fragment = next(iter(dataset.get_fragments()))
    names = list(fragment.physical_schema.names)
    names += [k for k in ds.get_partition_keys(fragment.partition_expression) if k not in names]
    _check_columns(names, spec, path)
    table = fragment.to_table(schema=dataset.schema, columns=names)
    return table.to_pandas()


def _read_one(path: Path, spec: TableSpec, base: Path | None = None) -> pd.DataFrame:
    sep = _SUFFIXES[path.suffix]
    try:
        if sep is None:
            return _read_parquet(path, spec, base)
        frame = pd.read_csv(
            path, sep=sep, dtype={c: str for c in _ID_COLUMNS}, keep_default_na=False,
            na_values={"weight": [""], "timestamp": [""]},
        )
    except DataValidationError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"{path}: cannot be read as {spec.name}: {exc}") from exc
    _check_columns(list(frame.columns), spec, path)
    return frame


def _check_columns(columns: list[str], spec: TableSpec, path: Path) -> None:
    missing = [c for c in spec.required if c not in columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing} in {spec.name}; found {columns}, "
            f"required {list(spec.required)}"
        )
    extra = [c for c in columns if c not in spec.required + spec.optional]
    if extra:
        raise DataValidationError(
            f"{path}: unexpected column(s) {extra} in {spec.name}; allowed "
            f"{list(spec.required + spec.optional)}"
        )


def _lines(frame: pd.DataFrame, bad: pd.Series) -> list[int]:
    """The first few lines of the rows ``bad`` marks (+2: 1-based and the header line)."""
    return (frame.index[bad.to_numpy()][:5] + 2).tolist()


def _normalise(frame: pd.DataFrame, spec: TableSpec, path: Path) -> pd.DataFrame:
    frame = frame.copy()
    for col in _ID_COLUMNS:
        if col not in frame.columns:
            continue
        values = frame[col]
        null = values.isna() | (values.astype(str).str.strip() == "")
        if null.any():
            raise DataValidationError(
                f"{path}: column {col!r} has {int(null.sum())} empty value(s) "
                f"(first at line(s) {_lines(frame, null)})"
            )
        values = values.astype(str).str.strip()
        control = values.str.contains(_CONTROL, regex=True)
        if control.any():
            raise DataValidationError(
                f"{path}: column {col!r} has {int(control.sum())} value(s) with a control "
                f"character (NUL, tab, newline, ...) (first at line(s) {_lines(frame, control)}), "
                f"e.g. {values[control].iloc[0]!r}"
            )
        frame[col] = values
    if "weight" in frame.columns:
        weight = pd.to_numeric(frame["weight"], errors="coerce")
        bad = weight.isna() | ~np.isfinite(weight) | (weight <= 0)
        if bad.any():
            raise DataValidationError(
                f"{path}: column 'weight' must be a positive number; {int(bad.sum())} bad "
                f"value(s) (first at line(s) {_lines(frame, bad)}), e.g. {frame['weight'][bad].iloc[0]!r}"
            )
        frame["weight"] = weight.astype("float32")
    if "timestamp" in frame.columns:
        ts = pd.to_numeric(frame["timestamp"], errors="coerce")
        bad = ts.isna() | ~np.isfinite(ts) | (ts != np.floor(ts))
        if bad.any():
            raise DataValidationError(
                f"{path}: column 'timestamp' must be an integer; {int(bad.sum())} bad value(s) "
                f"(first at line(s) {_lines(frame, bad)}), e.g. {frame['timestamp'][bad].iloc[0]!r}"
            )
        if ts.dtype.kind == "u":
            out = ts > _INT64_MAX
        elif ts.dtype.kind == "f":  # 2**63 is exact in float64; every float below it fits
            out = (ts >= 2.0**63) | (ts < -(2.0**63))
        else:
            out = pd.Series(False, index=ts.index)
        if out.any():
            raise DataValidationError(
                f"{path}: column 'timestamp' is outside the int64 range [-2**63, 2**63 - 1]; "
                f"{int(out.sum())} value(s) (first at line(s) {_lines(frame, out)}), "
                f"e.g. {frame['timestamp'][out].iloc[0]!r}"
            )
        frame["timestamp"] = ts.astype("int64")
    for col in ("title", "text"):
        if col in frame.columns:
            frame[col] = frame[col].fillna("").astype(str)
    return frame


def _read_sources(
    paths: Sequence[str | Path], spec: TableSpec
) -> tuple[pd.DataFrame, list[Path], np.ndarray]:
    """Read every file of every source (a file or a folder), validated one by one.

    Returns:
        ``(frame, files, file_of_row)``: the concatenated rows, the files read and
        ``(n_rows,)`` int64 positions into ``files`` saying where each row came from.
    """
    frames, files = [], []
    for source in paths:
        for file in _files_of(Path(source)):
            base = _partition_base(file, Path(source))
            frames.append(_normalise(_read_one(file, spec, base), spec, file))
            files.append(file)
    if not frames:
        raise DataValidationError(f"no {spec.name} source given")
    if len({tuple(sorted(f.columns)) for f in frames}) > 1:
        shapes = {str(f): sorted(frame.columns) for f, frame in zip(files, frames)}
        where = str(paths[0]) if len(paths) == 1 else f"sources {[str(p) for p in paths]}"
        raise DataValidationError(f"{where}: files disagree on the columns of {spec.name}: {shapes}")
    file_of_row = np.repeat(np.arange(len(frames), dtype=np.int64), [len(f) for f in frames])
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame, files, file_of_row


def read_table(path: str | Path, spec: TableSpec) -> pd.DataFrame:
    """Read and validate one table (a file or a folder of files).

    Raises:
        DataValidationError: unreadable file, missing/extra column, empty id,
            bad weight/timestamp, or files in one folder with different columns.
    """
    return _read_sources([path], spec)[0]


def read_interactions(
    path: str | Path | Sequence[str | Path], domains: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read, validate and check an interactions table.

    Args:
        path: file or folder of files, or several of them (sources concatenated).
        domains: domains that must each have at least one row (if given).

    Raises:
        DataValidationError: see ``read_table``; also duplicate
            ``(user_id, item_id, domain[, timestamp])`` rows (naming the file that
            repeats a row, and the file of its first occurrence when another) and
            configured domains with no rows.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    frame, files, file_of_row = _read_sources(paths, INTERACTIONS)
    where = str(paths[0]) if len(paths) == 1 else f"sources {[str(p) for p in paths]}"
    key = ["user_id", "item_id", "domain"] + (["timestamp"] if "timestamp" in frame else [])
    dup = frame.duplicated(subset=key, keep="first")
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        first = frame.iloc[pos]
        same = (frame[key] == first[key]).all(axis=1).to_numpy()
        origin = files[file_of_row[int(np.flatnonzero(same)[0])]]
        file = files[file_of_row[pos]]
        also = "" if origin == file else f" (first seen in {origin})"
        raise DataValidationError(
            f"{file}: {int(dup.sum())} duplicate row(s) on columns {key}; first: "
            + ", ".join(f"{c}={first[c]!r}" for c in key) + also
        )
    if domains is not None:
        present = set(frame["domain"].unique())
        empty = [d for d in domains if d not in present]
        if empty:
            raise DataValidationError(
                f"{where}: column 'domain' has no rows for configured domain(s) {empty}; "
                f"present: {sorted(present)}"
            )
    return frame


def read_items(path: str | Path, interactions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read and validate an items table; optionally check it covers ``interactions``.

    Raises:
        DataValidationError: see ``read_table``; also duplicate ``(item_id, domain)``
            rows, and interaction items with no items row.
    """
    path = Path(path)
    frame = read_table(path, ITEMS)
    dup = frame.duplicated(subset=["item_id", "domain"])
    if dup.any():
        first = frame[dup].iloc[0]
        raise DataValidationError(
            f"{path}: {int(dup.sum())} duplicate item(s) on columns ['item_id', 'domain']; "
            f"first: item_id={first['item_id']!r}, domain={first['domain']!r}"
        )
    if interactions is not None:
        known = pd.MultiIndex.from_frame(frame[["item_id", "domain"]])
        used = pd.MultiIndex.from_frame(
            interactions[["item_id", "domain"]].drop_duplicates()
        )
        unknown = used.difference(known)
        if len(unknown):
            item, domain = unknown[0]
            raise DataValidationError(
                f"{path}: {len(unknown)} interaction item(s) have no row in column "
                f"'item_id'; first: item_id={item!r}, domain={domain!r}"
            )
    return frame


def find_table(data_dir: str | Path, stem: str, required: bool = True) -> Path | None:
    """Locate ``DATA_DIR/<stem>.{csv,tsv,parquet}`` or the folder ``DATA_DIR/<stem>/``.

    Returns:
        The path, or ``None`` when there is none and ``required`` is false.

    Raises:
        DataValidationError: several candidates, or none when ``required``.
    """
    data_dir = Path(data_dir)
    candidates = [data_dir / f"{stem}{s}" for s in _SUFFIXES] + [data_dir / stem]
    found = [c for c in candidates if c.exists()]
    if not found and not required:
        return None
    if len(found) != 1:
        raise DataValidationError(
            f"{data_dir}: expected exactly one of {[c.name for c in candidates]}, found "
            f"{[c.name for c in found] or 'none'}"
        )
    return found[0]
