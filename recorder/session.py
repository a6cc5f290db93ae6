"""One recording in progress: its staged files, its sinks, its bookmarks.

Everything a recording writes while it runs lives in the staging directory (same filesystem as
the sync root, outside every synced folder): ``<id>.pcm`` (the crash journal, created first and
locked: see below), ``<id>.meta.json`` (written atomically: what recovery needs to rebuild a
sidecar; rewritten on each bookmark and when the overflow counters change), ``<id>.ogg`` and
``<id>.spare``. Nothing here is visible to Syncthing, papad or a user until the publisher renames
it into place.

Two rules make a full disk survivable:

- The journal is locked (``flock``) from before the metadata exists until the recording is
  published or has failed, so ``recorder recover`` (or the service's retry) never touches a
  recording another thread or process is still making.
- ``<id>.spare`` reserves `SPARE_BYTES` while the recording runs. It is released when the
  recording ends, before the sinks are closed, so a disk filled by somebody else still has room
  for the encoder's last pages and the sidecar: the recording is finished with what reached
  the encoder (``stop_reason = disk_full``) instead of being stranded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from recorder import __version__
from recorder.atomic import atomic_write_text
from recorder.audioformat import AudioFormat
from recorder.clock import Timestamp
from recorder.config import EncoderConfig
from recorder.errors import TooShortError
from recorder.recording import (
    AudioFacts,
    Bookmark,
    Levels,
    Overflows,
    Recording,
    Start,
    finished,
    new_recording_id,
    new_start,
)
from recorder.sinks import Sink
from recorder.sinks.encoder import OggEncoderSink
from recorder.sinks.journal import JournalSink
from recorder.sinks.levels import LevelMeter
from recorder.storage import SPARE_BYTES, DiskFullError, ensure_dir, is_disk_full

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

    recording: Recording
    ogg: Path
    staged_files: list[Path] = field(default_factory=list)  # removed once published


def staged_paths(staging_dir: Path, recording_id: str) -> dict[str, Path]:
    """The staging files of one recording."""
    return {
        "meta": staging_dir / f"{recording_id}.meta.json",
        "journal": staging_dir / f"{recording_id}.pcm",
        "ogg": staging_dir / f"{recording_id}.ogg",
        "spare": staging_dir / f"{recording_id}.spare",
    }


def lock_recording(journal: Path, *, create: bool = False) -> int | None:
    """Take the lock that says "this recording is being made or recovered": an exclusive
    ``flock`` on its journal. Returns the descriptor holding it (close it to release), or None
    when another thread or process holds it. Raises OSError if the journal cannot be opened
    (FileNotFoundError when it does not exist and `create` is false)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(journal, flags, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Session:
    """A recording: created with its metadata, fed blocks by the pump, finished into staging."""

    def __init__(self, settings: SessionSettings, fmt: AudioFormat, *, started: Timestamp,
                 preroll: float, trigger: str, title: str = "", tags: Sequence[str] = (),
                 max_frames: int | None = None, extra_sinks: Sequence[SinkFactory] = ()) -> None:
        self.recording_id = new_recording_id(started.utc)
        self.done: Future[Any] = Future()  # completes with the Published result
        self.format = fmt
        self.frames = 0
        self.max_frames = max_frames
        device_id = settings.device_id
        staging = settings.staging_dir
        ensure_dir(staging, "storage.staging_dir")
        self.paths = staged_paths(staging, self.recording_id)
        self._lock_fd: int | None = None
        self._meta_owed = False  # a rewrite of the staged metadata failed (full disk)
        self._claim_staging()
        self.done.add_done_callback(lambda _: self.release())
        enc = settings.encoder
        self.start: Start = new_start(
            recording_id=self.recording_id, device_id=device_id, codec=enc.codec,
            samplerate=fmt.samplerate, channels=fmt.channels,
            started_utc=started.utc - preroll, monotonic_start=started.monotonic - preroll,
            clock_synced=started.clock_synced, boot_id=started.boot_id, trigger=trigger,
            preroll=preroll, title=title, tags=tags, overflows=Overflows(0, 0),
            software=f"recorderpi {__version__}",
        )
        try:
            self._write_meta()
        except OSError as exc:
            self.discard()
            if is_disk_full(exc):
                raise DiskFullError("disk full: cannot start a recording") from None
            raise
        ctx = RecordingContext(self.recording_id, device_id, fmt, staging)
        self.levels = LevelMeter(fmt.samplerate, settings.silence_dbfs)
        self.sinks: list[Sink] = []
        try:
            self.sinks.append(JournalSink(self.paths["journal"], fmt,
                                          flush_seconds=settings.flush_seconds))
            self.sinks.append(OggEncoderSink(
                self.paths["ogg"], fmt, enc, flush_seconds=settings.flush_seconds,
                comments={"title": title or self.start.name, "date": self.start.started_at,
                          "comment": f"recording_id={self.recording_id}",
                          "software": self.start.software or ""},
            ))
            self.sinks.append(self.levels)
            self.sinks.extend(factory(ctx) for factory in extra_sinks)
        except BaseException as exc:
            self.discard()  # it never started: nothing of it is kept
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise DiskFullError("disk full: cannot start a recording") from None
            raise

    def _claim_staging(self) -> None:
        """Lock the journal (created here, before the metadata recovery looks for) and
        reserve the spare; DiskFullError when even that does not fit."""
        try:
            self._lock_fd = lock_recording(self.paths["journal"], create=True)
            spare = os.open(self.paths["spare"], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(spare, 0, SPARE_BYTES)
            except OSError as exc:
                if is_disk_full(exc):
                    raise
                # No spare where the filesystem cannot preallocate or a file size limit is
                # lower (EOPNOTSUPP, EFBIG): the recording goes on, it just finishes on the
                # first failing write instead of after the spare's worth.
                log.info("no room reserved for finishing the recording: %s", exc.strerror)
                os.ftruncate(spare, 0)
            finally:
                os.close(spare)
        except OSError as exc:
            self.discard()
            if is_disk_full(exc):
                raise DiskFullError("disk full: no room to start a recording") from None
            raise

    def release_spare(self) -> None:
        """Give the spare's room back (the recording is ending). Never raises."""
        with contextlib.suppress(OSError):
            os.unlink(self.paths["spare"])

    def release(self) -> None:
        """The recording is published or failed: release the spare and the lock, after which
        ``recorder recover`` may take over whatever is left in staging. Never raises."""
        self.release_spare()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def discard(self) -> None:
        """Remove every staged file of this recording (it holds no audio worth keeping) and
        release it. Never raises."""
        for sink in getattr(self, "sinks", []):
            with contextlib.suppress(Exception):
                sink.abort()
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.release()

    def _write_meta(self) -> None:
        """Rewrite the staged metadata; on failure it is owed, and retried at `finish`."""
        self._meta_owed = True
        atomic_write_text(self.paths["meta"], json.dumps(self.start.to_doc(), sort_keys=True))
        self._meta_owed = False

    def note_overflows(self, input_overflows: int, ring_frames: int) -> None:
        """Record the audio lost so far in the staged metadata (rewritten only when the
        counts changed), so a recording rebuilt after a crash reports it too. A failed
        rewrite is logged: the counts still reach the sidecar of a finished recording."""
        counts = Overflows(int(input_overflows), int(ring_frames))
        if self.start.overflows == counts:
            return
        self.start = replace(self.start, overflows=counts)
        try:
            self._write_meta()
        except OSError as exc:
            log.error("overflow counts not saved in staging: %s", exc.strerror or exc)

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.frames >= self.max_frames

    def write(self, block: np.ndarray) -> int:
        """Feed every sink; returns frames taken (fewer than given once `max_frames` is hit).

        A sink whose write fails (OSError: a full disk, EIO) does not keep the block from the
        others: every sink gets it, then the first error is raised, and the recording should
        be finished (the encoder keeps what the disk refused until `finish`).
        """
        if self.max_frames is not None:
            block = block[: max(0, self.max_frames - self.frames)]
        if block.shape[0] == 0:
            return 0
        failed: OSError | None = None
        for sink in self.sinks:
            try:
                sink.write(block)
            except OSError as exc:
                failed = failed or exc
        self.frames += block.shape[0]
        if failed is not None:
            raise failed
        return block.shape[0]

    def mark(self, at_frame: int, label: str = "") -> float:
        """Add a bookmark `at_frame` frames into the recording; returns its time in seconds."""
        at = round(self.format.seconds(max(0, at_frame)), 3)
        self.start = self.start.with_bookmark(Bookmark(at, label))
        self._write_meta()  # so a bookmark survives a crash too
        return at

    def finish(self, stop_reason: str, *,
               overflows: Overflows | None = None) -> StagedRecording:
        """Close every sink and return the staged recording (its start, and the facts the
        sinks report: `collect_facts`). `overflows`: the audio lost while it ran, when the
        caller counted it (else what `note_overflows` last saved).

        The spare is released first. Raises TooShortError for a recording without a single
        frame (nothing to publish: `discard()` it), and the OSError
        of an encoder that cannot write its last bytes (the staged files stay for recovery).
        A journal that cannot be closed cleanly is only logged: the OGG is complete.
        """
        self.release_spare()
        if self._meta_owed:
            # A bookmark made while the disk was full: the spare's room (and inode) lets its
            # crash copy be written now, so a publish that fails next still keeps it.
            try:
                self._write_meta()
            except OSError as exc:
                log.error("staged metadata of %s still not rewritten: %s", self.recording_id,
                          exc.strerror or exc)
        if self.frames == 0:
            self.abort()
            raise TooShortError("the recording holds no audio: not published")
        results: list[Any] = []
        for index, sink in enumerate(self.sinks):
            try:
                results.append(sink.finish())
            except OSError as exc:
                if isinstance(sink, JournalSink):
                    log.warning("crash journal of %s not closed cleanly (%s); the OGG is "
                                "complete", self.recording_id, exc.strerror or exc)
                    continue
                for rest in self.sinks[index:]:
                    with contextlib.suppress(Exception):
                        rest.abort()
                raise
        start = self.start if overflows is None else replace(self.start, overflows=overflows)
        audio, levels, extra = collect_facts(results)
        if audio is None:
            raise RuntimeError("no encoder among the sinks")  # a bug: Session adds one
        return StagedRecording(
            recording=finished(start, audio, stop_reason=stop_reason, levels=levels,
                               extra=extra),
            ogg=self.paths["ogg"],
            staged_files=[self.paths["journal"], self.paths["meta"]],
        )

    def abort(self) -> None:
        """Stop writing; staged files stay for `recorder recover`."""
        for sink in self.sinks:
            try:
                sink.abort()
            except Exception:
                log.exception("sink abort failed")


def collect_facts(results: Sequence[Any]) -> tuple[AudioFacts | None, dict[str, Any],
                                                    dict[str, Any]]:
    """Sort what per-recording sinks returned from `finish()`: the encoder's `AudioFacts`,
    the level meter's `Levels` (as the sidecar's ``levels`` object) and every other sink's
    fields for the sidecar (the Audio ID's ``audio_id``), later ones winning."""
    audio: AudioFacts | None = None
    levels: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for facts in results:
        if isinstance(facts, AudioFacts):
            audio = facts
        elif isinstance(facts, Levels):
            levels = facts.to_doc()
        else:
            extra.update(facts)
    return audio, levels, extra
