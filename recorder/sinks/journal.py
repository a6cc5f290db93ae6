"""The crash journal: raw PCM beside the OGG while a recording is in progress.

Ogg Vorbis gives no way to force out a page: after a power cut the staged OGG can lack several
seconds of quiet audio, however often it is fsynced. The journal holds the exact samples and is
fsynced every `flush_seconds`, so recovery can rebuild all but the last flush interval. At about
96 kB/s (48 kHz mono) it costs an SD card little, and it is deleted once the recording is
published.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from recorder.audioformat import AudioFormat


class JournalSink:
    """Append int16 frames to a raw file, fsyncing every `flush_seconds` of audio."""

    def __init__(self, path: Path, fmt: AudioFormat, *, flush_seconds: float = 2.0) -> None:
        self.path = path
        self.frames = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)
        self._flush_every = max(1, fmt.frames(flush_seconds))
        self._next_flush = self._flush_every

    def write(self, block: np.ndarray) -> None:
        # Written straight from the block's buffer (no copy) when it is already C-ordered
        # little-endian int16, as the pump's blocks are.
        data = np.ascontiguousarray(block, dtype="<i2")
        view = data.data.cast("B")
        while view:
            view = view[os.write(self._fd, view) :]
        self.frames += block.shape[0]
        if self.frames >= self._next_flush:
            os.fsync(self._fd)
            self._next_flush = self.frames + self._flush_every

    def finish(self) -> dict[str, Any]:
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return {}

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
