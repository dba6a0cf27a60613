"""Progress lines for long stages: done / total, rate and ETA, printed at most every few seconds."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stage: str, total: int, already_done: int = 0, unit: str = "items"):
        self.stage, self.total, self.already_done, self.unit = stage, total, already_done, unit
        self.started = time.monotonic()

    def update(self, done: int, extra: str = "", final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        new = done - self.already_done
        line = f"{self.stage}: {done}/{self.total} {self.unit}"
        if extra:
            line += f", {extra}"
        if new > 0 and done < self.total:
            eta = elapsed / new * (self.total - done)
            line += f", ETA {_duration(eta)}"
        line += f" [{_duration(elapsed)}]"
        print(line, file=sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
