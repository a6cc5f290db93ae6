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
from recorder.recording import AudioFacts

# libvorbis allocates on the stack in proportion to the block: one write of about 45 s of
# 48 kHz mono crashes the process (libsndfile issue 1095). Every write is cut to this size,
# which is also the cheapest: encoding a minute of speech took the fewest instructions at 4096
# (callgrind: 2048 +0.5 %, 8192 +1 %, 16384 +4 %, 1024 +3 %).
MAX_WRITE_FRAMES = 4096


class _HashingFile(io.RawIOBase):
    """A file libsndfile writes through, hashing bytes on the way (writes are sequential for
    OGG; any out-of-order write is detected and the hash recomputed from disk instead).

    A write the disk refuses (ENOSPC, EIO) never raises here: libsndfile calls this from a C
    callback, where an exception would only be printed and the bytes lost. The bytes are kept
    in memory, in order, and `error` is set; the encoder raises it after the write, and
    `flush_pending()` (from `sync`, at finish) retries once the disk has room again, so a
    full disk costs no audio that reached the encoder.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._hash = hashlib.sha256()
        self._hashed = 0
        self._pos = 0  # the logical position: bytes on disk plus `_pending`
        self._pending = bytearray()  # accepted, not yet on disk (after a refused write)
        self.error: OSError | None = None
        self._broken: OSError | None = None  # a seek the disk could not follow: file unusable
        self.valid = True

    def _write_out(self, data: bytes | bytearray | memoryview) -> int:
        """Write as much of `data` as the disk takes at the current position; return it."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        return done

    def write(self, b: Any) -> int:
        data = bytes(b)
        if self._pos != self._hashed:
            self.valid = False
        if self.valid:
            self._hash.update(data)
            self._hashed += len(data)
        if self._pending:
            self._pending += data
        else:
            written = 0
            try:
                written = self._write_out(data)
            except OSError as exc:
                # How far the write got is unknown after an error: find out from the file.
                self.error = exc
                written = max(0, os.lseek(self._fd, 0, os.SEEK_CUR) - self._pos)
                self._pending += data[written:]
        self._pos += len(data)
        return len(data)

    def flush_pending(self) -> None:
        """Write the bytes a full disk refused; raise the OSError if it still refuses."""
        while self._pending:
            try:
                done = os.write(self._fd, self._pending)
            except OSError as exc:
                self.error = exc
                raise
            del self._pending[:done]
        self.error = None

    def read(self, size: int = -1) -> bytes:
        self.flush_pending()
        return os.read(self._fd, size if size >= 0 else 1 << 30)

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self._pos + offset}.get(whence)
        if target == self._pos:
            return self._pos  # libsndfile asks where it is: no need to touch the disk
        try:
            self.flush_pending()
        except OSError as exc:
            self._broken = exc  # the bytes cannot be put where libsndfile wants them
            return self._pos
        self._pos = os.lseek(self._fd, offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def sync(self) -> None:
        if self._broken is not None:
            raise self._broken
        self.flush_pending()
        os.fsync(self._fd)

    def digest(self) -> tuple[str, int]:
        """(sha256 hex, size) of the file as written."""
        self.flush_pending()
        size = os.fstat(self._fd).st_size
        if self.valid and self._hashed == size:
            return self._hash.hexdigest(), size
        os.lseek(self._fd, 0, os.SEEK_SET)
        h = hashlib.sha256()
        while chunk := os.read(self._fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest(), size

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
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
        """Encode `block`; raises the OSError of a refused disk write after taking the whole
        block (its bytes wait in memory for `finish`)."""
        for i in range(0, block.shape[0], MAX_WRITE_FRAMES):
            self._sf.write(block[i : i + MAX_WRITE_FRAMES])
        self.frames += block.shape[0]
        if self._file.error is not None:
            raise self._file.error
        if self.frames >= self._next_flush:
            self.sync()
            self._next_flush = self.frames + self._flush_every

    def sync(self) -> None:
        """Push what libsndfile has buffered to the disk (fsync)."""
        self._sf.flush()
        self._file.sync()

    def finish(self) -> AudioFacts:
        """Close the stream and fsync; the file's facts. Raises OSError if the disk still
        refuses the last bytes (the sink can then only be aborted)."""
        if not self._sf.closed:
            self._sf.close()
        self._file.sync()
        sha256, size = self._file.digest()
        self._file.close()
        return AudioFacts(
            codec=self.codec, samplerate=self.format.samplerate,
            channels=self.format.channels, frames=self.frames,
            duration=round(self.format.seconds(self.frames), 3), sha256=sha256, bytes=size,
            encoder=self._settings,
        )

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._sf.close()
        with contextlib.suppress(OSError):
            self._file.flush_pending()  # whatever the disk takes now helps recovery
        self._file.close()
