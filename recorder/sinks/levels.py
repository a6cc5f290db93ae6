"""Level meter: peak, RMS, clipped fraction and silence, on every block.

A recorder that captures silence (a microphone dropped after a brown-out) or clips must say so;
this meter is cheap enough to run on every block, both per recording (the sidecar's `levels`)
and always on (health warnings while idle).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recorder.recording import Levels

FULL_SCALE = 32768.0
CLIP_LEVEL = 32767  # int16 samples at either rail


def dbfs(value: float) -> float:
    """Amplitude (0..1 of full scale) in dBFS, floored at -120."""
    return 20 * math.log10(value) if value > 1e-6 else -120.0


class LevelMeter:
    """Running levels over everything written, plus where the last loud and clipped frames were."""

    def __init__(self, samplerate: int, silence_dbfs: float = -70.0) -> None:
        self.samplerate = samplerate
        self.silence_dbfs = silence_dbfs
        self._silence_amp = 10 ** (silence_dbfs / 20) * FULL_SCALE
        self.frames = 0
        self.samples = 0
        self.peak = 0
        self.sum_squares = 0.0
        self.clipped = 0
        self.last_loud_frame = -1  # frame count at the end of the last block above the floor
        self.last_clip_frame = -1
        self.block_rms = 0.0

    def write(self, block: np.ndarray) -> None:
        if block.size == 0:
            return
        low, high = int(block.min()), int(block.max())
        peak = max(high, -low)
        samples = block.astype(np.float32).ravel()
        sq = float(np.dot(samples, samples))
        clipped = 0
        if peak >= CLIP_LEVEL:  # only then can a sample sit at a rail: count them
            clipped = int(np.count_nonzero(block >= CLIP_LEVEL)) + int(
                np.count_nonzero(block <= -CLIP_LEVEL)
            )
        self.frames += block.shape[0]
        self.samples += block.size
        self.peak = max(self.peak, peak)
        self.sum_squares += sq
        self.clipped += clipped
        self.block_rms = math.sqrt(sq / block.size)
        if self.block_rms >= self._silence_amp:
            self.last_loud_frame = self.frames
        if clipped:
            self.last_clip_frame = self.frames

    def summary(self) -> dict[str, Any]:
        """Levels over everything written so far."""
        samples = max(1, self.samples)
        rms = math.sqrt(self.sum_squares / samples) / FULL_SCALE
        return {
            "peak_dbfs": round(dbfs(self.peak / FULL_SCALE), 2),
            "rms_dbfs": round(dbfs(rms), 2),
            "clipped_fraction": round(self.clipped / samples, 6),
            "silent": self.last_loud_frame < 0,
        }

    def seconds_since_loud(self) -> float:
        """Seconds of audio since the last block above the silence floor."""
        last = max(self.last_loud_frame, 0)
        return (self.frames - last) / self.samplerate

    def levels(self) -> Levels:
        """The typed summary (the sidecar's ``levels``)."""
        s = self.summary()
        return Levels(s["peak_dbfs"], s["rms_dbfs"], s["clipped_fraction"], s["silent"])

    def finish(self) -> Levels:
        return self.levels()

    def abort(self) -> None:
        pass
