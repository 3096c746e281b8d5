"""The rebuild job: phases, quality gate, lock, failures and kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from recsys_training import rebuild

from recsys.builds import BuildStore, open_build
from recsys.errors import ConfigError
from tests.rebuild_trainers import tiny_config, tiny_events, write_prepared

REPO = Path(__file__).resolve().parent.parent
PHASES = [
    "load_data",
    "split_holdout",
    "train_models",
    "train_ranker",
    "build_indexes",
    "evaluate",
    "quality_gate",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "data", tiny_events())


@pytest.fixture
def indexes_dir(tmp_path: Path) -> Path:
    return tmp_path / "indexes"


def run(data_dir: Path, indexes_dir: Path, force: bool = False, **params):
    config = rebuild.resolve_config(tiny_config(**params))
    return rebuild.run_rebuild(data_dir, indexes_dir, config, force=force)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )


def write_config(path: Path, **params) -> Path:
    path.write_text(json.dumps(tiny_config(**params)))
    return path


def test_rebuild_publishes_verified_build(data_dir: Path, indexes_dir: Path) -> None:
    result = run(data_dir, indexes_dir)

    assert result.exit_code == rebuild.EXIT_PUBLISHED
    store = BuildStore(indexes_dir)
    build = store.open_current()
    assert build.version == result.version
    manifest = build.manifest
    assert manifest["data"]["kind"] == "prepared"
    assert (
        manifest["data"]["events"]
        == pq.read_table(data_dir / "events.parquet").num_rows
    )
    assert manifest["data"]["from"] <= manifest["data"]["to"]
    assert manifest["config"]["models"]["tiny"]["params"] == {}
    assert manifest["metrics"]["tiny.MRR@20"] > 0
    assert manifest["metrics"]["tiny.index_recall@100"] == 1.0
    assert manifest["libraries"]["faiss-cpu"] is not None
    assert "commit" in manifest["git"]
    assert {"models/tiny/order.npy", "indexes/tiny.faiss", "report.json"} <= set(
        manifest["files"]
    )
    vectors = np.load(build.file("models/tiny/item_vectors.npy"), allow_pickle=False)
    assert len(build.index("tiny", vectors=vectors)) == len(vectors)


def test_report_has_one_record_per_phase(data_dir: Path, indexes_dir: Path) -> None:
    result = run(data_dir, indexes_dir)
    build = BuildStore(indexes_dir).open_current()
    report = json.loads(build.file("report.json").read_text())

    # The build's report is sealed inside the build before it is published;
    # last_rebuild.json adds the publish phase.
    assert [p["phase"] for p in report["phases"]] == PHASES
    assert all(p["seconds"] >= 0 for p in report["phases"])
    last = json.loads((indexes_dir / "last_rebuild.json").read_text())
    assert [p["phase"] for p in last["phases"]] == [*PHASES, "publish"]
    assert last["version"] == result.version
    assert report["phases"][0]["events"] == result.report["data"]["events"]
    assert report["status"] == "published"
    assert report["data"]["holdout"] == "last 5% of sessions"


def test_phase_log_lines(
    data_dir: Path, indexes_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="recsys_training.rebuild")
    run(data_dir, indexes_dir)
    done = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("phase")
    ]
    assert [line.split()[1] for line in done] == [*PHASES, "publish"]
    assert "events=" in done[0]


def test_published_test_cases_used_when_present(
    data_dir: Path, indexes_dir: Path
) -> None:
    from recsys.evaluation import validation_split

    events = pq.read_table(data_dir / "events.parquet")
    train, cases = validation_split(events, 0.2)
    pq.write_table(train, data_dir / "events.parquet")
    pq.write_table(cases, data_dir / "test_cases.parquet")

    result = run(data_dir, indexes_dir)

    assert result.report["data"]["holdout"] == "published test cases"
    assert result.report["metrics"]["eval_cases"] == min(cases.num_rows, 300)


def test_event_log_directory_accepted(tmp_path: Path, indexes_dir: Path) -> None:
    events = tiny_events()
    log_dir = tmp_path / "log"
    for day, part in enumerate((events.slice(0, 400), events.slice(400))):
        (log_dir / f"date=2023-11-1{day}").mkdir(parents=True)
        pq.write_table(part, log_dir / f"date=2023-11-1{day}" / "part-1_2.parquet")
    # A file an exporter is still writing must be skipped.
    (log_dir / "date=2023-11-10" / ".part-3_4.parquet.tmp").write_bytes(b"partial")
    (log_dir / "date=2023-11-10" / ".part-5.parquet").write_bytes(b"partial")

    result = run(log_dir, indexes_dir)

    assert result.exit_code == rebuild.EXIT_PUBLISHED
    assert result.report["data"]["kind"] == "event_log"
    assert result.report["data"]["events"] == events.num_rows


@pytest.mark.parametrize("phase", PHASES)
def test_failed_phase_keeps_previous_build(
    phase: str, data_dir: Path, indexes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(data_dir, indexes_dir)

    def fail(*args, **kwargs):
        raise RuntimeError(f"{phase} broke on purpose")

    monkeypatch.setattr(rebuild, phase, fail)
    result = run(data_dir, indexes_dir)

    assert result.exit_code == rebuild.EXIT_PHASE_FAILED
    assert result.status == f"failed:{phase}"
    store = BuildStore(indexes_dir)
    assert store.current_version() == first.version
    assert store.open_current().version == first.version
    assert [b.version for b in store.list_builds()] == [first.version]
    assert not list((indexes_dir / ".staging").iterdir())
    last = json.loads((indexes_dir / "last_rebuild.json").read_text())
    assert last["exit_code"] == rebuild.EXIT_PHASE_FAILED
    assert f"{phase} broke on purpose" in last["error"]


def test_failed_publish_keeps_previous_build(
    data_dir: Path, indexes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(data_dir, indexes_dir)

    def fail_switch(self, version: str) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(BuildStore, "switch", fail_switch)
    result = run(data_dir, indexes_dir)

    assert result.exit_code == rebuild.EXIT_PHASE_FAILED
    assert result.status == "failed:publish"
    store = BuildStore(indexes_dir)
    assert store.current_version() == first.version
    assert [b.version for b in store.list_builds()] == [first.version]


def test_failing_trainer_is_a_phase_failure(data_dir: Path, indexes_dir: Path) -> None:
    result = run(data_dir, indexes_dir, fail=True)
    assert result.exit_code == rebuild.EXIT_PHASE_FAILED
    assert result.status == "failed:train_models"
    assert BuildStore(indexes_dir).current_version() is None


def test_quality_gate_refuses_worse_model(data_dir: Path, indexes_dir: Path) -> None:
    good = run(data_dir, indexes_dir)

    worse = run(data_dir, indexes_dir, reverse=True)

    assert worse.exit_code == rebuild.EXIT_GATE_REFUSED
    gate = worse.report["gate"]
    assert gate["passed"] is False
    assert gate["new"] < gate["floor"] < gate["current"]
    assert gate["current_version"] == good.version
    store = BuildStore(indexes_dir)
    assert store.current_version() == good.version
    assert [b.version for b in store.list_builds()] == [good.version]


def test_force_publishes_despite_gate(data_dir: Path, indexes_dir: Path) -> None:
    run(data_dir, indexes_dir)

    forced = run(data_dir, indexes_dir, force=True, reverse=True)

    assert forced.exit_code == rebuild.EXIT_PUBLISHED
    assert forced.report["gate"]["forced"] is True
    assert BuildStore(indexes_dir).current_version() == forced.version


def test_equal_quality_passes_gate(data_dir: Path, indexes_dir: Path) -> None:
    run(data_dir, indexes_dir)
    again = run(data_dir, indexes_dir)
    assert again.exit_code == rebuild.EXIT_PUBLISHED
    assert again.report["gate"]["new"] == again.report["gate"]["current"]


def test_old_builds_pruned_after_publish(data_dir: Path, indexes_dir: Path) -> None:
    versions = [run(data_dir, indexes_dir).version for _ in range(4)]
    kept = [b.version for b in BuildStore(indexes_dir).list_builds()]
    assert kept == versions[-3:]


def test_lock_held_exit_code(data_dir: Path, indexes_dir: Path) -> None:
    with BuildStore(indexes_dir).lock():
        result = run(data_dir, indexes_dir)
    assert result.exit_code == rebuild.EXIT_LOCK_HELD
    assert result.status == "lock_held"
    assert BuildStore(indexes_dir).list_builds() == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gate": {"metric": "als.MRR@20"}}, "gate.metric must be MODEL.METRIC"),
        ({"data": {"holdout_fraction": 1.5}}, "holdout_fraction must be in"),
        ({"index": {"kindd": "hnsw"}}, "unknown config key 'index.kindd'"),
        ({"builds": {"keep": 1}}, "builds.keep must be at least 2"),
        ({"models": {"tiny": {"enabled": False}}}, "no model is enabled"),
        ({"builds": {"keep": "abc"}}, "'builds.keep' must be an integer, got 'abc'"),
        ({"gate": {"metric": 5}}, "'gate.metric' must be a string, got 5"),
        ({"threads": True}, "'threads' must be an integer, got True"),
        ({"models": {"tiny": {"enabled": "no"}}}, "must be true or false"),
        ({"index": {"kind": "hnswx"}}, "index.kind must be one of"),
        ({"evaluation": {"k": 0}}, "evaluation.k must be at least 1, got 0"),
    ],
)
def test_invalid_config_rejected(overrides: dict, message: str) -> None:
    config = tiny_config()
    for key, value in overrides.items():
        if key == "models":
            config["models"]["tiny"].update(value["tiny"])
        else:
            config[key] = value
    with pytest.raises(ConfigError, match=message):
        rebuild.resolve_config(config)


def test_empty_data_directory_is_invalid(
    data_dir: Path, indexes_dir: Path, tmp_path: Path
) -> None:
    first = run(data_dir, indexes_dir)
    empty = tmp_path / "empty"
    empty.mkdir()

    result = run(empty, indexes_dir)

    assert result.exit_code == rebuild.EXIT_INVALID_INPUT
    assert result.status == "failed:load_data"
    assert "no Parquet files under" in result.report["error"]
    assert BuildStore(indexes_dir).current_version() == first.version


def test_unreadable_event_file_is_invalid(tmp_path: Path, indexes_dir: Path) -> None:
    day = tmp_path / "log" / "date=2026-12-01"
    day.mkdir(parents=True)
    (day / "part-0.parquet").write_text("not parquet")

    result = run(tmp_path / "log", indexes_dir)

    assert result.exit_code == rebuild.EXIT_INVALID_INPUT
    assert "part-0.parquet" in result.report["error"]


def test_config_error_in_phase_is_invalid(
    data_dir: Path, indexes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_params(*args, **kwargs):
        raise ConfigError("invalid models.tiny.params: unknown field 'sizee'")

    monkeypatch.setattr(rebuild, "train_models", bad_params)
    result = run(data_dir, indexes_dir)

    assert result.exit_code == rebuild.EXIT_INVALID_INPUT
    assert result.status == "failed:train_models"
    assert not list((indexes_dir / ".staging").iterdir())


def test_unknown_trainer_fails_before_training(
    data_dir: Path, indexes_dir: Path
) -> None:
    config = tiny_config()
    config["ranker"] = {"trainer": "no_such_module:train"}

    with pytest.raises(ConfigError, match="cannot import trainer 'no_such_module"):
        rebuild.run_rebuild(data_dir, indexes_dir, rebuild.resolve_config(config))
    assert not indexes_dir.exists()


def test_config_file_toml(tmp_path: Path) -> None:
    path = tmp_path / "rebuild.toml"
    path.write_text('threads = 3\n[gate]\nmetric = "als.HR@20"\n')
    config = rebuild.load_config(path)
    assert config["threads"] == 3
    assert config["gate"]["metric"] == "als.HR@20"
    assert config["gate"]["max_relative_drop"] == 0.05


def test_cli_exit_codes(data_dir: Path, indexes_dir: Path, tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.json")
    worse = write_config(tmp_path / "worse.json", reverse=True)
    base = ["rebuild", "--data", str(data_dir), "--indexes-dir", str(indexes_dir)]

    published = run_cli(*base, "--config", str(good))
    refused = run_cli(*base, "--config", str(worse))
    missing = run_cli(
        "rebuild", "--data", str(tmp_path / "nope"), "--config", str(good)
    )

    assert published.returncode == 0, published.stderr
    assert "phase publish done" in published.stderr
    assert refused.returncode == rebuild.EXIT_GATE_REFUSED, refused.stderr
    assert "quality gate rejected" in refused.stderr
    assert missing.returncode == 1
    assert "data directory not found" in missing.stderr


def test_cli_print_config_needs_no_data(tmp_path: Path) -> None:
    config = write_config(tmp_path / "rebuild.json")

    printed = run_cli("rebuild", "--print-config", "--config", str(config))
    no_data = run_cli("rebuild", "--config", str(config))

    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["gate"]["metric"] == "tiny.MRR@20"
    assert no_data.returncode == 2
    assert "required: --data" in no_data.stderr


def test_cli_builds_list_and_rollback(
    data_dir: Path, indexes_dir: Path, tmp_path: Path
) -> None:
    first = run(data_dir, indexes_dir).version
    second = run(data_dir, indexes_dir).version

    listing = run_cli("builds", "list", "--indexes-dir", str(indexes_dir), "--verify")
    rolled = run_cli("builds", "rollback", "--indexes-dir", str(indexes_dir))
    forward = run_cli(
        "builds", "rollback", "--indexes-dir", str(indexes_dir), "--to", second
    )

    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(f"  {first}")
    assert lines[1].startswith(f"* {second}")
    assert "tiny.MRR@20=" in lines[1]
    assert lines[1].endswith("verified")
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip() == f"current build: {first} (was {second})"
    assert forward.returncode == 0, forward.stderr
    assert BuildStore(indexes_dir).current_version() == second


def test_cli_builds_list_flags_corrupt_build(data_dir: Path, indexes_dir: Path) -> None:
    build = run(data_dir, indexes_dir)
    path = indexes_dir / "builds" / build.version / "indexes" / "tiny.faiss"
    path.write_bytes(path.read_bytes()[:-1])

    listing = run_cli("builds", "list", "--indexes-dir", str(indexes_dir), "--verify")

    assert listing.returncode == 1
    assert "invalid: build file" in listing.stdout
    assert "tiny.faiss" in listing.stdout


@pytest.mark.slow
def test_killed_rebuild_leaves_current_intact(
    data_dir: Path, indexes_dir: Path, tmp_path: Path
) -> None:
    first = run(data_dir, indexes_dir)
    marker = tmp_path / "training.marker"
    config = write_config(tmp_path / "slow.json", marker=str(marker), sleep_seconds=60)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "recsys", "rebuild", "--data", str(data_dir)),
            *("--indexes-dir", str(indexes_dir), "--config", str(config)),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "rebuild exited before training"
            assert time.monotonic() < deadline, "rebuild never started training"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    store = BuildStore(indexes_dir)
    assert store.current_version() == first.version
    assert open_build(indexes_dir / "current").version == first.version
    assert [b.version for b in store.list_builds()] == [first.version]
    leftovers = list((indexes_dir / ".staging").iterdir())
    assert len(leftovers) == 1

    # The next run takes the lock the killed one held and removes its leftovers.
    after = run(data_dir, indexes_dir)
    assert after.exit_code == rebuild.EXIT_PUBLISHED
    assert not any(p.exists() for p in leftovers)
    assert [b.version for b in store.list_builds()] == [first.version, after.version]


@pytest.mark.slow
def test_real_models_on_tiny_data(data_dir: Path, indexes_dir: Path) -> None:
    from recsys.models.als import ALSRecommender
    from recsys.models.two_tower import TwoTowerRecommender

    overrides = {
        "threads": 1,
        "models": {
            "als": {"params": {"factors": 8, "iterations": 3}},
            "two_tower": {
                "params": {
                    "dim": 8,
                    "n_heads": 1,
                    "epochs": 1,
                    "batch_size": 64,
                    "n_buckets": 64,
                    "max_valid_cases": 100,
                }
            },
        },
        "evaluation": {"max_cases": 200},
        "index": {"recall_queries": 50},
    }
    config = rebuild.resolve_config(overrides)

    result = rebuild.run_rebuild(data_dir, indexes_dir, config)

    assert result.exit_code == rebuild.EXIT_PUBLISHED, result.report.get("error")
    build = BuildStore(indexes_dir).open_current()
    assert {"als.MRR@20", "two_tower.MRR@20"} <= set(build.metrics)
    als = ALSRecommender.load(build.path / "models" / "als")
    tower = TwoTowerRecommender.load(build.path / "models" / "two_tower")
    assert len(build.index("als", vectors=als.item_factors)) == len(als.vocab)
    assert len(build.index("two_tower", vectors=tower.item_vectors())) == len(
        tower.vocab
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "new_is_current", "listed"),
    [
        ("sealed", False, 3),
        ("renamed", False, 3),
        ("switched", True, 4),
        ("trashed", True, 3),
    ],
)
def test_kill_during_publish_leaves_valid_builds(
    step: str,
    new_is_current: bool,
    listed: int,
    data_dir: Path,
    indexes_dir: Path,
    tmp_path: Path,
) -> None:
    before = [run(data_dir, indexes_dir).version for _ in range(3)]
    config = write_config(tmp_path / "tiny.json")
    killed = subprocess.run(
        [
            *(sys.executable, "-m", "recsys", "rebuild", "--data", str(data_dir)),
            *("--indexes-dir", str(indexes_dir), "--config", str(config)),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "RECSYS_BUILDS_FAILPOINT": step,
        },
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    store = BuildStore(indexes_dir)
    current = store.open_current()
    assert (current.version not in before) is new_is_current
    summaries = store.list_builds()
    assert len(summaries) == listed
    for summary in summaries:
        open_build(summary.path)

    after = run(data_dir, indexes_dir)
    assert after.exit_code == rebuild.EXIT_PUBLISHED
    for leftover in (".staging", ".trash"):
        assert list((indexes_dir / leftover).iterdir()) == []
    assert not (indexes_dir / ".publishing").exists()
    assert len(list((indexes_dir / "builds").iterdir())) == len(store.list_builds())


def test_ranker_hook_called_when_enabled(data_dir: Path, indexes_dir: Path) -> None:
    overrides = tiny_config()
    overrides["ranker"] = {
        "enabled": True,
        "trainer": "tests.rebuild_trainers:train_ranker",
        "params": {"note": "tiny"},
    }

    result = rebuild.run_rebuild(
        data_dir, indexes_dir, rebuild.resolve_config(overrides)
    )

    assert result.exit_code == rebuild.EXIT_PUBLISHED
    assert result.report["ranker"] == {"enabled": True, "models": ["tiny"]}
    build = BuildStore(indexes_dir).open_current()
    assert json.loads(build.file("ranker/params.json").read_text()) == {"note": "tiny"}
