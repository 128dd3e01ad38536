"""The one error the registry raises for a report it will not apply."""

from __future__ import annotations


class ReportRejected(Exception):
    """A report that cannot be applied; `field` names the offending input, `status` the HTTP status."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
