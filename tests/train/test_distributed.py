"""Distributed data-parallel training of the shared model (recxfer/train/distributed.py,
recxfer/train/shared.py) on CPU with gloo.

One launch, ``torchrun --nproc_per_node=2 tests/train/ddp_worker.py`` (two real
processes, gloo, one thread each), checked from its saved results:

* ``train_shared``: identical weights on both ranks, a falling loss, disjoint
  halves of every epoch's schedule, rank 0's validation deciding early stopping
  and the restored best epoch everywhere, checkpoints written (and read) by rank 0
  only.

The commands under torchrun (``torchrun -m recxfer train``, ``nightly``; and the
``recxfer.train.ddp_main`` alias) are tested in ``test_ddp_artifact.py``.

In process: a one-process gloo group runs the DDP code path and must give exactly
the single-process result; the schedule padding; the launcher's environment checks.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.losses.alignment import AlignmentConfig
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_floats,
    broadcast_object,
    gather_objects,
    init_distributed,
    rank_and_world,
)
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.shared import SharedTrainConfig, pad_schedule, train_shared
from recxfer.transfer.shared import SharedModelConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TIMEOUT = 120  # seconds per launch; a hang (mismatched collectives) fails instead of blocking


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT), **extra)
    return env


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------- two processes
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-data")
    interactions, items = generate(SyntheticConfig(
        n_users=200,
        domains=(DomainSpec("video", 60, 1.0, 10.0), DomainSpec("books", 40, 0.7, 5.0)),
        seed=3,
    ))
    interactions.to_csv(folder / "interactions.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return folder


def _launch(out: Path, data: Path) -> None:
    """``torchrun --nproc_per_node=2 ddp_worker.py`` (or, without torchrun, the two
    processes it would start, with its environment variables)."""
    port = str(free_port())
    args = [str(HERE / "ddp_worker.py"), str(out), str(data)]
    torchrun = Path(sys.executable).with_name("torchrun")
    if torchrun.exists():
        cmds = [([str(torchrun), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                  f"--master_port={port}", *args], worker_env())]
    else:
        cmds = [([sys.executable, *args],
                 worker_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in range(2)]
    procs = [subprocess.Popen(cmd, env=env, cwd=out, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd, env in cmds]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, f"{proc.args} failed:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_data) -> tuple[dict, dict, Path]:
    """ddp_worker.py's ranks 0 and 1 of a gloo group: their saved results and folder."""
    out = tmp_path_factory.mktemp("ddp")
    _launch(out, tiny_data)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ranks[0], ranks[1], out


def test_both_ranks_end_with_identical_parameters(two_ranks) -> None:
    r0, r1, _ = two_ranks
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["backend"] == "gloo"
    assert_same_state(r0["state"], r1["state"])
    assert_same_state(r0["again"]["state"], r1["again"]["state"])


def test_loss_decreases_and_is_the_same_on_every_rank(two_ranks) -> None:
    r0, r1, _ = two_ranks
    assert r0["losses"] == r1["losses"]  # all-reduced over ranks
    assert len(r0["losses"]) == 3, r0["losses"]  # stopped early after epoch 2
    assert all(np.isfinite(r0["losses"]))
    assert r0["losses"][2] < r0["losses"][1] < r0["losses"][0], r0["losses"]


def test_each_rank_runs_a_disjoint_half_of_every_epoch(two_ranks) -> None:
    r0, r1, _ = two_ranks
    n = r0["schedule_len"]
    assert n % 2 == 1  # the data is chosen so that one step must be padded
    assert len(r0["steps"]) == len(r1["steps"]) == 3
    for s0, s1 in zip(r0["steps"], r1["steps"]):
        assert len(s0) == len(s1) == math.ceil(n / 2)  # same number of steps (collectives)
        assert len(set(s0)) == len(s0) and len(set(s1)) == len(s1)
        assert set(s0) | set(s1) == set(range(n))  # every batch of the epoch is run
        # disjoint but for the one padding step (rank 1's last = the epoch's first)
        assert set(s0) & set(s1) == {s1[-1]} and s1[-1] == s0[0]
    assert r0["steps"][0] != r0["steps"][1]  # a new shuffle every epoch


def test_rank_zero_validation_decides_early_stopping_and_the_best_epoch(two_ranks) -> None:
    r0, r1, _ = two_ranks
    assert len(r0["snapshots"]) == 3 and r1["snapshots"] == []  # only rank 0 validated
    assert r0["val_scores"] == r1["val_scores"] == [1.0, 3.0, 2.0]
    assert r0["best_epoch"] == r1["best_epoch"] == 1
    assert_same_state(r1["state"], r0["snapshots"][1])  # best epoch restored on rank 1 too
    with pytest.raises(AssertionError):
        assert_same_state(r1["state"], r0["snapshots"][2])


def test_checkpoints_are_written_and_read_by_rank_zero_only(two_ranks) -> None:
    r0, r1, out = two_ranks
    assert sorted(p.name for p in (out / "ckpt-rank0").iterdir()) == [
        "epoch-0002.pt", "epoch-0003.pt"]
    assert not (out / "ckpt-rank1").exists()
    # The second run found rank 0's early-stopped checkpoint on both ranks (resumed_from
    # is then the configured epoch count: nothing was left to run).
    for r in (r0, r1):
        assert r["again"]["resumed_from"] == 4 and r["again"]["steps"] == []
        assert r["again"]["val_scores"] == [1.0, 3.0, 2.0]
        assert_same_state(r["again"]["state"], r0["snapshots"][1])


# --------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def index():
    interactions, _ = generate(SyntheticConfig(
        n_users=150,
        domains=(DomainSpec("video", 50, 1.0, 10.0), DomainSpec("books", 30, 0.7, 5.0)),
        seed=1,
    ))
    return build_multi_domain_index(interactions, ("video", "books"), max_history=20)


class Scripted:
    def __init__(self, scores) -> None:
        self.scores, self.calls = list(scores), 0

    def __call__(self, model) -> float:
        self.calls += 1
        return self.scores[self.calls - 1]


def test_one_process_group_gives_exactly_the_single_process_result(index, tmp_path) -> None:
    config = SharedTrainConfig(
        model=SharedModelConfig(dim=8, pooling="attention"), epochs=3, batch_size=128, lr=1e-2,
        patience=1, alignment=AlignmentConfig(coral=0.5, adversarial=0.5, adversarial_hidden=8),
        align_batch=32, device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = train_shared(index, "video", ("books",), config, Scripted([1.0, 2.0, 0.0]), None,
                             Checkpointer(tmp_path / "plain", {"x": 1}))
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            assert rank_and_world() == (0, 1)
            ddp = train_shared(index, "video", ("books",), config, Scripted([1.0, 2.0, 0.0]),
                               None, Checkpointer(tmp_path / "ddp", {"x": 1}))
        finally:
            dist.destroy_process_group()
    finally:
        torch.set_num_threads(threads)
    assert [x.hex() for x in ddp.epoch_losses] == [x.hex() for x in plain.epoch_losses]
    assert ddp.val_scores == plain.val_scores and ddp.best_epoch == plain.best_epoch == 1
    assert ddp.steps == plain.steps
    assert_same_state(ddp.model.state_dict(), plain.model.state_dict())
    a = torch.load(tmp_path / "plain" / "epoch-0003.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / "epoch-0003.pt", weights_only=True)["model"]
    assert_same_state(a, b)


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("n, world", [(0, 2), (1, 1), (5, 1), (6, 2), (7, 2), (7, 3), (2, 4)])
def test_pad_schedule(n: int, world: int) -> None:
    order = list(np.random.default_rng(n).permutation(n))
    padded = pad_schedule(order, world)
    assert padded[:n] == order
    assert len(padded) == (math.ceil(n / world) * world if n else 0)
    shards = [padded[r::world] for r in range(world)]
    assert len({len(s) for s in shards}) <= 1  # every rank the same number of steps
    assert set().union(*map(set, shards)) == set(order)
    if world == 1:
        assert padded == order


def test_pad_schedule_rejects_a_bad_world_size() -> None:
    with pytest.raises(ValueError, match="world_size"):
        pad_schedule([0, 1], 0)


def test_init_without_torchrun_is_one_process(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu"), None)
    assert info.is_main and not info.initialized and not dist.is_initialized()
    # the collective helpers are identities without a group
    assert rank_and_world() == (0, 1)
    assert broadcast_floats([1.5, 2], info.device) == [1.5, 2.0]
    assert all_reduce_sum([3, 4.5], info.device) == [3.0, 4.5]
    assert broadcast_object({"a": 1}) == {"a": 1} and gather_objects(7) == [7]


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK=2"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "not an integer"),
])
def test_init_refuses_a_broken_environment(monkeypatch, env: dict, message: str) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        init_distributed("cpu")
    assert not dist.is_initialized()
