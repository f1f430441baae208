"""Public cold-start cross-domain benchmarks as canonical frames.

* ``cdrib``: the CDRIB folders (``user<TAB>item`` per line; ``train/valid/test.txt``,
  optionally ``pair.json``). Users ``< overlap`` are the same person in both folders;
  larger ids are single-domain users and are made distinct per domain here. The
  overlap differs per pair; it is derived from the data by the CDRIB convention
  (cold-start users are the top ids of the overlapping block, so
  ``overlap = 1 + max`` user id in both folders' ``valid.txt``/``test.txt``) and must
  agree with ``pair.json`` (when a folder has one) and an explicit ``overlap=``.
* ``douban``: ``ratings.dat`` (``user<TAB>item<TAB>rating``), user ids shared; every
  rating counts as an interaction; a seeded share of the overlapping users is
  held out as cold-start in the target (their target rows split by user into
  validation and test).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recxfer.data.errors import DataValidationError
from recxfer.data.split import cold_start_split

_DOMAIN_NAMES = {
    "sport_cloth": "sports",
    "cloth_sport": "clothing",
    "phone_electronic": "phones",
    "electronic_phone": "electronics",
    "sport_phone": "sports",
    "phone_sport": "phones",
    "douban_book": "books",
    "douban_music": "music",
}


@dataclass(frozen=True)
class ColdStartTask:
    """A source → target cold-start task.

    Attributes:
        source, target: domain names.
        train: canonical rows (``user_id, item_id, domain``) of both domains.
        valid: target rows of cold users used for model selection.
        test: target rows of cold users used for the reported numbers.
        overlap: for ``cdrib``, the overlap used (users ``< overlap`` are shared);
            ``None`` when the format has no id threshold (``douban``).
    """

    source: str
    target: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    overlap: int | None = None

    def target_items(self) -> np.ndarray:
        """Sorted ids of the target's training items (the ranking catalogue)."""
        rows = self.train[self.train["domain"] == self.target]
        return np.sort(rows["item_id"].unique())


def domain_name(folder: str | Path) -> str:
    """Readable domain name of a benchmark folder (its name when unknown)."""
    name = Path(folder).name
    return _DOMAIN_NAMES.get(name, name)


def _read_pairs(path: Path, columns: list[str], allow_empty: bool = False) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file")
    if allow_empty and not path.read_text().strip():
        return pd.DataFrame({c: np.zeros(0, dtype="int64") for c in columns})
    try:
        frame = pd.read_csv(path, sep="\t", header=None, dtype="int64", index_col=False)
        if frame.shape[1] != len(columns):
            raise ValueError(f"found {frame.shape[1]} columns")
        frame.columns = columns
    except ValueError as exc:
        raise DataValidationError(f"{path}: expected {len(columns)} integer columns: {exc}") from exc
    if frame.isna().any().any():
        raise DataValidationError(f"{path}: empty values")
    return frame


def _check_overlap_value(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataValidationError(f"{where}: overlap must be a positive integer, got {value!r}")
    return int(value)


def _pair_json_overlap(source_dir: Path, target_dir: Path) -> tuple[int, str] | None:
    """The ``overlap`` of the folders' ``pair.json`` files (None when neither has one)."""
    found: list[tuple[int, Path]] = []
    for folder in (source_dir, target_dir):
        path = folder / "pair.json"
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataValidationError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(info, dict) or "overlap" not in info:
            raise DataValidationError(f"{path}: no 'overlap' key")
        found.append((_check_overlap_value(info["overlap"], f"{path}"), path))
    if not found:
        return None
    if len({v for v, _ in found}) > 1:
        raise DataValidationError(
            "the two pair.json files disagree on the overlap: "
            + ", ".join(f"{path} says {v}" for v, path in found)
        )
    return found[0][0], " and ".join(str(path) for _, path in found)


def _cdrib_frame(frame: pd.DataFrame, domain: str, overlap: int) -> pd.DataFrame:
    users = frame["user"].to_numpy()
    user_ids = np.where(
        users < overlap, users.astype(str), np.char.add(f"{domain}-only-", users.astype(str))
    )
    return pd.DataFrame(
        {"user_id": user_ids.astype(object), "item_id": frame["item"].astype(str).to_numpy(dtype=object),
         "domain": domain}
    )


def load_cdrib(
    source_dir: str | Path, target_dir: str | Path, overlap: int | None = None
) -> ColdStartTask:
    """Source history from ``SRC/train.txt``; target ``train/valid/test.txt`` from ``TGT``.

    The overlap (users ``< overlap`` are the same person in both folders) is derived
    as 1 + the largest user id in ``SRC`` and ``TGT`` ``valid.txt``/``test.txt`` (the
    CDRIB convention: cold-start users are the top ids of the overlapping block). It
    must equal the ``overlap`` of ``pair.json`` when either folder has one (both must
    agree when both do) and ``overlap`` when given; any disagreement, or a cold user
    (a user in ``TGT`` valid/test) without history in ``SRC/train.txt``, raises
    :class:`DataValidationError`.
    """
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    source, target = domain_name(source_dir), domain_name(target_dir)
    if source == target:
        raise DataValidationError(f"source and target are the same domain {source!r}")
    if overlap is not None:
        overlap = _check_overlap_value(overlap, "overlap argument")
    cols = ["user", "item"]
    src_raw = _read_pairs(source_dir / "train.txt", cols)
    tgt_raw = {p: _read_pairs(target_dir / f"{p}.txt", cols) for p in ("train", "valid", "test")}
    # the source folder's valid/test hold the users cold in the source (other direction);
    # they are read only to derive the overlap; an empty one has no cold users
    src_held = {p: _read_pairs(source_dir / f"{p}.txt", cols, allow_empty=True) for p in ("valid", "test")}

    held_files = [(source_dir / f"{p}.txt", src_held[p]) for p in ("valid", "test")]
    held_files += [(target_dir / f"{p}.txt", tgt_raw[p]) for p in ("valid", "test")]
    max_cold = max(int(frame["user"].max()) for _, frame in held_files if len(frame))
    derived = max_cold + 1
    claims = [(derived, f"derived from the data (1 + largest cold user id {max_cold} in "
                        + ", ".join(str(path) for path, _ in held_files) + ")")]
    from_json = _pair_json_overlap(source_dir, target_dir)
    if from_json is not None:
        claims.append((from_json[0], f"pair.json ({from_json[1]})"))
    if overlap is not None:
        claims.append((overlap, "the explicit overlap argument"))
    if len({v for v, _ in claims}) > 1:
        raise DataValidationError(
            "CDRIB overlap disagreement (cold user ids must be < overlap and, by the CDRIB "
            "convention, the top ids of the overlapping block): "
            + "; ".join(f"{v} {what}" for v, what in claims)
        )
    overlap = derived

    src_users = set(src_raw["user"].tolist())
    cold = set(tgt_raw["valid"]["user"].tolist()) | set(tgt_raw["test"]["user"].tolist())
    missing = sorted(cold - src_users)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise DataValidationError(
            f"{len(missing)} of {len(cold)} cold users in {target_dir / 'valid.txt'} / "
            f"{target_dir / 'test.txt'} have no source history in {source_dir / 'train.txt'}: {shown}"
        )

    src = _cdrib_frame(src_raw, source, overlap)
    parts = {p: _cdrib_frame(frame, target, overlap) for p, frame in tgt_raw.items()}
    train = pd.concat([src, parts["train"]], ignore_index=True).drop_duplicates(ignore_index=True)
    return ColdStartTask(source, target, train, parts["valid"], parts["test"], overlap=overlap)


def load_douban(
    source_dir: str | Path, target_dir: str | Path, cold_share: float = 0.2, seed: int = 0
) -> ColdStartTask:
    """Both ``ratings.dat`` files; a seeded cold-start split of the target."""
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    source, target = domain_name(source_dir), domain_name(target_dir)
    frames = []
    for folder, domain in ((source_dir, source), (target_dir, target)):
        raw = _read_pairs(folder / "ratings.dat", ["user", "item", "rating"])
        frames.append(pd.DataFrame({
            "user_id": raw["user"].astype(str).to_numpy(dtype=object),
            "item_id": raw["item"].astype(str).to_numpy(dtype=object),
            "domain": domain,
        }).drop_duplicates(ignore_index=True))
    split = cold_start_split(pd.concat(frames, ignore_index=True), source, [target],
                             cold_share=cold_share, valid_share=0.5, seed=seed)
    return ColdStartTask(source, target, split.train, split.valid[target], split.test[target])


def load_task(
    fmt: str, source_dir: str | Path, target_dir: str | Path, seed: int = 0, overlap: int | None = None
) -> ColdStartTask:
    """``fmt`` is ``"cdrib"`` or ``"douban"`` (seeded split).

    ``overlap`` (``cdrib`` only) is checked against the derived one and ``pair.json``.
    """
    if fmt == "cdrib":
        return load_cdrib(source_dir, target_dir, overlap=overlap)
    if fmt == "douban":
        if overlap is not None:
            raise DataValidationError("overlap applies to the 'cdrib' format only, not 'douban'")
        return load_douban(source_dir, target_dir, seed=seed)
    raise DataValidationError(f"unknown benchmark format {fmt!r}; use 'cdrib' or 'douban'")
