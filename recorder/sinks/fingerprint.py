"""The Audio ID sink: fingerprints a recording while it is made.

It feeds every block the pump hands it to Chromaprint (in the pump's worker thread; a 1024-frame
block costs a few microseconds of resampling and FFT work), so no recording is ever read back or
decoded to fingerprint it, and publishing costs the same for a minute or for three hours.

The same 11025 Hz stream feeds the landmark peak finder (`recorder.audioid.landmarks`), the
second fingerprint, built for audio heard through the air; its landmarks are not in the
sidecar: they wait in `landmarks.HANDOFF` for the catalogue to collect at publishing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recorder.audioid.chroma import StreamingFingerprinter
from recorder.audioid.landmarks import HANDOFF, PeakFinder, triplets
from recorder.errors import TooShortError

log = logging.getLogger(__name__)

BATCH_FRAMES = 8192


class FingerprintSink:
    """A per-recording sink (see the Sink protocol in docs/ARCHITECTURE.md).

    `finish()` returns ``{"audio_id": {...}}`` for the sidecar, or ``{}`` when the recording is
    too short to fingerprint (under 3 s): a short recording is still a recording.
    """

    def __init__(self, samplerate: int, channels: int, recording_id: str | None = None) -> None:
        self._peaks = PeakFinder() if recording_id is not None else None
        self._fp: StreamingFingerprinter | None = StreamingFingerprinter(
            samplerate, channels, tap=self._peaks.feed if self._peaks is not None else None)
        self._recording_id = recording_id
        # Blocks are fed in batches of about BATCH_FRAMES: the resampler, Chromaprint and the
        # peak finder cost mostly per call at the pump's 1024 frames (the prints are the same
        # however the stream is cut).
        self._queued: list[np.ndarray] = []
        self._queued_frames = 0

    def write(self, block: np.ndarray) -> None:
        """Feed int16 frames (frames, channels); the block is copied, never kept."""
        if self._fp is not None:
            self._queued.append(block.copy())
            self._queued_frames += block.shape[0]
            if self._queued_frames >= BATCH_FRAMES:
                self._flush(self._fp)

    def _flush(self, fp: StreamingFingerprinter) -> None:
        if self._queued:
            fp.feed(np.concatenate(self._queued))
            self._queued, self._queued_frames = [], 0

    def finish(self) -> dict[str, Any]:
        """The sidecar's ``audio_id`` (algorithm, version, compressed fingerprint, duration)."""
        fp, self._fp = self._fp, None
        if fp is None:
            return {}
        try:
            self._flush(fp)
            audio_id = fp.finish().audio_id()
        except TooShortError as exc:
            log.info("recording not fingerprinted: %s", exc)
            return {}
        if self._peaks is not None and self._recording_id is not None:
            HANDOFF.put(self._recording_id, triplets(self._peaks.finish()))
        return {"audio_id": audio_id}

    def abort(self) -> None:
        """Drop the fingerprint in progress. Never raises."""
        fp, self._fp = self._fp, None
        self._peaks = None
        self._queued = []
        if fp is not None:
            fp.abort()
