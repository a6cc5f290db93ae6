"""A small fault-injecting HTTP proxy to put between the recorder and a real papad.

`FaultProxy(target_url)` listens on 127.0.0.1 and forwards each HTTP/1.1 request to the real
server on a fresh connection (``Connection: close`` both ways, so every response ends at EOF
and every request is one unit). Faults apply to the next requests matching a method (``"*"``: any),
a path prefix and optionally a byte string in the body:

- `lose_response(n, method, path)`: forward the request (papad commits it), read papad's whole
  answer, then close the client's connection without a byte: the lost response. Only 2xx
  answers are lost (and counted), so the request is known to have been committed.
- `reset(n, method, path)`: close the connection without forwarding (papad never sees it).
- `answer(status, body, n, method, path, headers)`: answer instead of papad (a 503 from a
  gateway, a 500, a 429 with ``Retry-After``).
- `answer_after(status, body, n, method, path)`: forward the request (papad does it), then
  answer `status` instead of papad's answer (papadam's 500 to a DELETE it has done).
- `down()` / `up()`: stop listening (connections refused, open ones cut) and listen again on
  the same port.

`seen` lists (method, path, outcome) of every request; `count(method, path)` counts them;
`max_in_flight` is the most requests the proxy held at once; `delay` (seconds) is added
before forwarding each request, to make overlap measurable.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_HEAD_LIMIT = 64 * 1024


@dataclass
class _Fault:
    kind: str  # "lose" | "reset" | "answer" | "after"
    method: str
    path: str
    left: int
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    contains: bytes = b""

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return (self.left > 0 and self.method in ("*", method) and path.startswith(self.path)
                and self.contains in body)


class FaultProxy:
    """See the module docstring."""

    def __init__(self, target_url: str, port: int = 0) -> None:
        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self.seen: list[tuple[str, str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again, on the same port)."""
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(64)
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True,
                                        name="fault-proxy")
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut every open connection: papad looks down."""
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    stop = down

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- faults --------------------------------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def lose_response(self, n: int = 1, method: str = "POST", path: str = "/api/v1/archive/",
                      contains: bytes = b"") -> None:
        """The next `n` matching requests that papad answers 2xx have that answer lost."""
        self._add(_Fault("lose", method, path, n, contains=contains))

    def reset(self, n: int = 1, method: str = "*", path: str = "/",
              contains: bytes = b"") -> None:
        """The next `n` matching requests are cut before papad sees them."""
        self._add(_Fault("reset", method, path, n, contains=contains))

    def answer(self, status: int, body: Any = None, n: int = 1, method: str = "*",
               path: str = "/", headers: dict[str, str] | None = None,
               contains: bytes = b"") -> None:
        """The next `n` matching requests are answered with `status` and `body` (JSON if not
        bytes) instead of reaching papad."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._add(_Fault("answer", method, path, n, status, data, dict(headers or {}),
                         contains))

    def answer_after(self, status: int, body: Any = None, n: int = 1, method: str = "*",
                     path: str = "/", contains: bytes = b"") -> None:
        """The next `n` matching requests reach papad, and get `status` instead of its answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._add(_Fault("after", method, path, n, status, data, {}, contains))

    def clear(self) -> None:
        """Drop every fault not used up."""
        with self._lock:
            self._faults.clear()

    def count(self, method: str, path: str, outcome: str | None = None) -> int:
        """Requests seen to `method` and a path starting with `path` (optionally by outcome:
        "forwarded", "lost", "reset", "answered")."""
        with self._lock:
            return sum(1 for m, p, o in self.seen
                       if m == method and p.startswith(path) and outcome in (None, o))

    # -- plumbing ------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _take(self, method: str, path: str, body: bytes) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, body):
                    if fault.kind != "lose":  # counted once papad's answer is known
                        fault.left -= 1
                    return fault
        return None

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                request = _read_request(conn)
                if request is None:
                    return
                method, path, head, body = request
                fault = self._take(method, path.split("?", 1)[0], body)
                outcome = "forwarded"
                if fault is not None and fault.kind == "reset":
                    outcome = "reset"
                elif fault is not None and fault.kind in ("answer", "after"):
                    outcome = "answered"
                    if fault.kind == "after":
                        self._forward(head, body)
                        outcome = "done, answered"
                    extra = "".join(f"{k}: {v}\r\n" for k, v in fault.headers.items())
                    conn.sendall(
                        f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(fault.body)}\r\n{extra}Connection: close\r\n\r\n"
                        .encode() + fault.body)
                else:
                    answer = self._forward(head, body)
                    if fault is not None and fault.kind == "lose" and self._lose(fault, answer):
                        outcome = "lost"
                    else:
                        conn.sendall(answer)
                with self._lock:
                    self.seen.append((method, path, outcome))
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(conn)

    def _lose(self, fault: _Fault, answer: bytes) -> bool:
        with self._lock:
            if fault.left > 0 and answer[9:10] == b"2":  # "HTTP/1.1 2xx"
                fault.left -= 1
                return True
        return False

    def _forward(self, head: list[str], body: bytes) -> bytes:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self._relay(head, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _relay(self, head: list[str], body: bytes) -> bytes:
        lines = [head[0]] + [h for h in head[1:]
                             if h.split(":", 1)[0].strip().lower() not in ("connection",
                                                                           "keep-alive")]
        lines.append("Connection: close")
        with socket.create_connection(self.target, timeout=60) as up:
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            chunks = []
            while True:
                chunk = up.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


def _read_request(conn: socket.socket) -> tuple[str, str, list[str], bytes] | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > _HEAD_LIMIT:
            return None
    raw_head, body = buf.split(b"\r\n\r\n", 1)
    head = raw_head.decode("latin-1").split("\r\n")
    method, path = head[0].split(" ")[:2]
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding":
            raise OSError("chunked requests are not supported by this proxy")
    while len(body) < length:
        chunk = conn.recv(min(65536, length - len(body)))
        if not chunk:
            return None
        body += chunk
    return method, path, head, body
