"""Audio sources: where samples come from, behind one small interface.

Like gpiozero's pin factories, the rest of the pipeline never knows which source it has:
`PortAudioSource` (a real microphone through sounddevice) and `FileSource` (any file soundfile
reads, replayed in real time or as fast as possible) both write int16 frames into a
`RingBuffer` and keep the same counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from recorder.audioformat import AudioFormat
from recorder.config import AudioConfig, SourceSpec
from recorder.errors import NoAudioError
from recorder.ring import RingBuffer


@dataclass
class SourceStats:
    """Counters a source keeps; read by the pump and health checks from other threads."""

    blocks: int = 0
    input_overflows: int = 0  # reported by the backend (PortAudio input overflow flag)
    last_block_at: float = 0.0  # time.monotonic() of the newest block, 0 before the first
    finished: bool = False  # the input ended (end of file); a live device never finishes
    error: str | None = None  # why the source stopped delivering, if it failed


class AudioSource(Protocol):
    """Something that fills a ring buffer with int16 frames once started."""

    name: str
    format: AudioFormat  # what it delivers: the configured format, or it refuses to open
    stats: SourceStats

    def start(self, ring: RingBuffer) -> None:
        """Begin delivering audio into `ring` (non-blocking)."""

    def stop(self) -> None:
        """Stop delivering; never hangs, even if the device is gone."""


def configured_format(audio: AudioConfig) -> AudioFormat:
    """The format `audio` asks every source to deliver."""
    return AudioFormat(audio.samplerate, audio.channels)


def open_source(spec: SourceSpec, audio: AudioConfig, *, realtime: bool = True,
                loop: bool = False) -> AudioSource:
    """Open the source named by `spec` (a file or a PortAudio device) delivering the
    configured format.

    `realtime` and `loop` apply to files: pace like a live input, and replay forever.

    Raises InputFileError for an unreadable file and DeviceError for a missing device or one
    that cannot record the configured format (NoAudioError for ``none``, a hub).
    """
    if spec.none:
        raise NoAudioError()
    fmt = configured_format(audio)
    if spec.file is not None:
        from recorder.sources.file import FileSource

        return FileSource(spec.file, fmt, blocksize=audio.blocksize, realtime=realtime,
                          loop=loop)
    from recorder.sources.portaudio import PortAudioSource

    return PortAudioSource(spec.device, fmt, blocksize=audio.blocksize)
