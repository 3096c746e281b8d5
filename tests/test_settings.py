"""Settings from environment variables: defaults, validation and masking."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from recsys.errors import ConfigError
from recsys.settings import Settings, mask_url


def test_defaults_from_empty_environment() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.redis_url is None
    assert settings.indexes_dir == Path("indexes")
    assert settings.require_key_for_reads is False


def test_every_variable_is_read() -> None:
    env = {
        "REDIS_URL": "redis://127.0.0.1:6380/2",
        "RECSYS_REDIS_PREFIX": "shop:",
        "RECSYS_API_KEY": "k3y",
        "RECSYS_REQUIRE_KEY_FOR_READS": "yes",
        "RECSYS_SESSION_MAX_EVENTS": "30",
        "RECSYS_SESSION_TTL_SECONDS": "900",
        "RECSYS_USER_MAX_SESSIONS": "5",
        "RECSYS_DEDUP_WINDOW": "200",
        "RECSYS_MAX_BATCH_EVENTS": "100",
        "RECSYS_MAX_BODY_BYTES": "65536",
        "RECSYS_REDIS_CONNECT_TIMEOUT_SECONDS": "0.25",
        "RECSYS_REDIS_READ_TIMEOUT_SECONDS": "2",
        "RECSYS_INDEXES_DIR": "/srv/indexes",
    }

    assert Settings.from_env(env) == Settings(
        redis_url="redis://127.0.0.1:6380/2",
        redis_prefix="shop:",
        api_key="k3y",
        require_key_for_reads=True,
        session_max_events=30,
        session_ttl_seconds=900,
        user_max_sessions=5,
        dedup_window=200,
        max_batch_events=100,
        max_body_bytes=65536,
        redis_connect_timeout_seconds=0.25,
        redis_read_timeout_seconds=2.0,
        indexes_dir=Path("/srv/indexes"),
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "RECSYS_SESSION_MAX_EVENTS",
            "ten",
            "invalid RECSYS_SESSION_MAX_EVENTS: got 'ten'; expected an integer "
            "from 1 to 10000",
        ),
        (
            "RECSYS_SESSION_TTL_SECONDS",
            "0",
            "invalid RECSYS_SESSION_TTL_SECONDS: got '0'; expected an integer "
            "from 1 to 2592000",
        ),
        (
            "RECSYS_REDIS_READ_TIMEOUT_SECONDS",
            "nan",
            "invalid RECSYS_REDIS_READ_TIMEOUT_SECONDS: got 'nan'; expected a "
            "number from 0.01 to 60.0",
        ),
        (
            "RECSYS_MAX_BODY_BYTES",
            "1.5",
            "invalid RECSYS_MAX_BODY_BYTES: got '1.5'; expected an integer from "
            "1024 to 1073741824",
        ),
        (
            "RECSYS_REQUIRE_KEY_FOR_READS",
            "maybe",
            "invalid RECSYS_REQUIRE_KEY_FOR_READS: got 'maybe'; expected one of "
            "1, true, yes, on or '0', 'false', 'no', 'off', ''",
        ),
        (
            "REDIS_URL",
            "http://127.0.0.1:6379",
            "invalid REDIS_URL: got 'http://127.0.0.1:6379'; expected a URL "
            "starting with redis://, rediss://, unix://, or leave it unset for "
            "the in-process store",
        ),
        (
            "REDIS_URL",
            "redis://:pw@127.0.0.1:99999",
            "invalid REDIS_URL: got 'redis://:***@127.0.0.1:99999'; the port must "
            "be a number from 1 to 65535",
        ),
        (
            "RECSYS_REDIS_PREFIX",
            "my prefix",
            "invalid RECSYS_REDIS_PREFIX: got 'my prefix'; expected non-empty "
            "text without spaces, such as 'recsys:'",
        ),
    ],
)
def test_invalid_value_names_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})

    assert str(caught.value) == message


def test_invalid_api_key_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RECSYS_API_KEY": "secret with space"})

    assert "secret" not in str(caught.value)
    assert str(caught.value).startswith("invalid RECSYS_API_KEY")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@db:6379/0", "redis://:***@db:6379/0"),
        ("rediss://app:hunter2@db.internal/1", "rediss://app:***@db.internal/1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_describe_masks_secrets() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://:hunter2@db:6379/0", "RECSYS_API_KEY": "k3y-s3cret"}
    )

    shown = settings.describe()

    assert shown["redis_url"] == "redis://:***@db:6379/0"
    assert shown["api_key"] == "***"
    assert "hunter2" not in repr(shown)
    assert "k3y-s3cret" not in repr(shown)


def test_log_summary_once_without_secrets(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recsys.settings._summary_logged", False)
    caplog.set_level(logging.INFO, logger="recsys.settings")
    settings = Settings.from_env(
        {"REDIS_URL": "redis://:hunter2@db:6379/0", "RECSYS_API_KEY": "k3y-s3cret"}
    )

    settings.log_summary()
    settings.log_summary()

    assert len(caplog.records) == 1
    assert "redis://:***@db:6379/0" in caplog.text
    assert "hunter2" not in caplog.text
    assert "k3y-s3cret" not in caplog.text


def test_missing_api_key_warns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recsys.settings._summary_logged", False)
    caplog.set_level(logging.INFO, logger="recsys.settings")

    Settings.from_env({}).log_summary()

    assert caplog.records[-1].levelname == "WARNING"
    assert caplog.records[-1].getMessage() == (
        "RECSYS_API_KEY is not set, so every write gets 401"
    )


def test_serve_refuses_workers_without_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsys.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)

    assert main(["serve", "--workers", "2"]) == 1
    assert capsys.readouterr().err == (
        "recsys serve: error: --workers 2 needs REDIS_URL: without it each worker "
        "keeps its own in-process sessions, so a request may not see the events "
        "another worker stored; set REDIS_URL or use --workers 1\n"
    )
