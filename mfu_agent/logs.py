"""The agent's log format, and logging a line that may repeat thousands of times a second (an XID
storm, a client hammering a socket) without flooding the log: the first line of each kind at once,
then one summary per kind and period, "XID 79 on GPU 0 (GPU-...): 9,999 more in the last 60 s".
Nothing is dropped silently: every line is either written or counted in a summary.

`configure_logging` gives every logger of the process one handler on stderr and one format: the agent's
and uvicorn's (which the server makes propagate to it) alike. `text` is a line per record; `json` is
one JSON object a line: {"time", "level", "logger", "message"}, with "exception" when there is one.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timezone

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (a test's capture of it, too)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str, log_format: str = "text") -> None:
    """The stderr handler of the root logger, in `log_format` ("text" or "json"), at `level`; it
    replaces one an earlier call added (the command run again in one process)."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python's warnings too, in the same format


PERIOD_SECONDS = 60.0
MAX_KINDS = 256  # kinds tracked at once; lines of further kinds are summarised together
_OVERFLOW = object()


@dataclass(slots=True)
class _Kind:
    level: int
    repeat: str  # what the summary line says was repeated
    since: float  # start of the current period
    more: int = 0  # lines suppressed in it


class RepeatedLog:
    """Thread-safe. `log()` writes the first line of a kind at once and counts the repeats; the
    summary of a period is written by the first `log()` or `flush()` after it ends. A caller with
    a loop calls `flush()` there, so that a storm that stops is still summarised."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = PERIOD_SECONDS,
        max_kinds: int = MAX_KINDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period = period
        self.max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[object, _Kind] = {}
        self._due = math.inf  # when the earliest period ends: no scan of the kinds before then
        self._lock = threading.Lock()

    def log(self, key: Hashable, level: int, msg: str, *args: object, repeat: str | None = None) -> None:
        """Logs `msg % args` unless a line of this `key` was written less than a period ago, in which
        case it is counted. `repeat` names the kind in the summary (default: this first line)."""
        now = self._clock()
        first = False
        with self._lock:
            summaries = self._ended(now)
            kind = self._kinds.get(key)
            if kind is None and len(self._kinds) >= self.max_kinds:
                kind = self._kinds.get(_OVERFLOW)
                if kind is None:
                    kind = _Kind(level, "lines of other kinds", now)
                    self._start(_OVERFLOW, kind)
            elif kind is None:
                first = True
                self._start(key, _Kind(level, repeat if repeat is not None else msg % args, now))
            if not first:
                kind.more += 1
                kind.level = max(kind.level, level)
        self._write(summaries)
        if first:
            self.logger.log(level, msg, *args)

    def flush(self) -> None:
        """Writes the summaries of the periods that have ended."""
        now = self._clock()
        with self._lock:
            summaries = self._ended(now)
        self._write(summaries)

    def _start(self, key: object, kind: _Kind) -> None:
        self._kinds[key] = kind
        self._due = min(self._due, kind.since + self.period)

    def _ended(self, now: float) -> list[tuple[int, str, int, float]]:
        if now < self._due:
            return []
        summaries = []
        due = math.inf
        for key, kind in list(self._kinds.items()):
            if now - kind.since < self.period:
                due = min(due, kind.since + self.period)
            elif kind.more:
                summaries.append((kind.level, kind.repeat, kind.more, now - kind.since))
                kind.since, kind.more = now, 0  # a new period: repeats keep being summarised
                due = min(due, now + self.period)
            else:
                del self._kinds[key]  # quiet for a whole period: the next line is written at once
        self._due = due
        return summaries

    def _write(self, summaries: list[tuple[int, str, int, float]]) -> None:
        for level, repeat, more, seconds in summaries:
            self.logger.log(level, "%s: %s more in the last %.0f s", repeat, f"{more:,}", seconds)
