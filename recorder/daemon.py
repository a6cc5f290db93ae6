"""`recorder run`: the appliance service.

It keeps the audio source open so the pre-roll ring is always full, turns button presses,
control-socket commands and SIGUSR1 into recordings and bookmarks, shows its state on one LED,
watches its own health (device present, audio flowing, silence, clipping, disk, clock) and keeps
going across errors: a vanished microphone finishes and publishes what was recorded, then the
service polls until the device returns and reopens it by name.

systemd sees READY=1 once the first audio block has arrived, and WATCHDOG=1 only while the pump
really moves audio, so a hung capture gets the service restarted.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from typing import Any

from recorder import app, clock
from recorder.atomic import makedirs_durable
from recorder.config import Config
from recorder.control import ControlServer
from recorder.errors import DeviceError, RecorderError
from recorder.led import NullLed, StatusLed, open_status_led
from recorder.pump import Pump, RecordingStateError
from recorder.recover import recover
from recorder.sdnotify import Notifier
from recorder.sinks.levels import LevelMeter
from recorder.triggers import LIVE_OFF, LIVE_ON, MARK, TOGGLE, Triggers, drive_mock_pin

log = logging.getLogger(__name__)

DEVICE_RETRY_SECONDS = 2.0
TICK = 0.1


class Service:
    """The long-running appliance: source, triggers, LED, control socket, health, watchdog."""

    def __init__(self, cfg: Config, *, source_spec: str | None = None, realtime: bool = True,
                 pin_factory: Any = None, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.source_spec = source_spec or cfg.audio.source
        self.realtime = realtime
        self.pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        self.assembly = app.assemble(cfg, service=True)
        self.publisher = self.assembly.publisher
        self.meter = LevelMeter(cfg.audio.samplerate, cfg.service.silence_dbfs)
        self.pump: Pump | None = None
        self.triggers: Triggers | None = None
        self.led: StatusLed | NullLed = NullLed()
        self.control: ControlServer | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()  # serialises start/stop/mark from buttons, socket, signals
        self.state = "starting"
        self.device_error: str | None = None
        self.storage_error: str | None = None
        self.last_error: str | None = None
        self.last_published: dict[str, Any] | None = None
        self.published_count = 0
        self.disk_low = False
        self._free_mb = -1
        self._next_disk_check = 0.0
        self._ready_sent = False
        self._workers = self.assembly.workers

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `request_stop`); returns the exit code."""
        self._install_signals()
        makedirs_durable(self.cfg.device_folder)
        makedirs_durable(self.cfg.storage.staging_dir)
        for outcome in recover(self.cfg, self.publisher):
            log.warning("recovered %s: %s: %s", outcome.recording_id, outcome.action,
                        outcome.detail)
        self._open_gpio()
        self.control = ControlServer(self.cfg.service.control_socket, self.handle_command,
                                     group=self.cfg.service.socket_group)
        for worker in self._workers:
            worker.start()
        if self.triggers is not None and self.triggers.live:  # the switch was already on
            self._set_live(True)
        try:
            while not self.stopping.is_set():
                pump = self._open_pump()
                if pump is None:
                    continue
                self._serve(pump)
        finally:
            self._shutdown()
        return 0

    def request_stop(self) -> None:
        self.stopping.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        # A toggle from a signal handler must not take locks the main thread may hold.
        signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(
            target=self._toggle_quietly, args=("signal",), daemon=True).start())

    def _open_gpio(self) -> None:
        try:
            self.triggers = Triggers(self.cfg.gpio, self._on_trigger, pin_factory=self.pin_factory)
            self.led = open_status_led(self.cfg.gpio, pin_factory=self.pin_factory)
        except Exception as exc:  # gpiozero raises several kinds when there is no GPIO at all
            log.warning("GPIO unavailable (%s): buttons and LED disabled; use `recorder ctl`", exc)
            self.triggers = None
            self.led = NullLed()

    def _open_pump(self) -> Pump | None:
        if self.device_error is not None and not self.source_spec.startswith("file:"):
            self._rescan()
        try:
            pump = app.build_pump(self.cfg, source_spec=self.source_spec, realtime=self.realtime,
                                  loop=True, always_on=[self.meter], on_event=self._on_pump_event,
                                  assembly=self.assembly)
            pump.start()
            try:
                pump.wait_first_block(self.cfg.audio.device_wait)
            except DeviceError:
                pump.close()
                raise
        except DeviceError as exc:
            if self.device_error != str(exc):
                log.error("no audio device: %s; retrying every %.0f s", exc,
                          DEVICE_RETRY_SECONDS)
                self.notifier.status(f"no audio device: {exc}")
            self.device_error = str(exc)
            self.state = "no_device"
            self._check_disk(time.monotonic())
            self._update_led()
            self.stopping.wait(DEVICE_RETRY_SECONDS)
            return None
        if self.device_error:
            log.info("audio device %s is back", pump.source.name)
        self.device_error = None
        self.meter = LevelMeter(pump.source.samplerate, self.cfg.service.silence_dbfs)
        streams = [w for w in self._workers if hasattr(w, "write")]
        if pump.source.samplerate != self.cfg.audio.samplerate and streams:
            log.warning("source runs at %d Hz, not the configured %d Hz: live stream disabled",
                        pump.source.samplerate, self.cfg.audio.samplerate)
            streams = []
        pump.always_on = [self.meter, *streams]
        self.pump = pump
        self.state = "idle"
        if not self._ready_sent:
            self.notifier.ready()
            self._ready_sent = True
        self.notifier.status(f"armed on {pump.source.name}")
        log.info("armed: %s at %d Hz, %.1f s pre-roll", pump.source.name,
                 pump.source.samplerate, self.cfg.audio.preroll)
        self._update_led()
        return pump

    @staticmethod
    def _rescan() -> None:
        from recorder.sources.portaudio import rescan_devices

        try:
            rescan_devices()
        except Exception as exc:  # PortAudio missing entirely: the open below reports it
            log.debug("device rescan failed: %s", exc)

    def _serve(self, pump: Pump) -> None:
        interval = self.notifier.watchdog_interval()
        ping_every = interval / 3 if interval else None
        last_ping = 0.0
        last_pos = pump.pos
        while not self.stopping.is_set():
            now = time.monotonic()
            if ping_every and now - last_ping >= ping_every and pump.pos > last_pos:
                # Audio really moved through the pump since the last ping.
                self.notifier.watchdog()
                last_ping, last_pos = now, pump.pos
            self._check_disk(now)
            if pump.device_lost:
                break
            self._update_led()
            self.stopping.wait(TICK)
        with self._lock:
            fut = pump.close()
            self.pump = None
        if fut is not None:
            try:
                fut.result(timeout=30)
            except Exception as exc:
                log.error("publishing the interrupted recording failed: %s", exc)
        if pump.device_lost and not self.stopping.is_set():
            self.device_error = f"audio from {pump.source.name!r} stopped"
            self.state = "no_device"
            self._update_led()
            self.notifier.status(f"audio device lost: {pump.source.name}")
            self.stopping.wait(DEVICE_RETRY_SECONDS)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        for worker in self._workers:
            try:
                worker.stop()
            except Exception:
                log.exception("stopping %s failed", worker)
        if self.control is not None:
            self.control.close()
        if self.triggers is not None:
            self.triggers.close()
        self.led.set_state("off")
        self.led.close()
        log.info("stopped")

    # -- actions ---------------------------------------------------------------------------------
    def start(self, trigger: str, seconds_ago: float = 0.0) -> str:
        with self._lock:
            pump = self._require_pump()
            handle = pump.start_recording(trigger, seconds_ago=seconds_ago)
        log.info("recording %s started (%s)", handle.recording_id, trigger)
        self._update_led()
        return handle.recording_id

    def stop(self, trigger: str) -> None:
        with self._lock:
            pump = self._require_pump()
            pump.stop_recording("stopped")
        log.info("recording stopped (%s)", trigger)

    def mark(self, trigger: str, seconds_ago: float = 0.0) -> bool:
        with self._lock:
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

    def _toggle_quietly(self, trigger: str) -> None:
        try:
            self.toggle(trigger)
        except RecorderError as exc:
            log.error("%s toggle refused: %s", trigger, exc)

    def _require_pump(self) -> Pump:
        if self.pump is None:
            raise DeviceError(self.device_error or "the audio source is not open yet")
        return self.pump

    def _on_trigger(self, name: str, at: float) -> None:
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
            self.last_error = str(exc)
            self._update_led()

    def _set_live(self, on: bool) -> dict[str, Any]:
        for worker in self._workers:
            if hasattr(worker, "set_live"):
                worker.set_live(on)
                return {"live": on}
        raise RecorderError("no radio stream configured ([radio] section)")

    def _on_pump_event(self, kind: str, detail: dict[str, Any]) -> None:
        if kind == "published":
            self.published_count += 1
            self.last_published = detail
            self.last_error = None
        elif kind == "publish_failed":
            self.last_error = f"publishing failed: {detail.get('error')}"
        elif kind == "device_lost":
            self.last_error = f"audio device lost: {detail.get('source')}"
        elif kind == "disk_low":
            self.disk_low = True
            self.last_error = detail.get("error")
        elif kind == "bookmark":
            log.info("bookmark at %.2f s", detail["at"])
        for worker in self._workers:
            if hasattr(worker, "on_pump_event"):
                worker.on_pump_event(kind, detail)

    # -- health ----------------------------------------------------------------------------------
    def _check_disk(self, now: float) -> None:
        if now < self._next_disk_check:
            return
        self._next_disk_check = now + 5.0
        try:
            free = shutil.disk_usage(self.cfg.storage.sync_root).free
        except OSError as exc:
            self.storage_error = f"sync root unavailable: {exc}"
            return
        self.storage_error = None
        self._free_mb = free // (1024 * 1024)
        self.disk_low = self._free_mb < self.cfg.storage.reserve_mb

    def _update_led(self) -> None:
        pump = self.pump
        if self.device_error or self.storage_error or (self.last_error and not self.disk_low):
            state = "error"
        elif pump is not None and pump.recording:
            state = "recording"
        elif self.disk_low:
            state = "disk_low"
        else:
            state = "idle"
        if pump is not None:
            self.state = "recording" if pump.recording else "idle"
        self.led.set_state(state)

    def warnings(self) -> list[str]:
        out = []
        if self.pump is not None:
            silent = self.meter.seconds_since_loud()
            if silent > self.cfg.service.silence_seconds:
                out.append(f"input silent for {silent:.0f} s (microphone unplugged or muted?)")
            recent = (self.meter.frames - self.meter.last_clip_frame) / self.meter.samplerate
            if self.meter.last_clip_frame >= 0 and recent < 10:
                out.append("input clipping: lower the microphone gain")
        if self.disk_low:
            out.append(f"free space {self._free_mb} MB is below the reserve")
        out.extend(e for e in (self.device_error, self.storage_error) if e)
        return out

    def status(self) -> dict[str, Any]:
        """Everything `recorder ctl status` shows."""
        pump = self.pump
        ts = clock.now()
        return {
            "state": self.state,
            "device_id": self.cfg.device.id,
            "led": self.led.state,
            "audio": pump.status() if pump is not None else None,
            "levels": self.meter.summary(),
            "warnings": self.warnings(),
            "last_error": self.last_error,
            "last_published": self.last_published,
            "published": self.published_count,
            "free_mb": self._free_mb,
            "clock_synced": ts.clock_synced,
            "workers": {getattr(w, "name", type(w).__name__): w.status()
                        for w in self._workers if hasattr(w, "status")},
        }

    # -- control socket --------------------------------------------------------------------------
    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
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
        if command == "live":
            return self._set_live(bool(request.get("on")))
        if command == "pin":
            return self._drive_mock_pin(request)
        raise RecorderError(f"unknown command {command!r}")

    def _drive_mock_pin(self, request: dict[str, Any]) -> dict[str, Any]:
        """Simulated button presses (tests of the running service); mock pins only."""
        from gpiozero import Device

        steps = [(str(a), float(d)) for a, d in request.get("steps", [])]
        drive_mock_pin(self.pin_factory or Device.pin_factory, int(request["pin"]), steps,
                       self.cfg.gpio.active_low)
        return {"message": "driven"}
