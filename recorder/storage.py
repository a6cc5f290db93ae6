"""Free space and the disk reserve: the one owner of the rule "refuse, or finish, below the
reserve".

Recording start refuses below the reserve; a running recording is finished cleanly when the
reserve is reached (the pump asks after every stretch of audio it writes, so a recording
replayed faster than real time is checked as often per second of audio as a live one); the
service and ``recorder doctor`` report the same figure. The reserve is measured on the sync
root, the filesystem that holds staging and the published recordings.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import DiskReserveError

MB = 1024 * 1024

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

    @property
    def low(self) -> bool:
        return self.free_mb < self.reserve_mb


class Reserve:
    """The disk reserve on the filesystem of `path`: `check()` raises below it."""

    def __init__(self, path: Path, reserve_mb: int, free: FreeBytes = free_bytes) -> None:
        self.path = Path(path)
        self.reserve_mb = int(reserve_mb)
        self._free = free

    def free(self) -> int:
        """Free bytes now (OSError if the filesystem is gone)."""
        return self._free(self.path)

    def report(self) -> SpaceReport:
        """Free space against the reserve (OSError if the filesystem is gone)."""
        return SpaceReport(self.free() // MB, self.reserve_mb)

    def check(self) -> int:
        """Return the free bytes, or raise DiskReserveError below the reserve."""
        left = self.free()
        if left < self.reserve_mb * MB:
            raise DiskReserveError(
                f"only {left // MB} MB free on {self.path}, below the {self.reserve_mb} MB "
                "reserve: recording refused"
            )
        return left


def is_disk_full(exc: BaseException) -> bool:
    """True for the write errors that mean "no space left" (ENOSPC, EDQUOT)."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def same_filesystem(a: Path, b: Path) -> bool:
    """True if `a` and `b` (both existing) are on one filesystem (renames are atomic)."""
    return os.stat(a).st_dev == os.stat(b).st_dev
