"""Process settings, read once from environment variables and validated.

`Settings.from_env()` reads every variable below, checks it and raises
`ConfigError` naming the variable, the value received and what is valid.
`Settings.describe()` is the masked form to log at start-up: the API key is
never shown and a password inside `REDIS_URL` is replaced by `***`.

| variable | default | meaning |
| --- | --- | --- |
| REDIS_URL | unset | redis://, rediss:// or unix:// URL; unset = in-process store |
| RECSYS_REDIS_PREFIX | recsys: | prefix of every Redis key this process writes |
| RECSYS_API_KEY | unset | key required on writes; unset = every write gets 401 |
| RECSYS_REQUIRE_KEY_FOR_READS | false | also require the key on GET endpoints |
| RECSYS_SESSION_MAX_EVENTS | 50 | events kept per session (the newest by ts) |
| RECSYS_SESSION_TTL_SECONDS | 1800 | idle time after which a session expires |
| RECSYS_USER_MAX_SESSIONS | 20 | recent sessions remembered per user |
| RECSYS_DEDUP_WINDOW | 1000 | event ids remembered per session for dedup |
| RECSYS_MAX_BATCH_EVENTS | 500 | events accepted in one POST /v1/events |
| RECSYS_MAX_BODY_BYTES | 1048576 | request body limit in bytes |
| RECSYS_REDIS_CONNECT_TIMEOUT_SECONDS | 0.5 | Redis connect timeout |
| RECSYS_REDIS_READ_TIMEOUT_SECONDS | 1.0 | Redis read timeout per command |
| RECSYS_INDEXES_DIR | ./indexes | directory of published builds |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis", "rediss", "unix")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

T = TypeVar("T", int, float)

_summary_logged = False


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings of one process; build with `Settings.from_env()`."""

    redis_url: str | None = None
    redis_prefix: str = "recsys:"
    api_key: str | None = None
    require_key_for_reads: bool = False
    session_max_events: int = 50
    session_ttl_seconds: int = 1800
    user_max_sessions: int = 20
    dedup_window: int = 1000
    max_batch_events: int = 500
    max_body_bytes: int = 1_048_576
    redis_connect_timeout_seconds: float = 0.5
    redis_read_timeout_seconds: float = 1.0
    indexes_dir: Path = Path("indexes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings from `environ` (default `os.environ`)."""
        env = os.environ if environ is None else environ
        return cls(
            redis_url=_redis_url(env.get("REDIS_URL")),
            redis_prefix=_prefix(env.get("RECSYS_REDIS_PREFIX", "recsys:")),
            api_key=_api_key(env.get("RECSYS_API_KEY")),
            require_key_for_reads=_bool(env, "RECSYS_REQUIRE_KEY_FOR_READS", False),
            session_max_events=_number(
                env, "RECSYS_SESSION_MAX_EVENTS", int, 50, 1, 10_000
            ),
            session_ttl_seconds=_number(
                env, "RECSYS_SESSION_TTL_SECONDS", int, 1800, 1, 30 * 86400
            ),
            user_max_sessions=_number(
                env, "RECSYS_USER_MAX_SESSIONS", int, 20, 1, 1000
            ),
            dedup_window=_number(env, "RECSYS_DEDUP_WINDOW", int, 1000, 1, 1_000_000),
            max_batch_events=_number(
                env, "RECSYS_MAX_BATCH_EVENTS", int, 500, 1, 100_000
            ),
            max_body_bytes=_number(
                env, "RECSYS_MAX_BODY_BYTES", int, 1_048_576, 1024, 1 << 30
            ),
            redis_connect_timeout_seconds=_number(
                env, "RECSYS_REDIS_CONNECT_TIMEOUT_SECONDS", float, 0.5, 0.01, 60.0
            ),
            redis_read_timeout_seconds=_number(
                env, "RECSYS_REDIS_READ_TIMEOUT_SECONDS", float, 1.0, 0.01, 60.0
            ),
            indexes_dir=Path(env.get("RECSYS_INDEXES_DIR") or "indexes"),
        )

    def describe(self) -> dict[str, Any]:
        """Return the settings as a dict with the API key and passwords masked."""
        shown: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "api_key":
                value = None if value is None else "***"
            elif field.name == "redis_url" and value is not None:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            shown[field.name] = value
        return shown

    def log_summary(self) -> None:
        """Log the masked settings at INFO, and a WARNING when no API key is set.

        Only the first call in a process logs, so `recsys serve` and the app
        factory it starts in the same process do not repeat the lines.
        """
        global _summary_logged
        if _summary_logged:
            return
        _summary_logged = True
        log.info("settings: %s", self.describe())
        if self.api_key is None:
            log.warning("RECSYS_API_KEY is not set, so every write gets 401")


def mask_url(url: str) -> str:
    """Return `url` with its password replaced by `***`."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _redis_url(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    url = value.strip()
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"invalid REDIS_URL: got {mask_url(url)!r}; expected a URL starting "
            f"with {', '.join(s + '://' for s in REDIS_SCHEMES)}, "
            "or leave it unset for the in-process store"
        )
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(
            f"invalid REDIS_URL: got {mask_url(url)!r}; the port must be a "
            "number from 1 to 65535"
        ) from None
    return url


def _prefix(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ConfigError(
            f"invalid RECSYS_REDIS_PREFIX: got {value!r}; expected non-empty text "
            "without spaces, such as 'recsys:'"
        )
    return value


def _api_key(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value.strip() != value or any(c.isspace() for c in value):
        # The value is a secret, so the message names the problem, not the key.
        raise ConfigError(
            "invalid RECSYS_API_KEY: the value contains whitespace; "
            "expected a key without spaces or line breaks"
        )
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        f"invalid {name}: got {raw!r}; expected one of {', '.join(_TRUE)} "
        f"or {', '.join(repr(v) for v in _FALSE)}"
    )


def _number(
    env: Mapping[str, str],
    name: str,
    kind: Callable[[str], T],
    default: T,
    low: T,
    high: T,
) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    noun = "an integer" if kind is int else "a number"
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(
            f"invalid {name}: got {raw!r}; expected {noun} from {low} to {high}"
        ) from None
    if not low <= value <= high:
        raise ConfigError(
            f"invalid {name}: got {raw!r}; expected {noun} from {low} to {high}"
        )
    return value
