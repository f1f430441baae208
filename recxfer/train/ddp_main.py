"""Deprecated alias of ``recxfer train``, kept for old launch scripts.

    torchrun --nproc_per_node=2 -m recxfer.train.ddp_main --data DIR --artifacts ROOT [--config F]

is exactly ``torchrun --nproc_per_node=2 -m recxfer train --data DIR --artifacts
ROOT [--config F]``: the process replaces itself with ``python -m recxfer train``
and the same arguments (torchrun's environment and the process id are kept), so
it trains, evaluates, refits and publishes one verified artifact under
``ROOT/current``, rank 0 alone writing (see the README, *Distributed training*).

It used to write loose ``.npy``/``.txt`` files into ``--out`` that nothing else
read; those flags (``--out``, ``--epochs``, ``--dim``, ...) are refused with the
way to say the same thing (``--artifacts``, and a ``--config`` JSON such as
``{"shared": {"train": {"epochs": 5, "model": {"dim": 32}}}}``).

(It execs the command rather than importing it: the training package may not
import the CLI or the pipeline, see ARCHITECTURE.md.)
"""

from __future__ import annotations

import os
import sys

# flags of the old loose-file trainer -> what to use instead
OLD_FLAGS = {
    "--out": "--artifacts ROOT (the artifact is published as ROOT/current)",
    "--source": '--config: {"train": {"source": ...}}',
    "--targets": '--config: {"train": {"targets": [...]}}',
    "--epochs": '--config: {"shared": {"train": {"epochs": N}}}',
    "--dim": '--config: {"shared": {"train": {"model": {"dim": N}}}}',
    "--batch-size": '--config: {"shared": {"train": {"batch_size": N}}} (per process)',
    "--lr": '--config: {"shared": {"train": {"lr": X}}}',
    "--max-history": '--config: {"shared": {"train": {"max_history": N}}}',
    "--seed": '--config: {"shared": {"train": {"seed": N}}}',
    "--device": '--config: {"shared": {"train": {"device": "cpu" | "cuda"}}}',
    "--no-amp": '--config: {"shared": {"train": {"amp": false}}}',
    "--checkpoint-dir": "recxfer nightly (checkpoints under ROOT/.work)",
}
EXIT_BAD_INPUT = 2


def command(argv: list[str]) -> list[str]:
    """The command this alias runs: ``python -m recxfer train ARGV``."""
    return [sys.executable, "-m", "recxfer", "train", *argv]


def old_flags(argv: list[str]) -> list[str]:
    """The flags of the old trainer found in ``argv`` (``--out`` or ``--out=DIR``)."""
    return [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in OLD_FLAGS]


def main(argv: list[str] | None = None) -> int:
    """Exec ``python -m recxfer train ARGV`` (never returns), or exit 2 naming the
    replacement of an old flag."""
    argv = sys.argv[1:] if argv is None else list(argv)
    found = old_flags(argv)
    if found:
        print("error: recxfer.train.ddp_main is now an alias of `recxfer train`, which writes "
              "a verified artifact; instead of", file=sys.stderr)
        for flag in dict.fromkeys(found):
            print(f"  {flag}: use {OLD_FLAGS[flag]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cmd = command(argv)
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
