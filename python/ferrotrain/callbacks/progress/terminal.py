"""The terminal writer of the progress bars: one bar's state and its output, redrawn in place on
a terminal (carriage return; bars below the first sit on their own lines) or printed as whole
lines when the stream is a file. It never decides when to draw; the callbacks do."""

import math
import shutil
import sys
from typing import Any, Optional, TextIO, Union

from ferrotrain.callbacks.progress import clock
from ferrotrain.callbacks.progress.formatting import format_meter

NEVER = sys.maxsize  # a "next batch to look at" that is never reached: the bar is off
REDRAW_INTERVAL_S = 0.1  # terminal: at most 10 redraws a second
LINE_INTERVAL_S = 30.0  # not a terminal: at least one line every 30 s while a bar runs
LINE_EVERY_FRACTION = 0.1  # not a terminal: a line at every 10% of the total...
LINE_MIN_INTERVAL_S = 1.0  # ... at most one a second


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Bar:
    """One bar's state and its output."""

    __slots__ = (
        "desc", "total", "n", "file", "tty", "unicode", "position", "leave", "start", "due", "milestone",
        "quiet_until", "_last_len", "postfix", "mark_n", "mark_t", "disable",
    )

    def __init__(self, desc: str, file: TextIO, position: int, leave: bool, disable: bool = False) -> None:
        # A disabled bar (tqdm's `disable`) keeps its totals and counts and writes nothing.
        self.disable = disable
        self.desc = desc
        self.file = file
        self.tty = _is_tty(file)
        encoding = (getattr(file, "encoding", None) or "").lower().replace("-", "")
        self.unicode = self.tty and encoding.startswith("utf")
        self.position = position
        self.leave = leave
        self.total: Optional[Union[int, float]] = None
        self.n = 0
        self.start = clock.monotonic()
        self.due = 0.0
        self.milestone: float = NEVER
        self.quiet_until = 0.0  # not a terminal: no 10% line before this time
        self._last_len = 0
        self.postfix = ""
        # The batch number and clock at the last stop: the recent pace, which places the next stop.
        self.mark_n = 0
        self.mark_t = self.start

    def reset(self, total: Optional[Union[int, float]], desc: Optional[str] = None) -> None:
        if desc is not None:
            self.desc = desc
        if total is not None and (math.isinf(total) or math.isnan(total)):
            total = None
        self.total = total
        self.n = 0
        self.start = clock.monotonic()
        self.quiet_until = self.start + LINE_MIN_INTERVAL_S
        self.mark_n, self.mark_t = 0, self.start
        # A terminal bar shows at the first stop; log lines wait for 10% or 30 s. Bars that vanish
        # when done (sanity check, validation inside fit) print no 10% lines.
        self.due = self.start if self.tty else self.start + LINE_INTERVAL_S
        every = max(1, math.ceil(total * LINE_EVERY_FRACTION)) if total else 0
        self.milestone = every if every and self.leave else NEVER

    @property
    def force(self) -> float:
        """The batch number at which the bar must be looked at whatever the clock says: the last
        batch, or (log lines) the next 10% milestone."""
        last = self.total if self.total is not None else NEVER
        return last if self.tty else min(last, self.milestone)

    def text(self) -> str:
        ncols = shutil.get_terminal_size((100, 20)).columns if self.tty else None
        return format_meter(
            self.desc, self.n, self.total, clock.monotonic() - self.start, self.postfix, ncols, self.unicode
        )

    def draw(self) -> None:
        """Terminal: redraw in place. Otherwise: print one line."""
        if self.disable:
            return
        if self.tty:
            self._write_in_place(self.text())
        else:
            self.file.write(self.text() + "\n")
            self.file.flush()

    def clear(self) -> None:
        if self.tty and self._last_len:
            self._write_in_place("")
            self._last_len = 0

    def close(self) -> None:
        """Leave the final line (`leave`) or wipe it."""
        if self.disable:
            return
        if self.tty:
            if self.leave:
                self._write_in_place(self.text())
                if self.position == 0:
                    self.file.write("\n")
                    self.file.flush()
            else:
                self.clear()
        elif self.leave:
            self.draw()

    def _write_in_place(self, line: str) -> None:
        padded = line + " " * max(0, self._last_len - len(line))
        self._last_len = len(line)
        down = "\n" * self.position
        up = "\x1b[A" * self.position
        self.file.write(f"{down}\r{padded}{up}\r" if self.position else f"\r{padded}")
        self.file.flush()
