"""Operator commands and CLI behaviour: ``info``, ``--version``, rollback steps,
exit codes, log flags after the subcommand, closed pipes, a light client path and
the pre-flight checks of ``run``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recxfer.artifacts import current_version, list_versions, publish, write_artifact
from recxfer.cli import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    build_parser,
    main,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"

METRICS = {"cold_start": {"books": {"model": {"recall@10": 0.25, "recall@50": 0.5, "mrr": 0.3},
                                    "popularity": {"recall@10": 0.1, "recall@50": 0.2}}}}
DOMAINS = {
    "video": {"role": "source", "users": 4, "items": 12, "dim": 8,
              "index": {"factory": "Flat", "params": "", "file": "domains/video/index.faiss",
                        "recall": {"queries": 4, "recall@10": 1.0}}},
    "books": {"role": "target", "users": 3, "items": 20, "dim": 8,
              "index": {"factory": "Flat", "params": "", "file": None}, "transfer": {"source": "video"}},
}


def _root(tmp_path: Path, n: int = 3) -> tuple[Path, list[str]]:
    root = tmp_path / "artifacts"
    for i in range(n):
        with write_artifact(root, {"method": "blend"}, f"fp{i}") as builder:
            (builder.path / "x.bin").write_bytes(b"x" * (100 * (i + 1)))
            builder.metrics.update(METRICS)
            builder.extra.update({
                "domains": DOMAINS, "device": "cpu",
                "transfer": {"books": {"source": "video", "names": ["ridge", "itemknn"],
                                       "weights": [0.5, 1.0], "pop_weight": 0.1,
                                       "embedding_weight": 0.0}},
                "user_encoder": {"inductive": True, "method": "shared", "pooling": "mean"},
            })
    versions = list_versions(root)
    publish(root, versions[-1])
    return root, versions


def test_version_flag(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"recxfer {version('recxfer')}"


def test_info_root_lists_versions_current_metrics_and_sizes(tmp_path: Path, capsys) -> None:
    root, versions = _root(tmp_path)
    assert main(["info", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"3 version(s), current {versions[-1]}" in out
    assert f"* {versions[-1]}" in out and f"  {versions[0]}" in out
    assert "cold_start/books/model/recall@50 0.5000" in out and "popularity" not in out

    assert main(["info", str(root), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["current"] == versions[-1]
    assert [v["version"] for v in info["versions"]] == versions
    assert [v["current"] for v in info["versions"]] == [False, False, True]
    sizes = [v["disk_bytes"] for v in info["versions"]]
    assert sizes[0] < sizes[1] < sizes[2]  # 100, 200, 300 bytes of data + the manifest
    assert info["versions"][0]["metrics"] == {"cold_start/books/model/recall@10": 0.25,
                                              "cold_start/books/model/recall@50": 0.5}
    assert info["versions"][0]["method"] == "blend"


def test_info_artifact_shows_domains_transfers_and_metrics(tmp_path: Path, capsys) -> None:
    root, versions = _root(tmp_path)
    assert main(["info", str(root / "current"), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == versions[-1] and info["current"] is True
    assert info["domains"]["books"] == {"role": "target", "users": 3, "items": 20, "dim": 8,
                                        "index": "Flat", "index_recall": None,
                                        "transfer_from": "video"}
    assert info["transfers"]["books"]["names"] == ["ridge", "itemknn"]
    assert info["metrics"] == METRICS and info["files"] == 1
    assert main(["info", str(root / versions[0])]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"artifact {versions[0]}:" in out and "(current)" not in out
    assert "video (source): 4 users, 12 items, dim 8, index Flat (recall@10 1.0)" in out
    assert "books (target): 3 users, 20 items, dim 8, index Flat, transfer from video" in out
    assert "transfer video -> books: ridge 0.5, itemknn 1" in out
    assert "cold_start/books/popularity/recall@10 0.1000" in out


def test_info_verify_reports_a_corrupt_version(tmp_path: Path, capsys) -> None:
    root, versions = _root(tmp_path, n=2)
    assert main(["info", str(root), "--verify"]) == EXIT_OK
    assert "verified ok" in capsys.readouterr().out
    (root / versions[0] / "x.bin").write_bytes(b"y" * 100)
    assert main(["info", str(root), "--verify", "--json"]) == EXIT_BAD_INPUT
    info = json.loads(capsys.readouterr().out)
    assert info["versions"][0]["verified"].startswith("failed:") and "sha256" in info["versions"][0]["verified"]
    assert info["versions"][1]["verified"] == "ok"


def test_info_of_a_missing_path_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["info", str(tmp_path / "nothing")]) == EXIT_BAD_INPUT
    assert "no such folder" in capsys.readouterr().err


def test_rollback_twice_steps_back_two_versions_then_forward_with_to(tmp_path: Path, capsys) -> None:
    root, (v1, v2, v3) = _root(tmp_path)
    assert main(["rollback", "--artifacts", str(root)]) == EXIT_OK
    assert current_version(root) == v2
    assert main(["rollback", "--artifacts", str(root)]) == EXIT_OK
    assert current_version(root) == v1
    capsys.readouterr()
    assert main(["rollback", "--artifacts", str(root)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no version older" in err and f"--to {v3}" in err  # says how to move forward
    assert current_version(root) == v1
    assert main(["rollback", "--artifacts", str(root), "--to", v3]) == EXIT_OK
    assert current_version(root) == v3


@pytest.mark.parametrize("argv", [["--log-format", "json", "info"], ["info", "--log-format", "json"],
                                  ["-v", "info"], ["info", "-v"]])
def test_log_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_format == "json") == ("json" in argv)
    assert args.verbose == ("-v" in argv)


def test_log_format_after_serve(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--artifacts", str(tmp_path), "--log-format", "json"])
    assert args.log_format == "json"


def test_threads_flag_on_every_command_that_trains_or_evaluates() -> None:
    parser = build_parser()
    for argv in (["train", "--data", "d"], ["evaluate", "--data", "d"], ["run", "--data", "d"],
                 ["nightly", "--data", "d", "--artifacts", "a"],
                 ["bench-cdr", "--format", "cdrib", "--source", "s", "--target", "t"]):
        assert parser.parse_args([*argv, "--threads", "1"]).threads == 1
        assert parser.parse_args(argv).threads is None


def test_bench_cdr_default_output_is_under_results() -> None:
    from recxfer.cli import _bench_cdr_default_out

    args = build_parser().parse_args(["bench-cdr", "--format", "cdrib", "--source", "x/sport_cloth",
                                      "--target", "x/cloth_sport", "--seed", "2"])
    assert args.out is None
    assert _bench_cdr_default_out(args) == Path("results/bench-cdr/sport_cloth-cloth_sport-blend-seed2.json")
    assert "/results/" in (REPO / ".gitignore").read_text().split()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_query_an_unreachable_server_exits_unavailable(capsys) -> None:
    code = main(["query", "--address", f"127.0.0.1:{_free_port()}", "--user", "u", "--domain", "books",
                 "--timeout", "2"])
    assert code == EXIT_UNAVAILABLE != EXIT_BAD_INPUT
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_client_path_imports_neither_torch_nor_faiss() -> None:
    code = ("import recxfer.cli, recxfer.serve.client, sys; "
            "from recxfer.cli import build_parser; build_parser(); "
            "bad = [m for m in ('torch', 'faiss', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_query_unreachable_in_a_process_loads_no_torch() -> None:
    code = ("import sys; from recxfer.cli import main; "
            f"rc = main(['query', '--address', '127.0.0.1:{_free_port()}', '--user', 'u', "
            "'--domain', 'books', '--timeout', '2']); "
            "assert 'torch' not in sys.modules and 'faiss' not in sys.modules; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, capture_output=True, text=True)
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "recxfer", "info", str(root), "--json"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes (`... | head` done)
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == EXIT_BROKEN_PIPE


def test_run_checks_the_address_before_training(tmp_path: Path, capsys) -> None:
    root = tmp_path / "artifacts"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["run", "--data", str(SAMPLES), "--artifacts", str(root),
                     "--address", f"127.0.0.1:{port}"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"--address 127.0.0.1:{port}: cannot bind" in err
    assert not root.exists()  # nothing trained, nothing written


def test_run_checks_the_artifacts_root_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["run", "--data", str(SAMPLES), "--artifacts", str(tmp_path / "file" / "artifacts"),
                 "--address", "127.0.0.1:0"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--artifacts" in err and "not writable" in err
