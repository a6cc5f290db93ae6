"""The OGG encoder sink: Vorbis (default) or Opus through soundfile, written as a stream.

Three things matter here. Blocks go to libsndfile in small pieces, because one large Vorbis write
crashes the process (libvorbis allocates on the stack in proportion to the block). The file is
flushed and fsynced every `flush_seconds` of audio, so a power cut loses at most that much. And the
bytes are hashed as they are written, so the sha256 is ready the moment the file closes and
stop-to-published does not grow with the length of the recording.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder import codec as codecs
from recorder.audioformat import AudioFormat
from recorder.config import EncoderConfig

# libvorbis allocates on the stack in proportion to the block: one write of about 45 s of
# 48 kHz mono crashes the process (libsndfile issue 1095). Every write is cut to this size.
MAX_WRITE_FRAMES = 4096


class _HashingFile(io.RawIOBase):
    """A file libsndfile writes through, hashing bytes on the way (writes are sequential for
    OGG; any out-of-order write is detected and the hash recomputed from disk instead)."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "w+b")  # noqa: SIM115 - closed in close()
        self._hash = hashlib.sha256()
        self._hashed = 0
        self.valid = True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if self._fh.tell() != self._hashed:
            self.valid = False
        written = self._fh.write(data)
        if self.valid:
            self._hash.update(data)
            self._hashed += written
        return written

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def digest(self) -> tuple[str, int]:
        """(sha256 hex, size) of the file as written."""
        self._fh.flush()
        size = os.fstat(self._fh.fileno()).st_size
        if self.valid and self._hashed == size:
            return self._hash.hexdigest(), size
        self._fh.seek(0)
        h = hashlib.sha256()
        while chunk := self._fh.read(1 << 20):
            h.update(chunk)
        return h.hexdigest(), size

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        super().close()


class OggEncoderSink:
    """Encode int16 blocks into an OGG file at `path`."""

    def __init__(self, path: Path, fmt: AudioFormat, encoder: EncoderConfig, *,
                 comments: dict[str, str] | None = None, flush_seconds: float = 2.0) -> None:
        codec = encoder.codec
        problem = codecs.unsupported_rate(codec, fmt.samplerate)
        if problem:
            raise ValueError(problem)  # config refuses such pairs; this guards other callers
        self.path = path
        self.codec = codec
        self.format = fmt
        self.frames = 0
        self._flush_every = max(1, fmt.frames(flush_seconds))
        self._next_flush = self._flush_every
        self._file = _HashingFile(path)
        try:
            self._sf = sf.SoundFile(
                self._file, "w", samplerate=fmt.samplerate, channels=fmt.channels,
                format="OGG", subtype=codecs.SUBTYPES[codec],
                compression_level=codecs.compression_level(codec, encoder.vorbis_quality,
                                                           encoder.opus_bitrate),
            )
        except BaseException:
            self._file.close()
            raise
        # Ogg comments must be set before the first audio write: they live in the header packet.
        for key, value in (comments or {}).items():
            if value:
                setattr(self._sf, key, value)
        self._settings = ({"vorbis_quality": encoder.vorbis_quality} if codec == "vorbis"
                          else {"opus_bitrate": encoder.opus_bitrate})

    def write(self, block: np.ndarray) -> None:
        for i in range(0, block.shape[0], MAX_WRITE_FRAMES):
            self._sf.write(block[i : i + MAX_WRITE_FRAMES])
        self.frames += block.shape[0]
        if self.frames >= self._next_flush:
            self.sync()
            self._next_flush = self.frames + self._flush_every

    def sync(self) -> None:
        """Push what libsndfile has buffered to the disk (fsync)."""
        self._sf.flush()
        self._file.sync()

    def finish(self) -> dict[str, Any]:
        self._sf.close()
        self._file.sync()
        sha256, size = self._file.digest()
        self._file.close()
        return {
            "codec": self.codec,
            "encoder": self._settings,
            "samplerate": self.format.samplerate,
            "channels": self.format.channels,
            "frames": self.frames,
            "duration": round(self.format.seconds(self.frames), 3),
            "sha256": sha256,
            "bytes": size,
        }

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._sf.close()
        self._file.close()
