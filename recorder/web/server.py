"""The web page as a worker of the service: Waitress serving `recorder.web.routes` on
``[web] listen``:``port``.

Why Bottle on Waitress (measured in a process that already holds what the service imports:
numpy, soundfile, requests): they add 1.5 MB of RSS and no wake-ups while nobody is connected
(with Waitress' poll timeout raised to 30 s), against 12.6 MB for aiohttp, 8.6 MB for Flask on
Waitress, and 6.8 MB plus ten wake-ups a second for Starlette on uvicorn. Both are pure Python,
well kept and packaged by Debian; Waitress parses HTTP, Bottle routes, and the handlers are
plain blocking functions that may wait for the service or SQLite without stalling others.

Threads: ``web`` runs Waitress' socket loop (accepting, reading requests, writing answers);
``waitress-N`` (a fixed pool) run the handlers, each with its own SQLite connection. A live
meter stream holds one pool thread while it is open, so at most `METER_STREAMS` may be.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from recorder.config import WebConfig
from recorder.secrets import read_secret
from recorder.web.auth import Auth
from recorder.web.listing import Listing
from recorder.web.routes import METER_STREAMS, Site
from recorder.web.views import Collaborators

log = logging.getLogger(__name__)

THREADS = METER_STREAMS + 4  # live meters, and pages and API calls beside them
LOOP_TIMEOUT = 30  # seconds Waitress' loop sleeps when nothing happens (its default: 1)


class WebWorker:
    """The web page (a `recorder.worker.Worker`). A port already taken does not stop the
    recorder: the error is logged and shown in ``recorder ctl status``."""

    name = "web"

    def __init__(self, cfg: WebConfig, parts: Collaborators) -> None:
        password = (read_secret(cfg.password_file, "web.password_file")
                    if cfg.password_file is not None else None)
        self.cfg = cfg
        self.parts = parts
        self.auth = Auth(password)
        self.stopping = threading.Event()
        self.site: Site | None = None
        self.error: str | None = None
        self.addresses: list[str] = []
        self._server: Any = None
        self._map: dict[int, Any] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the port and serve in the background."""
        import waitress

        listing = (Listing(self.parts.catalogue.db)
                   if self.parts.catalogue is not None else None)
        self.site = Site(self.cfg, self.parts, self.auth, listing, self.stopping)
        try:
            sockets = self._bind()
        except OSError as exc:
            self.error = f"cannot listen on port {self.cfg.port}: {exc.strerror or exc}"
            log.error("web page off: %s", self.error)
            return
        self._server = waitress.create_server(
            self.site.app, map=self._map, sockets=sockets, threads=THREADS,
            ident="recorderpi", asyncore_loop_timeout=LOOP_TIMEOUT,
            clear_untrusted_proxy_headers=True, max_request_body_size=1 << 20,
            connection_limit=64)
        self.addresses = [_url(s.getsockname()) for s in sockets]
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self._thread.start()
        log.info("web page on %s", ", ".join(self.addresses))

    def _bind(self) -> list[socket.socket]:
        """Listening sockets: the configured address, or every IPv4 and IPv6 address."""
        hosts = [self.cfg.listen] if self.cfg.listen else ["0.0.0.0", "::"]
        out: list[socket.socket] = []
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, self.cfg.port))
            except OSError:
                sock.close()
                if host == "::" and out:  # no IPv6 on this machine: IPv4 alone will do
                    log.info("web page: no IPv6 listener")
                    continue
                for s in out:
                    s.close()
                raise
            out.append(sock)
        return out

    def stop(self) -> None:
        """End the live meter streams, close every connection and the pool."""
        self.stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        from waitress.trigger import trigger

        triggers = [d for d in self._map.values() if isinstance(d, trigger)]

        def close_all() -> None:  # on the loop thread: Waitress' sockets are its alone
            for dispatcher in list(self._map.values()):
                dispatcher.close()

        if triggers:
            triggers[0].pull_trigger(close_all)
        if self._thread is not None:
            self._thread.join(10)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    def status(self) -> dict[str, Any]:
        """Where it listens (or why it does not) and how many live meters are open."""
        if self.error is not None:
            return {"state": "failed", "error": self.error}
        if self._server is None:
            return {"state": "stopped"}
        return {"state": "serving", "urls": self.addresses,
                "meters": self.site.watchers if self.site is not None else 0,
                "controls": self.auth.configured, "open_read": self.cfg.open_read}


def _url(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


__all__ = ["Collaborators", "WebWorker"]
