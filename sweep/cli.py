"""What every sweep CLI does with the errors a user can cause: one line, no traceback."""

from __future__ import annotations

import sys
from typing import Callable

from models.errors import UserError


def run_cli(run: Callable[[], int]) -> int:
    """Run a command; a ``UserError`` prints as one line and exits 2, Ctrl-C exits 130 with
    the hint that the same command resumes."""
    try:
        return run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume where it stopped", file=sys.stderr)
        return 130
