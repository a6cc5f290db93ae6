"""One recording in progress: its staged files, its sinks, its bookmarks.

Everything a recording writes while it runs lives in the staging directory (same filesystem as
the sync root, outside every synced folder): ``<id>.meta.json`` (written first, atomically: what
recovery needs to rebuild a sidecar), ``<id>.pcm`` (the crash journal) and ``<id>.ogg``. Nothing
here is visible to Syncthing, papad or a user until the publisher renames it into place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recorder import __version__, sidecar
from recorder.atomic import atomic_write_text, makedirs_durable
from recorder.audioformat import AudioFormat
from recorder.clock import Timestamp
from recorder.config import EncoderConfig
from recorder.sinks import Sink
from recorder.sinks.encoder import OggEncoderSink
from recorder.sinks.journal import JournalSink
from recorder.sinks.levels import LevelMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionSettings:
    """What a recording needs from the configuration (built in `recorder.app`)."""

    device_id: str
    staging_dir: Path
    encoder: EncoderConfig
    flush_seconds: float
    silence_dbfs: float


@dataclass(frozen=True)
class RecordingContext:
    """What a per-recording sink factory may need to know."""

    recording_id: str
    device_id: str
    format: AudioFormat
    staging_dir: Path


SinkFactory = Callable[[RecordingContext], Sink]


@dataclass
class StagedRecording:
    """A finished recording still in staging: the publisher's input."""

    meta: dict[str, Any]
    ogg: Path
    staged_files: list[Path] = field(default_factory=list)  # removed once published


def staged_paths(staging_dir: Path, recording_id: str) -> dict[str, Path]:
    """The staging files of one recording."""
    return {
        "meta": staging_dir / f"{recording_id}.meta.json",
        "journal": staging_dir / f"{recording_id}.pcm",
        "ogg": staging_dir / f"{recording_id}.ogg",
    }


class Session:
    """A recording: created with its metadata, fed blocks by the pump, finished into staging."""

    def __init__(self, settings: SessionSettings, fmt: AudioFormat, *, started: Timestamp,
                 preroll: float, trigger: str, title: str = "", tags: Sequence[str] = (),
                 max_frames: int | None = None, extra_sinks: Sequence[SinkFactory] = ()) -> None:
        self.recording_id = sidecar.new_recording_id(started.utc)
        self.done: Future[Any] = Future()  # completes with the Published result
        self.format = fmt
        self.frames = 0
        self.max_frames = max_frames
        start_utc = started.utc - preroll
        device_id = settings.device_id
        name = sidecar.recording_name(
            datetime.fromtimestamp(start_utc, UTC), device_id, self.recording_id
        )
        staging = settings.staging_dir
        makedirs_durable(staging)
        self.paths = staged_paths(staging, self.recording_id)
        enc = settings.encoder
        self.meta: dict[str, Any] = {
            "schema": sidecar.SCHEMA,
            "recording_id": self.recording_id,
            "device_id": device_id,
            "path": sidecar.relative_path(datetime.fromtimestamp(start_utc, UTC), name),
            "media_type": "audio/ogg",
            "codec": enc.codec,
            "samplerate": fmt.samplerate,
            "channels": fmt.channels,
            "started_at": sidecar.utc_iso(start_utc),
            "clock_synced": started.clock_synced,
            "boot_id": started.boot_id,
            "monotonic_start": round(started.monotonic - preroll, 6),
            "trigger": trigger,
            "preroll": round(preroll, 3),
            "title": title,
            "tags": list(tags),
            "bookmarks": [],
            "software": f"recorderpi {__version__}",
        }
        self._write_meta()
        ctx = RecordingContext(self.recording_id, device_id, fmt, staging)
        self.levels = LevelMeter(fmt.samplerate, settings.silence_dbfs)
        self.sinks: list[Sink] = []
        try:
            self.sinks.append(JournalSink(self.paths["journal"], fmt,
                                          flush_seconds=settings.flush_seconds))
            self.sinks.append(OggEncoderSink(
                self.paths["ogg"], fmt, enc, flush_seconds=settings.flush_seconds,
                comments={"title": title or name, "date": self.meta["started_at"],
                          "comment": f"recording_id={self.recording_id}",
                          "software": self.meta["software"]},
            ))
            self.sinks.append(self.levels)
            self.sinks.extend(factory(ctx) for factory in extra_sinks)
        except BaseException:
            self.abort()
            raise

    def _write_meta(self) -> None:
        atomic_write_text(self.paths["meta"], json.dumps(self.meta, sort_keys=True))

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.frames >= self.max_frames

    def write(self, block: np.ndarray) -> int:
        """Feed every sink; returns frames taken (fewer than given once `max_frames` is hit)."""
        if self.max_frames is not None:
            block = block[: max(0, self.max_frames - self.frames)]
        if block.shape[0] == 0:
            return 0
        for sink in self.sinks:
            sink.write(block)
        self.frames += block.shape[0]
        return block.shape[0]

    def mark(self, at_frame: int, label: str = "") -> float:
        """Add a bookmark `at_frame` frames into the recording; returns its time in seconds."""
        at = round(self.format.seconds(max(0, at_frame)), 3)
        self.meta["bookmarks"].append({"at": at, "label": label})
        self._write_meta()  # so a bookmark survives a crash too
        return at

    def finish(self, stop_reason: str) -> StagedRecording:
        """Close every sink and return the staged recording (metadata merged from the sinks)."""
        meta = dict(self.meta)
        for sink in self.sinks:
            meta.update(sink.finish())
        meta["stop_reason"] = stop_reason
        meta["recovered"] = False
        return StagedRecording(
            meta=meta, ogg=self.paths["ogg"],
            staged_files=[self.paths["journal"], self.paths["meta"]],
        )

    def abort(self) -> None:
        """Stop writing; staged files stay for `recorder recover`."""
        for sink in self.sinks:
            try:
                sink.abort()
            except Exception:
                log.exception("sink abort failed")
