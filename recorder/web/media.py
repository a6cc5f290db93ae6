"""Recording files for the player: found by recording id, opened without being led elsewhere.

Nothing is ever served by a path taken from a URL. A recording is looked up by its id in the
catalogue; its file is ``<sync_root>/<device id>/<path>`` as the validated sidecar says, and is
opened only if the device folder is a real directory (never a symlink), the file is a regular
file that resolves inside that folder, and the open itself refuses symlinks
(`recorder.safefile`): a peer's folder cannot point the page at /etc.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recorder.deviceid import is_device_id
from recorder.layout import Layout
from recorder.safefile import UnsafeFile, check_regular, open_nofollow

CHUNK = 64 * 1024
RECORDING_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")


class NotServed(Exception):
    """The file is missing or must not be served; the message says why (for the log)."""


@dataclass
class OpenRecording:
    """An open recording file: its descriptor (owned: `chunks` or `close` closes it)."""

    fd: int
    size: int
    mtime: float

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` in pieces, then close the file (also when abandoned)."""
        try:
            at = start
            while at < end:
                data = os.pread(self.fd, min(CHUNK, end - at), at)
                if not data:
                    break
                at += len(data)
                yield data
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_recording(layout: Layout, device_id: str, path: str) -> OpenRecording:
    """Open the recording file `path` of `device_id`'s folder; NotServed when it is gone or
    anything about it is not a plain file inside a real device folder."""
    if not is_device_id(device_id):
        raise NotServed(f"not a device id: {device_id!r}")
    folder = layout.folder_of(device_id)
    target = folder / path
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise NotServed(f"{folder} is not a directory (a symlink?)")
        check_regular(target, os.lstat(target), folder, "recording file ")
        fd = open_nofollow(target)
    except (UnsafeFile, OSError) as exc:
        raise NotServed(f"{target}: {exc}") from None
    st = os.fstat(fd)
    return OpenRecording(fd, st.st_size, st.st_mtime)


def recording_path_ok(path: str) -> bool:
    """A sidecar-style recording path (``recordings/YYYY/MM/DD/NAME.ogg``), nothing else."""
    parts = Path(path).parts
    return (len(parts) == 5 and parts[0] == "recordings" and ".." not in parts
            and not path.startswith("/") and path.endswith((".ogg", ".opus")))
