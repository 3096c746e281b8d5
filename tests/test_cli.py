"""The `recsys` command line as a user meets it."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.cli import build_parser, main


def test_help_hides_missing_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    assert "(default: 2000)" in out


def test_log_level_after_subcommand() -> None:
    args = build_parser().parse_args(
        ["data", "synth", "--out", "x", "--log-level", "WARNING"]
    )
    assert args.log_level == "WARNING"


def test_log_level_before_subcommand() -> None:
    args = build_parser().parse_args(
        ["--log-level", "ERROR", "data", "synth", "--out", "x"]
    )
    assert args.log_level == "ERROR"


def test_unknown_command_lists_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in err
    assert "'data'" in err


def test_library_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "prepare", "--dataset", "otto", "--source", "/nonexistent"]
    code = main([*args, "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("recsys data: error:")
    assert "/nonexistent" in err[0]
