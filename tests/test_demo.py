"""`make demo` end to end: prepare, rebuild, serve, replay, stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


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
