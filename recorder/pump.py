"""The pump: the worker thread that moves audio from the ring to the sinks.

It owns every sink (sinks are only ever touched from this thread), runs the always-on sinks on
every block, feeds the recording session when there is one, enforces the session's limits
(maximum length, disk reserve, device gone, end of input) and hands finished recordings to the
publisher thread, so publishing never holds up audio.

Other threads talk to it through `start_recording`, `stop_recording` and `mark`. Each takes the
ring's write position at the moment it is called, so a trigger means "now", however late the
pump gets to it: that is what makes pre-roll exact.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from recorder import clock
from recorder.config import Config
from recorder.errors import DeviceError, DiskReserveError, RecorderError
from recorder.publish import Published, Publisher
from recorder.ring import RingBuffer
from recorder.session import Session, SinkFactory
from recorder.sinks import Sink
from recorder.sources import AudioSource

log = logging.getLogger(__name__)

RING_SLACK_SECONDS = 15.0  # how long the pump may stall (e.g. finishing a recording) losslessly
MAX_CHUNK_SECONDS = 0.5  # largest block handed to sinks at once


def free_bytes(path: Any) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `path`."""
    return shutil.disk_usage(path).free


def check_reserve(cfg: Config, free: Callable[[Any], int] = free_bytes) -> int:
    """Raise DiskReserveError if free space on the sync root is below the reserve."""
    target = cfg.storage.sync_root
    target.mkdir(parents=True, exist_ok=True)
    left = free(target)
    if left < cfg.storage.reserve_mb * 1024 * 1024:
        raise DiskReserveError(
            f"only {left // (1024 * 1024)} MB free on {target}, below the "
            f"{cfg.storage.reserve_mb} MB reserve: recording refused"
        )
    return left


@dataclass(frozen=True)
class RecordingHandle:
    """A started recording: its id, and a future that completes once it is published."""

    recording_id: str
    done: Future[Published]


class RecordingStateError(RecorderError):
    """Start while recording, or stop while idle."""

    exit_code = 9


class Pump:
    """Run a source into a ring and the ring into sinks; start, stop and mark recordings."""

    def __init__(self, cfg: Config, source: AudioSource, publisher: Publisher, *,
                 always_on: Sequence[Sink] = (), extra_sinks: Sequence[SinkFactory] = (),
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 free: Callable[[Any], int] = free_bytes) -> None:
        self.cfg = cfg
        self.source = source
        self.publisher = publisher
        self.always_on = list(always_on)
        self.extra_sinks = list(extra_sinks)
        self.on_event = on_event or (lambda kind, detail: None)
        self._free = free
        rate = source.samplerate
        self.preroll_frames = int(cfg.audio.preroll * rate)
        self.ring = RingBuffer(self.preroll_frames + int(RING_SLACK_SECONDS * rate),
                               source.channels)
        self.pos = 0  # absolute frame position of the pump (everything before went to sinks)
        self.session: Session | None = None  # the recording the pump thread is feeding
        self.active: Session | None = None  # the recording started and not yet finished
        self._session_start = 0
        self._overflows_at_start = (0, 0)
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._publishing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._next_disk_check = 0.0
        self.device_lost = False
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
            if self.source.stats.error or time.monotonic() > deadline:
                raise DeviceError(
                    f"no audio from {self.source.name!r} within {timeout:g} s"
                    + (f": {self.source.stats.error}" if self.source.stats.error else "")
                )
            time.sleep(0.01)

    def close(self, timeout: float = 10.0) -> Future[Published] | None:
        """Stop everything. A recording in progress is finished and published ("shutdown");
        the returned future (if any) completes when it is published."""
        fut = self.stop_recording("shutdown") if self.active is not None else None
        if fut is not None:
            self._await_pump_idle(timeout)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.source.stop()
        # Always-on sinks belong to whoever attached them (the service keeps its radio stream
        # across a device loss): the pump only stops feeding them.
        self._publishing.shutdown(wait=True)
        return fut

    def _await_pump_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self.active is not None or not self._commands.empty()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)

    # -- commands (any thread) -------------------------------------------------------------------
    def start_recording(self, trigger: str, *, title: str = "", tags: Sequence[str] = (),
                        max_seconds: float | None = None,
                        seconds_ago: float = 0.0) -> RecordingHandle:
        """Begin a recording that includes up to `preroll` seconds before the trigger, which
        happened `seconds_ago` seconds before this call (a button edge seen late).

        May be called before `start()`, to record a source from its very first frame.
        Raises DiskReserveError below the reserve and DeviceError while the device is gone.
        """
        if self.device_lost:
            raise DeviceError(f"audio device {self.source.name!r} is gone: recording refused")
        if self.active is not None:
            raise RecordingStateError("already recording")
        check_reserve(self.cfg, self._free)
        trigger_pos = max(0, self.ring.write_pos - self._frames(seconds_ago))
        # The pump thread copies the pre-roll a moment from now, while the producer keeps
        # writing: stay half the slack clear of the oldest frame so it is still there then.
        margin = int(RING_SLACK_SECONDS * self.source.samplerate / 2)
        start_pos = max(0, trigger_pos - self.preroll_frames,
                        self.ring.write_pos - self.ring.capacity + margin)
        preroll = (trigger_pos - start_pos) / self.source.samplerate
        now = clock.now()
        started = dataclasses.replace(now, utc=now.utc - seconds_ago,
                                      monotonic=now.monotonic - seconds_ago)
        limit = self.cfg.storage.max_seconds if max_seconds is None else min(
            max_seconds, self.cfg.storage.max_seconds)
        session = Session(
            self.cfg, samplerate=self.source.samplerate, channels=self.source.channels,
            started=started, preroll=preroll, trigger=trigger, title=title, tags=tags,
            max_frames=int(limit * self.source.samplerate), extra_sinks=self.extra_sinks,
        )
        self.active = session
        self._commands.put(("start", (session, start_pos)))
        return RecordingHandle(session.recording_id, session.done)

    def stop_recording(self, reason: str = "stopped") -> Future[Published]:
        """Finish the recording at the current position; the future completes once published.

        Raises RecordingStateError when nothing is recording."""
        session = self.active
        if session is None:
            raise RecordingStateError("not recording")
        self._commands.put(("stop", (self.ring.write_pos, reason, session)))
        return session.done

    def mark(self, label: str = "", seconds_ago: float = 0.0) -> None:
        """Bookmark the moment `seconds_ago` before now in the recording in progress
        (ignored when idle)."""
        pos = self.ring.write_pos - self._frames(seconds_ago)
        self._commands.put(("mark", (pos, label)))

    def _frames(self, seconds: float) -> int:
        return int(max(0.0, seconds) * self.source.samplerate)

    @property
    def recording(self) -> bool:
        return self.active is not None

    def status(self) -> dict[str, Any]:
        """Counters and state for health reports."""
        s = self.source.stats
        rec = None
        if self.session is not None:
            rec = {
                "recording_id": self.session.recording_id,
                "seconds": round(self.session.frames / self.source.samplerate, 3),
                "bookmarks": len(self.session.meta["bookmarks"]),
            }
        return {
            "source": self.source.name,
            "samplerate": self.source.samplerate,
            "channels": self.source.channels,
            "blocks": s.blocks,
            "input_overflows": s.input_overflows,
            "ring_overruns": self.ring.overruns,
            "device_lost": self.device_lost,
            "source_error": s.error,
            "recording": rec,
            "publish_errors": self.publish_errors,
        }

    # -- the pump thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stopping = self._stopping.is_set()
            self.ring.wait(self.pos, 0.05)
            self._move()
            self._run_commands()
            self._check_health()
            if stopping:
                break

    def _move(self, until: int | None = None) -> None:
        """Feed the sinks everything written up to `until` (default: all), in chunks."""
        chunk = max(1, int(MAX_CHUNK_SECONDS * self.source.samplerate))
        while True:
            end = self.ring.write_pos if until is None else min(until, self.ring.write_pos)
            if end <= self.pos:
                return
            start, block = self.ring.read(self.pos, min(end, self.pos + chunk))
            if start > self.pos and self.session is not None:
                log.warning("ring overrun: %d frames lost", start - self.pos)
            self.pos = start + block.shape[0]
            self.ring.read_pos = self.pos
            self._feed(block)

    def _feed(self, block: Any) -> None:
        for sink in list(self.always_on):
            try:
                sink.write(block)
            except Exception:
                log.exception("always-on sink %s failed; detached", sink)
                self.always_on.remove(sink)
        if self.session is not None:
            try:
                self.session.write(block)
            except OSError as exc:
                log.error("recording write failed (%s): finishing what was recorded", exc)
                self._finish("write_error")
                return
            if self.session.full:
                self._finish("max_length")

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
                self._overflows_at_start = (self.source.stats.input_overflows,
                                            self.ring.overruns)
                # Catch up with the pre-roll: audio the pump already passed is still in the ring.
                _, back = self.ring.read(start_pos, self.pos)
                self.session.write(back)
                self.on_event("recording", {"recording_id": session.recording_id})
            elif kind == "stop":
                stop_pos, reason, session = arg
                if session is self.session:  # not already finished by a limit
                    self._move(until=stop_pos)
                    self._finish(reason)
            elif kind == "mark" and self.session is not None:
                at_pos, label = arg
                at = self.session.mark(at_pos - self._session_start, label)
                self.on_event("bookmark", {"at": at})

    def _finish(self, reason: str) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        self.active = None
        fut = session.done
        stop_started = time.monotonic()
        try:
            staged = session.finish(reason)
            inputs, overruns = self._overflows_at_start
            # Audio lost while this recording ran is recorded with it, never hidden.
            staged.meta["overflows"] = {
                "input": self.source.stats.input_overflows - inputs,
                "ring_frames": self.ring.overruns - overruns,
            }
        except Exception as exc:
            log.exception("finishing recording %s failed; left in staging for recovery",
                          session.recording_id)
            session.abort()
            self.publish_errors += 1
            self.on_event("publish_failed", {"recording_id": session.recording_id,
                                             "error": str(exc)})
            fut.set_exception(exc)
            return
        self._publishing.submit(self._publish, staged, fut, stop_started)

    def _publish(self, staged: Any, fut: Future[Published], stop_started: float) -> None:
        try:
            result = self.publisher.publish(staged)
        except Exception as exc:
            log.exception("publishing %s failed; left in staging for recovery",
                          staged.meta["recording_id"])
            self.publish_errors += 1
            self.on_event("publish_failed", {"recording_id": staged.meta["recording_id"],
                                             "error": str(exc)})
            fut.set_exception(exc)
            return
        self.last_published = result
        self.last_stop_to_published = result.visible_at - stop_started
        self.on_event("published", {"path": str(result.ogg_path),
                                    "stop_reason": result.sidecar["stop_reason"]})
        fut.set_result(result)

    def _check_health(self) -> None:
        stats = self.source.stats
        now = time.monotonic()
        if stats.finished and self.ring.write_pos == self.pos:
            if self.session is not None:
                self._finish("end_of_input")
            return
        last = stats.last_block_at or self._started_at
        # A dead sound server ends the stream at once (stats.error); a starved input just stops
        # delivering: both mean the device is gone.
        stalled = stats.error is not None or now - last > self.cfg.service.stall_seconds
        if stalled and not self.device_lost:
            self.device_lost = True
            log.error("no audio from %s for %.1f s: device lost", self.source.name, now - last)
            self.on_event("device_lost", {"source": self.source.name, "error": stats.error})
            if self.session is not None:
                self._finish("device_lost")
        if self.session is not None and now >= self._next_disk_check:
            self._next_disk_check = now + 1.0
            try:
                check_reserve(self.cfg, self._free)
            except DiskReserveError as exc:
                log.error("%s: finishing the recording", exc)
                self.on_event("disk_low", {"error": str(exc)})
                self._finish("disk_reserve")
