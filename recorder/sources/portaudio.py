"""Capture from a real audio input through PortAudio (sounddevice).

The device is chosen by name substring (card numbers change between boots; names do not) or by
index, and checked against the requested rate and channels before anything starts. The callback
is the hard real-time part of the appliance: it copies into the preallocated ring and bumps
counters, nothing else.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from recorder.audioformat import AudioFormat
from recorder.errors import DeviceError
from recorder.ring import RingBuffer
from recorder.sources import SourceStats


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel has no PortAudio: libportaudio2 is missing
        msg = f"PortAudio is not available ({exc}); apt-get install libportaudio2"
        raise DeviceError(msg) from None
    return sounddevice


def rescan_devices() -> None:
    """Make PortAudio enumerate devices again (a USB microphone plugged in, a sound server
    restarted). PortAudio only enumerates at initialisation: every stream must be closed."""
    sd = _sounddevice()
    try:
        sd._terminate()
    finally:
        sd._initialize()


def input_devices() -> list[dict[str, Any]]:
    """Every device with input channels: index, name, host API, channels, default rate."""
    sd = _sounddevice()
    apis = sd.query_hostapis()
    return [
        {
            "index": i,
            "name": d["name"],
            "hostapi": apis[d["hostapi"]]["name"],
            "channels": d["max_input_channels"],
            "default_samplerate": d["default_samplerate"],
        }
        for i, d in enumerate(sd.query_devices())
        if d["max_input_channels"] > 0
    ]


def _describe(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no input devices found"
    return "available: " + "; ".join(f"[{d['index']}] {d['name']}" for d in devices)


def find_device(spec: str) -> int | None:
    """Resolve `spec` (``default``, an index, or a case-insensitive name substring) to an index.

    Raises DeviceError listing the input devices when nothing matches.
    """
    sd = _sounddevice()
    devices = input_devices()
    if spec in ("", "default"):
        default_in = sd.default.device[0]
        if default_in is None or default_in < 0:
            if devices:
                return devices[0]["index"]
            raise DeviceError(f"no default input device; {_describe(devices)}")
        return int(default_in)
    if spec.isdigit():
        index = int(spec)
        if any(d["index"] == index for d in devices):
            return index
        raise DeviceError(f"audio device {index} is not an input device; {_describe(devices)}")
    matches = [d for d in devices if spec.lower() in d["name"].lower()]
    if not matches:
        raise DeviceError(f"no input device matches {spec!r}; {_describe(devices)}")
    return matches[0]["index"]


class PortAudioSource:
    """A live input stream writing into a ring buffer."""

    def __init__(self, spec: str, fmt: AudioFormat, *, blocksize: int = 1024) -> None:
        self.spec = spec
        self.format = fmt
        samplerate, channels = fmt.samplerate, fmt.channels
        self.blocksize = blocksize
        self.stats = SourceStats()
        self._sd = _sounddevice()
        self.device = find_device(spec)
        self.name = self._sd.query_devices(self.device)["name"]
        try:
            self._sd.check_input_settings(device=self.device, channels=channels, dtype="int16",
                                          samplerate=samplerate)
        except Exception as exc:  # sounddevice raises PortAudioError or ValueError here
            raise DeviceError(
                f"input device {self.name!r} cannot record {channels} channel(s) at "
                f"{samplerate} Hz: {exc}"
            ) from None
        self._stream: Any = None
        self._ring: RingBuffer | None = None

    def start(self, ring: RingBuffer) -> None:
        self._ring = ring
        try:
            self._stream = self._sd.InputStream(
                device=self.device, samplerate=self.format.samplerate,
                channels=self.format.channels,
                dtype="int16", blocksize=self.blocksize, callback=self._callback,
                finished_callback=self._finished,
            )
            self._stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot open input device {self.name!r}: {exc}") from None

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # Real-time thread: copy and count only. No allocation of buffers, no locks, no logging.
        if status and status.input_overflow:
            self.stats.input_overflows += 1
        self._ring.write(indata)  # type: ignore[union-attr]
        self.stats.blocks += 1
        self.stats.last_block_at = time.monotonic()

    def _finished(self) -> None:
        if self.stats.error is None:
            self.stats.error = f"input stream on {self.name!r} ended"

    def stop(self) -> None:
        """Abort (not stop: a starved stream never returns from stop) with a time limit."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        done = threading.Event()

        def close() -> None:
            try:
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            finally:
                done.set()

        threading.Thread(target=close, name="portaudio-close", daemon=True).start()
        done.wait(3.0)
