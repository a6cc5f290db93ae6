"""Free space and the disk reserve: the one owner of the rule "refuse, or finish, below the
reserve".

Recording start refuses below the reserve; a running recording is finished cleanly when the
reserve is reached (the pump asks after every stretch of audio it writes, so a recording
replayed faster than real time is checked as often per second of audio as a live one); the
service and ``recorder doctor`` report the same figure. The reserve is measured on the sync
root, the filesystem that holds staging and the published recordings.

Below `MIN_FREE_BYTES` the disk counts as **full** whatever the reserve says (a reserve of 0
still needs room to finish and publish a recording): recording is refused with "disk full".
A write that fails with ENOSPC or EIO is turned into a one-line error here (`write_error`),
never a traceback.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recorder.atomic import makedirs_durable
from recorder.errors import ConfigError, DiskReserveError, RecorderError

MB = 1024 * 1024
# Room a recording needs to end cleanly: its spare file (see `recorder.session`) plus margin.
SPARE_BYTES = 1 * MB
MIN_FREE_BYTES = 2 * MB


class DiskFullError(DiskReserveError):
    """The disk is full (a write failed with ENOSPC, or less than MIN_FREE_BYTES free)."""


class StorageError(ConfigError):
    """A configured directory cannot be created or opened (a file in its path, a read-only
    or virtual filesystem): a configuration problem, named by its key."""


class WriteError(RecorderError):
    """A write failed for another reason than a full disk (EIO: the card is failing)."""

FreeBytes = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem that holds, or will hold,
    `path` (its nearest existing ancestor: the sync root may not be created yet)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class SpaceReport:
    """One reading of the reserve rule."""

    free_mb: int
    reserve_mb: int
    free_bytes: int = -1

    @property
    def full(self) -> bool:
        """Less than MIN_FREE_BYTES free: nothing can be recorded or rebuilt."""
        return 0 <= self.free_bytes < MIN_FREE_BYTES

    @property
    def low(self) -> bool:
        """Below the reserve (or full): no new recording starts."""
        return self.free_mb < self.reserve_mb or self.full


class Reserve:
    """The disk reserve on the filesystem of `path`: `check()` raises below it."""

    def __init__(self, path: Path, reserve_mb: int, free: FreeBytes = free_bytes) -> None:
        self.path = Path(path)
        self.reserve_mb = int(reserve_mb)
        self._free = free
        # Set by the wiring when a storage budget runs (recorder.budget): asked to free room
        # (peers' audio first) before a recording is ever refused; returns the bytes freed.
        self.reclaim: Callable[[int], int] | None = None

    def free(self) -> int:
        """Free bytes now (OSError if the filesystem is gone)."""
        return self._free(self.path)

    def report(self) -> SpaceReport:
        """Free space against the reserve (OSError if the filesystem is gone)."""
        left = self.free()
        return SpaceReport(left // MB, self.reserve_mb, left)

    def check(self) -> int:
        """Return the free bytes, or raise DiskFullError when the disk is full and
        DiskReserveError below the reserve."""
        left = self.free()
        floor = max(MIN_FREE_BYTES, self.reserve_mb * MB)
        if left < floor and self.reclaim is not None and self.reclaim(floor - left) > 0:
            left = self.free()
        if left < MIN_FREE_BYTES:
            raise DiskFullError(f"disk full: {left // 1024} KiB free on {self.path}")
        if left < self.reserve_mb * MB:
            raise DiskReserveError(
                f"only {left // MB} MB free on {self.path}, below the {self.reserve_mb} MB "
                "reserve: recording refused"
            )
        return left


def is_disk_full(exc: BaseException) -> bool:
    """True for the write errors that mean "no space left" (ENOSPC, EDQUOT), including
    SQLite's "database or disk is full" and our own DiskFullError."""
    import errno
    import sqlite3

    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == 13  # SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_error(exc: BaseException, what: str) -> RecorderError:
    """A failed write as a one-line error: DiskFullError for ENOSPC, else WriteError.
    `what` says what could not be done ("publishing 01h...: kept in staging")."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
        " ".join(str(exc).split()) or type(exc).__name__)
    if is_disk_full(exc):
        return DiskFullError(f"disk full ({reason}): {what}")
    return WriteError(f"write failed ({reason}): {what}")


def ensure_dir(path: Path, key: str) -> None:
    """Create `path` (and its parents, durably) or raise a one-line error naming the
    configuration `key` it comes from: StorageError (a file in the way, /proc, permissions)
    or DiskFullError."""
    try:
        makedirs_durable(Path(path))
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"disk full: cannot create {path}") from None
        raise StorageError(
            f"{key}: cannot create {path}: {exc.strerror or exc}"
        ) from None


def same_filesystem(a: Path, b: Path) -> bool:
    """True if `a` and `b` (both existing) are on one filesystem (renames are atomic)."""
    return os.stat(a).st_dev == os.stat(b).st_dev
