"""A shared-model run that crashes after an epoch resumes from its checkpoint and
ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recxfer.data.split import cold_start_split
from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.shared import SharedTrainConfig, train_shared
from recxfer.transfer.shared import SharedModelConfig


class Crash(RuntimeError):
    pass


def _index():
    interactions, _ = generate(SyntheticConfig(
        n_users=150, seed=3,
        domains=(DomainSpec("video", 50, 1.0, 10.0), DomainSpec("books", 30, 0.7, 5.0)),
    ))
    split = cold_start_split(interactions, "video", ["books"], 0.2, 0.5, seed=0)
    return build_multi_domain_index(split.train, ("video", "books"), 10, 0)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    index = _index()
    config = SharedTrainConfig(model=SharedModelConfig(dim=8), epochs=4, batch_size=64,
                               patience=10, max_history=10)
    scores = iter([0.1, 0.2, 0.3, 0.4])
    full = train_shared(index, "video", ("books",), config, lambda m: next(scores))

    calls = {"n": 0}

    def crashing(model) -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash("killed during epoch 2's validation")
        return [0.1, 0.2][calls["n"] - 1]

    checkpointer = Checkpointer(tmp_path / "ckpt", {"test": 1})
    with pytest.raises(Crash):
        train_shared(index, "video", ("books",), config, crashing, checkpointer=checkpointer)
    assert checkpointer.epochs()[-1] == 2

    rest = iter([0.3, 0.4])
    resumed = train_shared(index, "video", ("books",), config, lambda m: next(rest),
                           checkpointer=checkpointer)
    assert resumed.resumed_from == 2
    assert resumed.epoch_losses == full.epoch_losses
    assert resumed.best_epoch == full.best_epoch == 3
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
