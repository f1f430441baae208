"""Public cold-start cross-domain benchmarks as canonical frames.

* ``cdrib``: the CDRIB folders (``user<TAB>item`` per line; ``train/valid/test.txt``).
  Users ``< 9828`` are the same person in both folders; larger ids are
  single-domain users and are made distinct per domain here.
* ``douban``: ``ratings.dat`` (``user<TAB>item<TAB>rating``), user ids shared; every
  rating counts as an interaction; a seeded share of the overlapping users is
  held out as cold-start in the target (their target rows split by user into
  validation and test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recxfer.data.errors import DataValidationError
from recxfer.data.split import cold_start_split

CDRIB_OVERLAP = 9828  # users 0..9827 are shared across the two folders
_DOMAIN_NAMES = {
    "sport_cloth": "sports",
    "cloth_sport": "clothing",
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
    """

    source: str
    target: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def target_items(self) -> np.ndarray:
        """Sorted ids of the target's training items (the ranking catalogue)."""
        rows = self.train[self.train["domain"] == self.target]
        return np.sort(rows["item_id"].unique())


def domain_name(folder: str | Path) -> str:
    """Readable domain name of a benchmark folder (its name when unknown)."""
    name = Path(folder).name
    return _DOMAIN_NAMES.get(name, name)


def _read_pairs(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file")
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


def _cdrib_frame(frame: pd.DataFrame, domain: str) -> pd.DataFrame:
    users = frame["user"].to_numpy()
    user_ids = np.where(
        users < CDRIB_OVERLAP, users.astype(str), np.char.add(f"{domain}-only-", users.astype(str))
    )
    return pd.DataFrame(
        {"user_id": user_ids.astype(object), "item_id": frame["item"].astype(str).to_numpy(dtype=object),
         "domain": domain}
    )


def load_cdrib(source_dir: str | Path, target_dir: str | Path) -> ColdStartTask:
    """Source history from ``SRC/train.txt``; target ``train/valid/test.txt`` from ``TGT``."""
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    source, target = domain_name(source_dir), domain_name(target_dir)
    if source == target:
        raise DataValidationError(f"source and target are the same domain {source!r}")
    cols = ["user", "item"]
    src = _cdrib_frame(_read_pairs(source_dir / "train.txt", cols), source)
    parts = {p: _cdrib_frame(_read_pairs(target_dir / f"{p}.txt", cols), target)
             for p in ("train", "valid", "test")}
    train = pd.concat([src, parts["train"]], ignore_index=True).drop_duplicates(ignore_index=True)
    return ColdStartTask(source, target, train, parts["valid"], parts["test"])


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


def load_task(fmt: str, source_dir: str | Path, target_dir: str | Path, seed: int = 0) -> ColdStartTask:
    """``fmt`` is ``"cdrib"`` or ``"douban"`` (seeded split)."""
    if fmt == "cdrib":
        return load_cdrib(source_dir, target_dir)
    if fmt == "douban":
        return load_douban(source_dir, target_dir, seed=seed)
    raise DataValidationError(f"unknown benchmark format {fmt!r}; use 'cdrib' or 'douban'")
