"""Replay any file soundfile can read as if it were a microphone.

Paced in real time by default (the demo, tests of the service) or as fast as the pipeline takes
it (`realtime=False`: benchmarks, long tests), in which case the producer waits for the reader
instead of overwriting unread audio.

The configuration's format wins: a file at another rate is resampled (libsoxr, "HQ" quality,
streamed block by block in this source's thread) and one with other channels is mixed to the
configured count (all channels averaged for mono; the first two kept for stereo, a mono file
doubled), so every stage after the source sees ``audio.samplerate`` x ``audio.channels``. A file
that holds no audio, or less than `sidecar.MIN_RECORDING_SECONDS`, is refused at open
(TooShortError, exit 6): nothing would be published from it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.audioformat import AudioFormat
from recorder.errors import InputFileError, TooShortError
from recorder.ring import RingBuffer
from recorder.sidecar import MIN_RECORDING_SECONDS
from recorder.sources import SourceStats


def open_sound_file(path: str | Path) -> sf.SoundFile:
    """Open `path` for reading, turning every failure into a one-line InputFileError."""
    p = Path(path)
    if p.is_dir():
        raise InputFileError(f"cannot read {p}: is a directory")
    if not p.is_file():
        raise InputFileError(f"cannot read {p}: no such file")
    if not os.access(p, os.R_OK):
        raise InputFileError(f"cannot read {p}: permission denied")
    if p.stat().st_size == 0:
        raise TooShortError(f"{p}: file is empty: holds no audio")
    try:
        return sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError) as exc:
        # soundfile raises LibsndfileError (a RuntimeError) for unknown or corrupt formats.
        detail = " ".join(str(exc).split())
        raise InputFileError(f"cannot decode {p}: not a readable audio file ({detail})") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {p}: {exc.strerror or exc}") from None


def to_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """Mix down or duplicate an int16 ``(frames, n)`` block to `channels` channels: mono is
    the mean of all channels; stereo keeps the first two (front left and right in every
    standard layout), or doubles a mono block."""
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, dtype=np.float32).astype(np.int16)[:, None]
    if have >= channels:
        return np.ascontiguousarray(block[:, :channels])
    return np.repeat(block[:, :1], channels, axis=1)


FAST_BLOCK = 16384


class FileSource:
    """Deliver a sound file's frames into the ring from a background thread."""

    def __init__(self, path: str | Path, fmt: AudioFormat, *, blocksize: int = 1024,
                 realtime: bool = True, loop: bool = False) -> None:
        self.path = Path(path)
        with open_sound_file(self.path) as f:
            rate = int(f.samplerate)
            self.file_frames = f.frames
            self.file_channels = int(f.channels)
        if self.file_frames <= 0:
            raise TooShortError(f"{self.path}: holds no audio")
        if self.file_frames < rate * MIN_RECORDING_SECONDS:
            raise TooShortError(
                f"{self.path}: only {self.file_frames} frames ({self.file_frames / rate:.3f} s), "
                f"under the {MIN_RECORDING_SECONDS:g} s a recording needs"
            )
        self.file_rate = rate  # resampled to fmt.samplerate when it differs
        self.format = fmt  # files with another channel count are mixed to it
        # As fast as possible there is no device period to imitate: big blocks cut per-block
        # overhead (decode calls, ring writes) to a small fraction of the encoder's cost.
        self.blocksize = blocksize if realtime else max(blocksize, FAST_BLOCK)
        self.realtime = realtime
        self.loop = loop  # replay forever: a file standing in for a microphone in the service
        self.name = f"file:{self.path}"
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, ring: RingBuffer) -> None:
        self._thread = threading.Thread(target=self._run, args=(ring,), name="file-source",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, ring: RingBuffer) -> None:
        started = time.monotonic()
        sent = 0
        try:
            while True:
                with open_sound_file(self.path) as f:
                    for block in self._converted(f):
                        if self._stop.is_set():
                            return
                        if self.realtime:
                            delay = started + sent / self.format.samplerate - time.monotonic()
                            if delay > 0 and self._stop.wait(delay):
                                return
                        else:
                            # Waits for a quarter of the ring, then writes blocks until that
                            # is used: one wake-up per few seconds of audio, not per block.
                            room = max(len(block), ring.capacity // 4)
                            while not ring.wait_for_space(len(block), keep=0, timeout=0) and \
                                    not ring.wait_for_space(room, keep=0, timeout=0.2):
                                if self._stop.is_set():
                                    return
                        ring.write(block)
                        sent += len(block)
                        self.stats.blocks += 1
                        self.stats.last_block_at = time.monotonic()
                if not self.loop or sent == 0:
                    return
        except (sf.LibsndfileError, RuntimeError, OSError, InputFileError) as exc:
            self.stats.error = f"reading {self.path} failed: {exc}"
        finally:
            self.stats.finished = True

    def _converted(self, f: sf.SoundFile) -> Iterator[np.ndarray]:
        """The file's blocks in the configured format (channels mixed, rate converted)."""
        channels, rate = self.format.channels, self.format.samplerate
        resampler = None
        if self.file_rate != rate:
            import soxr

            resampler = soxr.ResampleStream(self.file_rate, rate, channels, dtype="int16",
                                            quality="HQ")
        for block in f.blocks(blocksize=self.blocksize, dtype="int16", always_2d=True):
            block = to_channels(block, channels)
            if resampler is not None:
                block = resampler.resample_chunk(block).reshape(-1, channels)
                if not len(block):
                    continue
            yield block
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros((0, channels), np.int16), last=True)
            if len(tail):
                yield tail.reshape(-1, channels)
