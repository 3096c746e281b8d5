"""Builds: manifest and checksums, atomic publish, rollback, pruning, lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recsys import builds, cli
from recsys.builds import BuildStore, open_build
from recsys.errors import BuildError, LockHeldError, NotFoundError
from recsys.index import ItemIndex

REPO = Path(__file__).resolve().parent.parent


def publish_build(store: BuildStore, seed: int, mrr: float = 0.5) -> builds.Build:
    """Stage a build with item vectors and their index, then publish it."""
    staged = store.stage()
    vectors = np.random.default_rng(seed).normal(size=(60, 8)).astype(np.float32)
    (staged.path / "models").mkdir()
    np.save(staged.path / "models" / "item_vectors.npy", vectors, allow_pickle=False)
    (staged.path / "indexes").mkdir()
    index = ItemIndex.build(vectors)
    index.save(staged.path / "indexes" / "tiny.faiss")
    manifest = {
        "created_at": builds.utc_now(),
        "metrics": {"tiny.MRR@20": mrr},
        "indexes": {"tiny": {"file": "indexes/tiny.faiss", **index.info.to_dict()}},
    }
    return store.publish(staged, manifest)


@pytest.fixture
def store(tmp_path: Path) -> BuildStore:
    return BuildStore(tmp_path / "indexes", keep=3)


def test_publish_makes_build_current(store: BuildStore) -> None:
    build = publish_build(store, seed=1)

    assert store.current_version() == build.version
    assert os.readlink(store.current_link) == f"builds/{build.version}"
    opened = store.open_current()
    assert opened.version == build.version
    assert opened.metrics == {"tiny.MRR@20": 0.5}


def test_manifest_lists_every_file_with_checksum(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    manifest = json.loads((build.path / "manifest.json").read_text())

    assert sorted(manifest["files"]) == [
        "indexes/tiny.faiss",
        "indexes/tiny.json",
        "models/item_vectors.npy",
    ]
    vectors_entry = manifest["files"]["models/item_vectors.npy"]
    vectors_path = build.path / "models/item_vectors.npy"
    assert vectors_entry["sha256"] == builds.sha256_file(vectors_path)
    assert vectors_entry["bytes"] == vectors_path.stat().st_size
    assert manifest["format_version"] == 1
    assert manifest["version"] == build.version
    assert manifest["created_at"].endswith("Z")


def test_library_versions_name_the_stack() -> None:
    versions = builds.library_versions()
    assert versions["numpy"] == np.__version__
    assert versions["faiss-cpu"] is not None
    assert set(versions) >= {"python", "torch", "implicit", "pyarrow"}


def test_flipped_byte_rejected_naming_file(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    path = build.path / "models/item_vectors.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(BuildError, match="does not match its sha256") as err:
        open_build(build.path)
    assert err.value.path == str(path)
    assert "models/item_vectors.npy" in str(err.value)


def test_truncated_file_rejected_naming_file(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    path = build.path / "indexes/tiny.faiss"
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(BuildError, match="truncated") as err:
        open_build(build.path)
    assert err.value.path == str(path)


def test_missing_file_rejected(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    (build.path / "indexes/tiny.json").unlink()
    with pytest.raises(BuildError, match="build file missing") as err:
        open_build(build.path)
    assert err.value.path == str(build.path / "indexes/tiny.json")


def test_missing_manifest_rejected(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    (build.path / "manifest.json").unlink()
    with pytest.raises(BuildError, match="build manifest missing"):
        open_build(build.path)


def test_index_from_other_vectors_rejected(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    other = np.random.default_rng(99).normal(size=(60, 8)).astype(np.float32)

    with pytest.raises(BuildError, match="does not match the model's item vectors"):
        build.index("tiny", vectors=other)
    own = np.load(build.path / "models/item_vectors.npy", allow_pickle=False)
    assert len(build.index("tiny", vectors=own)) == 60


def test_index_swapped_with_fresh_checksums_rejected(store: BuildStore) -> None:
    """An index file and metadata from another build, checksums redone."""
    build = publish_build(store, seed=1)
    other = np.random.default_rng(99).normal(size=(60, 8)).astype(np.float32)
    ItemIndex.build(other).save(build.path / "indexes/tiny.faiss")
    manifest = json.loads((build.path / "manifest.json").read_text())
    manifest["files"] = builds._file_entries(build.path)
    (build.path / "manifest.json").write_text(json.dumps(manifest))

    rebuilt = open_build(build.path)
    with pytest.raises(BuildError, match="does not match the build manifest") as err:
        rebuilt.index("tiny")
    assert err.value.path == str(build.path / "indexes/tiny.faiss")


def test_index_and_arrays_are_mapped_from_the_build(store: BuildStore) -> None:
    build = store.open(publish_build(store, seed=1).version)

    vectors = build.array("models/item_vectors.npy")

    assert isinstance(vectors, np.memmap)
    assert not vectors.flags.writeable
    saved = np.load(build.path / "models/item_vectors.npy", allow_pickle=False)
    np.testing.assert_array_equal(vectors, saved)
    assert build.index("tiny", vectors=vectors).memory_mapped


def test_array_rejects_files_that_cannot_be_mapped(store: BuildStore) -> None:
    build = publish_build(store, seed=1)
    with pytest.raises(BuildError, match=r"only \.npy files can be mapped") as err:
        build.array("indexes/tiny.json")
    assert err.value.path == str(build.path / "indexes/tiny.json")
    with pytest.raises(BuildError, match=r"has no file 'models/other\.npy'"):
        build.array("models/other.npy")


def test_staging_never_listed_and_cleaned(store: BuildStore) -> None:
    published = publish_build(store, seed=1)
    staged = store.stage()
    (staged.path / "half_written.npy").write_bytes(b"\x93NUMPY")

    assert [b.version for b in store.list_builds()] == [published.version]
    store.clean()
    assert not staged.path.exists()
    assert store.current_version() == published.version


def test_failed_switch_removes_new_build(
    store: BuildStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = publish_build(store, seed=1)

    def fail_switch(version: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "switch", fail_switch)
    with pytest.raises(OSError, match="disk full"):
        publish_build(store, seed=2)

    assert store.current_version() == first.version
    assert [b.version for b in store.list_builds()] == [first.version]


def test_rollback_to_previous_build(store: BuildStore) -> None:
    first = publish_build(store, seed=1)
    second = publish_build(store, seed=2)

    rolled = store.rollback()

    assert rolled.version == first.version
    assert store.current_version() == first.version
    assert store.open_current().version == first.version
    store.rollback(to=second.version)
    assert store.current_version() == second.version


def test_rollback_without_older_build_fails(store: BuildStore) -> None:
    only = publish_build(store, seed=1)
    with pytest.raises(NotFoundError, match="no build older than current"):
        store.rollback()
    assert store.current_version() == only.version


def test_rollback_to_corrupt_build_refused(store: BuildStore) -> None:
    first = publish_build(store, seed=1)
    second = publish_build(store, seed=2)
    path = first.path / "indexes/tiny.faiss"
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(BuildError, match=r"tiny\.faiss"):
        store.rollback()
    assert store.current_version() == second.version


def test_rollback_to_unknown_version(store: BuildStore) -> None:
    publish_build(store, seed=1)
    with pytest.raises(NotFoundError, match="build 'nope' not found"):
        store.rollback(to="nope")


@pytest.mark.parametrize("name", ["..", ".", "", "../builds/{version}"])
def test_rollback_rejects_path_as_version(store: BuildStore, name: str) -> None:
    first = publish_build(store, seed=1)
    second = publish_build(store, seed=2)
    target = name.format(version=first.version)

    with pytest.raises(NotFoundError, match="not found; builds:"):
        store.rollback(to=target)
    assert os.readlink(store.current_link) == f"builds/{second.version}"


def test_prune_keeps_newest_current_and_previous(store: BuildStore) -> None:
    versions = [publish_build(store, seed=i).version for i in range(3)]
    store.rollback(to=versions[0])
    versions += [publish_build(store, seed=i).version for i in range(3, 6)]
    store.switch(versions[1])

    removed = store.prune()

    kept = [b.version for b in store.list_builds()]
    assert versions[1] in kept
    assert versions[0] in kept
    assert kept[-3:] == versions[-3:]
    assert set(removed) == {versions[2]}
    assert not list((store.root / builds.TRASH_DIR).iterdir())


def test_publish_prunes_nothing_by_itself(store: BuildStore) -> None:
    versions = [publish_build(store, seed=i).version for i in range(5)]
    assert [b.version for b in store.list_builds()] == versions


def test_versions_unique_within_one_second(store: BuildStore) -> None:
    versions = {publish_build(store, seed=i).version for i in range(3)}
    assert len(versions) == 3


def test_second_lock_in_process_raises(store: BuildStore) -> None:
    with store.lock(), pytest.raises(LockHeldError, match="holds"), store.lock():
        pass
    with store.lock():
        pass


def test_lock_released_when_holder_killed(store: BuildStore) -> None:
    script = (
        "import sys, time\n"
        "from recsys.builds import BuildStore\n"
        "with BuildStore(sys.argv[1]).lock():\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(store.root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=f"pid {holder.pid}"), store.lock():
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with store.lock():
        pass


def test_reader_never_sees_partial_build(store: BuildStore) -> None:
    publish_build(store, seed=0)
    errors: list[Exception] = []
    seen: set[str] = set()
    stop = threading.Event()

    def read_current() -> None:
        while not stop.is_set():
            try:
                build = open_build(store.current_link)
                seen.add(build.version)
            except Exception as exc:
                errors.append(exc)

    reader = threading.Thread(target=read_current)
    reader.start()
    try:
        for seed in range(1, 6):
            publish_build(store, seed=seed)
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join()

    assert errors == []
    assert len(seen) >= 2


def test_keep_below_two_rejected(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="keep must be at least 2"):
        BuildStore(tmp_path, keep=1)


def test_cli_list_metrics_at_any_cutoff(
    store: BuildStore, capsys: pytest.CaptureFixture[str]
) -> None:
    staged = store.stage()
    (staged.path / "weights.bin").write_bytes(b"w")
    metrics = {"tiny.HR@10": 0.25, "tiny.MRR@10": 0.125, "eval_cases": 40}
    store.publish(staged, {"created_at": builds.utc_now(), "metrics": metrics})

    code = cli.main(["builds", "list", "--indexes-dir", str(store.root)])

    line = capsys.readouterr().out.splitlines()[0]
    assert code == 0
    assert "tiny.HR@10=0.2500  tiny.MRR@10=0.1250" in line
    assert "eval_cases" not in line
    assert line == line.rstrip()


def test_cli_list_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["builds", "list", "--indexes-dir", str(tmp_path / "typo")])

    assert code == 1
    assert f"indexes directory {tmp_path / 'typo'} does not exist" in (
        capsys.readouterr().err
    )
