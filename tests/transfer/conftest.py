"""Tiny hand-made source/target data for the item-to-item methods
(recxfer/transfer/{interactions,itemknn,ease,ridge,userknn,blend}.py).

8 users x (4 source + 5 target) items. ``u0``-``u5`` have rows in both domains
(the overlap), ``u6`` only source rows, ``u7`` only target rows. The dense 0/1
arrays ``S`` and ``T`` are the truth the tests' naive references are computed on;
``rows`` is the same data as canonical rows, shuffled, with a repeated row and a
row of a third domain that must be ignored.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from recxfer.transfer.interactions import SourceTargetMatrices, build_matrices

SOURCE, TARGET = "video", "books"

# rows: users u0..u7; columns: source items s0..s3
S = np.array([
    [1, 1, 0, 0],  # u0
    [0, 1, 1, 0],  # u1
    [1, 0, 1, 1],  # u2
    [0, 0, 1, 1],  # u3
    [1, 1, 1, 0],  # u4
    [0, 0, 0, 1],  # u5
    [1, 0, 0, 1],  # u6: source only
    [0, 0, 0, 0],  # u7: target only
], dtype=np.float64)

# rows: users u0..u7; columns: target items t0..t4
T = np.array([
    [1, 0, 1, 0, 0],  # u0
    [0, 1, 1, 0, 0],  # u1
    [1, 0, 0, 1, 1],  # u2
    [0, 0, 0, 1, 1],  # u3
    [1, 1, 0, 0, 1],  # u4
    [0, 0, 0, 0, 1],  # u5
    [0, 0, 0, 0, 0],  # u6: source only
    [0, 1, 0, 1, 0],  # u7: target only
], dtype=np.float64)

USER_IDS = np.array([f"u{u}" for u in range(S.shape[0])], dtype=object)
SRC_ITEM_IDS = np.array([f"s{i}" for i in range(S.shape[1])], dtype=object)
TGT_ITEM_IDS = np.array([f"t{j}" for j in range(T.shape[1])], dtype=object)
OVERLAP = np.arange(6)  # rows of u0..u5


def to_rows(src: np.ndarray, tgt: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Canonical rows (``user_id, item_id, domain``) of dense 0/1 ``src``/``tgt``,
    shuffled; users are ``u<row>``."""
    records = [(f"u{u}", f"s{i}", SOURCE) for u, i in zip(*np.nonzero(src))]
    records += [(f"u{u}", f"t{j}", TARGET) for u, j in zip(*np.nonzero(tgt))]
    frame = pd.DataFrame(records, columns=["user_id", "item_id", "domain"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="session")
def truth() -> SimpleNamespace:
    """The dense truth, for the naive references: ``S``, ``T`` (float64 copies),
    ids, ``overlap`` rows and ``to_rows``."""
    return SimpleNamespace(S=S.copy(), T=T.copy(), user_ids=USER_IDS, src_item_ids=SRC_ITEM_IDS,
                           tgt_item_ids=TGT_ITEM_IDS, overlap=OVERLAP, to_rows=to_rows,
                           source=SOURCE, target=TARGET)


@pytest.fixture(scope="session")
def rows() -> pd.DataFrame:
    frame = to_rows(S, T)
    extra = pd.DataFrame([
        ("u0", "s0", SOURCE),  # a repeated row: counts once
        ("u4", "t1", TARGET),  # a repeated row: counts once
        ("u0", "m9", "music"),  # a third domain: ignored
    ], columns=["user_id", "item_id", "domain"])
    return pd.concat([frame, extra], ignore_index=True)


@pytest.fixture(scope="session")
def tiny(rows) -> SourceTargetMatrices:
    return build_matrices(rows, SOURCE, TARGET)


@pytest.fixture(scope="session")
def valid_hist():
    """``(6, 4)`` csr histories of validation users (unseen combinations included)."""
    import scipy.sparse as sp

    return sp.csr_matrix(np.array([
        [1, 0, 0, 0],
        [0, 1, 0, 1],
        [1, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 1, 1, 1],
        [1, 0, 1, 0],
    ], dtype=np.float32))
