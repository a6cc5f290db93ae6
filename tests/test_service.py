"""The real `recorder run` process: mock GPIO pins, PortAudio through PulseAudio or a file source.

Everything is observed from outside: the control socket and `recorder ctl`, the published files,
systemd notifications. See tests/service_harness.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time

import numpy as np
import pytest

from recorder.errors import ServiceError
from tests.clips import tone, write_wav
from tests.conftest import one_line_error, wait_until
from tests.pulse import PIPE_SOURCE
from tests.service_harness import RunningService

LIVE = 23


def test_press_storms_long_press_and_quick_presses(service):
    svc = service()
    # A bounce storm on press and on release: exactly one toggle (start).
    storm = [("press", 0)] + [("release", 0.0005), ("press", 0.0005)] * 10
    storm += [("release", 0.15)] + [("press", 0.0005), ("release", 0.0005)] * 10
    svc.press(*storm)
    svc.wait(lambda: svc.recorded() >= 1.0, 20, "1 s recorded before the bookmark")
    # Long press while recording: a bookmark dated at the press, and the recording goes on.
    before = svc.status()["audio"]["recording"]["seconds"]
    svc.press(("press", 0.2), ("release", 1.4))
    status = svc.wait(lambda: (s := svc.status())["audio"]["recording"]["bookmarks"] == 1 and s,
                      10, "the bookmark")
    after = status["audio"]["recording"]["seconds"]
    assert status["state"] == "recording"
    svc.click()  # stop
    (doc,) = svc.wait_published(1)
    assert doc["trigger"] == "button" and doc["stop_reason"] == "stopped"
    assert len(doc["bookmarks"]) == 1
    # The press came after the first status read and before the second: the bookmark lies
    # between them (plus the pre-roll the recording starts with; 0.1 s = capture blocks).
    at = doc["bookmarks"][0]["at"]
    assert before + doc["preroll"] - 0.1 <= at <= after + doc["preroll"] + 0.1, (before, at, after)
    # Press-release-press-release quickly (beyond the debounce): start, then stop.
    svc.press(("press", 0.2), ("release", 0.1), ("press", 0.1), ("release", 0.1))
    assert len(svc.wait_published(2)) == 2
    # One more click starts a third recording: had the quick presses left a stray toggle
    # behind, this click would stop instead, or a fourth recording would appear.
    svc.click()
    svc.wait_state("recording", 10)
    svc.cmd("stop")
    docs = svc.wait_published(3)
    svc.wait_state("idle", 10)
    assert len(svc.published()) == 3
    assert [d["stop_reason"] for d in docs] == ["stopped"] * 3


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
    svc.wait_state("recording", 10)
    svc.wait(lambda: svc.recorded() >= 1.0, 20, "1 s recorded")
    # SIGTERM mid-recording: the recording is finished and published before exit.
    assert svc.stop() == 0
    docs = svc.published()
    assert len(docs) == 2
    last = next(d for d in docs if d["trigger"] == "signal")
    assert last["stop_reason"] == "shutdown" and last["duration"] >= 1.0
    assert not (svc.data / "staging").exists() or not any((svc.data / "staging").iterdir())


def test_control_socket_permissions(file_service):
    svc = file_service()
    assert svc.socket.stat().st_mode & 0o777 == 0o660
    assert svc.socket.parent.stat().st_mode & 0o777 == 0o750


def test_device_disappears_mid_recording_and_returns(pulse_fresh, config_file):
    cfg_path, data = config_file(audio={"source": "pulse", "preroll": 0.5, "device_wait": 3.0},
                                 service={"stall_seconds": 1.0})
    svc = RunningService(cfg_path, data, pulse_fresh.env())
    try:
        svc.cmd("start")
        svc.wait(lambda: svc.recorded() >= 1.5, 20, "1.5 s recorded")
        pulse_fresh.kill()  # the sound server dies: the stream stops delivering
        (doc,) = svc.wait_published(1, timeout=30)
        assert doc["stop_reason"] == "device_lost" and doc["duration"] >= 1.5
        status = svc.wait_state("no_device", 20)
        assert status["led"] == "error" and status["warnings"]
        start = svc.ctl("start")
        one_line_error(start, 3)  # the audio device is missing
        pulse_fresh.start()  # the device comes back: reopened by name
        svc.wait_state("idle", 30)
        svc.cmd("start")
        svc.wait(lambda: svc.recorded() >= 0.5, 20, "recording")
        svc.cmd("stop")
        docs = svc.wait_published(2)
        assert [d["stop_reason"] for d in docs] == ["device_lost", "stopped"]
        assert svc.wait_state("idle")["led"] == "idle"
    finally:
        svc.stop()


def test_watchdog_pings_only_while_audio_flows(pulse, config_file, tmp_path):
    """READY after the first block; WATCHDOG=1 while blocks flow; none once capture starves,
    so systemd's watchdog (WATCHDOG_USEC) would restart a service whose capture hung."""
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(0.2)
    feeder = pulse.feed_silence_forever()
    # The stall detector is the end mark: "audio device lost" is sent stall_seconds after the
    # last block, and no ping may come in between.
    cfg_path, data = config_file(audio={"source": "pulse", "preroll": 0.5, "device_wait": 2.0},
                                 service={"stall_seconds": 3.0})
    watchdog_s = 0.9
    env = {**pulse.env(source=PIPE_SOURCE), "NOTIFY_SOCKET": str(sock_path),
           "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    messages: list[tuple[float, str]] = []

    def count(text: str) -> int:
        """Receive what is there (up to 0.2 s), then count the messages holding `text`."""
        with contextlib.suppress(TimeoutError):
            messages.append((time.monotonic(), notify.recv(4096).decode()))
        return sum(text in m for _, m in messages)

    svc = None
    try:
        svc = RunningService(cfg_path, data, env)
        wait_until(lambda: count("READY=1"), 30, 0, what="READY=1")
        wait_until(lambda: count("WATCHDOG=1") >= 4, 30, 0, what="4 pings")
        feeder.stop()  # the pipe source gets no more data: PortAudio delivers no blocks
        feeder.join(5)
        wait_until(lambda: count("audio device lost"), 60, 0, what="the service noticing the stall")
        lost_at = next(t for t, m in messages if "audio device lost" in m)
        last_ping = max(t for t, m in messages if "WATCHDOG=1" in m and t < lost_at)
        # Pinging went on while audio flowed (every watchdog/3 s), then stopped for longer than
        # the watchdog period: systemd would have restarted the service.
        assert lost_at - last_ping > watchdog_s, [m for _, m in messages[-8:]]
    finally:
        feeder.stop()
        if svc is not None:
            svc.proc.kill()
            svc.proc.wait(10)
            svc.log_fh.close()
        notify.close()


def test_hub_records_nothing_and_keeps_its_other_jobs(file_service, tmp_path):
    """``audio.source = "none"`` (a hub): READY and watchdog pings with no audio device, a
    status that says so, the LED off, recording refused with exit 3 (one line), and the
    inbox still imports: what a hub does besides recording keeps working."""
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(0.2)
    messages: list[str] = []

    def count(text: str) -> int:
        with contextlib.suppress(TimeoutError):
            messages.append(notify.recv(4096).decode())
        return sum(text in m for m in messages)

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    try:
        svc = file_service(env_extra={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "600000"},
                           ready=lambda s: s.get("state") == "hub",
                           audio={"source": "none"}, web={"enabled": False},
                           **{"import": {"inbox": str(inbox), "settle_seconds": 0.5,
                                         "poll_seconds": 0.2}})
        wait_until(lambda: count("READY=1"), 30, 0, what="READY=1")
        wait_until(lambda: count("WATCHDOG=1") >= 3, 30, 0, what="3 watchdog pings")
        status = json.loads(svc.ctl("status", "--json").stdout)
        assert status["state"] == "hub" and status["led"] == "off" and status["audio"] is None
        assert "hub: records nothing" in svc.ctl("status").stdout
        for action in ("start", "stop", "mark"):
            assert "records nothing" in one_line_error(svc.ctl(action), 3)
        write_wav(inbox / "talk.wav", np.concatenate([tone(2.5, 300), tone(2.5, 500)]))
        (doc,) = svc.wait_published(1, timeout=120)
        assert doc["source"] == "import" and doc["device_id"] == status["device_id"]
        assert svc.status()["state"] == "hub"
        assert "retrying every" not in svc.log.read_text()  # no device was ever looked for
    finally:
        notify.close()


# --- LED states and the device through the real process ----------------------------------------


def test_led_follows_idle_recording_idle(file_service):
    svc = file_service()
    assert svc.status()["led"] == "idle"
    started = svc.ctl("start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("recording ")
    assert svc.wait_state("recording")["led"] == "recording"
    assert svc.ctl("mark").stdout.strip() == "bookmarked"
    assert svc.ctl("stop").returncode == 0
    (doc,) = svc.wait_published(1)
    assert doc["trigger"] == "socket" and len(doc["bookmarks"]) == 1
    assert svc.wait_state("idle")["led"] == "idle"


def test_device_missing_at_start(file_service):
    """The service starts without its microphone: it says so, shows the error LED and refuses
    to record with exit 3, and keeps serving the control socket."""
    svc = file_service(audio={"source": "no-such-microphone-xyz", "device_wait": 1.0},
                       ready=lambda s: s.get("state") == "no_device")
    status = json.loads(svc.ctl("status", "--json").stdout)
    assert status["state"] == "no_device" and status["led"] == "error"
    assert any("no input device matches 'no-such-microphone-xyz'" in w
               for w in status["warnings"]), status["warnings"]
    err = one_line_error(svc.ctl("start"), 3)
    assert "no-such-microphone-xyz" in err
    assert svc.proc.poll() is None and svc.published() == []


def test_disk_below_reserve_shows_on_the_led_and_refuses(file_service):
    svc = file_service(storage={"reserve_mb": 10**7})
    status = svc.wait(lambda: (s := svc.status()).get("led") == "disk_low" and s, 20,
                      "the disk_low LED")
    assert any("below the reserve" in w for w in status["warnings"])
    err = one_line_error(svc.ctl("start"), 4)
    assert "reserve" in err
    assert svc.published() == []


def test_gpio_live_switch_streams_through_the_running_service(file_service, icecast):
    svc = file_service(gpio={"live_pin": LIVE},
                       radio={"url": icecast.url, "mount": icecast.mount,
                              "password_file": str(icecast.password_file)})
    assert svc.status()["workers"]["radio"]["state"] == "off"
    svc.press(("press", 0), pin=LIVE)  # a switch: it stays on
    svc.wait(lambda: svc.status()["workers"]["radio"]["state"] == "live", 30, "live on air")
    wait_until(icecast.source_connected, 30, what="the source on icecast")
    svc.press(("release", 0), pin=LIVE)
    svc.wait(lambda: svc.status()["workers"]["radio"]["state"] == "off", 30, "off air")
    wait_until(lambda: not icecast.source_connected(), 30, what="the source gone from icecast")
