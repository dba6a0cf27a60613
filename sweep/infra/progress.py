"""Progress of a long stage: one updating tqdm bar on a terminal, plain lines otherwise.

On a terminal the bar redraws in place (counts, rate, ETA). In a log file or under
``ray job submit`` a redrawn bar would be hundreds of ``\\r``-joined copies, so there the same
text (tqdm's own formatting, without the bar) is printed as a line at most every
``LINE_SECONDS``, and once at the end.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_SECONDS = 60.0


class Progress:
    def __init__(self, stage: str, total: int, already_done: int = 0, unit: str = "item",
                 line_seconds: float = LINE_SECONDS):
        self.stage, self.total, self.already_done, self.unit = stage, total, already_done, unit
        self.done, self.postfix = already_done, ""
        self.line_seconds = line_seconds
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if sys.stdout.isatty():
            self.bar = tqdm(total=total, initial=already_done, desc=stage, unit=unit,
                            file=sys.stdout, dynamic_ncols=True, smoothing=0.1)

    def update(self, done: int, postfix: str = "") -> None:
        """``done`` of ``total`` (not an increment), and what else to say (e.g. running trials)."""
        self.postfix = postfix
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(done - self.bar.n)  # redraws at most every 0.1 s
        elif time.monotonic() - self.last_line >= self.line_seconds:
            self._line(done)
        self.done = done

    def note(self, text: str) -> None:
        """A line of its own, above the bar (which is redrawn below it)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """The stage ended: leave the bar (or print the last line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        else:
            self._line(self.done)

    def line(self, done: int) -> str:
        return tqdm.format_meter(done, self.total, time.monotonic() - self.started, ncols=0,
                                 prefix=self.stage, unit=self.unit, initial=self.already_done,
                                 postfix=self.postfix or None)

    def _line(self, done: int) -> None:
        self.last_line = time.monotonic()
        print(self.line(done), file=sys.stdout, flush=True)
