"""Checkpointer: atomic per-epoch files, exact resume, and warm-start initialisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recxfer.data import domain_matrix
from recxfer.train import Checkpointer, CrossDomainConfig, MFConfig, MFInit, train_cross_domain, train_mf
from recxfer.transfer.emcdr import EMCDRConfig


def _linear_step(model: nn.Module, optim: torch.optim.Optimizer) -> None:
    optim.zero_grad()
    model(torch.randn(4, 3)).sum().backward()
    optim.step()


def test_round_trip_restores_model_optimizer_and_rng(tmp_path: Path) -> None:
    """Any loop with a module and an optimizer can use it (here a plain Linear)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optim = torch.optim.Adam(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(5)
    _linear_step(model, optim)
    ckpt = Checkpointer(tmp_path / "loop", meta={"kind": "linear"})
    path = ckpt.save(1, model, optim, {"losses": [0.5], "note": "x"}, {"g": generator})
    assert path.name == "epoch-0001.pt" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    expected_next = torch.rand(3, generator=generator)
    expected_global = torch.rand(2)

    fresh = nn.Linear(3, 2)
    fresh_optim = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh_gen = torch.Generator().manual_seed(99)
    found = Checkpointer(tmp_path / "loop", meta={"kind": "linear"}).load_latest()
    assert found is not None and found.epoch == 1 and found.extra == {"losses": [0.5], "note": "x"}
    assert found.restore(fresh, fresh_optim, {"g": fresh_gen}) == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    assert fresh_optim.state_dict()["state"][0]["step"] == optim.state_dict()["state"][0]["step"]
    torch.testing.assert_close(torch.rand(3, generator=fresh_gen), expected_next, rtol=0, atol=0)
    torch.testing.assert_close(torch.rand(2), expected_global, rtol=0, atol=0)


def test_keeps_the_newest_and_skips_foreign_or_corrupt_files(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, meta={"a": 1}, keep=2)
    assert ckpt.load_latest() is None
    for epoch in (1, 2, 3):
        ckpt.save(epoch, model)
    assert ckpt.epochs() == [2, 3]
    ckpt.path_of(3).write_bytes(b"not a checkpoint")  # e.g. a disk error
    found = ckpt.load_latest()
    assert found is not None and found.epoch == 2
    assert Checkpointer(tmp_path, meta={"a": 2}).load_latest() is None  # another run's files
    ckpt.clear()
    assert ckpt.epochs() == []
    with pytest.raises(ValueError):
        Checkpointer(tmp_path, keep=0)


class _DiesAfter(Checkpointer):
    """Saves like a Checkpointer, then 'crashes' right after epoch ``die_at``."""

    def __init__(self, directory: Path, meta: dict, die_at: int) -> None:
        super().__init__(directory, meta)
        self.die_at = die_at

    def save(self, epoch, model, optim=None, extra=None, generators=None) -> Path:  # type: ignore[override]
        path = super().save(epoch, model, optim, extra, generators)
        if epoch == self.die_at:
            raise KeyboardInterrupt("simulated kill")
        return path


@pytest.mark.parametrize("loss", ["softmax", "bpr"])
def test_resumed_training_is_bit_identical(tmp_path: Path, loss: str, block_data) -> None:
    matrix = domain_matrix(block_data(40, 20, per_user=5), "d")
    config = MFConfig(dim=4, epochs=5, batch_size=16, lr=0.05, loss=loss)
    plain = train_mf(matrix, config, torch.device("cpu"))
    meta = {"run": 1}
    with pytest.raises(KeyboardInterrupt):
        train_mf(matrix, config, torch.device("cpu"), checkpointer=_DiesAfter(tmp_path, meta, 3))
    resumed = train_mf(matrix, config, torch.device("cpu"), checkpointer=Checkpointer(tmp_path, meta))
    assert resumed.resumed_from == 3 and plain.resumed_from == 0
    np.testing.assert_array_equal(resumed.user_emb, plain.user_emb)
    np.testing.assert_array_equal(resumed.item_emb, plain.item_emb)
    assert resumed.epoch_losses == plain.epoch_losses and len(resumed.epoch_losses) == 5
    # A finished run resumes at its last epoch: nothing left to train, same result.
    again = train_mf(matrix, config, torch.device("cpu"), checkpointer=Checkpointer(tmp_path, meta))
    assert again.resumed_from == 5
    np.testing.assert_array_equal(again.user_emb, plain.user_emb)


def test_warm_start_copies_known_rows_and_keeps_new_ones_fresh(block_data) -> None:
    matrix = domain_matrix(block_data(40, 20, per_user=5), "d")
    dim = 4
    prior_users = np.array(["u3", "u1", "ghost"], dtype=object)
    prior_user_emb = np.arange(3 * dim, dtype=np.float32).reshape(3, dim)
    prior_items = np.array(["i0"], dtype=object)
    prior_item_emb = np.full((1, dim), 7.0, dtype=np.float32)
    init = MFInit.from_ids(
        matrix.users.ids, matrix.items.ids, prior_users, prior_user_emb, prior_items, prior_item_emb
    )
    assert init.user_mask.sum() == 2 and init.item_mask.sum() == 1
    config = MFConfig(dim=dim, epochs=1, batch_size=16, lr=0.0)  # lr 0: rows stay as initialised
    plain = train_mf(matrix, config, torch.device("cpu"))
    warm = train_mf(matrix, config, torch.device("cpu"), init=init)
    assert warm.warm_rows == (2, 1)
    u1, u3, u0 = matrix.users.lookup(["u1", "u3", "u0"])
    np.testing.assert_array_equal(warm.user_emb[u1], prior_user_emb[1])
    np.testing.assert_array_equal(warm.user_emb[u3], prior_user_emb[0])
    np.testing.assert_array_equal(warm.item_emb[matrix.items.lookup(["i0"])[0]], prior_item_emb[0])
    np.testing.assert_array_equal(warm.user_emb[u0], plain.user_emb[u0])  # new rows: fresh init
    with pytest.raises(ValueError, match="warm-start shapes"):
        train_mf(matrix, MFConfig(dim=8, epochs=1), torch.device("cpu"), init=init)


def _two_domains(block_data) -> pd.DataFrame:
    src = block_data(40, 20, per_user=5, seed=1).assign(domain="src")
    tgt = block_data(30, 10, per_user=5, seed=2).assign(domain="tgt")
    return pd.concat([src, tgt], ignore_index=True)


def test_cross_domain_checkpoints_per_domain_and_warm_starts(tmp_path: Path, block_data) -> None:
    config = CrossDomainConfig(
        source="src", targets=("tgt",), mf=MFConfig(dim=4, epochs=2, batch_size=32),
        emcdr=EMCDRConfig(hidden=8, epochs=5), device="cpu",
    )
    data = _two_domains(block_data)
    plain = train_cross_domain(data, config)
    ckpt = train_cross_domain(data, config, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mf-src", "mf-tgt"]
    for domain in ("src", "tgt"):
        np.testing.assert_array_equal(ckpt.domains[domain].user_emb, plain.domains[domain].user_emb)
    resumed = train_cross_domain(data, config, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == {"src": 2, "tgt": 2}
    np.testing.assert_array_equal(resumed.domains["tgt"].user_emb, plain.domains["tgt"].user_emb)
    warm = train_cross_domain(data, config, init=plain.domains)
    assert warm.warm_rows["src"] == (40, 20) and warm.resumed_from == {"src": 0, "tgt": 0}
