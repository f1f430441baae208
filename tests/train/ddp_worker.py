"""One rank of ``test_distributed.py``: started with torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

Usage: ``torchrun --nproc_per_node=2 tests/train/ddp_worker.py OUT_DIR DATA_DIR``.

Trains the shared model with DDP on tiny synthetic data (rank 0 validates with
scripted scores and checkpoints), runs again from rank 0's checkpoint, and saves
what the test checks to ``OUT_DIR/rank<R>.pt``. (``DATA_DIR`` is accepted and
unused: the commands under torchrun are tested in ``test_ddp_artifact.py``.)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate  # noqa: E402
from recxfer.losses.alignment import AlignmentConfig  # noqa: E402
from recxfer.train.checkpoint import Checkpointer  # noqa: E402
from recxfer.train.distributed import cleanup, init_distributed  # noqa: E402
from recxfer.train.histories import build_multi_domain_index  # noqa: E402
from recxfer.train.shared import SharedTrainConfig, train_shared  # noqa: E402
from recxfer.transfer.shared import SharedModelConfig  # noqa: E402

SOURCE, TARGET = "video", "books"
SCORES = [1.0, 3.0, 2.0, 0.0]  # best epoch 1; patience 1 stops after epoch 2
BATCH = 96  # 22 video + 9 books batches: an odd schedule, so one step is padded
CONFIG = SharedTrainConfig(
    model=SharedModelConfig(dim=8), epochs=4, batch_size=BATCH, lr=2e-2, patience=1,
    # adversarial: the domain classifier only runs on target steps (unused-param path)
    alignment=AlignmentConfig(mmd=0.5, adversarial=0.5, adversarial_hidden=8), align_batch=32,
    device="cpu",
)


def tiny_index():
    interactions, _ = generate(SyntheticConfig(
        n_users=200,
        domains=(DomainSpec(SOURCE, 60, 1.0, 10.0), DomainSpec(TARGET, 40, 0.7, 5.0)),
        seed=3,
    ))
    return build_multi_domain_index(interactions, (SOURCE, TARGET), max_history=20)


def main(out: Path, data: Path) -> None:
    info = init_distributed("cpu")
    index = tiny_index()
    snapshots: list[dict] = []

    def validate(model) -> float:
        snapshots.append(copy.deepcopy(model.state_dict()))
        return SCORES[len(snapshots) - 1]

    # Every rank passes a checkpointer; only rank 0's folder may be written.
    ckpt = Checkpointer(out / f"ckpt-rank{info.rank}", {"test": "ddp"})
    result = train_shared(index, SOURCE, (TARGET,), CONFIG,
                          validate if info.is_main else None, None, ckpt)
    # Rank 0's checkpoint (early-stopped) is broadcast: nothing left to train, and
    # every rank restores the same best weights, rank 1 without a checkpoint of its own.
    again = train_shared(index, SOURCE, (TARGET,), CONFIG, None, None, ckpt)
    torch.save({
        "rank": result.rank, "world_size": result.world_size, "backend": info.backend,
        "losses": result.epoch_losses, "val_scores": result.val_scores,
        "best_epoch": result.best_epoch, "steps": result.steps,
        "state": result.model.state_dict(),
        "snapshots": snapshots,
        "again": {"resumed_from": again.resumed_from, "steps": again.steps,
                  "state": again.model.state_dict(), "val_scores": again.val_scores},
        "schedule_len": sum(-(-len(index.rows[d][0]) // BATCH) for d in index.domains),
    }, out / f"rank{info.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
