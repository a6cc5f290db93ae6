"""Atomic file publication: nothing half-written is ever visible.

A file is written under a temporary name (in a staging directory on the same filesystem, or a
dot-name in the target directory), flushed, fsynced, then renamed into place with
``os.replace``, and the directory is fsynced so the rename itself survives power loss.
The temporary names are never Syncthing's own ``.syncthing.*.tmp`` names.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or creation inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """Create `path` and its missing parents, fsyncing each parent after a creation."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def publish_file(staged: Path, target: Path) -> None:
    """fsync `staged` and rename it to `target` (same filesystem), making the result durable."""
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    makedirs_durable(target.parent)
    os.replace(staged, target)
    fsync_dir(target.parent)


def atomic_write_bytes(target: Path, data: bytes, staging_dir: Path | None = None) -> None:
    """Write `data` to `target` atomically.

    The temporary file goes into `staging_dir` when given (it must be on the target's
    filesystem, outside any synced folder), else next to the target under a hidden name.
    """
    import secrets  # here: its OpenSSL load is a cost for commands that never write a file

    tmp_dir = staging_dir if staging_dir is not None else target.parent
    makedirs_durable(tmp_dir)
    tmp = tmp_dir / f".{target.name}.{secrets.token_hex(4)}.partial"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish_file(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: Path, text: str, staging_dir: Path | None = None) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(target, text.encode("utf-8"), staging_dir)
