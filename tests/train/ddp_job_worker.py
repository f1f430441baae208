"""One rank of ``test_ddp_artifact.py``'s failure test, started with torchrun's
environment variables: ``python tests/train/ddp_job_worker.py fail-in-run``.

``run_job`` with a job whose training run (``collective_call(train_shared, ...)``)
fails on rank 0, in its validator, while rank 1 waits inside the run for rank 0's
score; rank 0 swallows the error and returns 7 (as ``nightly_main`` maps errors
to exit codes). Exit code: rank 0's 7, rank 1's ``Followed.exit_code``.
"""

from __future__ import annotations

import logging
import sys

import torch

torch.set_num_threads(1)

from recxfer.data.synthetic import DomainSpec, SyntheticConfig, generate  # noqa: E402
from recxfer.train.distributed import Followed, collective_call, run_job  # noqa: E402
from recxfer.train.histories import build_multi_domain_index  # noqa: E402
from recxfer.train.shared import SharedTrainConfig, train_shared  # noqa: E402
from recxfer.transfer.shared import SharedModelConfig  # noqa: E402


def job() -> int:
    interactions, _ = generate(SyntheticConfig(
        n_users=100, seed=3, domains=(DomainSpec("video", 30, 1.0, 5.0), DomainSpec("books", 20, 0.7, 4.0)),
    ))
    index = build_multi_domain_index(interactions, ("video", "books"), max_history=10)
    config = SharedTrainConfig(model=SharedModelConfig(dim=4), epochs=2, batch_size=64, device="cpu")

    def validate(model) -> float:
        raise RuntimeError("validation failed on rank 0")

    try:
        collective_call(train_shared, index, "video", ("books",), config, rank0_only={"validate": validate})
    except RuntimeError:
        logging.getLogger("worker").exception("the training run failed; going on")
        return 7
    return 0


def main(mode: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if mode != "fail-in-run":
        raise SystemExit(f"unknown mode {mode!r}")
    out = run_job(job, "cpu")
    return out.exit_code if isinstance(out, Followed) else out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
