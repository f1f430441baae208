"""Public benchmark loaders (recxfer/data/benchmarks.py) on tiny hand-written folders,
plus checks on the real CDRIB / Douban files when ../shared/data is present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recxfer.data import DataValidationError
from recxfer.data.benchmarks import (
    ColdStartTask,
    domain_name,
    load_cdrib,
    load_douban,
    load_task,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CDRIB_DIR = SHARED_DATA / "cdrib"
DOUBAN_DIR = SHARED_DATA / "douban"

# ----------------------------------------------------------------------------- helpers


def write_pairs(path: Path, pairs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u}\t{i}\n" for u, i in pairs))


# The overlap of these hand-made folders, as the CDRIB convention derives it:
# 1 + the largest cold user id in both folders' valid/test (6, in sport_cloth/test.txt).
OVERLAP = 7
HI = OVERLAP  # first single-domain user id

# sports folder: users 5 and 6 are cold in sports (only in its valid/test)
SPORT = {
    "train": [(0, 0), (0, 1), (1, 1), (2, 2), (3, 0), (HI, 3), (HI + 1, 2)],
    "valid": [(5, 9)],
    "test": [(6, 9)],
}
# clothing folder: users 2 and 3 are cold in clothing (only in its valid/test)
CLOTH = {
    "train": [(0, 10), (1, 11), (1, 12), (5, 10), (6, 11), (HI, 10), (HI + 2, 12),
              (0, 10)],  # (0, 10) twice
    "valid": [(2, 11)],
    "test": [(3, 12), (3, 10)],
}


@pytest.fixture
def cdrib_dirs(tmp_path: Path) -> tuple[Path, Path]:
    sport, cloth = tmp_path / "sport_cloth", tmp_path / "cloth_sport"
    for folder, parts in ((sport, SPORT), (cloth, CLOTH)):
        for part, pairs in parts.items():
            write_pairs(folder / f"{part}.txt", pairs)
    return sport, cloth


def rows(frame: pd.DataFrame, domain: str | None = None) -> set[tuple[str, str]]:
    if domain is not None:
        frame = frame[frame["domain"] == domain]
    return set(zip(frame["user_id"], frame["item_id"]))


# ----------------------------------------------------------------------------- load_cdrib


def test_domain_names() -> None:
    assert domain_name("x/sport_cloth") == "sports"
    assert domain_name(Path("cloth_sport")) == "clothing"
    assert domain_name("douban_book") == "books"
    assert domain_name("douban_music") == "music"
    assert domain_name("phone_electronic") == "phones"
    assert domain_name("electronic_phone") == "electronics"
    assert domain_name("sport_phone") == "sports"
    assert domain_name("phone_sport") == "phones"
    assert domain_name("/a/aa_bb") == "aa_bb"  # unknown folders keep their name


def test_cdrib_task_domains_and_columns(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    task = load_cdrib(sport, cloth)
    assert isinstance(task, ColdStartTask)
    assert (task.source, task.target) == ("sports", "clothing")
    for frame in (task.train, task.valid, task.test):
        assert list(frame.columns) == ["user_id", "item_id", "domain"]
        assert all(isinstance(v, str) for v in frame["user_id"])
        assert all(isinstance(v, str) for v in frame["item_id"])
    assert set(task.train["domain"]) == {"sports", "clothing"}
    assert set(task.valid["domain"]) == {"clothing"}
    assert set(task.test["domain"]) == {"clothing"}


def test_cdrib_overlapping_users_keep_their_id_and_others_are_per_domain(cdrib_dirs) -> None:
    task = load_cdrib(*cdrib_dirs)
    sports_users = set(task.train.loc[task.train["domain"] == "sports", "user_id"])
    cloth_users = set(task.train.loc[task.train["domain"] == "clothing", "user_id"])
    # users < overlap are one person in both domains: same id
    assert {"0", "1"} <= sports_users & cloth_users
    # users >= overlap are distinct people: the same number gives two different ids
    hi_sports = {u for u in sports_users if not u.isdigit()}
    hi_cloth = {u for u in cloth_users if not u.isdigit()}
    assert len(hi_sports) == 2 and len(hi_cloth) == 2
    assert not hi_sports & hi_cloth
    assert not (hi_sports | hi_cloth) & {str(HI), str(HI + 1), str(HI + 2)}
    for u in hi_sports | hi_cloth:
        assert str(HI) in u or str(HI + 1) in u or str(HI + 2) in u  # the number is kept inside
    # boundary: overlap - 1 is shared, overlap is not
    assert task.overlap == OVERLAP == HI
    assert str(HI - 1) in cloth_users  # the top overlapping id (a user cold in sports) keeps its id


def test_cdrib_train_is_source_train_plus_target_train(cdrib_dirs) -> None:
    task = load_cdrib(*cdrib_dirs)
    sports = rows(task.train, "sports")
    cloth = rows(task.train, "clothing")
    shared = lambda pairs: {(str(u), str(i)) for u, i in pairs if u < HI}  # noqa: E731
    assert shared(SPORT["train"]) <= sports
    assert shared(CLOTH["train"]) <= cloth
    assert len(sports) == len(SPORT["train"])
    assert len(cloth) == len(set(CLOTH["train"]))
    assert len(task.train) == len(sports) + len(cloth)  # duplicates dropped
    # the source folder's own valid/test rows are not part of the task
    assert ("5", "9") not in sports and ("6", "9") not in sports


def test_cdrib_valid_and_test_are_target_rows(cdrib_dirs) -> None:
    task = load_cdrib(*cdrib_dirs)
    assert rows(task.valid) == {("2", "11")}
    assert rows(task.test) == {("3", "12"), ("3", "10")}
    # cold users: known in the source, absent from the target's training rows
    cloth_train_users = set(task.train.loc[task.train["domain"] == "clothing", "user_id"])
    assert not {"2", "3"} & cloth_train_users


def test_cdrib_target_items_are_the_sorted_target_training_items(cdrib_dirs) -> None:
    task = load_cdrib(*cdrib_dirs)
    np.testing.assert_array_equal(task.target_items(), np.array(["10", "11", "12"], dtype=object))


def test_cdrib_other_direction_swaps_roles(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    task = load_cdrib(cloth, sport)
    assert (task.source, task.target) == ("clothing", "sports")
    assert rows(task.test) == {("6", "9")}
    np.testing.assert_array_equal(task.target_items(), np.array(["0", "1", "2", "3"], dtype=object))


def test_load_task_dispatches(cdrib_dirs) -> None:
    task = load_task("cdrib", *cdrib_dirs)
    assert task.target == "clothing"
    with pytest.raises(DataValidationError, match="unknown benchmark format"):
        load_task("nope", *cdrib_dirs)


def test_cdrib_same_domain_is_rejected(cdrib_dirs) -> None:
    sport, _ = cdrib_dirs
    with pytest.raises(DataValidationError, match="same domain"):
        load_cdrib(sport, sport)


@pytest.mark.parametrize("part", ["train", "valid", "test"])
def test_cdrib_missing_file_names_it(cdrib_dirs, part: str) -> None:
    sport, cloth = cdrib_dirs
    (cloth / f"{part}.txt").unlink()
    with pytest.raises(DataValidationError, match=f"{part}.txt"):
        load_cdrib(sport, cloth)


def test_cdrib_missing_source_train_names_it(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    (sport / "train.txt").unlink()
    with pytest.raises(DataValidationError, match="sport_cloth.*train.txt"):
        load_cdrib(sport, cloth)


@pytest.mark.parametrize(
    "text",
    [
        "1\tabc\n",  # non-integer item
        "x\t1\n",  # non-integer user
        "1\t2.5\n",  # float
        "1\n2\t3\n",  # missing column
        "1\t2\n3\t4\t5\n",  # one row too long
        "user\titem\n1\t2\n",  # a header line
    ],
)
def test_cdrib_bad_file_raises_naming_it(cdrib_dirs, text: str) -> None:
    sport, cloth = cdrib_dirs
    (cloth / "valid.txt").write_text(text)
    with pytest.raises(DataValidationError, match="valid.txt"):
        load_cdrib(sport, cloth)


def test_cdrib_file_with_too_many_columns_raises(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    (cloth / "train.txt").write_text("0\t10\t5\n1\t11\t4\n")  # e.g. a ratings file
    with pytest.raises(DataValidationError, match="train.txt"):
        load_cdrib(sport, cloth)


# ----------------------------------------------------------------------------- CDRIB overlap


def write_pair_json(folder: Path, overlap) -> None:
    (folder / "pair.json").write_text(json.dumps({"overlap": overlap, "seed": 42}))


def test_cold_start_task_overlap_defaults_to_none() -> None:
    empty = pd.DataFrame(columns=["user_id", "item_id", "domain"])
    assert ColdStartTask("a", "b", empty, empty, empty).overlap is None


def test_cdrib_overlap_is_derived_from_the_held_out_files(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    assert load_cdrib(sport, cloth).overlap == OVERLAP
    assert load_cdrib(cloth, sport).overlap == OVERLAP  # same pair, same overlap
    assert load_task("cdrib", sport, cloth).overlap == OVERLAP


def test_cdrib_overlap_follows_the_data_not_a_constant(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    # a cold user 20 in clothing (with sports history) moves the overlap to 21:
    # users 7, 8, 9 become overlapping users, and keep their plain ids
    write_pairs(sport / "train.txt", [*SPORT["train"], (20, 1)])
    write_pairs(cloth / "test.txt", [*CLOTH["test"], (20, 12)])
    task = load_cdrib(sport, cloth)
    assert task.overlap == 21
    users = set(task.train["user_id"])
    assert {str(HI), str(HI + 1), str(HI + 2)} <= users
    assert all(u.isdigit() for u in users)


def test_cdrib_single_domain_users_are_distinct_per_domain(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    task = load_cdrib(sport, cloth)
    by_domain = {d: set(task.train.loc[task.train["domain"] == d, "user_id"]) for d in ("sports", "clothing")}
    # HI appears in both train files but is two different people
    hi = {d: {u for u in users if u.endswith(str(HI)) and u != str(HI)} for d, users in by_domain.items()}
    assert len(hi["sports"]) == 1 and len(hi["clothing"]) == 1
    assert hi["sports"] != hi["clothing"]
    assert str(HI) not in by_domain["sports"] | by_domain["clothing"]
    # while user 0 (< overlap) is one person: same id in both
    assert "0" in by_domain["sports"] & by_domain["clothing"]


@pytest.mark.parametrize("where", ["source", "target", "both"])
def test_cdrib_agreeing_pair_json_and_override_are_accepted(cdrib_dirs, where: str) -> None:
    sport, cloth = cdrib_dirs
    for folder in {"source": [sport], "target": [cloth], "both": [sport, cloth]}[where]:
        write_pair_json(folder, OVERLAP)
    assert load_cdrib(sport, cloth).overlap == OVERLAP
    assert load_cdrib(sport, cloth, overlap=OVERLAP).overlap == OVERLAP
    assert load_task("cdrib", sport, cloth, overlap=OVERLAP).overlap == OVERLAP


def test_cdrib_override_agreeing_with_the_data_is_accepted(cdrib_dirs) -> None:
    task = load_cdrib(*cdrib_dirs, overlap=OVERLAP)
    assert task.overlap == OVERLAP
    assert task.train.equals(load_cdrib(*cdrib_dirs).train)


@pytest.mark.parametrize("where", ["source", "target"])
def test_cdrib_pair_json_contradicting_the_data_is_refused(cdrib_dirs, where: str) -> None:
    sport, cloth = cdrib_dirs
    folder = sport if where == "source" else cloth
    write_pair_json(folder, 9828)
    with pytest.raises(DataValidationError) as err:
        load_cdrib(sport, cloth)
    msg = str(err.value)
    assert "9828" in msg and str(OVERLAP) in msg  # both numbers
    assert str(folder / "pair.json") in msg  # the file that says so
    assert str(sport / "test.txt") in msg and str(cloth / "valid.txt") in msg  # the derivation's files


def test_cdrib_two_pair_json_disagreeing_are_refused(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    write_pair_json(sport, OVERLAP)
    write_pair_json(cloth, OVERLAP + 1)
    with pytest.raises(DataValidationError, match="disagree") as err:
        load_cdrib(sport, cloth)
    msg = str(err.value)
    assert str(sport / "pair.json") in msg and str(cloth / "pair.json") in msg
    assert str(OVERLAP) in msg and str(OVERLAP + 1) in msg


@pytest.mark.parametrize("bad", [OVERLAP - 1, 2, OVERLAP + 1, 9828])
def test_cdrib_override_contradicting_the_data_is_refused(cdrib_dirs, bad: int) -> None:
    # below: cold users (ids up to 6) would fall outside the overlap; above: not the CDRIB block
    with pytest.raises(DataValidationError, match="overlap") as err:
        load_cdrib(*cdrib_dirs, overlap=bad)
    assert str(bad) in str(err.value) and str(OVERLAP) in str(err.value)
    with pytest.raises(DataValidationError, match="overlap"):
        load_task("cdrib", *cdrib_dirs, overlap=bad)


def test_cdrib_override_contradicting_pair_json_is_refused(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    write_pair_json(cloth, OVERLAP)  # pair.json agrees with the data, the override does not
    with pytest.raises(DataValidationError) as err:
        load_cdrib(sport, cloth, overlap=OVERLAP + 3)
    msg = str(err.value)
    assert str(cloth / "pair.json") in msg and str(OVERLAP + 3) in msg and str(OVERLAP) in msg


@pytest.mark.parametrize("bad", [0, -5, True, 7.0, "7"])
def test_cdrib_override_must_be_a_positive_int(cdrib_dirs, bad) -> None:
    with pytest.raises(DataValidationError, match="positive integer"):
        load_cdrib(*cdrib_dirs, overlap=bad)


@pytest.mark.parametrize("text", ["{not json", '{"seed": 42}', '{"overlap": "7"}', '{"overlap": 0}', "[7]"])
def test_cdrib_bad_pair_json_names_it(cdrib_dirs, text: str) -> None:
    sport, cloth = cdrib_dirs
    (cloth / "pair.json").write_text(text)
    with pytest.raises(DataValidationError, match="pair.json"):
        load_cdrib(sport, cloth)


def test_cdrib_cold_user_without_source_history_is_refused(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    write_pairs(cloth / "valid.txt", [*CLOTH["valid"], (4, 10)])  # user 4: no sports row
    with pytest.raises(DataValidationError, match="no source history") as err:
        load_cdrib(sport, cloth)
    msg = str(err.value)
    assert str(sport / "train.txt") in msg and str(cloth / "valid.txt") in msg
    assert ": 4" in msg  # the user is named


def test_cdrib_source_held_out_files_are_needed_for_the_overlap(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    (sport / "test.txt").unlink()
    with pytest.raises(DataValidationError, match="sport_cloth.*test.txt"):
        load_cdrib(sport, cloth)


def test_cdrib_empty_source_held_out_files_are_allowed(cdrib_dirs) -> None:
    sport, cloth = cdrib_dirs
    (sport / "valid.txt").write_text("")
    (sport / "test.txt").write_text("")
    task = load_cdrib(sport, cloth)
    assert task.overlap == 4  # 1 + the largest cold user id left (3, in cloth_sport/test.txt)
    assert rows(task.test) == {("3", "12"), ("3", "10")}


def test_load_task_refuses_an_overlap_for_douban(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="cdrib"):
        load_task("douban", tmp_path / "a", tmp_path / "b", overlap=10)


# ----------------------------------------------------------------------------- load_douban


def write_ratings(path: Path, triples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u}\t{i}\t{r}\n" for u, i, r in triples))


@pytest.fixture
def douban_dirs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    book, music = tmp_path / "douban_book", tmp_path / "douban_music"
    # users 0..39 in both, 40..49 only books, 50..59 only music
    book_rows = [(u, int(i), int(rng.integers(1, 6))) for u in range(50)
                 for i in rng.choice(30, size=4, replace=False)]
    music_rows = [(u, int(i), int(rng.integers(1, 6))) for u in [*range(40), *range(50, 60)]
                  for i in rng.choice(20, size=3, replace=False)]
    music_rows.append(music_rows[0])  # a duplicate line counts once
    write_ratings(book / "ratings.dat", book_rows)
    write_ratings(music / "ratings.dat", music_rows)
    return book, music


def test_douban_task_shape(douban_dirs) -> None:
    task = load_douban(*douban_dirs, cold_share=0.25, seed=0)
    assert (task.source, task.target) == ("books", "music")
    assert set(task.valid["domain"]) == {"music"} and set(task.test["domain"]) == {"music"}
    assert not task.train.duplicated(["user_id", "item_id", "domain"]).any()
    n_rows = (50 * 4) + (50 * 3)  # every rating is an interaction (duplicate dropped)
    assert len(task.train) + len(task.valid) + len(task.test) == n_rows


def test_douban_cold_users_target_rows_leave_train(douban_dirs) -> None:
    task = load_douban(*douban_dirs, cold_share=0.25, seed=0)
    valid_users = set(task.valid["user_id"])
    test_users = set(task.test["user_id"])
    cold = valid_users | test_users
    assert len(cold) == 10  # 25% of the 40 overlapping users
    assert not valid_users & test_users
    assert abs(len(valid_users) - len(test_users)) <= 1
    assert cold <= {str(u) for u in range(40)}  # only overlapping users go cold
    music_train = set(task.train.loc[task.train["domain"] == "music", "user_id"])
    books_train = set(task.train.loc[task.train["domain"] == "books", "user_id"])
    assert not cold & music_train  # no target row of a cold user is in train
    assert cold <= books_train  # their source history stays
    # all 3 music rows of each cold user are held out
    held = pd.concat([task.valid, task.test])
    assert (held.groupby("user_id").size() == 3).all()


def test_douban_split_is_seeded(douban_dirs) -> None:
    a = load_douban(*douban_dirs, seed=3)
    b = load_douban(*douban_dirs, seed=3)
    c = load_douban(*douban_dirs, seed=4)
    pd.testing.assert_frame_equal(a.test, b.test)
    pd.testing.assert_frame_equal(a.train, b.train)
    assert set(a.test["user_id"]) | set(a.valid["user_id"]) != (
        set(c.test["user_id"]) | set(c.valid["user_id"])
    )
    assert load_task("douban", *douban_dirs, seed=3).test.equals(a.test)


def test_douban_bad_ratings_file_names_it(douban_dirs) -> None:
    book, music = douban_dirs
    (music / "ratings.dat").write_text("1\t2\tfive\n")
    with pytest.raises(DataValidationError, match="ratings.dat"):
        load_douban(book, music)
    (music / "ratings.dat").unlink()
    with pytest.raises(DataValidationError, match="douban_music"):
        load_douban(book, music)


# ----------------------------------------------------------------------------- real data

needs_cdrib = pytest.mark.skipif(
    not (CDRIB_DIR / "cloth_sport" / "train.txt").is_file(),
    reason=f"real CDRIB data not found at {CDRIB_DIR} (see ../shared/data/README.md)",
)
needs_douban = pytest.mark.skipif(
    not (DOUBAN_DIR / "douban_book" / "ratings.dat").is_file(),
    reason=f"real Douban data not found at {DOUBAN_DIR} (see ../shared/data/README.md)",
)


@pytest.fixture(scope="module")
def sports_to_clothing() -> ColdStartTask:
    return load_cdrib(CDRIB_DIR / "sport_cloth", CDRIB_DIR / "cloth_sport")


def _domain_counts(task: ColdStartTask, domain: str) -> tuple[int, int, int]:
    part = task.train[task.train["domain"] == domain]
    return len(part), part["user_id"].nunique(), part["item_id"].nunique()


@needs_cdrib
def test_real_cdrib_counts_match_the_readme(sports_to_clothing) -> None:
    task = sports_to_clothing
    assert (task.source, task.target) == ("sports", "clothing")
    assert _domain_counts(task, "clothing") == (187_880, 40_839, 17_943)
    assert _domain_counts(task, "sports") == (163_291, 26_346, 12_655)
    assert len(task.valid) == 3156 and len(task.test) == 3085
    test_users = task.test["user_id"].astype(int)
    assert task.test["user_id"].nunique() == 907
    assert test_users.min() >= 8838 and test_users.max() <= 9827


@needs_cdrib
def test_real_cdrib_cold_users_are_cold_and_rankable(sports_to_clothing) -> None:
    task = sports_to_clothing
    train = task.train
    cloth_users = set(train.loc[train["domain"] == "clothing", "user_id"])
    sports_users = set(train.loc[train["domain"] == "sports", "user_id"])
    held = pd.concat([task.valid, task.test])
    assert not set(held["user_id"]) & cloth_users  # cold in the target
    assert set(held["user_id"]) <= sports_users  # every one has source history
    assert held["item_id"].isin(set(task.target_items())).all()  # rankable items
    # single-domain users are made distinct per domain
    assert not {u for u in cloth_users if not u.isdigit()} & {u for u in sports_users if not u.isdigit()}


@needs_cdrib
def test_real_cdrib_other_direction() -> None:
    task = load_cdrib(CDRIB_DIR / "cloth_sport", CDRIB_DIR / "sport_cloth")
    assert (task.source, task.target) == ("clothing", "sports")
    assert task.test["user_id"].nunique() == 897
    test_users = task.test["user_id"].astype(int)
    assert test_users.min() >= 7856 and test_users.max() <= 8837


CDRIB_PAIRS = [  # (source, target): both directions of each pair
    ("sport_cloth", "cloth_sport"),
    ("cloth_sport", "sport_cloth"),
    ("electronic_phone", "phone_electronic"),
    ("phone_electronic", "electronic_phone"),
    ("phone_sport", "sport_phone"),
    ("sport_phone", "phone_sport"),
]
CLOTH_SPORT_OVERLAP = 9828  # ../shared/data/README.md: users 0..9827 overlap (no pair.json there)


@pytest.mark.parametrize(("source", "target"), CDRIB_PAIRS)
def test_real_cdrib_overlap_is_derived_and_matches_pair_json(source: str, target: str) -> None:
    src, tgt = CDRIB_DIR / source, CDRIB_DIR / target
    if not all((d / f).is_file() for d in (src, tgt) for f in ("train.txt", "valid.txt", "test.txt")):
        pytest.skip(f"real CDRIB pair {source}/{target} not found under {CDRIB_DIR} "
                    "(see ../shared/data/README.md)")
    task = load_cdrib(src, tgt)
    # the derivation, written out independently of the loader
    held = [pd.read_csv(d / f"{p}.txt", sep="\t", header=None) for d in (src, tgt) for p in ("valid", "test")]
    assert task.overlap == 1 + max(int(frame[0].max()) for frame in held)
    if {source, target} == {"sport_cloth", "cloth_sport"}:
        assert task.overlap == CLOTH_SPORT_OVERLAP
    else:  # the other pairs come with a pair.json in each folder
        for d in (src, tgt):
            assert task.overlap == json.loads((d / "pair.json").read_text())["overlap"]
    # cold users are inside the overlap, have source history, are cold in the target
    cold = set(task.valid["user_id"]) | set(task.test["user_id"])
    assert all(u.isdigit() and int(u) < task.overlap for u in cold)
    by_domain = {d: set(task.train.loc[task.train["domain"] == d, "user_id"]) for d in (task.source, task.target)}
    assert cold <= by_domain[task.source]
    assert not cold & by_domain[task.target]
    # single-domain users are distinct per domain
    only = {d: {u for u in users if not u.isdigit()} for d, users in by_domain.items()}
    assert not only[task.source] & only[task.target]


@needs_douban
def test_real_douban_counts_match_the_readme() -> None:
    task = load_douban(DOUBAN_DIR / "douban_book", DOUBAN_DIR / "douban_music", seed=0)
    assert (task.source, task.target) == ("books", "music")
    book = task.train[task.train["domain"] == "books"]
    assert book["user_id"].nunique() == 2110
    music_all = pd.concat([task.train[task.train["domain"] == "music"], task.valid, task.test])
    assert music_all["user_id"].nunique() == 1672
    overlap = set(book["user_id"]) & set(music_all["user_id"])
    assert len(overlap) == 1566
    cold = set(task.valid["user_id"]) | set(task.test["user_id"])
    assert len(cold) == round(0.2 * 1566)
