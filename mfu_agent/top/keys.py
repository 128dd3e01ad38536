"""Single key presses from a terminal: cbreak mode (no echo, no line buffering; Ctrl-C still interrupts),
restored on exit. Where stdin is not a terminal no keys are read and waiting is plain sleeping."""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from types import TracebackType


class KeyReader:
    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved: list | None = None

    def __enter__(self) -> KeyReader:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # no stdin at all (closed, replaced)
            return self
        if os.isatty(fd):
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
            self.fd = fd
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.fd is not None and self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None

    def wait(self, seconds: float) -> str:
        """The next key pressed within `seconds` ("" if none). Escape sequences (arrows) come back as
        one string starting with ESC."""
        if self.fd is None:
            time.sleep(seconds)
            return ""
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if not ready:
            return ""
        data = os.read(self.fd, 32)
        if not data:  # the terminal went away: nothing more will come
            time.sleep(seconds)
            return ""
        return data.decode(errors="replace")
