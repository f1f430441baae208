"""``python -m recxfer ...``: the same as the ``recxfer`` command."""

import sys

from recxfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
