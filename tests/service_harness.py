"""The real `recorder run` process for tests: mock GPIO pins, PortAudio or a file source.

Buttons are driven through the service's control socket (`pin` command, mock pins only), so
every press goes through the same debounce, trigger and pump code as on a Pi. The service is
observed from outside only: its control socket (`recorder ctl`), the files it publishes and its
log.

Fixtures: ``service`` (PortAudio through the session's PulseAudio server, monitor source) and
``file_service`` (a looping WAV file source: no sound server needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from recorder.control import send_command
from recorder.errors import ServiceError
from tests.clips import RATE, tone
from tests.conftest import run_cli, terminate, wait_until

REC = 17  # the record button's GPIO in every service config here


class RunningService:
    """``recorder --config CFG run`` (``-v``: debug logs) as a child process, stopped with
    SIGTERM by :meth:`stop`.

    The constructor returns once `ready(status)` holds (default: armed, state ``idle``)."""

    def __init__(self, cfg_path: str, data: Path, env: dict[str, str],
                 ready: Callable[[dict[str, Any]], bool] | None = None,
                 timeout: float = 60, verbose: bool = False) -> None:
        self.cfg_path = cfg_path
        self.data = data
        self.socket = data / "state" / "control.sock"
        self.log = data.parent / "service.log"
        self.log_fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorder", *(["-v"] if verbose else []),
             "--config", cfg_path, "run"],
            env={**os.environ, **env, "GPIOZERO_PIN_FACTORY": "mock"},
            stdout=self.log_fh, stderr=subprocess.STDOUT)
        ready = ready or (lambda s: s.get("state") == "idle")
        try:
            self.wait(lambda: ready(self.status()), timeout, "service ready")
        except BaseException:
            self.stop()  # the caller never gets the object to stop: no process left behind
            raise

    def cmd(self, command: str, **args: Any) -> dict[str, Any]:
        """One control-socket command; raises ServiceError when refused."""
        return send_command(self.socket, command, timeout=15, **args)

    def ctl(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``recorder ctl ARGV`` through the command line, as a user runs it."""
        return run_cli("--config", self.cfg_path, "ctl", *argv, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """The status reply, or {} while the socket is not up yet (the process must live)."""
        try:
            return self.cmd("status")
        except ServiceError:
            assert self.proc.poll() is None, self.log.read_text()
            return {}

    def press(self, *steps: tuple[str, float], pin: int = REC) -> None:
        self.cmd("pin", pin=pin, steps=[list(s) for s in steps])

    def click(self, pin: int = REC) -> None:
        """A short press after 0.2 s at rest (a press inside the debounce after the last
        release would be a bounce of it)."""
        self.press(("press", 0.2), ("release", 0.12), pin=pin)

    def recorded(self) -> float:
        """Seconds in the recording in progress (0 when none has begun yet)."""
        audio = self.status().get("audio") or {}
        return (audio.get("recording") or {}).get("seconds", 0.0)

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        """`wait_until`, the failure ending with the service log's tail."""
        return wait_until(pred, timeout, 0.05, what,
                          detail=lambda: self.log.read_text()[-3000:])

    def wait_state(self, state: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(lambda: (s := self.status()).get("state") == state and s, timeout,
                         f"state {state!r}")

    def published(self) -> list[dict]:
        """Every published sidecar, oldest first (names start with the UTC start time)."""
        return [json.loads(p.read_text())
                for p in sorted(self.data.rglob("recordings/**/*.json"), key=lambda p: p.name)]

    def wait_published(self, n: int, timeout: float = 30) -> list[dict]:
        return self.wait(lambda: len(self.published()) >= n and self.published(), timeout,
                         f"{n} published recording(s)")

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; SIGKILL after 30 s. Returns the exit code."""
        terminate(self.proc)
        self.log_fh.close()
        return self.proc.returncode


def _starter(config_file: Any, base: dict[str, dict[str, Any]], env: dict[str, str]
             ) -> Iterator[Callable[..., RunningService]]:
    started: list[RunningService] = []

    def start(env_extra: dict[str, str] | None = None,
              ready: Callable[[dict[str, Any]], bool] | None = None,
              **sections: dict[str, Any]) -> RunningService:
        merged = {k: dict(v) for k, v in base.items()}
        for k, v in sections.items():
            merged.setdefault(k, {}).update(v)
        cfg_path, data = config_file(**merged)
        svc = RunningService(cfg_path, data, {**env, **(env_extra or {})}, ready=ready)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def service(pulse, config_file):
    """Start the real service on PortAudio (the PulseAudio monitor source): ``service(**sections)``.
    """
    base = {"audio": {"source": "pulse", "preroll": 1.0}, "gpio": {"long_press": 1.0}}
    yield from _starter(config_file, base, pulse.env())


@pytest.fixture(scope="session")
def loop_wav(tmp_path_factory) -> Path:
    """Two seconds of a quiet tone (never silent, never clipping), for a looping file source."""
    path = tmp_path_factory.mktemp("service-clip") / "tone.wav"
    sf.write(path, np.tile(tone(1.0, 300, 0.2), 2), RATE, subtype="PCM_16")
    return path


@pytest.fixture
def file_service(config_file, loop_wav):
    """Start the real service on a looping WAV file source: ``file_service(**sections)``."""
    base = {"audio": {"source": f"file:{loop_wav}", "preroll": 0.5}, "gpio": {"long_press": 1.0}}
    yield from _starter(config_file, base, {})
