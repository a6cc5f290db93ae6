"""Shared test helpers.

`need()` is how a test states a system dependency: in CI (``CI=true``) a missing one fails the
test loudly; on a developer machine it skips with the package to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

# Fixture modules shared by many test files.
pytest_plugins = ["tests.clips", "tests.pulse", "tests.icecast", "tests.corpus", "tests.netns",
                  "tests.papad_kit", "tests.service_harness", "tests.web_site"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(binary: str, package: str | None = None) -> str:
    """Return the path of `binary`, or fail (CI) / skip (elsewhere) naming its Debian package."""
    path = shutil.which(binary)
    if path:
        return path
    msg = f"{binary} not found: apt-get install {package or binary}"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)  # outside CI only: IN_CI fails above


def need_root(why: str) -> None:
    """Fail (CI, which runs as root) or skip (elsewhere) unless the tests run as root."""
    if os.geteuid() == 0:
        return
    msg = f"{why}: run the tests as root"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)  # outside CI only: IN_CI fails above


def terminate(proc: Any, timeout: float = 30.0) -> int:
    """Stop a child process as systemd stops a service: SIGTERM, then SIGKILL after
    `timeout` seconds. Returns its exit code."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "",
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or fail the test at `timeout`,
    the failure ending with what `detail` says then (a log's tail, what was still missing)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what or predicate}{extra}")
        time.sleep(interval)


def fake_net(root, ifaces: dict[str, tuple[str, bool, bool]]):
    """A stand-in /sys/class/net: ifaces maps name -> (mac, has_device_link, wireless)."""
    for name, (mac, device, wireless) in ifaces.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "address").write_text(mac + "\n")
        if device:
            (d / "device").mkdir()
        if wireless:
            (d / "wireless").mkdir()
    return root


@pytest.fixture
def factory():
    """gpiozero's mock pin factory as the default for the test; pins released afterwards."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = previous


@pytest.fixture
def cfg_factory(tmp_path):
    """Build a validated Config rooted in tmp_path; keyword sections override defaults."""
    from recorder.config import parse_config

    def make(**sections):
        raw = {
            "device": {"id": "testdev01"},
            "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 0},
            "web": {"listen": "127.0.0.1", "port": free_port()},  # never 8080 on every address
        }
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return parse_config(raw)

    return make


def toml_config(path, sections: dict) -> str:
    """Write a TOML config with the given sections (flat str/int/float/bool values)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (int, float)):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def config_file(tmp_path):
    """Write a config rooted in tmp_path/data; returns (path, data_dir)."""

    def make(**sections):
        data = tmp_path / "data"
        base = {"device": {"id": "testdev01"}, "storage": {"data_dir": str(data), "reserve_mb": 0},
                "web": {"listen": "127.0.0.1", "port": free_port()}}
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        return toml_config(tmp_path / "recorder.toml", base), data

    return make


def run_cli(*args, env=None, timeout=120, **kw):
    """Run ``python -m recorder ARGS`` and return the CompletedProcess (text)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "recorder", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, **kw)


def one_line_error(proc, code: int) -> str:
    """Assert a finished command failed with exit `code` and one error line, no traceback;
    return that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err
