"""`make demo` end to end: prepare, rebuild, serve, replay, stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from recsys_training import demo


@pytest.mark.slow
def test_demo_replay_changes_recommendations(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "recsys_training.demo", "--replay", "--exit"]
    result = subprocess.run(
        [*command, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "indexes" / "current").exists()
    lines = result.stdout.splitlines()
    steps = [line.split("->")[1].split() for line in lines if "->" in line]
    # The empty session plus one line per replayed event.
    assert len(steps) >= 6
    assert all(len(step) == 5 for step in steps)
    # Each click moves the clicked item's neighbours into the list.
    assert steps[0] != steps[1]
    assert "/v1/recommendations?session_id=s1" in result.stdout


def test_printed_curl_body_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    demo.print_examples("http://127.0.0.1:8000", "key-123", "1004856")
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if "/v1/events" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].endswith("}'"))
    command = "\n".join(lines[start : end + 1])
    # bash parses the command as a user's shell would; the curl function
    # stands in for curl and parses the body it was given.
    check = (
        f'curl() {{ while [ "$1" != -d ]; do shift; done; '
        f'"{sys.executable}" -c "import json, sys; json.loads(sys.argv[1])" "$2"; }}\n'
        f"{command}\n"
    )
    result = subprocess.run(["bash", "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
