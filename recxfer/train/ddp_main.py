"""Train the shared model on a data folder with DistributedDataParallel.

    torchrun --nproc_per_node=2 -m recxfer.train.ddp_main --data data_samples --out runs/ddp

One process per device (``--nproc_per_node`` GPUs, or CPU processes with gloo);
multi-node: ``torchrun --nnodes=N --node_rank=R --rdzv_endpoint=HOST:PORT ...``.
Without torchrun (``python -m recxfer.train.ddp_main ...``) it trains in one
process. Every rank reads the data folder and builds the same index; rank 0
writes, into ``--out``:

* ``user_emb.npy`` ``(n_users, dim)`` float32 (all history, all domains), rows in
  the order of ``user_ids.txt``;
* ``item_emb_<domain>.npy`` ``(n_items, dim)`` float32 per domain, rows in the
  order of ``item_ids_<domain>.txt``;
* ``train.json`` (written last): epoch losses, seconds, world size, backend,
  device, the config, and the schedule steps each rank ran per epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recxfer.data.dataset import load_data_dir
from recxfer.train.checkpoint import Checkpointer
from recxfer.train.distributed import cleanup, gather_objects, init_distributed
from recxfer.train.histories import build_multi_domain_index
from recxfer.train.shared import SharedTrainConfig, train_shared
from recxfer.train.shared_domains import export_user_embeddings
from recxfer.transfer.shared import SharedModelConfig

log = logging.getLogger("recxfer.train.ddp_main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recxfer.train.ddp_main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data folder (interactions.*, see README)")
    p.add_argument("--out", required=True, help="output folder (rank 0 writes it)")
    p.add_argument("--source", default="video")
    p.add_argument("--targets", default="books,music", help="comma-separated target domains")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-history", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--checkpoint-dir", help="per-epoch checkpoints (rank 0 reads/writes)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    try:
        targets = tuple(t for t in args.targets.split(",") if t)
        domains = (args.source, *targets)
        data = load_data_dir(args.data, domains)
        config = SharedTrainConfig(
            model=SharedModelConfig(dim=args.dim), epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, max_history=args.max_history, seed=args.seed,
            device=info.device.type, amp=not args.no_amp,
        )
        index = build_multi_domain_index(data.interactions, domains, config.max_history, config.seed)
        checkpointer = None
        if args.checkpoint_dir:
            meta = {"config": repr(config), "users": len(index.users),
                    "items": index.n_items_total, "domains": list(domains)}
            checkpointer = Checkpointer(Path(args.checkpoint_dir), meta)
        log.info("rank %d/%d on %s (%s): %d users, %d items", info.rank, info.world_size,
                 info.device, info.backend or "single process", len(index.users),
                 index.n_items_total)
        start = time.perf_counter()
        result = train_shared(index, args.source, targets, config, checkpointer=checkpointer)
        train_seconds = time.perf_counter() - start
        steps_by_rank = gather_objects(result.steps)
        if info.is_main:
            _write_outputs(Path(args.out), index, result, config, info, steps_by_rank,
                           train_seconds)
    finally:
        cleanup()
    return 0


def _write_outputs(out, index, result, config, info, steps_by_rank, train_seconds) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = result.model
    np.save(out / "user_emb.npy", export_user_embeddings(model, index))  # CSR, chunked
    (out / "user_ids.txt").write_text("\n".join(map(str, index.users.ids)) + "\n")
    for domain in index.domains:
        sl = index.domain_slice(domain)
        np.save(out / f"item_emb_{domain}.npy", model.export_items(sl.start, sl.stop))
        (out / f"item_ids_{domain}.txt").write_text(
            "\n".join(map(str, index.items[domain].ids)) + "\n")
    report = {
        "epoch_losses": result.epoch_losses,
        "seconds_per_epoch": result.seconds_per_epoch,
        "train_seconds": train_seconds,
        "best_epoch": result.best_epoch,
        "resumed_from": result.resumed_from,
        "world_size": info.world_size,
        "backend": info.backend,
        "device": str(info.device),
        "domains": list(index.domains),
        "n_users": len(index.users),
        "n_items": index.n_items_total,
        "config": dataclasses.asdict(config),
        "steps_by_rank": steps_by_rank,
    }
    tmp = out / f".train.json.{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "train.json")
    log.info("wrote %s (losses %s)", out, ", ".join(f"{x:.4f}" for x in result.epoch_losses))


if __name__ == "__main__":
    sys.exit(main())
