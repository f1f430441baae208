"""Training throughput of the flagship (shared) model on the CDRIB clothing/sports
pair, beside the MF two-tower peer (the per-domain model of EMCDR) in the same
invocation, so the ratio holds on a noisy machine.

    python bench/train.py --data ../shared/data/cdrib --epochs 3 --out bench/results/train_cpu.json

Writes interactions (rows of both domains) per second for every epoch, seconds per
epoch, and the shared/MF ratio; on a CUDA host it runs on the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from recxfer.data.benchmarks import load_task
from recxfer.data.dataset import domain_matrix
from recxfer.train.device import resolve_device
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.mf import MFConfig, train_mf
from recxfer.train.shared import SharedTrainConfig, train_shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cdrib"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    task = load_task("cdrib", args.data / "sport_cloth", args.data / "cloth_sport")
    rows = len(task.train)

    config = SharedTrainConfig(epochs=args.epochs, device=device.type)
    start = time.perf_counter()
    index = build_multi_domain_index(task.train, (task.source, task.target), config.max_history)
    index_s = time.perf_counter() - start
    shared = train_shared(index, task.source, (task.target,), config)

    mf_seconds = [0.0] * args.epochs
    mf_config = MFConfig(dim=64, epochs=1, batch_size=1024, lr=0.01)
    for epoch in range(args.epochs):  # one epoch at a time to time each
        for domain in (task.source, task.target):
            matrix = domain_matrix(task.train, domain)
            start = time.perf_counter()
            train_mf(matrix, mf_config, device)
            mf_seconds[epoch] += time.perf_counter() - start

    best_shared, best_mf = min(shared.seconds_per_epoch), min(mf_seconds)
    result = {
        "data": "cdrib sports+clothing (source sport_cloth/train.txt + target cloth_sport/train.txt)",
        "interactions_per_epoch": rows,
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "shared": {
            "config": {"dim": config.model.dim, "batch_size": config.batch_size,
                       "max_history": config.max_history},
            "index_build_s": index_s,
            "seconds_per_epoch": shared.seconds_per_epoch,
            "interactions_per_s": [rows / s for s in shared.seconds_per_epoch],
            "best_epoch_s": best_shared,
        },
        "mf_two_tower_peer": {
            "seconds_per_epoch": mf_seconds,
            "interactions_per_s": [rows / s for s in mf_seconds],
            "best_epoch_s": best_mf,
        },
        "shared_over_mf_epoch_time": best_shared / best_mf,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "torch_threads", "shared_over_mf_epoch_time")}
                     | {"shared_best_epoch_s": best_shared, "mf_best_epoch_s": best_mf}))


if __name__ == "__main__":
    main()
