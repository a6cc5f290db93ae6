"""Sinks: everything that consumes audio, behind one interface.

The pump hands each sink int16 blocks of shape ``(frames, channels)`` from its worker thread.
Per-recording sinks (journal, OGG encoder, level meter, fingerprinter) live for one recording
and contribute fields to its sidecar through `finish()`; always-on sinks (the health level
meter, the radio stream) are attached to the pump for as long as the source runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from recorder.recording import AudioFacts, Levels

# What a per-recording sink reports at its end: the encoder its `AudioFacts`, the level meter
# its `Levels`, any other sink the sidecar fields it adds (``{"audio_id": ...}``, or nothing).
SinkFacts = AudioFacts | Levels | Mapping[str, Any]


class AlwaysOnSink(Protocol):
    """A consumer the pump feeds for as long as the source runs (level meter, radio stream).

    Called on the pump thread; it must not block (hand the audio over and return). A sink may
    also have a ``latency_sensitive`` attribute: while it is true (a live stream with a
    listener), the idle pump wakes every `recorder.pump.WAKE_SECONDS` instead of every
    `recorder.pump.IDLE_WAKE_SECONDS`."""

    def write(self, block: np.ndarray) -> None:
        """Consume int16 frames ``(frames, channels)``. Must not keep a reference to `block`."""


class Sink(Protocol):
    """A per-recording consumer: lives for one recording, contributes sidecar fields."""

    def write(self, block: np.ndarray) -> None:
        """Consume int16 frames ``(frames, channels)``. Must not keep a reference to `block`."""

    def finish(self) -> SinkFacts:
        """End of recording: flush, close and return what it learnt (see `SinkFacts`)."""

    def abort(self) -> None:
        """Give up (the recording failed or is discarded). Never raises."""
