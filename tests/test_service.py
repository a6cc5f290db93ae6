"""The real `recorder run` process: mock GPIO pins, PortAudio through PulseAudio.

Buttons are driven through the service's control socket (`pin` command, mock pins only), so
every press goes through the same debounce, trigger and pump code as on a Pi.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder.control import send_command
from recorder.errors import ServiceError
from tests.clips import RATE, tone
from tests.pulse import PIPE_SOURCE

REC = 17


class RunningService:
    def __init__(self, cfg_path: str, data: Path, env: dict[str, str]) -> None:
        self.data = data
        self.socket = data / "state" / "control.sock"
        self.log = data.parent / "service.log"
        self.log_fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorder", "--config", cfg_path, "run"],
            env={**os.environ, **env, "GPIOZERO_PIN_FACTORY": "mock"},
            stdout=self.log_fh, stderr=subprocess.STDOUT)
        self.wait(lambda: self.status().get("state") == "idle", 30, "service armed")

    def cmd(self, command: str, **args):
        return send_command(self.socket, command, timeout=15, **args)

    def status(self) -> dict:
        try:
            return self.cmd("status")
        except ServiceError:
            assert self.proc.poll() is None, self.log.read_text()
            return {}

    def press(self, *steps: tuple[str, float]) -> None:
        self.cmd("pin", pin=REC, steps=[list(s) for s in steps])

    def click(self) -> None:
        self.press(("press", 0), ("release", 0.12))

    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log.read_text()[-3000:]}")

    def published(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.data.rglob("recordings/**/*.json"))]

    def wait_published(self, n: int, timeout: float = 30) -> list[dict]:
        return self.wait(lambda: len(self.published()) >= n and self.published(), timeout,
                         f"{n} published recording(s)")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_fh.close()
        return self.proc.returncode


@pytest.fixture
def service(pulse, config_file):
    started = []

    def start(env: dict[str, str] | None = None, **sections) -> RunningService:
        base = {"audio": {"source": "pulse", "preroll": 1.0}, "gpio": {"long_press": 1.0}}
        for k, v in sections.items():
            base.setdefault(k, {}).update(v)
        cfg_path, data = config_file(**base)
        svc = RunningService(cfg_path, data, {**pulse.env(), **(env or {})})
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def test_press_storms_long_press_and_quick_presses(service):
    svc = service()
    # A bounce storm on press and on release: exactly one toggle (start).
    storm = [("press", 0)] + [("release", 0.0005), ("press", 0.0005)] * 10
    storm += [("release", 0.15)] + [("press", 0.0005), ("release", 0.0005)] * 10
    svc.press(*storm)
    svc.wait(lambda: svc.status()["state"] == "recording", 10, "recording")
    time.sleep(1.0)
    # Long press while recording: a bookmark dated at the press, and the recording goes on.
    before = svc.status()["audio"]["recording"]["seconds"]
    svc.press(("press", 0), ("release", 1.4))
    time.sleep(0.5)
    status = svc.status()
    assert status["state"] == "recording"
    assert status["audio"]["recording"]["bookmarks"] == 1
    svc.click()  # stop
    (doc,) = svc.wait_published(1)
    assert len(doc["bookmarks"]) == 1
    # Pre-roll 1 s; the long press began about `before` s after the start of recording.
    assert doc["bookmarks"][0]["at"] == pytest.approx(before + doc["preroll"], abs=0.5)
    assert doc["trigger"] == "button" and doc["stop_reason"] == "stopped"
    # Press-release-press quickly (beyond the debounce): start, then stop: one more recording.
    svc.press(("press", 0), ("release", 0.1), ("press", 0.1), ("release", 0.1))
    docs = svc.wait_published(2)
    assert len(docs) == 2
    time.sleep(0.5)
    assert svc.status()["state"] == "idle"
    assert len(svc.published()) == 2


def test_control_socket_sigusr1_and_sigterm(service):
    svc = service()
    assert svc.cmd("start")["recording_id"]
    with pytest.raises(ServiceError, match="already recording"):
        svc.cmd("start")
    assert svc.cmd("mark")["message"] == "bookmarked"
    svc.cmd("stop")
    (first,) = svc.wait_published(1)
    assert first["trigger"] == "socket" and len(first["bookmarks"]) == 1
    with pytest.raises(ServiceError, match="not recording"):
        svc.cmd("stop")
    svc.proc.send_signal(signal.SIGUSR1)
    svc.wait(lambda: svc.status()["state"] == "recording", 10, "SIGUSR1 start")
    time.sleep(1.0)
    # SIGTERM mid-recording: the recording is finished and published before exit.
    assert svc.stop() == 0
    docs = [json.loads(p.read_text()) for p in sorted(svc.data.rglob("recordings/**/*.json"))]
    assert len(docs) == 2
    last = next(d for d in docs if d["trigger"] == "signal")
    assert last["stop_reason"] == "shutdown" and last["duration"] >= 1.0
    assert not (svc.data / "staging").exists() or not any((svc.data / "staging").iterdir())


def test_control_socket_permissions_and_ctl_cli(service):
    svc = service()
    mode = svc.socket.stat().st_mode & 0o777
    assert mode == 0o660
    out = subprocess.run([sys.executable, "-m", "recorder", "--config",
                          str(svc.data.parent / "recorder.toml"), "ctl", "status", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["device_id"] == "testdev01"


def test_device_disappears_mid_recording_and_returns(pulse_fresh, config_file):
    cfg_path, data = config_file(audio={"source": "pulse", "preroll": 0.5, "device_wait": 3.0},
                                 service={"stall_seconds": 1.0})
    svc = RunningService(cfg_path, data, pulse_fresh.env())
    try:
        svc.cmd("start")
        time.sleep(2.0)
        pulse_fresh.kill()  # the sound server dies: the stream stops delivering
        (doc,) = svc.wait_published(1, timeout=30)
        assert doc["stop_reason"] == "device_lost" and doc["duration"] >= 1.5
        status = svc.wait(lambda: (s := svc.status()) and s["state"] == "no_device" and s, 20,
                          "no_device state")
        assert status["led"] == "error" and status["warnings"]
        with pytest.raises(ServiceError):
            svc.cmd("start")
        pulse_fresh.start()  # the device comes back: reopened by name
        svc.wait(lambda: svc.status().get("state") == "idle", 30, "re-armed")
        svc.cmd("start")
        time.sleep(1.0)
        svc.cmd("stop")
        docs = svc.wait_published(2)
        assert docs[-1]["stop_reason"] == "stopped" or docs[0]["stop_reason"] == "stopped"
    finally:
        svc.stop()


def test_watchdog_pings_only_while_audio_flows(pulse, config_file, tmp_path):
    """READY after the first block; WATCHDOG=1 while blocks flow; none once capture starves."""
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(0.2)
    feeder = pulse.feed_silence_forever()
    cfg_path, data = config_file(audio={"source": "pulse", "preroll": 0.5},
                                 service={"stall_seconds": 30.0})
    env = {**pulse.env(source=PIPE_SOURCE), "NOTIFY_SOCKET": str(sock_path),
           "WATCHDOG_USEC": "900000"}
    messages: list[tuple[float, str]] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), notify.recv(4096).decode()))

    svc = None
    try:
        svc = RunningService(cfg_path, data, env)
        drain(3.0)
        texts = [m for _, m in messages]
        assert any("READY=1" in m for m in texts)
        assert sum("WATCHDOG=1" in m for m in texts) >= 4
        feeder.stop()  # the pipe source gets no more data: PortAudio delivers no blocks
        feeder.join(5)
        stopped_at = time.monotonic()
        drain(4.0)
        late = [t for t, m in messages if "WATCHDOG=1" in m and t > stopped_at + 1.0]
        assert late == [], "watchdog kept being pinged while capture delivered nothing"
    finally:
        feeder.stop()
        if svc is not None:
            svc.proc.kill()
            svc.proc.wait()
            svc.log_fh.close()
        notify.close()


def test_led_states_through_mock_pins(cfg_factory, tmp_path):
    """In-process service on a file source: the LED pin shows idle, recording and error."""
    import threading

    from gpiozero.pins.mock import MockFactory

    from recorder.daemon import Service

    path = tmp_path / "clip.wav"
    sf.write(path, np.tile(tone(1.0, 300), 5), RATE, subtype="PCM_16")
    factory = MockFactory()
    cfg = cfg_factory(audio={"source": f"file:{path}", "preroll": 0.5})
    svc = Service(cfg, pin_factory=factory)
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    led = factory.pin(cfg.gpio.led_pin)

    def states_for(seconds: float) -> list[bool]:
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append(bool(led.state))
            time.sleep(0.01)
        return seen

    try:
        deadline = time.monotonic() + 10
        while svc.state != "idle" and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = states_for(2.5)
        assert any(idle) and not all(idle)  # heartbeat: mostly off, short on
        assert sum(idle) / len(idle) < 0.3
        svc.start("test")
        time.sleep(0.3)
        assert all(states_for(1.0))  # recording: solid on
        svc.stop("test")
        time.sleep(0.5)
        svc.device_error = "simulated: no device"
        svc._update_led()
        err = states_for(1.0)
        flips = sum(a != b for a, b in itertools.pairwise(err))
        assert flips >= 6  # fast blink
    finally:
        svc.request_stop()
        runner.join(20)
