"""`recorder run`: the appliance service.

It keeps the audio source open so the pre-roll ring is always full, turns button presses,
control-socket commands and SIGUSR1 into recordings and bookmarks, shows its state on one LED,
watches its own health (device present, audio flowing, silence, clipping, disk, clock) and keeps
going across errors: a vanished microphone finishes and publishes what was recorded, then the
service polls until the device returns and reopens it by name.

**One thread owns the service's state.** The main thread runs an event loop; every other
thread only queues an event for it: GPIO input threads (presses), the control-socket threads
(commands, which wait for the reply), signal handlers (``SimpleQueue.put`` is safe there), the
pump and publisher threads (recording, published, device lost, pump failed). The loop sleeps
until the next event or the next timed duty (watchdog ping, disk check, device retry), so an
idle service wakes only a few times a minute. State, last error, disk state and the LED are
therefore changed in one place, in order, without locks.

systemd sees READY=1 once the first audio block has arrived, and WATCHDOG=1 only while the pump
really moves audio, so a hung capture gets the service restarted. A pump that dies (an
unexpected exception on its thread) publishes what it had, shows "failed" on the LED and in
status, and is restarted; if it keeps failing the service exits non-zero for systemd.

A full disk is a state, not a crash: the service starts anyway, shows ``disk_full`` (status,
LED double blink) and refuses to record until there is room. Recordings left in staging for
want of space are recovered on a short-lived ``recover`` thread as soon as the disk check sees
the space they need, and publisher hooks that failed on the full disk are run again then.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from recorder import app, clock
from recorder.config import SourceSpec
from recorder.control import ControlServer
from recorder.errors import (
    DeviceError,
    DiskReserveError,
    NoAudioError,
    RecorderError,
    ServiceError,
)
from recorder.led import NullLed, StatusLed
from recorder.pump import (
    Bookmarked,
    DeviceLost,
    DiskLow,
    PublishFailed,
    Pump,
    PumpEvent,
    PumpFailed,
    PumpListener,
    RecordingPublished,
    RecordingStateError,
)
from recorder.recover import Outcome, recover, waiting_need
from recorder.sdnotify import Notifier
from recorder.servicestate import (
    Armed,
    HubStarted,
    Lost,
    Machine,
    Opened,
    OpenFailed,
    Problem,
    ProblemKind,
    PumpDied,
    ServiceState,
    Stopping,
)
from recorder.sinks.levels import FULL_SCALE, LevelMeter, dbfs
from recorder.storage import DiskFullError, ensure_dir, is_disk_full
from recorder.triggers import LIVE_OFF, LIVE_ON, MARK, TOGGLE, Triggers

log = logging.getLogger(__name__)

DEVICE_RETRY_SECONDS = 2.0
DISK_CHECK_SECONDS = 5.0
COMMAND_TIMEOUT = 30.0  # a control client waits this long for the main loop's answer
PUMP_RESTARTS = 3  # pump failures within PUMP_RESTART_WINDOW before the service gives up
PUMP_RESTART_WINDOW = 600.0


def _refused(exc: RecorderError) -> Problem:
    return Problem(ProblemKind.DISK if isinstance(exc, DiskReserveError) else ProblemKind.REFUSED,
                   str(exc))


class _PumpTicket:
    """Identifies one opened pump in the events it queues."""


# What other threads queue for the main loop (typed: one class per kind).


@dataclass(frozen=True)
class _Command:
    """A control command (socket, web page) and where its answer goes."""

    request: dict[str, Any]
    reply: Future[dict[str, Any]]


@dataclass(frozen=True)
class _Press:
    """A button's trigger (TOGGLE, MARK, LIVE_ON, LIVE_OFF) at a monotonic time."""

    name: str
    at: float


@dataclass(frozen=True)
class _Toggle:
    """SIGUSR1."""


@dataclass(frozen=True)
class _Stop:
    """SIGTERM, SIGINT or `request_stop`: wakes the loop, which sees `stopping`."""


@dataclass(frozen=True)
class _FromPump:
    event: PumpEvent
    ticket: _PumpTicket


@dataclass(frozen=True)
class _Recovered:
    outcomes: list[Outcome]


_Event = _Command | _Press | _Toggle | _Stop | _FromPump | _Recovered


class Service:
    """The long-running appliance: source, triggers, LED, control socket, health, watchdog."""

    def __init__(self, wiring: app.ServiceWiring, *, source: SourceSpec | None = None,
                 realtime: bool = True, pin_factory: Any = None,
                 notifier: Notifier | None = None) -> None:
        # The sections it reads (`app.service_wiring` picks them from the configuration).
        self.device_id, self.audio_cfg = wiring.device_id, wiring.audio
        self.service_cfg, self.gpio_cfg = wiring.service, wiring.gpio
        self.source = source or wiring.audio.source
        # A hub (no-audio mode): never opens an audio device or GPIO; the workers (bridge,
        # papad registration, web page, station playlist, inbox) are its whole job.
        self.hub = self.source.none
        self.realtime = realtime
        self.pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        # The web page gets `request`, the one way another thread asks the service anything.
        self.parts = wiring.assemble(self.request)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.stopping = threading.Event()
        # -- owned by the main thread (the event loop) --
        # Silent until a pump opens (then the pump's own meter, at the source's format).
        self.meter = LevelMeter(wiring.audio.samplerate, wiring.service.silence_dbfs)
        self.pump: Pump | None = None
        self._pump_ticket: _PumpTicket | None = None  # the current pump's (see _pump_event)
        self.triggers: Triggers | None = None
        self.led: StatusLed | NullLed = NullLed()
        self.control: ControlServer | None = None
        # The state, the disk and the problem: one machine (recorder.servicestate).
        self.machine = Machine()
        self.last_published: dict[str, Any] | None = None
        self.published_count = 0
        self._recovering: threading.Thread | None = None
        self._next_disk_check = 0.0
        self._next_open = 0.0
        self._ready_sent = False
        self._last_ping = 0.0
        self._last_ping_pos = 0
        self._pump_failures: list[float] = []
        self.exit_code = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `request_stop`); returns the exit code."""
        self._install_signals()
        try:
            try:
                ensure_dir(self.parts.layout.device_folder, "storage.sync_root")
                ensure_dir(self.parts.layout.staging_dir, "storage.staging_dir")
            except DiskFullError as exc:
                log.error("%s: starting anyway, recording refused until space returns", exc)
            self._recovered(recover(self.parts.recovery, self.parts.publisher,
                                    self.parts.sink_factories))
            self._check_disk()
            io = app.open_service_io(self.gpio_cfg, self.service_cfg, self._on_trigger,
                                     self._from_socket, pin_factory=self.pin_factory,
                                     hub=self.hub)
            self.triggers, self.led, self.control = io.triggers, io.led, io.control
            for worker in self.parts.workers:
                try:
                    worker.start()
                except Exception as exc:
                    if not is_disk_full(exc):
                        raise
                    log.error("%s: not started, the disk is full", worker.name)
            if self.triggers is not None and self.triggers.live:  # the switch was already on
                self._set_live(True)
            if self.hub:
                self._hub_ready()
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code

    def request_stop(self) -> None:
        """Ask the service to stop (any thread)."""
        self.stopping.set()
        self._events.put(_Stop())

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # Handlers only queue: SimpleQueue.put is reentrant, safe inside a signal handler.
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGUSR1, lambda *_: self._events.put(_Toggle()))

    @property
    def state(self) -> ServiceState:
        """The service's state (main thread; other threads ask `request` for ``status``)."""
        return self.machine.state

    @property
    def last_error(self) -> str | None:
        """The message of the current problem (status ``last_error``)."""
        problem = self.machine.problem
        return problem.message if problem is not None else None

    # -- the event loop (main thread) ------------------------------------------------------------
    def _loop(self) -> None:
        interval = self.notifier.watchdog_interval()
        ping_every = interval / 3 if interval else None
        while not self.stopping.is_set():
            now = time.monotonic()
            if self.pump is None and not self.hub and now >= self._next_open:
                self._open_pump()
            self._duties(time.monotonic(), ping_every)
            try:
                event: _Event | None = self._events.get(timeout=self._sleep(ping_every))
            except queue.Empty:
                event = None
            while event is not None:
                self._handle(event)
                self._update_led()  # before the next event: a status reply shows it
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    event = None
            self._update_led()
        self.machine.fire(Stopping())

    def _sleep(self, ping_every: float | None) -> float:
        """Seconds until the next timed duty."""
        now = time.monotonic()
        due = [self._next_disk_check]
        if self.hub:
            if ping_every:
                due.append(self._last_ping + ping_every)
        elif self.pump is None:
            due.append(self._next_open)
        elif ping_every:
            due.append(self._last_ping + ping_every)
        return min(60.0, max(0.01, min(due) - now))

    def _duties(self, now: float, ping_every: float | None) -> None:
        pump = self.pump
        if pump is not None and ping_every and now - self._last_ping >= ping_every:
            if pump.pos > self._last_ping_pos:
                # Audio really moved through the pump since the last ping.
                self.notifier.watchdog()
                self._last_ping_pos = pump.pos
            self._last_ping = now
        elif self.hub and ping_every and now - self._last_ping >= ping_every:
            self.notifier.watchdog()  # no audio to watch: the loop turning is the health
            self._last_ping = now
        if now >= self._next_disk_check:
            self._next_disk_check = now + DISK_CHECK_SECONDS
            self._check_disk()

    def _handle(self, event: _Event) -> None:
        if isinstance(event, _Command):
            try:
                event.reply.set_result(self.handle_command(event.request))
            except BaseException as exc:
                event.reply.set_exception(exc)
        elif isinstance(event, _Press):
            self._trigger(event.name, event.at)
        elif isinstance(event, _Toggle):
            try:
                self.toggle("signal")
            except RecorderError as exc:
                log.error("signal toggle refused: %s", exc)
        elif isinstance(event, _FromPump):
            self._pump_event(event.event, event.ticket)
        elif isinstance(event, _Recovered):
            self._recovering = None
            self._recovered(event.outcomes)

    # -- the pump --------------------------------------------------------------------------------
    def _open_pump(self) -> None:
        if self.machine.device_error is not None and not self.source.is_file:
            self._rescan()
        try:
            ticket = _PumpTicket()
            pump, meter = app.build_service_pump(
                self.parts, self.audio_cfg, self.service_cfg, source=self.source,
                realtime=self.realtime, on_event=self._pump_listener(ticket))
            pump.start()
            try:
                pump.wait_first_block(self.audio_cfg.device_wait)
            except DeviceError:
                pump.close()
                raise
        except (DeviceError, RecorderError) as exc:  # a file source: unreadable, empty
            if self.machine.device_error != str(exc):
                log.error("no audio device: %s; retrying every %.0f s", exc,
                          DEVICE_RETRY_SECONDS)
                self.notifier.status(f"no audio device: {exc}")
            self.machine.fire(OpenFailed(str(exc)))
            self._next_open = time.monotonic() + DEVICE_RETRY_SECONDS
            self._update_led()
            return
        if self.machine.device_error:
            log.info("audio device %s is back", pump.source.name)
        self.machine.fire(Opened())
        self.meter = meter
        self.pump, self._pump_ticket = pump, ticket
        self._last_ping, self._last_ping_pos = time.monotonic(), pump.pos
        if not self._ready_sent:
            self.notifier.ready()
            self._ready_sent = True
        self.notifier.status(f"armed on {pump.source.name}")
        log.info("armed: %s at %s, %.1f s pre-roll", pump.source.name, pump.format,
                 self.audio_cfg.preroll)
        self._update_led()

    def _hub_ready(self) -> None:
        """A hub is ready once its workers run: there is no first audio block to wait for."""
        self.machine.fire(HubStarted())
        self._last_ping = time.monotonic()
        self.notifier.ready()
        self._ready_sent = True
        self.notifier.status("hub: records nothing")
        log.info('hub: audio.source = "none", records nothing (no audio device, no GPIO)')
        self._update_led()

    def _pump_listener(self, ticket: _PumpTicket) -> PumpListener:
        """The pump's event callback (pump and publisher threads): queue the event, with the
        ticket that tells whether it comes from the current pump."""

        def listener(event: PumpEvent) -> None:
            self._events.put(_FromPump(event, ticket))

        return listener

    @staticmethod
    def _rescan() -> None:
        from recorder.sources.portaudio import rescan_devices

        try:
            rescan_devices()
        except Exception as exc:  # PortAudio missing entirely: the open below reports it
            log.debug("device rescan failed: %s", exc)

    def _close_pump(self, why: str) -> None:
        pump, self.pump, self._pump_ticket = self.pump, None, None
        if pump is None:
            return
        fut = pump.close()
        if fut is not None:
            try:
                fut.result(timeout=30)
            except Exception as exc:
                log.error("publishing the interrupted recording failed: %s", exc)
        log.info("audio source closed: %s", why)

    def _pump_event(self, event: PumpEvent, ticket: _PumpTicket) -> None:
        # A closed pump's late events change no device state.
        current = ticket is self._pump_ticket and self.pump is not None
        if isinstance(event, RecordingPublished):
            self.published_count += 1
            self.last_published = event.as_dict()
            self.machine.published()
        elif isinstance(event, PublishFailed):
            self.machine.publish_failed(event.error, disk_full=event.disk_full)
        elif isinstance(event, DiskLow):
            self.machine.disk_low_seen(event.error)
            self._next_disk_check = 0.0  # say "disk full" now, not at the next timed check
        elif isinstance(event, Bookmarked):
            log.info("bookmark at %.2f s", event.at)
        elif isinstance(event, DeviceLost) and current:
            assert self.pump is not None
            name = self.pump.source.name
            self._close_pump("device lost")
            self.machine.fire(Lost(event.source, name))
            self.notifier.status(f"audio device lost: {name}")
            self._next_open = time.monotonic() + DEVICE_RETRY_SECONDS
        elif isinstance(event, PumpFailed) and current:
            self._pump_failed(event.error)

    def _pump_failed(self, error: str) -> None:
        now = time.monotonic()
        self._pump_failures = [t for t in self._pump_failures if now - t < PUMP_RESTART_WINDOW]
        self._pump_failures.append(now)
        self.machine.fire(PumpDied(error))
        self._update_led()
        self.notifier.status(f"audio pump failed: {error}")
        self._close_pump("pump failed")
        if len(self._pump_failures) >= PUMP_RESTARTS:
            log.critical("the audio pump failed %d times in %.0f s: exiting for a restart",
                         len(self._pump_failures), PUMP_RESTART_WINDOW)
            self.exit_code = 1
            self.request_stop()
            return
        self._next_open = now + DEVICE_RETRY_SECONDS

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self._refuse_queued()
        try:
            self._close_pump("shutdown")
        except Exception:
            log.exception("closing the audio source failed")
        for worker in self.parts.workers:
            try:
                worker.stop()
            except Exception:
                log.exception("stopping %s failed", worker.name)
        if self.control is not None:
            self.control.close()
        if self.triggers is not None:
            self.triggers.close()
        self.led.set_state("off")
        self.led.close()
        self.parts.close()
        log.info("stopped")

    # -- actions (main thread) -------------------------------------------------------------------
    def start(self, trigger: str, seconds_ago: float = 0.0) -> str:
        pump = self._require_pump()
        handle = pump.start_recording(trigger, seconds_ago=seconds_ago)
        log.info("recording %s started (%s)", handle.recording_id, trigger)
        self._update_led()
        return handle.recording_id

    def stop(self, trigger: str) -> None:
        self._require_pump().stop_recording("stopped")
        log.info("recording stopped (%s)", trigger)

    def mark(self, trigger: str, seconds_ago: float = 0.0) -> bool:
        pump = self._require_pump()
        if not pump.recording:
            return False
        pump.mark(trigger, seconds_ago=seconds_ago)
        self.led.flash()
        return True

    def toggle(self, trigger: str, seconds_ago: float = 0.0) -> None:
        pump = self.pump
        if pump is not None and pump.recording:
            self.stop(trigger)
        else:
            self.start(trigger, seconds_ago)

    def _require_pump(self) -> Pump:
        if self.hub:
            raise NoAudioError()
        if self.pump is None:
            raise DeviceError(self.machine.device_error or self.last_error
                              or "the audio source is not open yet")
        return self.pump

    def _on_trigger(self, name: str, at: float) -> None:
        """GPIO thread: hand the press to the main loop."""
        self._events.put(_Press(name, at))

    def _trigger(self, name: str, at: float) -> None:
        seconds_ago = max(0.0, time.monotonic() - at)
        try:
            if name == TOGGLE:
                self.toggle("button", seconds_ago)
            elif name == MARK:
                if not self.mark("button", seconds_ago):
                    log.info("bookmark ignored: not recording")
            elif name in (LIVE_ON, LIVE_OFF):
                self._set_live(name == LIVE_ON)
        except RecorderError as exc:
            log.error("button %s refused: %s", name, exc)
            self.machine.refused(_refused(exc))

    def _set_live(self, on: bool) -> dict[str, Any]:
        if self.hub and on:
            raise NoAudioError()
        if self.parts.radio is None:
            raise RecorderError("no radio stream configured ([radio] section)")
        self.parts.radio.set_live(on)
        if on and self.pump is not None:
            self.pump.wake()  # it idles at IDLE_WAKE_SECONDS: the stream wants audio now
        return {"live": on}

    # -- health ----------------------------------------------------------------------------------
    def _check_disk(self) -> None:
        try:
            report = self.parts.reserve.report()
        except OSError as exc:
            self.machine.disk_unavailable(f"sync root unavailable: {exc}")
            return
        if self.machine.disk_checked(report.free_mb, report.free_bytes, low=report.low,
                                     full=report.full):
            log.log(logging.ERROR if report.full else logging.INFO,
                    "disk full: recording refused" if report.full else "disk has room again")
        need = self.machine.waiting_need
        retry_hooks = bool(self.parts.publisher.deferred) and not report.full
        if self._recovering is None and (retry_hooks or (
                need is not None and report.free_bytes >= need and not report.full)):
            self._recovering = threading.Thread(target=self._recover_in_background,
                                                name="recover", daemon=True)
            self._recovering.start()

    def _recover_in_background(self) -> None:
        """`recover` thread: publish what waits in staging (the recordings being made are
        locked, so they are left alone), rerun deferred hooks, report to the main loop."""
        outcomes: list[Outcome] = []
        try:
            outcomes = recover(self.parts.recovery, self.parts.publisher,
                               self.parts.sink_factories)
            self.parts.publisher.retry_deferred()
        except Exception:
            log.exception("recovering staged recordings failed")
        self._events.put(_Recovered(outcomes))

    def _recovered(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            level = logging.INFO if outcome.action in ("published", "cleaned") else logging.WARNING
            log.log(level, "recover %s: %s: %s", outcome.recording_id, outcome.action,
                    outcome.detail)
        self.machine.waiting_need = waiting_need(outcomes)

    def _update_led(self) -> None:
        """Bring the armed state up to date with the pump and the disk, then show the LED the
        machine derives (servicestate.LED_TABLE)."""
        pump = self.pump
        if pump is not None and self.machine.armed:
            self.machine.fire(Armed(pump.recording))
        self.led.set_state(self.machine.led(
            mesh_degraded=self.parts.mesh is not None and self.parts.mesh.degraded))

    def warnings(self) -> list[str]:
        out = []
        if self.pump is not None:
            silent = self.meter.seconds_since_loud()
            if silent > self.service_cfg.silence_seconds:
                out.append(f"input silent for {silent:.0f} s (microphone unplugged or muted?)")
            recent = (self.meter.frames - self.meter.last_clip_frame) / self.meter.samplerate
            if self.meter.last_clip_frame >= 0 and recent < 10:
                out.append("input clipping: lower the microphone gain")
        m = self.machine
        if m.disk_full:
            out.append(f"disk full ({max(0, m.free_bytes) // 1024} KiB free): recording "
                       "refused until space is freed")
        elif m.disk_low:
            out.append(f"free space {m.free_mb} MB is below the reserve "
                       f"({self.parts.reserve.reserve_mb} MB)")
        if m.waiting_need is not None:
            out.append("recordings wait in staging for free space; they are published as soon "
                       "as there is room")
        out.extend(e for e in (m.device_error, m.storage_error) if e)
        if self.parts.mesh is not None:
            out.extend(f"mesh: {p}" for p in self.parts.mesh.problems())
        return out

    def status(self) -> dict[str, Any]:
        """Everything `recorder ctl status` shows (main thread)."""
        pump = self.pump
        ts = clock.now()
        return {
            "state": str(self.state),
            "mode": "hub: records nothing" if self.hub else "recorder",
            "device_id": self.device_id,
            "led": self.led.state,
            "audio": pump.status() if pump is not None else None,
            "levels": self.meter.summary(),
            "warnings": self.warnings(),
            "last_error": self.last_error,
            "last_published": self.last_published,
            "published": self.published_count,
            "free_mb": self.machine.free_mb,
            "reserve_mb": self.parts.reserve.reserve_mb,
            "disk_full": self.machine.disk_full,
            "waiting_for_space": self.machine.waiting_need is not None,
            "clock_synced": ts.clock_synced,
            "workers": {w.name: w.status() for w in self.parts.workers},
        }

    def levels(self) -> dict[str, Any]:
        """The live meter (main thread): the always-on meter's latest block and the recording
        clock. Cheap: the web page polls it several times a second while someone watches."""
        pump, meter = self.pump, self.meter
        recording = pump.status()["recording"] if pump is not None else None
        clipped = meter.last_clip_frame >= 0 and (
            meter.frames - meter.last_clip_frame) < meter.samplerate  # in the last second
        return {
            "state": str(self.state),
            "rms_dbfs": round(dbfs(meter.block_rms / FULL_SCALE), 1),
            "clipping": clipped,
            "frames": meter.frames,
            "recording_seconds": recording["seconds"] if recording else None,
            "led": self.led.state,
        }

    # -- requests from other threads (control socket, web page) ----------------------------------
    def request(self, command: dict[str, Any],
                timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        """Run one command (``{"command": "status"}``, ``levels``, ``start``, ``stop``,
        ``mark``, ``live`` with ``on``) on the main loop and return its answer.

        For any thread but the main one (it would wait for itself), any number at once: the
        command is queued and answered in order with everything else the service does. Raises
        the command's RecorderError, or ServiceError when the service is stopping or does not
        answer within `timeout` seconds.
        """
        if self.stopping.is_set():
            raise ServiceError("the service is stopping")
        reply: Future[dict[str, Any]] = Future()
        self._events.put(_Command(dict(command), reply))
        try:
            return reply.result(timeout=timeout)
        except TimeoutError:
            raise ServiceError("the service did not answer in time (busy publishing?)") \
                from None

    def _refuse_queued(self) -> None:
        """At shutdown: answer the commands the loop will never run, so nobody waits."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, _Command):
                event.reply.set_exception(ServiceError("the service is stopping"))

    def _from_socket(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control-socket thread: run the command on the main loop and wait for its answer."""
        return self.request(request)

    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control command (main thread)."""
        command = request.get("command")
        if self.hub and command in ("start", "stop", "mark"):
            raise NoAudioError()
        if command == "start":
            if self.pump is not None and self.pump.recording:
                raise RecordingStateError("already recording")
            rid = self.start("socket")
            return {"message": f"recording {rid}", "recording_id": rid}
        if command == "stop":
            if self.pump is None or not self.pump.recording:
                raise RecordingStateError("not recording")
            self.stop("socket")
            return {"message": "stopped; publishing"}
        if command == "mark":
            if not self.mark("socket"):
                raise RecorderError("not recording: nothing to bookmark")
            return {"message": "bookmarked"}
        if command == "status":
            return self.status()
        if command == "levels":
            return self.levels()
        if command == "live":
            return self._set_live(bool(request.get("on")))
        if command == "queued":  # a one-off command published and queued: deliver it now
            if self.parts.registration is not None:
                self.parts.registration.wake()
            return {"message": "delivering"}
        if command == "mesh":  # the pairings changed from the command line: reconcile now
            if self.parts.mesh is not None:
                self.parts.mesh.wake()
            return {"message": "reconciling"}
        raise RecorderError(f"unknown command {command!r}")


__all__ = ["Service", "ServiceState"]
