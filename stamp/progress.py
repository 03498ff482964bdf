"""A one-line terminal progress bar (demo and load test). Plain text when the output
is not a terminal, so logs of CI runs stay readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, *, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.tty = self.stream.isatty()
        self._last_plain = 0.0

    def update(self, done: int, counts: Mapping[str, int]) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last_plain < 2 and done < self.total:
            return
        self._last_plain = now
        filled = int(self.width * min(done, self.total) / self.total)
        bar = "█" * filled + "·" * (self.width - filled)
        figures = "  ".join(f"{name} {value}" for name, value in counts.items())
        line = f"[{bar}] {done}/{self.total}  {figures}  {now - self.started:5.1f}s"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
