"""``python -m sweep.grid`` (and the ``seatbelt-sweep`` script): the command lives in ``sweep.cli.grid``."""

import sys

from sweep.cli.grid import main

if __name__ == "__main__":
    sys.exit(main())
