"""Typed configuration (recxfer/config.py): strict types, ranges, unknown keys, and
partial objects merged onto the enclosing defaults. Refusals go through the real
CLI: exit 2, naming the dotted key and what was expected, before the job starts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from recxfer.cli import EXIT_BAD_INPUT, main
from recxfer.config import ConfigError, from_dict, to_dict
from recxfer.nightly import NightlyConfig, nightly_config_from_dict
from recxfer.nightly.config import NightlyOptions
from recxfer.pipeline import JobConfig, load_config
from recxfer.serve import ServeConfig
from recxfer.train.cold_start import ColdStartConfig

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


def _write(tmp_path: Path, data: object, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- the CLI

JOB_CASES = [
    ({"keep_versions": "5"}, "keep_versions: expected int, got string '5'"),
    ({"keep_versions": 0}, "keep_versions must be >= 1"),
    ({"keep_versions": 5.0}, "keep_versions: expected int, got number 5.0"),
    ({"keep_versions": True}, "keep_versions: expected int, got bool True"),
    ({"train": {"mf": {"epochs": -1}}}, "train.mf.epochs must be >= 0, got -1"),
    ({"train": {"mf": {"epochs": "30"}}}, "train.mf.epochs: expected int, got string '30'"),
    ({"train": {"mf": {"lr": "0.1"}}}, "train.mf.lr: expected number, got string"),
    ({"train": {"mf": {"dim": 0}}}, "train.mf.dim must be >= 1"),
    ({"train": {"targets": "books"}}, "train.targets: expected array of string, got string 'books'"),
    ({"train": {"mf": {"epoch": 3}}}, "train.mf: unknown key(s) ['epoch']"),
    ({"trian": {}}, "unknown key(s) ['trian']"),
    ({"ks": [10, -5]}, "ks must be a non-empty list of cut-offs >= 1"),
    ({"ks": [10, "50"]}, "ks[1]: expected int, got string '50'"),
    ({"index": {"recall_ks": [0]}}, "index.recall_ks must be >= 1"),
    ({"split": {"cold_share": 1.5}}, "split.cold_share must be in (0, 1)"),
    ({"blend": {"embedding": "no"}}, "blend.embedding: expected bool (true/false), got string 'no'"),
    ({"blend": {"itemknn": {"top_n": -3}}}, "blend.itemknn.top_n must be >= 1"),
    ({"shared": {"train": {"epochs": -2}}}, "shared.train.epochs must be >= 0"),
    ({"shared": {"train": {"model": {"hidden": "64"}}}}, "shared.train.model.hidden: expected int or null, got string"),
    ({"shared": {"train": {"cold_drop": 2}}}, "shared.train.cold_drop must be in [0, 1]"),
    ({"train": "fast"}, "train: expected an object (CrossDomainConfig), got string 'fast'"),
    ([1, 2], "expected an object (JobConfig), got array"),
]


@pytest.mark.parametrize("data, message", JOB_CASES, ids=[str(c[0]) for c in JOB_CASES])
def test_train_refuses_a_bad_config_with_exit_2_before_starting(
    data, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _write(tmp_path, data)
    root = tmp_path / "artifacts"
    assert main(["train", "--data", str(SAMPLES), "--artifacts", str(root), "--config", str(path)]) \
        == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{path}: " in err and message in err, err
    assert not root.exists()  # refused before the lock, the data or any training


NIGHTLY_CASES = [
    ({"keep_versions": "5"}, "keep_versions: expected int, got string '5'"),
    ({"nightly": {"warm_start": "no"}}, "nightly.warm_start: expected bool (true/false), got string 'no'"),
    ({"nightly": {"gate": {"tolerance": "0.02"}}}, "nightly.gate.tolerance: expected number, got string"),
    ({"nightly": {"gate": {"tolerance": -1}}}, "nightly.gate.tolerance must be >= 0"),
    ({"nightly": {"keep_reports": -1}}, "nightly.keep_reports must be >= 1"),
    ({"nightly": {"interactions": "day1.csv"}}, "nightly.interactions: expected array of string"),
    ({"nightly": {"report_ks": [10, -1]}}, "nightly.report_ks must be >= 1"),
    ({"nightly": {"torch_threads": 1.5}}, "nightly.torch_threads: expected int or null, got number 1.5"),
    ({"nightly": "yes"}, "nightly: expected an object (NightlyOptions)"),
    ({"train": {"mf": {"epochs": -1}}}, "train.mf.epochs must be >= 0"),
]


@pytest.mark.parametrize("data, message", NIGHTLY_CASES, ids=[str(c[0]) for c in NIGHTLY_CASES])
def test_nightly_refuses_a_bad_config_with_exit_2_before_starting(
    data, message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, data)
    root = tmp_path / "artifacts"
    assert main(["nightly", "--data", str(SAMPLES), "--artifacts", str(root), "--config", str(path)]) \
        == EXIT_BAD_INPUT
    assert "bad config" in caplog.text and message in caplog.text, caplog.text
    assert not root.exists()


SERVE_CASES = [
    ({"auth_tokens": "longsecret"}, "auth_tokens: expected array of string, got string (value not shown)"),
    ({"auth_tokens": ["ok", 7]}, "auth_tokens[1]: expected string, got int"),
    ({"popularity_fallback": "no"}, "popularity_fallback: expected bool (true/false), got string 'no'"),
    ({"popularity_fallback": 0}, "popularity_fallback: expected bool (true/false), got int 0"),
    ({"max_k": "500"}, "max_k: expected int, got string '500'"),
    ({"max_k": -3}, "max_k must be"),
    ({"grace_s": "5"}, "grace_s: expected number, got string '5'"),
    ({"grace_s": -1}, "grace_s"),
    ({"tls": {"cert": "s.crt"}}, "tls.key: missing (expected string)"),
    ({"tls": "on"}, "tls: expected object (TlsConfig) or null, got string 'on'"),
    ({"max_kk": 3}, "unknown key(s) ['max_kk']"),
]


@pytest.mark.parametrize("data, message", SERVE_CASES, ids=[str(c[0]) for c in SERVE_CASES])
def test_serve_refuses_a_bad_serve_config_with_exit_2(
    data, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _write(tmp_path, data, "serve.json")
    code = main(["serve", "--artifact", str(tmp_path), "--address", "127.0.0.1:0",
                 "--serve-config", str(path)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err, err
    assert "longsecret" not in err  # a token is never echoed


def test_the_token_string_is_not_split_into_characters() -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(ServeConfig, {"auth_tokens": "longsecret"}, "serve.json")
    assert caught.value.key == "auth_tokens" and "array of string" in str(caught.value)
    assert from_dict(ServeConfig, {"auth_tokens": ["longsecret"]}).auth_tokens == ("longsecret",)


@pytest.mark.parametrize("which", ["config", "serve-config"])
def test_run_refuses_either_bad_config_before_training(which: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    bad = _write(tmp_path, {"max_k": "5"} if which == "serve-config" else {"ks": "10"})
    root = tmp_path / "artifacts"
    code = main(["run", "--data", str(SAMPLES), "--artifacts", str(root), "--address", "127.0.0.1:0",
                 f"--{which}", str(bad)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert ("max_k: expected int" if which == "serve-config" else "ks: expected array of int") in err
    assert not (root / ".lock").exists() and not any(root.glob("*/manifest.json"))


# --------------------------------------------------------------------------- merging


def test_partial_nested_configs_keep_the_jobs_defaults(tmp_path: Path) -> None:
    job = JobConfig()
    config = load_config(_write(tmp_path, {"train": {"mf": {"epochs": 30, "dim": 64}},
                                           "split": {"cold_share": 0.3}}))
    assert config.train.mf.epochs == 30 and config.train.mf.dim == 64
    assert config.train.mf.lr == job.train.mf.lr == 0.02  # the job's, not MFConfig()'s 0.01
    assert config.train.mf.batch_size == job.train.mf.batch_size
    assert config.split.cold_share == 0.3 and config.split.valid_share == job.split.valid_share
    shared = from_dict(JobConfig, {"shared": {"train": {"epochs": 2, "model": {"pooling": "attention"}}}})
    assert shared.shared.train.epochs == 2
    assert shared.shared.train.lr == job.shared.train.lr == 5e-3
    assert shared.shared.train.max_history == 50 and shared.shared.train.patience == 4
    assert shared.shared.train.model.dim == 32 and shared.shared.train.model.pooling == "attention"
    assert from_dict(JobConfig, {"blend": {"ridge": {"l2": 50}}}).blend.embedding is True
    assert from_dict(JobConfig, {}) == job


def test_base_replaces_only_the_given_keys() -> None:
    base = JobConfig(keep_versions=9)
    merged = from_dict(JobConfig, {"train": {"mf": {"epochs": 1}}}, base=base)
    assert merged.keep_versions == 9 and merged.train.mf.epochs == 1 and merged.train.mf.lr == 0.02


def test_nightly_parts_merge_onto_the_nightly_defaults() -> None:
    assert nightly_config_from_dict({}) == NightlyConfig()
    assert nightly_config_from_dict({"split": {"seed": 3}}).job.split.method == "hash"
    assert nightly_config_from_dict({"split": {"method": "random"}}).job.split.method == "random"
    config = nightly_config_from_dict({"train": {"mf": {"epochs": 30}}, "nightly": {"gate": {"tolerance": 0}}})
    assert config.job.train.mf.lr == 0.02 and config.nightly.gate.tolerance == 0.0
    assert config.nightly.gate.metrics == NightlyOptions().gate.metrics


# --------------------------------------------------------------------------- types


def test_json_values_become_the_field_types() -> None:
    config = from_dict(JobConfig, {"ks": [5, 10], "train": {"targets": ["books"], "mf": {"lr": 1}},
                                   "shared": {"train": {"alignment": {"mmd_bandwidths": [1, 2.5]}}}})
    assert config.ks == (5, 10) and config.train.targets == ("books",)
    assert config.train.mf.lr == 1.0 and type(config.train.mf.lr) is float  # int accepted for a float
    assert config.shared.train.alignment.mmd_bandwidths == (1.0, 2.5)
    assert from_dict(ServeConfig, {"metrics_address": None}).metrics_address is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "0.1", None, [0.1]])
def test_a_float_takes_only_finite_numbers(value) -> None:
    with pytest.raises(ConfigError, match=r"train\.mf\.lr: expected"):
        from_dict(JobConfig, {"train": {"mf": {"lr": value}}})


@dataclass(frozen=True)
class _Inner:
    name: str
    pair: tuple[int, str] = (1, "a")


@dataclass(frozen=True)
class _Outer:
    mode: Literal["a", "b"] = "a"
    inner: _Inner = field(default_factory=lambda: _Inner("x"))
    more: tuple[_Inner, ...] = ()


def test_fixed_tuples_literals_and_required_fields() -> None:
    assert from_dict(_Outer, {"inner": {"pair": [2, "b"]}}).inner == _Inner("x", (2, "b"))
    assert from_dict(_Outer, {"more": [{"name": "y"}]}).more == (_Inner("y"),)
    with pytest.raises(ConfigError, match=r"inner\.pair: expected array \[int, string\] \(2 elements\)"):
        from_dict(_Outer, {"inner": {"pair": [1]}})
    with pytest.raises(ConfigError, match=r"more\[0\]\.name: missing \(expected string\)"):
        from_dict(_Outer, {"more": [{}]})
    with pytest.raises(ConfigError, match=r"mode: expected one of \['a', 'b'\], got string 'c'"):
        from_dict(_Outer, {"mode": "c"})


@pytest.mark.parametrize("cls", [JobConfig, NightlyOptions, ServeConfig, ColdStartConfig])
def test_every_default_config_round_trips_through_json(cls) -> None:
    default = cls()
    assert from_dict(cls, json.loads(json.dumps(to_dict(default)))) == default
