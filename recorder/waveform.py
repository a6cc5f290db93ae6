"""Waveforms: the peaks of every recording, kept in the shared database, computed once.

A recording made here gets its peaks from the pump while it is recorded
(`recorder.sinks.peaks.PeaksSink`); the publisher stores them just before the recording
becomes visible (an enricher that adds nothing to the sidecar), so a page never sees a
published recording without them. Recordings that arrived without (peers' recordings,
recordings rebuilt by `recorder recover`) are decoded once, when a page first asks, and
cached the same way (`compute`).

Table ``waveforms``: recording id, bucket width in seconds, the peaks (one byte per bucket),
and how they were made (``recorded`` or ``decoded``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import IO, Any

import numpy as np
import soundfile as sf

from recorder.db import Database
from recorder.recording import Recording
from recorder.session import RecordingContext
from recorder.sinks import Sink
from recorder.sinks.peaks import Peaks, PeaksSink, Waveform

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS waveforms (
        recording_id TEXT PRIMARY KEY,
        bucket_seconds REAL NOT NULL,
        peaks BLOB NOT NULL,
        made TEXT NOT NULL CHECK (made IN ('recorded', 'decoded'))
    )""",
)
HELD = 16  # finished recordings whose peaks wait for their publication
DECODE_BLOCK = 65536


class Waveforms:
    """The ``waveforms`` table, and the peaks of recordings finished but not yet published.

    Thread-safe: the sink hands peaks over on the pump thread, the publisher stores them on
    its thread, the web page reads and decodes on its own (each with its own connection).
    """

    def __init__(self, database: Database) -> None:
        self.db = database
        database.ensure_schema(SCHEMA)
        self._held: OrderedDict[str, Waveform] = OrderedDict()
        self._lock = threading.Lock()
        self._decoding = threading.Lock()  # one decode at a time: a Pi has few cores
        self._undecodable: dict[str, str] = {}  # recording id -> why (not tried again)

    # -- made while recording ------------------------------------------------------------------
    def sink(self, ctx: RecordingContext) -> Sink:
        """A per-recording sink factory: peaks of the recording `ctx`."""

        def hold(waveform: Waveform) -> None:
            with self._lock:
                self._held[ctx.recording_id] = waveform
                while len(self._held) > HELD:  # recordings whose publication failed
                    self._held.popitem(last=False)

        return PeaksSink(ctx.format.samplerate, hold)

    def enrich(self, rec: Recording) -> dict[str, Any]:
        """Publisher enricher: store the held peaks of the recording being published (before
        it becomes visible); adds nothing to the sidecar."""
        rid = rec.recording_id
        with self._lock:
            waveform = self._held.pop(rid, None)
        if waveform is not None:
            self.put(rid, waveform, "recorded")
        return {}

    # -- stored --------------------------------------------------------------------------------
    def put(self, recording_id: str, waveform: Waveform, made: str) -> None:
        """Store (or replace) the peaks of a recording."""
        self.db.conn.execute(
            "INSERT OR REPLACE INTO waveforms (recording_id, bucket_seconds, peaks, made)"
            " VALUES (?, ?, ?, ?)",
            (recording_id, waveform.bucket_seconds, waveform.peaks, made))

    def get(self, recording_id: str) -> Waveform | None:
        """The stored peaks of a recording, or None."""
        row = self.db.conn.execute(
            "SELECT bucket_seconds, peaks FROM waveforms WHERE recording_id = ?",
            (recording_id,)).fetchone()
        return None if row is None else Waveform(bytes(row["peaks"]), row["bucket_seconds"])

    def compute(self, recording_id: str, audio: IO[bytes]) -> Waveform:
        """The peaks of a recording without them, decoded from `audio` (an open OGG file, read
        to the end, not closed) and stored. Raises RuntimeError (soundfile's) when the file
        does not decode, then at once for that recording until the process restarts."""
        with self._decoding:
            found = self.get(recording_id)  # decoded by the request that held the lock
            if found is not None:
                return found
            if recording_id in self._undecodable:  # a broken file costs one decode, not many
                raise RuntimeError(self._undecodable[recording_id])
            try:
                with sf.SoundFile(audio) as snd:
                    peaks = Peaks(snd.samplerate)
                    for block in snd.blocks(DECODE_BLOCK, dtype="int16", always_2d=True):
                        peaks.add(np.ascontiguousarray(block))
            except RuntimeError as exc:
                self._undecodable[recording_id] = str(exc)
                raise
            waveform = peaks.result()
            self.put(recording_id, waveform, "decoded")
            log.info("waveform of %s decoded (%d buckets)", recording_id, len(waveform.peaks))
            return waveform


__all__ = ["Waveform", "Waveforms"]
