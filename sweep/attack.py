"""``python -m sweep.attack`` (and the ``seatbelt-attack`` script): the command lives in ``sweep.cli.attack``."""

import sys

from sweep.cli.attack import main

if __name__ == "__main__":
    sys.exit(main())
