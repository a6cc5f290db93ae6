"""A streaming Ogg encoder: int16 blocks in, Ogg pages out, as they are produced.

libsndfile (through soundfile) writes into a file-like object of ours that only collects bytes,
so each `encode()` returns whatever complete pages the codec has emitted so far. A fresh encoder
starts a fresh logical stream, headers first: Icecast listeners need those headers at the start
of every source connection, so the radio sink makes a new encoder for each connection.

Speech radio needs no more than 12 kHz of audio bandwidth, and a second Vorbis encoder at the
capture rate costs as much CPU as the recording's own; so with ``half_rate`` the stream is
low-passed and encoded at half the capture rate (24 kHz from 48 kHz), which halves the encoder's
work (tests/bench/bench_radio.py).

Quality settings go through soundfile's ``compression_level`` (shared/audio-stack.md):
Vorbis quality = 1 - level, and Opus bitrate = ((1 - level) * 250000 + 6000) * channels bit/s.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import soundfile as sf

from recorder.config import RadioConfig

log = logging.getLogger(__name__)

# libvorbis allocates on the stack in proportion to the block: huge writes crash the process
# (shared/audio-stack.md, trap 1). Every write is cut to at most this many frames.
MAX_WRITE_FRAMES = 4096
# libsndfile holds Opus pages for a second by default; a quarter second keeps the stream close
# to live without measurable overhead. (Vorbis pages follow libvorbis' own ~4 KB page fill.)
OPUS_PAGE_LATENCY_MS = 250.0
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h; soundfile has no public wrapper for it
_CODECS = {"vorbis": "VORBIS", "opus": "OPUS", "flac": "PCM_16"}
HALF_RATE_FROM = 32000  # capture rates from here up stream at half rate


def vorbis_level(quality: float) -> float:
    """soundfile compression_level for oggenc quality `quality` (-1..10).

    libsndfile's scale stops at oggenc's q0, so negative qualities encode as q0.
    """
    return min(1.0, max(0.0, 1.0 - quality / 10.0))


def opus_level(kbps_per_channel: float) -> float:
    """soundfile compression_level for an Opus bitrate in kbit/s per channel (6..256)."""
    return min(1.0, max(0.0, 1.0 - (kbps_per_channel * 1000.0 - 6000.0) / 250000.0))


class _Collector:
    """The file libsndfile writes to: appends bytes, reports a position, cannot go back.

    libsndfile only asks for the length and rewinds to 0 at open; Ogg output is written strictly
    in order after that, so seeks are answered with the current position and never move it.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class OggStreamEncoder:
    """One Ogg Vorbis or Opus stream, encoded incrementally. Not thread-safe: one thread uses it.

    Codec "flac" makes a native FLAC stream instead (not Ogg): the live hop to the station's
    harbor (`recorder.radio.station`). FLAC emits a frame every 4096 samples (170 ms at 24 kHz)
    where Vorbis waits to fill a 4 KB page (about a second of speech), so the harbor can go on
    the air with a shorter buffer; it costs less CPU than Vorbis, and its bitrate (about
    300 kbit/s) only crosses the loopback or the compose network.
    """

    def __init__(
        self,
        samplerate: int,
        channels: int,
        codec: str = "vorbis",
        *,
        vorbis_quality: float = 2.0,
        opus_bitrate: int = 32,
        half_rate: bool = False,
        title: str = "",
        artist: str = "",
    ) -> None:
        if codec not in _CODECS:
            raise ValueError(f"unknown stream codec {codec!r} (vorbis, opus or flac)")
        if half_rate and samplerate % 2:
            raise ValueError(f"cannot halve a sample rate of {samplerate} Hz")
        self.samplerate = samplerate
        self.stream_rate = samplerate // 2 if half_rate else samplerate
        self._halve = HalfRate(channels) if half_rate else None
        # Vorbis codes digital silence in a few bytes a second and libogg emits a page per ~4 KB,
        # so a silent input reached listeners 8-9 s late. Dither near -80 dBFS (inaudible, far
        # below any microphone's noise floor) keeps pages flowing about once a second.
        self._dither = Dither() if codec == "vorbis" else None
        self.channels = channels
        self.codec = codec
        self.frames = 0
        self.bytes_out = 0
        level = vorbis_level(vorbis_quality) if codec == "vorbis" else opus_level(opus_bitrate)
        self._sink = _Collector()
        self._file: sf.SoundFile | None = sf.SoundFile(
            self._sink,
            "w",
            samplerate=self.stream_rate,
            channels=channels,
            format="FLAC" if codec == "flac" else "OGG",
            subtype=_CODECS[codec],
            compression_level=level,
        )
        if codec == "opus":
            _set_page_latency(self._file, OPUS_PAGE_LATENCY_MS)
        # Stream comments (TITLE, ARTIST): what listeners' players and Icecast show. libsndfile
        # writes them with the headers, so they must be set before the first block.
        if title:
            self._file.title = title
        if artist:
            self._file.artist = artist

    @classmethod
    def from_config(cls, radio: RadioConfig, samplerate: int, channels: int, *,
                    title: str = "", artist: str = "") -> OggStreamEncoder:
        """The stream encoder `[radio]` asks for: at half the capture rate from 32 kHz up,
        with `title` and `artist` as its stream comments; FLAC to the station's harbor."""
        return cls(
            samplerate,
            channels,
            "flac" if radio.station else radio.codec,
            vorbis_quality=radio.vorbis_quality,
            opus_bitrate=radio.opus_bitrate,
            half_rate=samplerate >= HALF_RATE_FROM and samplerate % 2 == 0,
            title=title,
            artist=artist,
        )

    @property
    def content_type(self) -> str:
        return "audio/flac" if self.codec == "flac" else "audio/ogg"

    def encode(self, block: np.ndarray) -> bytes:
        """Encode int16 `block` (frames, channels); return the Ogg bytes completed so far.

        Often returns b"": the codec emits a page only every few hundred milliseconds.
        """
        if self._file is None:
            raise RuntimeError("stream encoder already closed")
        self.frames += block.shape[0]
        if self._halve is not None:
            block = self._halve.process(block)
        if self._dither is not None:
            block = self._dither.process(block)
        for start in range(0, block.shape[0], MAX_WRITE_FRAMES):
            self._file.write(block[start : start + MAX_WRITE_FRAMES])
        return self._take()

    def close(self) -> bytes:
        """End the stream; return its last pages (with the end-of-stream flag).

        FLAC: nothing. At the end libFLAC rewrites the stream header (lengths, checksum) as
        for a seekable file, which a stream cannot take back; the last partial frame (under
        170 ms) goes with it.
        """
        if self._file is None:
            return b""
        snd, self._file = self._file, None
        snd.close()
        data = self._take()
        return b"" if self.codec == "flac" else data

    def _take(self) -> bytes:
        data = self._sink.take()
        self.bytes_out += len(data)
        return data


class Dither:
    """Add uniform noise of +-3 LSB (RMS 2 LSB, about -84 dBFS) to near-silent int16 blocks.

    Louder blocks pass untouched: they keep Vorbis pages flowing by themselves, and skipping them
    keeps the cost to one peak check per block (quiet blocks cannot overflow when noise is added).
    """

    QUIET = 256  # peak below which a block counts as near-silent

    def __init__(self, seed: int = 0) -> None:
        self._noise = np.random.default_rng(seed).integers(-3, 4, size=1 << 16).astype(np.int16)
        self._at = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        if block.size == 0 or max(int(block.max()), -int(block.min())) >= self.QUIET:
            return block
        n = block.size
        if n > self._noise.size:  # larger than the table: tile it (rare: blocks are ~4096)
            return block + np.resize(self._noise, n).reshape(block.shape)
        if self._at + n > self._noise.size:
            self._at = 0
        noise = self._noise[self._at : self._at + n].reshape(block.shape)
        self._at += n
        return block + noise


class HalfRate:
    """Halve the sample rate of int16 blocks: windowed-sinc low-pass, keep every second sample.

    The filter passes up to about 10 kHz and stops above 12 kHz (at 48 kHz in); its state runs
    across blocks, so any block sizes give the same output as one long block.
    """

    TAPS = 47
    CUTOFF = 0.225  # cycles per input sample: 10.8 kHz at 48 kHz, under the new 12 kHz Nyquist

    def __init__(self, channels: int) -> None:
        k = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        taps = 2 * self.CUTOFF * np.sinc(2 * self.CUTOFF * k) * np.hamming(self.TAPS)
        # Symmetric, so no reversal is needed to turn correlation into convolution.
        self._taps = (taps / taps.sum()).astype(np.float32)
        self._history = np.zeros((self.TAPS - 1, channels), np.float32)
        self._odd = False  # whether the next input sample falls between two output samples

    def process(self, block: np.ndarray) -> np.ndarray:
        """Filter and decimate `block` (frames, channels); return the int16 output frames."""
        buf = np.concatenate([self._history, block.astype(np.float32)])
        self._history = buf[buf.shape[0] - (self.TAPS - 1) :]
        # Window j ends at new sample j; only every second window becomes an output sample.
        windows = np.lib.stride_tricks.sliding_window_view(buf, self.TAPS, axis=0)
        out = windows[1 if self._odd else 0 :: 2] @ self._taps
        self._odd ^= bool(block.shape[0] % 2)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _set_page_latency(snd: sf.SoundFile, ms: float) -> None:
    """Ask libsndfile to close Ogg pages after `ms` of audio (a no-op before libsndfile 1.1)."""
    value: Any = sf._ffi.new("double*", ms)
    if sf._snd.sf_command(snd._file, _SFC_SET_OGG_PAGE_LATENCY_MS, value, sf._ffi.sizeof("double")):
        log.debug("libsndfile refused an Ogg page latency of %s ms", ms)
