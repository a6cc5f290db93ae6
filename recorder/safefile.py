"""Reading files another device controls, without being led elsewhere.

A peer's folder arrives through Syncthing: any name in it may be a symlink, a FIFO, or swapped
between our check and our read. Every read of such a file goes through here: ``lstat``, refuse
anything but a regular file that resolves inside the folder, then ``open`` with ``O_NOFOLLOW``
(a symlink swapped in after the check fails the open) and ``fstat`` the descriptor actually
read. Size limits are enforced on the bytes read, not on the size stat reported.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

_HASH_CHUNK = 1 << 20


class UnsafeFile(Exception):
    """The file must not be read; the message is the reason ("is a symlink")."""


def inside(path: str | Path, folder: str | Path) -> bool:
    """True if `path` is `folder` or lies below it (plain path comparison)."""
    path, folder = str(path), str(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_regular(path: Path, st: os.stat_result, folder: Path, what: str = "") -> None:
    """Raise UnsafeFile unless `path` (whose lstat is `st`) is a regular file, not a symlink,
    that resolves inside `folder`. `what` prefixes the reason ("recording file ")."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(f"{what}is a symlink")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{what}is not a regular file")
    if not inside(os.path.realpath(path), os.path.realpath(folder)):
        raise UnsafeFile(f"{what}resolves outside the peer folder")


def open_nofollow(path: Path) -> int:
    """A read-only descriptor of the regular file `path`; UnsafeFile for a symlink or a
    special file (FileNotFoundError if it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink swapped in after the lstat
            raise UnsafeFile("is a symlink") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile("is not a regular file")
    return fd


def read_regular(path: Path, folder: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file inside `folder` (no symlink anywhere), at most
    `limit` bytes; UnsafeFile otherwise (FileNotFoundError if it is gone)."""
    st = os.lstat(path)
    check_regular(path, st, folder)
    if st.st_size > limit:
        raise UnsafeFile(f"too large ({st.st_size} bytes > {limit})")
    with os.fdopen(open_nofollow(path), "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"too large (more than {limit} bytes)")
    return data


def hash_regular(path: Path) -> str:
    """sha256 of a regular file opened without following symlinks."""
    digest = hashlib.sha256()
    with os.fdopen(open_nofollow(path), "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
