"""A real icecast2 (2.4) on 127.0.0.1 for tests, and a listener that records what a mount sends.

`IcecastServer(base)` writes a minimal config into `base` (its own free port, source and admin
passwords, one mount, logs to a file through stderr) and runs ``icecast2 -c``. Icecast refuses
to run as root unless the config names an unprivileged user in ``<changeowner>``: as root we
name ``nobody``, which is why the error and access logs go to stderr (``-``) and are captured by
us: after dropping privileges icecast could not open files in a root-only temporary directory.

Use the `icecast` fixture (started, stopped after the test); `stop()`, `start()` and `restart()`
(same port, same config) exercise reconnects. `Listener(url)` reads a mount in a thread and
keeps every byte with its arrival time.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.config import Config, parse_config
from tests.conftest import free_port, need, terminate, wait_until

START_TIMEOUT = 20.0
MOUNT = "/cowradio.ogg"

_CONFIG = """<icecast>
  <location>test</location>
  <admin>test@localhost</admin>
  <limits>
    <clients>20</clients>
    <sources>4</sources>
    <queue-size>262144</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>10</header-timeout>
    <source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>16384</burst-size>
  </limits>
  <authentication>
    <source-password>{source_password}</source-password>
    <relay-password>{admin_password}</relay-password>
    <admin-user>admin</admin-user>
    <admin-password>{admin_password}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket>
    <port>{port}</port>
    <bind-address>127.0.0.1</bind-address>
  </listen-socket>
  <mount type="normal">
    <mount-name>{mount}</mount-name>
    <max-listeners>10</max-listeners>
  </mount>
  <fileserve>1</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir>
    <logdir>{base}</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging>
    <accesslog>-</accesslog>
    <errorlog>-</errorlog>
    <loglevel>3</loglevel>
  </logging>
  <security>
    <chroot>0</chroot>
    {changeowner}
  </security>
</icecast>
"""


class IcecastServer:
    """One icecast2 process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, base: Path, mount: str = MOUNT) -> None:
        self.binary = need("icecast2")
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.mount = mount
        self.source_password = secrets.token_hex(8)
        self.admin_password = secrets.token_hex(8)
        self.password_file = self.write_secret("source-password", self.source_password)
        self.config_path = self.base / "icecast.xml"
        self.log_path = self.base / "icecast.log"
        changeowner = (
            "<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
            if os.geteuid() == 0
            else ""
        )
        self.config_path.write_text(
            _CONFIG.format(
                source_password=self.source_password,
                admin_password=self.admin_password,
                port=self.port,
                mount=mount,
                base=self.base,
                changeowner=changeowner,
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mount_url(self) -> str:
        return self.url + self.mount

    def write_secret(self, name: str, value: str) -> Path:
        """A 0600 secret file in the server's directory (what `read_secret` accepts)."""
        path = self.base / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        return path

    def recorder_config(self, **radio: object) -> Config:
        """A recorder Config whose `[radio]` points at this server (override keys in `radio`)."""
        values: dict[str, object] = {
            "url": self.url,
            "mount": self.mount,
            "password_file": str(self.password_file),
        }
        values.update(radio)
        return parse_config(
            {
                "device": {"id": "testdev01"},
                "storage": {"data_dir": str(self.base / "data"), "reserve_mb": 0},
                "radio": values,
            }
        )

    def start(self) -> None:
        """Start icecast2 and wait until it answers HTTP."""
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                pytest.fail(f"icecast2 exited {self._proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/status-json.xsl", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(ready, START_TIMEOUT, 0.1, "icecast2 to answer")

    def stop(self) -> None:
        """Stop icecast2 (SIGTERM, then SIGKILL); sources and listeners are cut off."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, 10)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def source_connected(self) -> bool:
        """Whether a source currently holds the mount (from Icecast's status page)."""
        try:
            with urllib.request.urlopen(self.url + "/status-json.xsl", timeout=2) as resp:
                body = resp.read().decode("utf-8", "replace")
        except OSError:
            return False
        return f'"listenurl":"{self.url}{self.mount}"' in body.replace(" ", "")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Listener:
    """Reads a mount in a thread; keeps the bytes and their (monotonic time, total) arrivals.

    A raw socket rather than an HTTP library: the arrival time of every byte is the point.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self._sock.sendall(
            f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
            "User-Agent: recorderpi-test\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 200 " not in status + " ":
            self._sock.close()
            raise AssertionError(f"listener got {status!r} for {url}")
        self.headers = head.decode("latin-1")
        self.data = bytearray(body)
        self.arrivals: list[tuple[float, int]] = [(time.monotonic(), len(self.data))]
        self.closed_by_server = False
        self._stop = threading.Event()
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._read, name="listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                self.closed_by_server = True
                return
            self.data += chunk
            self.arrivals.append((time.monotonic(), len(self.data)))

    def close(self) -> bytes:
        """Stop listening; return everything received."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return bytes(self.data)


@pytest.fixture
def icecast(tmp_path: Path) -> Iterator[IcecastServer]:
    """A started icecast2 on a free 127.0.0.1 port, stopped after the test."""
    server = IcecastServer(tmp_path / "icecast")
    server.start()
    try:
        yield server
    finally:
        server.stop()
