"""The audio format every stage after the source agrees on.

One small value type instead of loose ``samplerate``/``channels`` integers passed side by side:
the source announces its `AudioFormat`, the ring, the sinks and the session take it, and a
mismatch (a file at another rate than the configuration) is a comparison of two values, not a
scattering of checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_DTYPE = np.dtype(np.int16)  # samples are int16 (frames, channels) after the source


@dataclass(frozen=True)
class AudioFormat:
    """Interleaved int16 PCM at `samplerate` frames per second with `channels` channels."""

    samplerate: int
    channels: int

    def __post_init__(self) -> None:
        if self.samplerate <= 0 or self.channels <= 0:
            raise ValueError(f"invalid audio format {self.samplerate} Hz x {self.channels}")

    def frames(self, seconds: float) -> int:
        """Whole frames in `seconds` (never negative)."""
        return int(max(0.0, seconds) * self.samplerate)

    def seconds(self, frames: int) -> float:
        """Duration of `frames` frames."""
        return frames / self.samplerate

    @property
    def bytes_per_second(self) -> int:
        """Raw PCM bytes per second (what the crash journal writes)."""
        return self.samplerate * self.channels * SAMPLE_DTYPE.itemsize

    def __str__(self) -> str:
        return f"{self.samplerate} Hz, {self.channels} ch"
