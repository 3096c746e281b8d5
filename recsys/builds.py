"""Versioned, immutable builds and the atomic `current` pointer.

Layout of an indexes directory (`ROOT`):

    ROOT/builds/<version>/       one published build: artifacts, report.json,
                                 manifest.json (written last)
    ROOT/current                 symlink to builds/<version>, the build served
    ROOT/.staging/<version>.*/   a build being written; never listed
    ROOT/.trash/                 builds being deleted; never listed
    ROOT/.publishing             the version being published, present only
                                 between its rename and the switch
    ROOT/rebuild.lock            held (fcntl.flock) by a rebuild or rollback

A build is written under `.staging/` on the same filesystem, its files and
directory are fsynced, and one `rename` moves it into `builds/`, so a build
directory is either complete or absent. `current` is switched by creating a
new symlink under a temporary name and `os.replace`-ing it over the old one,
which is atomic on POSIX, so a reader resolves either the old build or the
new one. Old builds move to `.trash/` (atomic) before they are deleted.

`manifest.json` lists every other file of the build with its size and
sha256. `open_build` checks them all and raises `BuildError` naming the
first file that is missing, truncated or changed, and `Build.index` checks
that a FAISS index contains the vectors the manifest recorded for it.

Because a published build never changes, its large files are mapped rather
than copied: `Build.index` maps FAISS indexes and `Build.array` maps `.npy`
arrays, so the worker processes of one server share a single copy of them
in the page cache. Checksums are computed by reading each file in chunks,
which fills that page cache without keeping a private copy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.errors import BuildError, LockHeldError, NotFoundError

if TYPE_CHECKING:
    from recsys.index import ItemIndex

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
BUILDS_DIR = "builds"
CURRENT_LINK = "current"
STAGING_DIR = ".staging"
TRASH_DIR = ".trash"
LOCK_FILE = "rebuild.lock"
PUBLISHING_FILE = ".publishing"
# Test hook: the name of a step of `publish` or `prune` (sealed, renamed,
# switched, trashed) at which this process kills itself with SIGKILL.
FAILPOINT_ENV = "RECSYS_BUILDS_FAILPOINT"
FORMAT_VERSION = 1
# Distributions whose versions go into every manifest.
LIBRARIES = ("numpy", "faiss-cpu", "torch", "implicit", "pyarrow", "lightgbm")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BuildSummary:
    """One line of `BuildStore.list_builds`: a build directory and its manifest."""

    version: str
    path: Path
    created_at: str
    metrics: dict[str, Any]
    is_current: bool
    manifest: dict[str, Any]


class Build:
    """A published build whose manifest and checksums have been verified."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    def file(self, name: str) -> Path:
        """Return the path of a file that the manifest lists."""
        if name not in self.manifest["files"]:
            raise BuildError(
                f"build {self.version} has no file {name!r}; it lists "
                f"{sorted(self.manifest['files'])}",
                str(self.path / name),
            )
        return self.path / name

    def index(self, name: str, vectors: np.ndarray | None = None) -> ItemIndex:
        """Load the FAISS index `name` of `manifest["indexes"]`.

        `vectors`, the item vectors of the model the index serves, must be
        the vectors the index was built from; a mismatch raises `BuildError`.
        """
        from recsys.index import ItemIndex

        entries = self.manifest.get("indexes", {})
        if name not in entries:
            raise BuildError(
                f"build {self.version} has no index {name!r}; it has {sorted(entries)}",
                str(self.path / MANIFEST_FILE),
            )
        entry = entries[name]
        return ItemIndex.load(
            self.file(entry["file"]), vectors=vectors, fingerprint=entry["fingerprint"]
        )

    def array(self, name: str) -> np.ndarray:
        """Map the `.npy` file `name` read-only and return it as an array.

        Pages are read on first use and shared with every process that maps
        the same file. Arrays inside `.npz` files cannot be mapped: save
        large arrays with `np.save` to use this.
        """
        path = self.file(name)
        if path.suffix != ".npy":
            raise BuildError(
                f"cannot map {path}: only .npy files can be mapped; save the "
                "array with np.save, or read the file with np.load",
                str(path),
            )
        try:
            array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BuildError(f"cannot read array {path}: {exc}", str(path)) from exc
        return array


def open_build(path: Path | str) -> Build:
    """Verify a build directory against its manifest and return it.

    Raises `BuildError` (with `path` set to the offending file) when the
    manifest is missing or unreadable, or a listed file is missing, has
    another size or another sha256.
    """
    # Resolve `current` once, so that every file comes from the same build
    # even if the pointer is switched while this function reads.
    path = Path(path).resolve()
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BuildError(f"build file missing: {file}", str(file))
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise BuildError(
                f"build file {file} has {size} bytes, but the manifest lists "
                f"{expected['bytes']}; the file is truncated or was replaced",
                str(file),
            )
        if sha256_file(file) != expected["sha256"]:
            raise BuildError(
                f"build file {file} does not match its sha256 in the manifest; "
                "the file is corrupt or was replaced",
                str(file),
            )
    return Build(path, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check the shape of `path/manifest.json` (no checksums)."""
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BuildError(
            f"build manifest missing: {manifest_path}", str(manifest_path)
        ) from exc
    except (OSError, ValueError) as exc:
        raise BuildError(
            f"cannot read build manifest {manifest_path}: {exc}", str(manifest_path)
        ) from exc
    required = ("format_version", "version", "created_at", "files")
    missing = [key for key in required if key not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise BuildError(
            f"build manifest {manifest_path} lacks the keys {missing}",
            str(manifest_path),
        )
    if manifest["format_version"] != FORMAT_VERSION:
        raise BuildError(
            f"build manifest {manifest_path} has format_version "
            f"{manifest['format_version']!r}; this code reads {FORMAT_VERSION}",
            str(manifest_path),
        )
    return manifest


class StagedBuild:
    """A build being written under `.staging/`; publish it with `BuildStore`."""

    def __init__(self, version: str, path: Path) -> None:
        self.version = version
        self.path = path


class BuildStore:
    """The builds under one indexes directory; see the module docstring."""

    def __init__(self, root: Path | str, *, keep: int = 5) -> None:
        if keep < 2:
            raise BuildError(
                f"keep must be at least 2 (current and the one before), got {keep}"
            )
        self.root = Path(root)
        self.keep = keep
        self.builds_dir = self.root / BUILDS_DIR
        self.current_link = self.root / CURRENT_LINK

    # -- reading ----------------------------------------------------------

    def current_version(self) -> str | None:
        """Return the version `current` points to, or None before a publish."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BuildError(
                f"{self.current_link} is not a symlink: {exc}", str(self.current_link)
            ) from exc
        return Path(target).name

    def list_builds(self) -> list[BuildSummary]:
        """Return the published builds, oldest first.

        A directory under `builds/` whose manifest cannot be read is skipped
        with a warning; checksums are not verified here (see `open_build`).
        """
        current = self.current_version()
        unfinished = self._unfinished_publish()
        summaries = []
        if not self.builds_dir.is_dir():
            return []
        for path in self.builds_dir.iterdir():
            if not path.is_dir() or path.name == unfinished:
                continue
            try:
                manifest = read_manifest(path)
            except BuildError as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            summaries.append(
                BuildSummary(
                    version=path.name,
                    path=path,
                    created_at=str(manifest["created_at"]),
                    metrics=dict(manifest.get("metrics", {})),
                    is_current=path.name == current,
                    manifest=manifest,
                )
            )
        return sorted(summaries, key=lambda s: (s.created_at, s.version))

    def previous_version(self) -> str | None:
        """Return the newest build older than current, the rollback target."""
        builds = self.list_builds()
        current = self.current_version()
        positions = [i for i, b in enumerate(builds) if b.version == current]
        if not positions or positions[0] == 0:
            return None
        return builds[positions[0] - 1].version

    def open(self, version: str) -> Build:
        """Verify and return the build `version`."""
        path = self.builds_dir / version
        # A version is a folder name under builds/: "..", "" or a path would
        # point `current` outside the store.
        if version in ("", ".", "..") or "/" in version or not path.is_dir():
            known = [b.version for b in self.list_builds()]
            raise NotFoundError(f"build {version!r} not found; builds: {known}")
        return open_build(path)

    def open_current(self) -> Build:
        """Verify and return the current build."""
        version = self.current_version()
        if version is None:
            raise NotFoundError(
                f"no current build in {self.root}; run `recsys rebuild` first"
            )
        return self.open(version)

    # -- writing ----------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the rebuild lock, or raise `LockHeldError` at once.

        The kernel releases an flock when its process dies, so a killed
        rebuild never leaves the lock held.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        with open(path, "a+") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                file.seek(0)
                holder = file.read().strip() or "unknown"
                raise LockHeldError(
                    f"another rebuild or rollback holds {path} ({holder}); "
                    "wait for it to finish",
                    str(path),
                ) from exc
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()} since {utc_now()}\n")
            file.flush()
            try:
                yield
            finally:
                file.truncate(0)
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)

    def clean(self) -> None:
        """Remove staging and trash left by a killed rebuild (hold the lock)."""
        for name in (STAGING_DIR, TRASH_DIR):
            folder = self.root / name
            if not folder.is_dir():
                continue
            for leftover in folder.iterdir():
                log.info("removing %s left by an interrupted run", leftover)
                _remove(leftover)
        for leftover in self.root.glob(f".{CURRENT_LINK}.*"):
            log.info("removing %s left by an interrupted run", leftover)
            leftover.unlink()
        unfinished = self._unfinished_publish()
        if unfinished is not None:
            log.info("removing build %s whose publish was interrupted", unfinished)
            self._trash(self.builds_dir / unfinished)
        (self.root / PUBLISHING_FILE).unlink(missing_ok=True)

    def _unfinished_publish(self) -> str | None:
        """Return the version a killed publish moved into `builds/` but never
        made current, or None."""
        try:
            version = (self.root / PUBLISHING_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        if not version or version == self.current_version():
            return None
        if not (self.builds_dir / version).is_dir():
            return None
        return version

    def stage(self) -> StagedBuild:
        """Create an empty staging directory for a new build (hold the lock)."""
        version = self._new_version()
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{version}.{secrets.token_hex(4)}"
        path.mkdir()
        return StagedBuild(version, path)

    def discard(self, staged: StagedBuild) -> None:
        """Delete a staged build that will not be published."""
        _remove(staged.path)

    def publish(self, staged: StagedBuild, manifest: dict[str, Any]) -> Build:
        """Seal a staged build, move it into `builds/` and make it current.

        `manifest` gets `format_version`, `version`, `files` (size and sha256
        of every file in the staged directory) and is written last. On any
        failure the new build is removed and current is left as it was.
        """
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": staged.version,
            **manifest,
            "files": _file_entries(staged.path),
        }
        _write_json_durably(staged.path / MANIFEST_FILE, manifest)
        _fsync_tree(staged.path)
        _failpoint("sealed")

        # `.publishing` names the build between the rename and the switch, so
        # that a build whose publish was killed is never listed and is
        # removed by `clean`.
        intent = self.root / PUBLISHING_FILE
        _write_text_durably(intent, staged.version)
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        final = self.builds_dir / staged.version
        os.rename(staged.path, final)
        _fsync_dir(self.builds_dir)
        _failpoint("renamed")
        try:
            self.switch(staged.version)
        except BaseException:
            self._trash(final)
            raise
        finally:
            _failpoint("switched")
            intent.unlink(missing_ok=True)
        log.info("published build %s at %s", staged.version, final)
        return Build(final, manifest)

    def switch(self, version: str) -> None:
        """Point `current` at `version` atomically (hold the lock)."""
        if not (self.builds_dir / version).is_dir():
            raise NotFoundError(f"build {version!r} not found in {self.builds_dir}")
        temp = self.root / f".{CURRENT_LINK}.{secrets.token_hex(4)}"
        os.symlink(Path(BUILDS_DIR) / version, temp)
        try:
            os.replace(temp, self.current_link)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def rollback(self, to: str | None = None) -> Build:
        """Make `to` (default: the build before current) current; return it.

        The target build is verified first, so a corrupt build is never
        switched to. Takes the rebuild lock.
        """
        with self.lock():
            target = to if to is not None else self.previous_version()
            if target is None:
                raise NotFoundError(
                    f"no build older than current {self.current_version()!r} "
                    f"in {self.root}; name one with --to"
                )
            build = self.open(target)
            previous = self.current_version()
            self.switch(target)
        log.info("rolled back from %s to %s", previous, target)
        return build

    def prune(self) -> list[str]:
        """Delete all but the newest `keep` builds (hold the lock).

        Current and the build before it are kept whatever their age. Returns
        the versions deleted.
        """
        builds = self.list_builds()
        protected = {self.current_version(), self.previous_version()}
        protected.update(b.version for b in builds[-self.keep :])
        removed = []
        for build in builds:
            if build.version not in protected:
                self._trash(build.path)
                removed.append(build.version)
        if removed:
            log.info("removed old builds %s", removed)
        return removed

    def _trash(self, path: Path) -> None:
        trash = self.root / TRASH_DIR
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{path.name}.{secrets.token_hex(4)}"
        os.rename(path, target)
        _failpoint("trashed")
        _remove(target)

    def _new_version(self) -> str:
        base = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        version, n = base, 1
        while (self.builds_dir / version).exists():
            n += 1
            version = f"{base}-{n}"
        return version


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Return the versions of Python and the libraries that shape artifacts."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory: Path | None = None) -> dict[str, Any]:
    """Return the commit of the source checkout and whether it has edits.

    Both are None when the code does not run from a git checkout.
    """
    directory = directory or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def _file_entries(root: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise BuildError(f"builds may not contain symlinks: {path}", str(path))
        if path.is_file() and path.name != MANIFEST_FILE:
            name = path.relative_to(root).as_posix()
            entries[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return entries


def _write_json_durably(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2, sort_keys=False)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def _write_text_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    _fsync_dir(path.parent)


def _failpoint(step: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, children first."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
