"""The nightly retraining job, for schedulers: ``python -m jobs.nightly --data DIR
--artifacts ROOT [--config FILE] [--force]`` from the repository root (the same as
``recxfer nightly ...``).

Exit codes: 0 published, 1 internal error, 2 bad input (data or config), 3 gated
(not published, production kept), 4 another run holds the lock.
"""

from __future__ import annotations

import sys

from recxfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
