"""The Cow Radio station for tests: a real Liquidsoap, the real `recorder run`, and what a
listener hears.

`Liquidsoap(script, log)` runs ``liquidsoap`` on a script written by ``recorder radio script``
(as root, which Liquidsoap refuses unless told, the setting comes first on the command line,
never in the generated script). `RecorderService` runs ``recorder run`` on a config file.

A station's Ogg stream is chained: Liquidsoap starts a new logical stream, headers and Vorbis
comments first, at every change of metadata. `heard(data)` cuts a listener's bytes at those
beginnings (BOS pages) and decodes each part on its own into a `Heard`: its audio and the
TITLE and ARTIST comments that came with it, so the audio can be matched (Audio ID) against
the recording whose title the stream claims. Pages are parsed here, independently of the
product, from the Ogg framing (RFC 3533).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.audioid.chroma import StreamingFingerprinter
from recorder.audioid.compare import compare
from recorder.control import send_command
from recorder.errors import ServiceError
from tests.conftest import need, terminate, wait_until

_BOS = 0x02


@dataclass(frozen=True)
class Page:
    offset: int
    size: int
    flags: int
    granule: int
    serial: int


def ogg_pages(data: bytes) -> list[Page]:
    """The complete Ogg pages in `data`, in order (a cut-off last page is left out)."""
    pages = []
    pos = 0
    while True:
        at = data.find(b"OggS", pos)
        if at < 0 or at + 27 > len(data):
            return pages
        segments = data[at + 26]
        if at + 27 + segments > len(data):
            return pages
        size = 27 + segments + sum(data[at + 27 : at + 27 + segments])
        if at + size > len(data):
            return pages
        pages.append(Page(at, size, data[at + 5],
                          int.from_bytes(data[at + 6 : at + 14], "little", signed=True),
                          int.from_bytes(data[at + 14 : at + 18], "little")))
        pos = at + size


@dataclass
class Heard:
    """One logical stream of what a listener received: its comments and its audio."""

    title: str
    artist: str
    rate: int
    audio: np.ndarray
    start: int  # byte offset in the listener's data
    end: int
    complete: bool  # another logical stream followed it
    _print: np.ndarray | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.rate if self.rate else 0.0

    def fingerprint(self) -> np.ndarray:
        if self._print is None:
            self._print = fingerprint(self.audio, self.rate)
        return self._print

    def matches(self, reference: np.ndarray, threshold: float = 0.15) -> bool:
        """Whether this audio is (a part of) the reference print's recording."""
        if self.seconds < 3.5:
            return False
        match = compare(self.fingerprint(), reference)
        return match.ber < threshold and match.overlap_seconds >= 1.5


def heard(data: bytes, cache: dict[tuple[int, int], Heard] | None = None) -> list[Heard]:
    """Every logical stream in `data` (a chained Ogg stream), decoded. `cache` keeps parts
    already decoded across calls on a growing buffer."""
    pages = ogg_pages(data)
    starts = [p.offset for p in pages if p.flags & _BOS]
    if not pages:
        return []
    end_of_pages = pages[-1].offset + pages[-1].size
    out = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else end_of_pages
        key = (start, end)
        if cache is not None and key in cache:
            out.append(cache[key])
            continue
        part = _decode(data[start:end], start, end, complete=i + 1 < len(starts))
        if part is None:
            continue
        if cache is not None and part.complete:
            cache[key] = part
        out.append(part)
    return out


def _decode(chunk: bytes, start: int, end: int, complete: bool) -> Heard | None:
    try:
        with sf.SoundFile(io.BytesIO(chunk)) as snd:
            title, artist, rate = snd.title or "", snd.artist or "", snd.samplerate
            audio = snd.read(dtype="int16", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError):
        return None
    return Heard(title, artist, rate, audio[:, 0], start, end, complete)


def fingerprint(audio: np.ndarray, rate: int) -> np.ndarray:
    """The Chromaprint items of int16 audio (mono, or first channel)."""
    if audio.ndim == 2:
        audio = audio[:, 0]
    fp = StreamingFingerprinter(rate, 1)
    for i in range(0, len(audio), 4096):
        fp.feed(audio[i : i + 4096, None])
    return fp.finish().items


def file_print(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    return fingerprint(data[:, 0], rate)


class Liquidsoap:
    """One ``liquidsoap`` process on a generated script; its output goes to `log`."""

    def __init__(self, script: Path, log: Path) -> None:
        self.binary = need("liquidsoap")
        self.script = script
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        first = ["settings.init.allow_root.set(true)"] if os.geteuid() == 0 else []
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([self.binary, *first, str(self.script)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc, 15)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class RecorderService:
    """``recorder run`` on a config file, with mock GPIO pins; `ctl()` talks to it."""

    def __init__(self, config: str, socket: Path, log: Path, env: dict[str, str] | None = None):
        self.socket = socket
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "recorder", "--config", config, "run"],
                env={**os.environ, **(env or {}), "GPIOZERO_PIN_FACTORY": "mock"},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self.status().get("state") == "idle", 60, 0.1, "recorder run armed")

    def status(self) -> dict:
        try:
            return send_command(self.socket, "status", timeout=15)
        except ServiceError:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            return {}

    def stop(self) -> None:
        terminate(self.proc)
