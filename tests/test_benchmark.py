"""``recxfer bench-cdr`` (recxfer/benchmark.py and the CLI) on a tiny CDRIB-format
task written from the synthetic generator."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recxfer.benchmark import (
    FULL_KEYS,
    PER_USER_FULL,
    PER_USER_SAMPLED,
    evaluate_embeddings,
    popularity_embeddings,
    run_bench_cdr,
    with_seed,
)
from recxfer.cli import main
from recxfer.config import to_dict
from recxfer.data.benchmarks import load_cdrib
from recxfer.data.split import cold_start_split
from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.eval.sampled import SAMPLED_KEYS
from recxfer.train.cold_start import ITEM_TO_ITEM, METHODS, ColdStartConfig
from recxfer.train.mf import MFConfig
from recxfer.train.shared import SharedTrainConfig
from recxfer.transfer.emcdr import EMCDRConfig
from recxfer.transfer.ptupcdr import PTUPCDRConfig
from recxfer.transfer.shared import SharedModelConfig

TINY = ColdStartConfig(
    mf=MFConfig(dim=8, epochs=2, batch_size=256),
    emcdr=EMCDRConfig(epochs=20),
    ptupcdr=PTUPCDRConfig(epochs=2),
    shared=SharedTrainConfig(model=SharedModelConfig(dim=8), epochs=2, batch_size=256),
    device="cpu",
)
N_NEG = 99


def _to_int_ids(values: pd.Series) -> pd.Series:
    codes = {v: i for i, v in enumerate(sorted(values.unique()))}
    return values.map(codes)


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u}\t{i}\n" for u, i in zip(frame["user"], frame["item"])))


@pytest.fixture(scope="module")
def cdrib_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """``aa_bb`` (source aa) and ``bb_aa`` (target bb, with cold users' valid/test)."""
    inter, _ = generate(SyntheticConfig(
        n_users=200, domains=(DomainSpec("aa", 60, 1.0, 12.0), DomainSpec("bb", 40, 0.7, 6.0)), seed=5,
    ))
    inter["user"] = _to_int_ids(inter["user_id"])  # 0..199: overlapping users (< 9828)
    inter["item"] = 0
    for d in ("aa", "bb"):
        rows = inter["domain"] == d
        inter.loc[rows, "item"] = _to_int_ids(inter.loc[rows, "item_id"])
    split = cold_start_split(inter, "aa", ["bb"], 0.2, 0.5, seed=0)
    train = split.train
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cdrib")
    for d, other in (("aa", "bb"), ("bb", "aa")):
        part = train[train["domain"] == d][["user", "item"]]
        # single-domain users: ids >= 9828, the same numbers in both folders
        extra = pd.DataFrame({"user": 9828 + rng.integers(0, 10, size=30),
                              "item": rng.integers(0, part["item"].max() + 1, size=30)})
        _write(root / f"{d}_{other}" / "train.txt", pd.concat([part, extra]))
    target_items = set(train.loc[train["domain"] == "bb", "item"])
    for name in ("valid", "test"):
        held = getattr(split, name)["bb"]
        _write(root / "bb_aa" / f"{name}.txt", held[held["item"].isin(target_items)])
        _write(root / "aa_bb" / f"{name}.txt", held.iloc[:0])
    return root / "aa_bb", root / "bb_aa"


@pytest.fixture(scope="module")
def results(cdrib_dirs) -> dict[str, dict]:
    return {m: run_bench_cdr("cdrib", *cdrib_dirs, m, seed=0, config=TINY, n_neg=N_NEG) for m in METHODS}


def assert_block(block: dict, keys) -> None:
    for key in keys:
        assert key in block, key
        assert isinstance(block[key], float)
        assert 0.0 <= block[key] <= 1.0, (key, block[key])


def test_fixture_is_a_cold_start_task(cdrib_dirs) -> None:
    task = load_cdrib(*cdrib_dirs)
    assert (task.source, task.target) == ("aa_bb", "bb_aa")
    assert len(task.test) > 20 and len(task.valid) > 20
    tgt_users = set(task.train.loc[task.train["domain"] == task.target, "user_id"])
    assert not set(task.test["user_id"]) & tgt_users


@pytest.mark.parametrize("method", METHODS)
def test_result_json_has_every_block(results, method: str) -> None:
    result = results[method]
    assert result["method"] == method and result["format"] == "cdrib"
    assert (result["source"], result["target"]) == ("aa_bb", "bb_aa")
    assert_block(result["sampled"], SAMPLED_KEYS)
    assert set(SAMPLED_KEYS) == {"MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10"}
    assert_block(result["full"], FULL_KEYS)
    assert set(FULL_KEYS) == {"recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@50"}
    assert set(result["popularity"]) == {"sampled", "full"}
    assert_block(result["popularity"]["sampled"], SAMPLED_KEYS)
    assert_block(result["popularity"]["full"], FULL_KEYS)
    assert isinstance(result["train_seconds"], float) and result["train_seconds"] > 0
    assert result["device"] in ("cpu", "cuda")
    assert result["protocol"]["n_neg"] == N_NEG
    assert 0.0 <= result["valid_objective"] <= 1.0
    # closed-form / neighbourhood methods train no epochs
    assert result["epochs_trained"] >= (0 if method in ITEM_TO_ITEM + ("popularity",) else 1)
    assert result["config"] == to_dict(with_seed(TINY, 0))
    # the whole result is plain JSON
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("method", METHODS)
def test_metric_blocks_are_consistent(results, method: str) -> None:
    result = results[method]
    for block in (result["sampled"], result["popularity"]["sampled"]):
        assert block["HR@1"] <= block["HR@5"] <= block["HR@10"]
        assert block["NDCG@5"] <= block["NDCG@10"] <= block["HR@10"]
        assert block["HR@1"] <= block["MRR"]
    for block in (result["full"], result["popularity"]["full"]):
        assert block["recall@10"] <= block["recall@20"] <= block["recall@50"]
        assert block["ndcg@10"] <= block["ndcg@50"]


@pytest.mark.parametrize("method", METHODS)
def test_per_user_values_average_to_the_reported_figures(cdrib_dirs, results, method: str) -> None:
    """``per_user`` (what bench/cdr_ci.py bootstraps): the test users in order, whose
    sums over ``sum(instances)`` are the sampled figures and whose means are the full
    ones, for the method and for popularity."""
    result = results[method]
    users = sorted(load_cdrib(*cdrib_dirs).test["user_id"].unique())
    for per_user, block in ((result["per_user"]["method"], result),
                            (result["per_user"]["popularity"], result["popularity"])):
        assert per_user["users"] == [str(u) for u in users]
        instances = np.asarray(per_user["instances"], np.float64)
        assert len(instances) == len(users) and instances.min() >= 1
        assert instances.sum() == block["sampled"]["instances"]
        assert set(per_user["sampled"]) == set(PER_USER_SAMPLED) and set(per_user["full"]) == set(PER_USER_FULL)
        for name in PER_USER_SAMPLED:
            values = np.asarray(per_user["sampled"][name])
            assert (values >= 0).all() and (values <= instances).all()
            assert values.sum() / instances.sum() == pytest.approx(block["sampled"][name], rel=1e-12)
        for name in PER_USER_FULL:
            assert np.mean(per_user["full"][name]) == pytest.approx(block["full"][name], rel=1e-12)


def test_popularity_block_is_the_same_for_every_method(results) -> None:
    first = results[METHODS[0]]["popularity"]
    for method in METHODS[1:]:
        assert results[method]["popularity"] == first


@pytest.mark.parametrize("method", ["target_only", "popularity"])
def test_target_only_scores_exactly_like_popularity(results, method: str) -> None:
    """target_only serves cold users by popularity: same scores, same negatives and
    tie-breaking seed, hence identical numbers."""
    result = results[method]
    assert result["sampled"] == result["popularity"]["sampled"]
    assert result["full"] == result["popularity"]["full"]


def test_shared_records_validation(results) -> None:
    info = results["shared"]["info"]
    assert len(info["val_scores"]) == len(info["epoch_losses"]) >= 1
    assert results["shared"]["valid_objective"] == pytest.approx(max(info["val_scores"]))


def test_blend_records_what_validation_chose(results) -> None:
    info = results["blend"]["info"]
    assert info["valid"]["best"] == pytest.approx(results["blend"]["valid_objective"])
    assert info["valid"]["tried"] >= 1 and info["pop_weight"] >= 0


def test_bench_is_deterministic_for_a_seed(cdrib_dirs, results) -> None:
    again = run_bench_cdr("cdrib", *cdrib_dirs, "emcdr", seed=0, config=TINY, n_neg=N_NEG)
    assert again["sampled"] == results["emcdr"]["sampled"]
    assert again["full"] == results["emcdr"]["full"]


def test_evaluate_embeddings_of_an_oracle(cdrib_dirs) -> None:
    """One-hot users on their own held-out items: full recall@50 is 1 (catalogue < 50)
    and they beat popularity."""
    task = load_cdrib(*cdrib_dirs)
    users = np.sort(task.test["user_id"].unique())
    pop = popularity_embeddings(task, users)
    item_pos = pd.Index(pop.item_ids).get_indexer(task.test["item_id"])
    user_pos = pd.Index(users).get_indexer(task.test["user_id"])
    user_emb = np.zeros((len(users), len(pop.item_ids)), np.float32)
    user_emb[user_pos, item_pos] = 1.0
    oracle = dataclasses.replace(pop, user_emb=user_emb, item_emb=np.eye(len(pop.item_ids), dtype=np.float32))
    out = evaluate_embeddings(oracle, task.test, seed=0, n_neg=N_NEG)
    assert out["full"]["recall@50"] == pytest.approx(1.0)
    assert out["full"]["users"] == len(users)
    # sampled: every negative ties at best (score 1), so with 5 negatives rank <= 6
    assert evaluate_embeddings(oracle, task.test, seed=0, n_neg=5)["sampled"]["HR@10"] == 1.0
    popularity = evaluate_embeddings(pop, task.test, seed=0, n_neg=N_NEG)
    assert out["sampled"]["MRR"] > popularity["sampled"]["MRR"]
    assert out["full"]["ndcg@10"] > popularity["full"]["ndcg@10"]


def test_with_seed_sets_the_seeds() -> None:
    config = with_seed(ColdStartConfig(), 7)
    assert config.mf.seed == config.emcdr.seed == config.shared.seed == 7


def test_with_seed_sets_the_ptupcdr_seed() -> None:
    assert with_seed(ColdStartConfig(), 7).ptupcdr.seed == 7


# ----------------------------------------------------------------------------- CLI


def test_cli_bench_cdr_writes_the_out_file(cdrib_dirs, tmp_path, capsys) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "mf": {"epochs": 1, "dim": 8},
        "emcdr": {"epochs": 10},
        "shared": {"epochs": 1, "model": {"dim": 8}},
        "device": "cpu",
    }))
    out = tmp_path / "nested" / "result.json"
    code = main(["bench-cdr", "--format", "cdrib", "--source", str(cdrib_dirs[0]),
                 "--target", str(cdrib_dirs[1]), "--method", "shared", "--seed", "1",
                 "--config", str(config), "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["method"] == "shared" and result["seed"] == 1
    assert result["protocol"]["n_neg"] == 999
    assert_block(result["sampled"], SAMPLED_KEYS)
    assert_block(result["full"], FULL_KEYS)
    assert_block(result["popularity"]["full"], FULL_KEYS)
    assert result["config"]["shared"]["model"]["dim"] == 8
    assert result["config"]["shared"]["seed"] == 1
    assert result["epochs_trained"] == 1
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no leftovers
    printed = capsys.readouterr().out
    assert "aa_bb -> bb_aa shared" in printed and str(out) in printed


def test_cli_bench_cdr_bad_config_key_is_bad_input(cdrib_dirs, tmp_path, capsys) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"shared": {"epoch": 1}}))
    out = tmp_path / "result.json"
    code = main(["bench-cdr", "--format", "cdrib", "--source", str(cdrib_dirs[0]),
                 "--target", str(cdrib_dirs[1]), "--method", "shared",
                 "--config", str(config), "--out", str(out)])
    assert code == 2
    assert "epoch" in capsys.readouterr().err
    assert not out.exists()


def test_cli_bench_cdr_missing_folder_is_bad_input(tmp_path, capsys) -> None:
    code = main(["bench-cdr", "--format", "cdrib", "--source", str(tmp_path / "x_y"),
                 "--target", str(tmp_path / "y_x"), "--method", "emcdr",
                 "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "train.txt" in capsys.readouterr().err


def test_default_method_is_the_shipped_blend(cdrib_dirs) -> None:
    result = run_bench_cdr("cdrib", *cdrib_dirs, None, seed=0, config=TINY, n_neg=N_NEG)
    assert result["method"] == "blend"
    assert set(result["info"]["weights"]) <= {"ridge", "itemknn", "userknn", "twohop"}
    assert result["protocol"]["ties"] == "seeded random"


def test_cli_method_list_is_the_registry() -> None:
    from recxfer.cli import COLD_START_METHODS

    assert COLD_START_METHODS == METHODS


def test_selection_reads_the_sampled_protocol_drawn_or_expected(cdrib_dirs) -> None:
    """``selection_sampled``: validation on the drawn negatives or their expectation;
    test figures are the drawn protocol's either way."""
    with pytest.raises(ValueError, match="selection_sampled"):
        ColdStartConfig(selection_sampled="mean")
    task = load_cdrib(*cdrib_dirs)
    users = np.sort(task.test["user_id"].unique())
    pop = popularity_embeddings(task, users)
    from recxfer.benchmark import evaluate_scores
    drawn = evaluate_scores(pop.score, pop.user_ids, pop.item_ids, task.test, 0, N_NEG)
    expected = evaluate_scores(pop.score, pop.user_ids, pop.item_ids, task.test, 0, N_NEG, sampled="expected")
    assert expected["full"] == drawn["full"]
    assert expected["sampled"]["HR@10"] == pytest.approx(drawn["sampled"]["HR@10"], abs=0.05)
    with pytest.raises(ValueError, match="per_user needs"):
        evaluate_scores(pop.score, pop.user_ids, pop.item_ids, task.test, 0, N_NEG, per_user=True,
                        sampled="expected")
    config = dataclasses.replace(TINY, selection_sampled="expected")
    result = run_bench_cdr("cdrib", *cdrib_dirs, "itemknn", seed=0, config=config, n_neg=N_NEG)
    assert result["config"]["selection_sampled"] == "expected" and 0 < result["valid_objective"] <= 1
