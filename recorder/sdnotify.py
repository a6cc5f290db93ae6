"""Minimal sd_notify(3): tell systemd we are ready, what we are doing, and that we are alive.

Messages are datagrams to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract
name written with a leading ``@``). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op that returns False, so the service runs the same from a terminal. No python-systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """One notification channel, read from `env` (default ``os.environ``) at construction."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._env = dict(env)
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram. True when sent; never raises.

        A failure is logged once (a flood of identical warnings would bury the real problem).
        """
        if self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    self._sock = socket.socket(socket.AF_UNIX, kind)
                self._sock.sendto(payload, self._address)
                return True
            except OSError as exc:
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s", self._address, exc)
                    self._warned = True
                return False

    def ready(self) -> bool:
        """Startup finished (for ``Type=notify``: systemd considers the unit started now)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping; send only when real work was done since the last one."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (``$WATCHDOG_USEC``), or None when no watchdog
        applies to this process. Ping at about half of it, as sd_watchdog_enabled(3) advises."""
        usec = self._env.get("WATCHDOG_USEC", "")
        pid = self._env.get("WATCHDOG_PID", "")
        try:
            value = int(usec)
            if pid and int(pid) != os.getpid():
                return None  # meant for another process (we were forked or exec'd by the service)
        except ValueError:
            return None
        return value / 1e6 if value > 0 else None

    def close(self) -> None:
        """Close the socket (it is reopened on the next notify)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _socket_address(name: str) -> str | bytes | None:
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")  # Linux abstract namespace
    if name.startswith("/"):
        return name
    # systemd also knows vsock: addresses; they do not reach a Pi appliance.
    log.warning("NOTIFY_SOCKET %r is not a unix socket address; notifications disabled", name)
    return None


# --- module-level convenience: the process's own environment -------------------------------------

_default: Notifier | None = None
_default_key: tuple[str, str, str] | None = None
_default_lock = threading.Lock()


def _notifier() -> Notifier:
    global _default, _default_key
    key = tuple(os.environ.get(k, "") for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"))
    with _default_lock:
        # Rebuilt when the environment changes (tests do that; systemd does not).
        if _default is None or key != _default_key:
            if _default is not None:
                _default.close()
            _default, _default_key = Notifier(), key  # type: ignore[assignment]
        return _default


def ready() -> bool:
    """Send READY=1 when under systemd; see :meth:`Notifier.ready`."""
    return _notifier().ready()


def status(text: str) -> bool:
    """Send STATUS=text when under systemd; see :meth:`Notifier.status`."""
    return _notifier().status(text)


def watchdog() -> bool:
    """Send WATCHDOG=1 when under systemd; see :meth:`Notifier.watchdog`."""
    return _notifier().watchdog()


def stopping() -> bool:
    """Send STOPPING=1 when under systemd; see :meth:`Notifier.stopping`."""
    return _notifier().stopping()


def watchdog_interval() -> float | None:
    """The systemd watchdog timeout in seconds for this process, or None."""
    return _notifier().watchdog_interval()
