"""The pump: the worker thread that moves audio from the ring to the sinks.

It owns every sink (sinks are only ever touched from this thread), runs the always-on sinks on
every block, feeds the recording session when there is one, enforces the session's limits
(maximum length, disk reserve, device gone, end of input) and hands finished recordings to the
publisher thread, so publishing never holds up audio.

One controlling thread (the service's main loop, or ``recorder record``) talks to it through
`start_recording`, `stop_recording` and `mark`. Each takes the ring's write position at the
moment it is called, so a trigger means "now", however late the pump gets to it: that is what
makes pre-roll exact. The recording in progress (`active`) changes under the pump's own lock,
on the controlling thread (start) and on the pump thread (a limit finishing it), so a start
never races a recording that is just ending.

The pump thread is a fault boundary: an unexpected exception finishes the recording in hand
(``stop_reason = internal_error``: what reached the disk is published), stops the thread and
reports ``pump_failed``, so the service shows a failed state instead of "recording" forever.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from recorder import clock
from recorder.audioformat import AudioFormat
from recorder.errors import DeviceError, DiskReserveError, RecorderError, TooShortError
from recorder.publish import Published, Publisher
from recorder.recording import Overflows, StopReason
from recorder.ring import RingBuffer
from recorder.session import Session, SessionSettings, SinkFactory, StagedRecording
from recorder.sinks import AlwaysOnSink
from recorder.sources import AudioSource
from recorder.storage import DiskFullError, Reserve, is_disk_full, write_error

log = logging.getLogger(__name__)

RING_SLACK_SECONDS = 15.0  # how long the pump may stall (e.g. finishing a recording) losslessly
MAX_CHUNK_SECONDS = 0.5  # largest block handed to sinks at once
RESERVE_CHECK_SECONDS = 1.0  # of audio written: how often a recording re-checks the reserve
WAKE_SECONDS = 0.05  # longest the pump sleeps with audio pending (commands wake it at once)
# ... while nothing needs the audio soon: no recording (its journal's flush interval counts in
# audio the pump has written) and no always-on sink that is `latency_sensitive` (a live
# stream). Positions are absolute and the ring holds RING_SLACK_SECONDS more than the
# pre-roll, so a later wake-up changes no recording: it only wakes the service less.
IDLE_WAKE_SECONDS = 0.5



# -- what the pump tells its owner (from the pump and publisher threads) ------------------------
@dataclass(frozen=True)
class RecordingStarted:
    recording_id: str


@dataclass(frozen=True)
class Bookmarked:
    at: float  # seconds into the recording


@dataclass(frozen=True)
class RecordingPublished:
    path: str
    recording_id: str
    stop_reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "recording_id": self.recording_id,
                "stop_reason": self.stop_reason}


@dataclass(frozen=True)
class PublishFailed:
    recording_id: str
    error: str
    disk_full: bool  # the disk refused it: the trouble is over once there is room


@dataclass(frozen=True)
class DeviceLost:
    source: str
    error: str | None


@dataclass(frozen=True)
class DiskLow:
    """The recording was finished because the disk is full or below its reserve."""

    error: str


@dataclass(frozen=True)
class PumpFailed:
    error: str


PumpEvent = (RecordingStarted | Bookmarked | RecordingPublished | PublishFailed | DeviceLost
             | DiskLow | PumpFailed)
PumpListener = Callable[[PumpEvent], None]


@dataclass(frozen=True)
class PumpSettings:
    """What the pump needs from the configuration (built in `recorder.app`)."""

    preroll: float
    max_seconds: float
    stall_seconds: float
    session: SessionSettings


@dataclass(frozen=True)
class RecordingHandle:
    """A started recording: its id, and a future that completes once it is published."""

    recording_id: str
    done: Future[Published]


class RecordingStateError(RecorderError):
    """Start while recording, or stop while idle."""

    exit_code = 9


class Pump:
    """Run a source into a ring and the ring into sinks; start, stop and mark recordings.

    `on_event(event)` is called from the pump and publisher threads with a `PumpEvent`; it
    must only hand the event over (the service queues it).
    """

    def __init__(self, settings: PumpSettings, source: AudioSource, publisher: Publisher,
                 reserve: Reserve, *, always_on: Sequence[AlwaysOnSink] = (),
                 extra_sinks: Sequence[SinkFactory] = (),
                 on_event: PumpListener | None = None) -> None:
        self.settings = settings
        self.source = source
        self.format: AudioFormat = source.format
        self.publisher = publisher
        self.reserve = reserve
        self.always_on = list(always_on)
        self.extra_sinks = list(extra_sinks)
        self.on_event: PumpListener = on_event or (lambda event: None)
        self.preroll_frames = self.format.frames(settings.preroll)
        self.ring = RingBuffer(self.preroll_frames + self.format.frames(RING_SLACK_SECONDS),
                               self.format.channels)
        self.pos = 0  # absolute frame position of the pump (everything before went to sinks)
        # Pump thread only: the recording being fed, where it started, counters at its start.
        self.session: Session | None = None
        self._session_start = 0
        self._overflows_at_start = (0, 0)
        self._next_reserve_check = 0
        # Under _lock: the recording started and not yet finished (controller and pump thread).
        self._lock = threading.Lock()
        self._active: Session | None = None
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._publishing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self.device_lost = False
        self.failed: str | None = None  # why the pump thread died, if it did
        self.last_published: Published | None = None
        self.last_stop_to_published: float | None = None  # seconds, for health and benchmarks
        self.publish_errors = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the source and the pump thread."""
        self._started_at = time.monotonic()
        self.source.start(self.ring)
        self._thread = threading.Thread(target=self._run, name="pump", daemon=True)
        self._thread.start()

    def wait_first_block(self, timeout: float) -> None:
        """Block until the source delivered audio; raise DeviceError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.source.stats.blocks == 0:
            if self.source.stats.finished and not self.source.stats.error:
                raise TooShortError(f"{self.source.name!r} holds no audio")
            if self.source.stats.error or time.monotonic() > deadline:
                raise DeviceError(
                    f"no audio from {self.source.name!r} within {timeout:g} s"
                    + (f": {self.source.stats.error}" if self.source.stats.error else "")
                )
            time.sleep(0.01)

    def close(self, timeout: float = 10.0) -> Future[Published] | None:
        """Stop everything. A recording in progress is finished and published ("shutdown");
        the returned future (if any) completes when it is published."""
        fut = self.stop_recording(StopReason.SHUTDOWN) if self.recording else None
        if fut is not None:
            self._await_pump_idle(timeout)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.source.stop()
        # Always-on sinks belong to whoever attached them (the service keeps its radio stream
        # across a device loss): the pump only stops feeding them.
        self._publishing.shutdown(wait=True)
        return fut

    def _await_pump_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.recording and time.monotonic() < deadline and self.failed is None:
            time.sleep(0.01)

    # -- commands (the controlling thread) -------------------------------------------------------
    def start_recording(self, trigger: str, *, title: str = "", tags: Sequence[str] = (),
                        max_seconds: float | None = None,
                        seconds_ago: float = 0.0) -> RecordingHandle:
        """Begin a recording that includes up to `preroll` seconds before the trigger, which
        happened `seconds_ago` seconds before this call (a button edge seen late).

        May be called before `start()`, to record a source from its very first frame.
        Raises RecordingStateError while recording, DiskReserveError below the reserve and
        DeviceError while the device is gone or the pump has failed.
        """
        if self.device_lost:
            raise DeviceError(f"audio device {self.source.name!r} is gone: recording refused")
        if self.failed is not None:
            raise DeviceError(f"the audio pump failed ({self.failed}): recording refused")
        with self._lock:
            if self._active is not None:
                raise RecordingStateError("already recording")
            self.reserve.check()
            fmt = self.format
            trigger_pos = max(0, self.ring.write_pos - fmt.frames(seconds_ago))
            # The pump thread copies the pre-roll a moment from now, while the producer keeps
            # writing: stay half the slack clear of the oldest frame so it is still there then.
            margin = fmt.frames(RING_SLACK_SECONDS / 2)
            start_pos = max(0, trigger_pos - self.preroll_frames,
                            self.ring.write_pos - self.ring.capacity + margin)
            preroll = fmt.seconds(trigger_pos - start_pos)
            now = clock.now()
            started = dataclasses.replace(now, utc=now.utc - seconds_ago,
                                          monotonic=now.monotonic - seconds_ago)
            limit = self.settings.max_seconds if max_seconds is None else min(
                max_seconds, self.settings.max_seconds)
            session = Session(
                self.settings.session, fmt, started=started, preroll=preroll, trigger=trigger,
                title=title, tags=tags, max_frames=fmt.frames(limit),
                extra_sinks=self.extra_sinks,
            )
            self._active = session
        self._command("start", (session, start_pos))
        return RecordingHandle(session.recording_id, session.done)

    def stop_recording(self, reason: str = StopReason.STOPPED) -> Future[Published]:
        """Finish the recording at the current position; the future completes once published.

        Raises RecordingStateError when nothing is recording."""
        with self._lock:
            session = self._active
        if session is None:
            raise RecordingStateError("not recording")
        self._command("stop", (self.ring.write_pos, reason, session))
        return session.done

    def mark(self, label: str = "", seconds_ago: float = 0.0) -> None:
        """Bookmark the moment `seconds_ago` before now in the recording in progress
        (ignored when idle)."""
        self._command("mark", (self.ring.write_pos - self.format.frames(seconds_ago), label))

    def _command(self, kind: str, arg: Any) -> None:
        self._commands.put((kind, arg))
        self._wake.set()

    @property
    def recording(self) -> bool:
        """True from `start_recording` until the recording is finished (before publishing)."""
        with self._lock:
            return self._active is not None

    def status(self) -> dict[str, Any]:
        """Counters and state for health reports."""
        s = self.source.stats
        session = self.session
        rec = None
        if session is not None:
            rec = {
                "recording_id": session.recording_id,
                "seconds": round(self.format.seconds(session.frames), 3),
                "bookmarks": len(session.start.bookmarks),
            }
        return {
            "source": self.source.name,
            "samplerate": self.format.samplerate,
            "channels": self.format.channels,
            "blocks": s.blocks,
            "input_overflows": s.input_overflows,
            "ring_overruns": self.ring.overruns,
            "device_lost": self.device_lost,
            "source_error": s.error,
            "recording": rec,
            "publish_errors": self.publish_errors,
            "failed": self.failed,
        }

    # -- the pump thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                stopping = self._stopping.is_set()
                if self.ring.write_pos <= self.pos and self._commands.empty():
                    # The capture callback never signals (that would take a lock in the
                    # real-time thread): commands wake us at once, audio within WAKE_SECONDS
                    # (IDLE_WAKE_SECONDS while nothing waits for it).
                    self._wake.wait(WAKE_SECONDS if self._in_a_hurry() else IDLE_WAKE_SECONDS)
                self._wake.clear()
                # Commands first: a start must meet its pre-roll still in the ring.
                self._run_commands()
                self._move()
                self._check_health()
                if stopping:
                    break
        except Exception as exc:
            self._fail(exc)

    def _in_a_hurry(self) -> bool:
        """A recording is being fed, or an always-on sink has a listener waiting."""
        return self.session is not None or any(
            getattr(sink, "latency_sensitive", False) for sink in self.always_on)

    def wake(self) -> None:
        """Any thread: look at the ring now (an always-on sink just became latency-sensitive)."""
        self._wake.set()

    def _fail(self, exc: Exception) -> None:
        """The fault boundary: publish what the recording in hand holds, then report."""
        self.failed = f"{type(exc).__name__}: {exc}"
        log.critical("audio pump failed: %s", self.failed, exc_info=exc)
        if self.session is not None:
            try:
                self._finish(StopReason.INTERNAL_ERROR)
            except Exception:
                log.exception("finishing the recording after the pump failure failed")
        with self._lock:
            self._active = None
        self.on_event(PumpFailed(str(self.failed)))

    def _move(self, until: int | None = None) -> None:
        """Feed the sinks everything written up to `until` (default: all), in chunks."""
        chunk = max(1, self.format.frames(MAX_CHUNK_SECONDS))
        while True:
            end = self.ring.write_pos if until is None else min(until, self.ring.write_pos)
            if end <= self.pos:
                return
            start, block = self.ring.read(self.pos, min(end, self.pos + chunk))
            if start > self.pos and self.session is not None:
                log.warning("ring overrun: %d frames lost", start - self.pos)
            self.pos = start + block.shape[0]
            self.ring.release(self.pos)
            self._feed(block)
            if until is None and not self._commands.empty():
                # A long catch-up (a file replayed as fast as possible) must not starve a
                # start, whose pre-roll the producer would otherwise overwrite meanwhile.
                self._run_commands()

    def _feed(self, block: np.ndarray) -> None:
        for sink in list(self.always_on):
            try:
                sink.write(block)
            except Exception:
                log.exception("always-on sink %s failed; detached", sink)
                self.always_on.remove(sink)
        self._write_session(block)

    def _write_session(self, block: np.ndarray) -> None:
        session = self.session
        if session is None:
            return
        try:
            session.write(block)
        except OSError as exc:
            full = is_disk_full(exc)
            log.error("recording write failed (%s): finishing what was recorded", exc)
            if full:
                self.on_event(DiskLow(f"disk full: {exc.strerror}"))
            self._finish(StopReason.DISK_FULL if full else StopReason.WRITE_ERROR)
            return
        if session.full:
            self._finish(StopReason.MAX_LENGTH)
        elif session.frames >= self._next_reserve_check:
            # By audio written, not by wall time: a file replayed at 100x real time is
            # checked as often per second of audio as a microphone.
            self._next_reserve_check = session.frames + self.format.frames(
                RESERVE_CHECK_SECONDS)
            inputs, overruns = self._overflows_at_start
            session.note_overflows(self.source.stats.input_overflows - inputs,
                                   self.ring.overruns - overruns)
            self._check_reserve()

    def _check_reserve(self) -> None:
        try:
            self.reserve.check()
        except DiskReserveError as exc:
            log.error("%s: finishing the recording", exc)
            self.on_event(DiskLow(str(exc)))
            self._finish(StopReason.DISK_FULL if isinstance(exc, DiskFullError)
                         else StopReason.DISK_RESERVE)
        except OSError as exc:
            log.error("free space unknown (%s): finishing the recording", exc)
            self._finish(StopReason.WRITE_ERROR)

    def _run_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                session, start_pos = arg
                self.session = session
                self._session_start = start_pos
                self._next_reserve_check = self.format.frames(RESERVE_CHECK_SECONDS)
                self._overflows_at_start = (self.source.stats.input_overflows,
                                            self.ring.overruns)
                self.on_event(RecordingStarted(session.recording_id))
                # Catch up with the pre-roll: audio the pump already passed is still in the ring.
                _, back = self.ring.read(start_pos, self.pos)
                self._write_session(back)
            elif kind == "stop":
                stop_pos, reason, session = arg
                if session is self.session:  # not already finished by a limit
                    self._move(until=stop_pos)
                    if session is self.session:
                        self._finish(reason)
            elif kind == "mark" and self.session is not None:
                at_pos, label = arg
                try:
                    at = self.session.mark(at_pos - self._session_start, label)
                except OSError as exc:
                    # The bookmark is kept in memory and reaches the sidecar; only its crash
                    # copy in staging could not be rewritten.
                    log.error("bookmark kept, but staging metadata not rewritten: %s", exc)
                    at = self.session.start.bookmarks[-1].at
                self.on_event(Bookmarked(at))

    def _finish(self, reason: str) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        fut = session.done
        stop_started = time.monotonic()
        try:
            staged = session.finish(reason)
            inputs, overruns = self._overflows_at_start
            # Audio lost while this recording ran is recorded with it, never hidden.
            staged.recording = staged.recording.with_start(overflows=Overflows(
                input=self.source.stats.input_overflows - inputs,
                ring_frames=self.ring.overruns - overruns,
            ))
        except TooShortError as exc:
            log.warning("recording %s discarded: %s", session.recording_id, exc)
            session.discard()
            with self._lock:
                self._active = None
            fut.set_exception(exc)
            return
        except Exception as exc:
            if isinstance(exc, OSError):  # a full or failing disk: no traceback, one line
                exc = write_error(exc, f"recording {session.recording_id} kept in staging "
                                  "for `recorder recover`")
                log.error("finishing the recording failed: %s", exc)
            else:
                log.exception("finishing recording %s failed; left in staging for recovery",
                              session.recording_id)
            session.abort()
            with self._lock:  # the publisher thread counts too
                self.publish_errors += 1
                self._active = None
            self.on_event(PublishFailed(session.recording_id, _short(exc),
                                        isinstance(exc, DiskFullError)))
            fut.set_exception(exc)
            return
        with self._lock:
            self._active = None
        self._publishing.submit(self._publish, staged, fut, stop_started)

    def _publish(self, staged: StagedRecording, fut: Future[Published],
                 stop_started: float) -> None:
        try:
            result = self.publisher.publish(staged)
        except Exception as exc:
            log.error("publishing %s failed (%s); left in staging for recovery",
                      staged.recording.recording_id, _short(exc))
            if isinstance(exc, OSError):
                exc = write_error(exc, f"recording {staged.recording.recording_id} kept in "
                                  "staging for `recorder recover`")
            with self._lock:  # the pump thread counts too
                self.publish_errors += 1
            self.on_event(PublishFailed(staged.recording.recording_id, _short(exc),
                                        isinstance(exc, DiskFullError)))
            fut.set_exception(exc)
            return
        self.last_published = result
        self.last_stop_to_published = result.visible_at - stop_started
        self.on_event(RecordingPublished(str(result.ogg_path), result.recording.recording_id,
                                         result.recording.stop_reason))
        fut.set_result(result)

    def _check_health(self) -> None:
        stats = self.source.stats
        now = time.monotonic()
        if stats.finished and self.ring.write_pos == self.pos:
            if self.session is not None:
                self._finish(StopReason.END_OF_INPUT)
            return
        last = stats.last_block_at or self._started_at
        # A dead sound server ends the stream at once (stats.error); a starved input just stops
        # delivering: both mean the device is gone.
        stalled = stats.error is not None or now - last > self.settings.stall_seconds
        if stalled and not self.device_lost:
            self.device_lost = True
            log.error("no audio from %s for %.1f s: device lost", self.source.name, now - last)
            self.on_event(DeviceLost(self.source.name, stats.error))
            if self.session is not None:
                self._finish(StopReason.DEVICE_LOST)


def _short(exc: BaseException) -> str:
    """An exception as one line for status and logs."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return " ".join(str(exc).split()) or type(exc).__name__
