"""The nightly config file: the main job's keys plus a strict 'nightly' object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recxfer.nightly import NightlyConfig, load_nightly_config, nightly_config_from_dict


def test_defaults_and_flat_layout(tmp_path: Path) -> None:
    assert load_nightly_config(None) == NightlyConfig()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({
        "train": {"mf": {"epochs": 3}},
        "nightly": {"warm_start": False, "interactions": ["day1.csv", "day2"],
                    "gate": {"metrics": ["cold_start/ndcg@10"], "tolerance": 0.05, "targets": ["books"]}},
    }))
    config = load_nightly_config(path)
    assert config.job.train.mf.epochs == 3
    assert config.nightly.warm_start is False and config.nightly.interactions == ("day1.csv", "day2")
    assert config.nightly.gate.metrics == ("cold_start/ndcg@10",) and config.nightly.gate.targets == ("books",)
    assert config.eval_ks == (1, 5, 10, 20, 50, 100)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nightly": {"warmstart": True}}, r"nightly: unknown key\(s\) \['warmstart'\]"),
        ({"trian": {}}, r"unknown key\(s\) \['trian'\]"),
        ({"nightly": {"gate": {"metrics": ["recall@50"]}}}, "'<group>/<metric>'"),
        ({"nightly": {"gate": {"metrics": ["cold_start/recall@7"]}}}, "'recall@7' is not computed"),
        ({"nightly": {"gate": {"tolerance": -1}}}, "tolerance must be >= 0"),
        ({"nightly": {"gate": {"targets": ["podcasts"]}}}, r"\['podcasts'\] are not trained targets"),
        ({"nightly": {"warm_holdout": False}}, "needs nightly.warm_holdout"),
        ({"nightly": {"unknown_users": "error"}}, "unknown_users must be one of"),
        ([], "expected an object"),
    ],
)
def test_bad_configs_name_the_key(data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nightly_config_from_dict(data)


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("{nope")
    with pytest.raises(ValueError, match="cannot read config"):
        load_nightly_config(tmp_path / "c.json")
