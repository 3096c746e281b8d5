"""The library's exception tree.

Every boundary raises a subclass of `RecsysError`; the API maps them to HTTP
statuses in one place and the CLI prints their message as one line.
"""

from __future__ import annotations

from typing import Any


class RecsysError(Exception):
    """Base class of every error this library raises on purpose."""


class ValidationError(RecsysError, ValueError):
    """An input value is invalid.

    `field` names the offending field, `value` is what was received and
    `expected` describes what would be valid.
    """

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"invalid {field}: got {value!r}; expected {expected}")


class DataFormatError(RecsysError):
    """A source file contains a malformed line at `path`, `line`."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}")


class ConfigError(RecsysError):
    """A setting is missing or invalid."""


class NotFoundError(RecsysError):
    """A requested object (build, dataset, session) does not exist."""


class BuildError(RecsysError):
    """A build is invalid, incomplete or failed to load; `path` names the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class StoreUnavailableError(RecsysError):
    """The session store failed or did not respond within its timeout."""


class LockHeldError(BuildError):
    """Another process holds the lock file at `path` (a rebuild or rollback)."""
