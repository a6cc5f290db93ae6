"""Replay any file soundfile can read as if it were a microphone.

Paced in real time by default (the demo, tests of the service) or as fast as the pipeline takes
it (`realtime=False`: benchmarks, long tests), in which case the producer waits for the reader
instead of overwriting unread audio.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.audioformat import AudioFormat
from recorder.errors import InputFileError
from recorder.ring import RingBuffer
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
    try:
        return sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError) as exc:
        # soundfile raises LibsndfileError (a RuntimeError) for unknown or corrupt formats.
        detail = " ".join(str(exc).split())
        raise InputFileError(f"cannot decode {p}: not a readable audio file ({detail})") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {p}: {exc.strerror or exc}") from None


def to_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """Mix down or duplicate an int16 ``(frames, n)`` block to `channels` channels."""
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, dtype=np.float32).astype(np.int16)[:, None]
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
        if rate != fmt.samplerate:
            raise InputFileError(
                f"cannot record {self.path}: it is {rate} Hz, the configuration records at "
                f"{fmt.samplerate} Hz (audio.samplerate); convert it first, e.g. "
                f"sox IN -r {fmt.samplerate} OUT.wav"
            )
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
                    for block in f.blocks(blocksize=self.blocksize, dtype="int16",
                                          always_2d=True):
                        if self._stop.is_set():
                            return
                        block = to_channels(block, self.format.channels)
                        if self.realtime:
                            delay = started + sent / self.format.samplerate - time.monotonic()
                            if delay > 0 and self._stop.wait(delay):
                                return
                        else:
                            while not ring.wait_for_space(len(block), keep=0, timeout=0.2):
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
