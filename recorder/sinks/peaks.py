"""The waveform sink: the peaks a waveform picture is drawn from, computed while recording.

A recording's waveform is between `buckets` and twice `buckets` loudest-sample values, however
long it runs: buckets start 10 ms wide and, each time their count reaches twice `buckets`,
neighbours merge pairwise and the width doubles. Memory stays a few kilobytes for three hours,
and the work per block is two numpy reductions, so the pump pays next to nothing and nobody
decodes the recording afterwards. `recorder.waveform` stores the result at publish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

BUCKETS = 1000
FIRST_BUCKET_SECONDS = 0.01
FULL_SCALE = 32768


@dataclass(frozen=True)
class Waveform:
    """Peaks of one recording: each byte is the loudest sample of a bucket of
    `bucket_seconds`, 0..255 of full scale (rounded up, so any sound shows)."""

    peaks: bytes
    bucket_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"peaks": list(self.peaks), "bucket_seconds": self.bucket_seconds}


class Peaks:
    """Running peaks of int16 audio ``(frames, channels)`` at `samplerate`."""

    def __init__(self, samplerate: int, buckets: int = BUCKETS) -> None:
        self.samplerate = samplerate
        self.buckets = buckets
        self._hop = max(1, round(samplerate * FIRST_BUCKET_SECONDS))  # frames per bucket
        self._done = np.zeros(2 * buckets, dtype=np.int32)  # finished buckets' peaks
        self._count = 0
        self._partial = 0  # peak of the bucket being filled
        self._partial_frames = 0

    def add(self, block: np.ndarray) -> None:
        """Take a block into account; it is not kept."""
        frames = block.shape[0]
        at = 0
        while at < frames:
            if self._partial_frames or frames - at < self._hop:
                take = min(self._hop - self._partial_frames, frames - at)
                self._partial = max(self._partial, _peak(block[at:at + take]))
                self._partial_frames += take
                at += take
                if self._partial_frames == self._hop:
                    self._push(np.array([self._partial], dtype=np.int32))
                    self._partial, self._partial_frames = 0, 0
                continue
            room = len(self._done) - self._count
            whole = min((frames - at) // self._hop, room)
            end = at + whole * self._hop  # before _push: it may widen the buckets
            chunk = block[at:end].reshape(whole, -1)
            peaks = np.maximum(chunk.max(axis=1).astype(np.int32),
                               -chunk.min(axis=1).astype(np.int32))
            self._push(peaks)
            at = end

    def _push(self, peaks: np.ndarray) -> None:
        self._done[self._count:self._count + peaks.size] = peaks
        self._count += peaks.size
        if self._count == len(self._done):
            # Full: halve the resolution. The bucket being filled is now half of a wider one.
            self._done[:self.buckets] = self._done.reshape(-1, 2).max(axis=1)
            self._count = self.buckets
            self._hop *= 2

    def result(self) -> Waveform:
        """The peaks so far (the partial last bucket included)."""
        values = self._done[:self._count]
        if self._partial_frames:
            values = np.append(values, self._partial)
        scaled = np.minimum(255, -(-values.astype(np.int64) * 255 // FULL_SCALE))
        return Waveform(scaled.astype(np.uint8).tobytes(), self._hop / self.samplerate)


def _peak(block: np.ndarray) -> int:
    return max(int(block.max()), -int(block.min())) if block.size else 0


class PeaksSink:
    """Per-recording sink: peaks of everything written; at `finish()` they go to `deliver`
    (the waveform store holds them until the recording is published). No sidecar fields."""

    def __init__(self, samplerate: int, deliver: Callable[[Waveform], None]) -> None:
        self._peaks: Peaks | None = Peaks(samplerate)
        self._deliver = deliver

    def write(self, block: np.ndarray) -> None:
        if self._peaks is not None:
            self._peaks.add(block)

    def finish(self) -> dict[str, Any]:
        peaks, self._peaks = self._peaks, None
        if peaks is not None:
            self._deliver(peaks.result())
        return {}

    def abort(self) -> None:
        self._peaks = None
