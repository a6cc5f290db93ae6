"""The local control socket: ``recorder ctl`` talks to the running service through it.

Protocol: a unix stream socket; the client sends one JSON object on one line,
``{"command": "start", ...arguments}``, and reads one JSON object line back. Every reply has
``"ok"``: true (plus whatever the handler returned) or false with an ``"error"`` message and
the ``"exit_code"`` of the error the service raised, so ``recorder ctl`` exits with the code
README documents for it (9: start while recording, 3: no audio device, 4: below the reserve).
The server is generic: it parses and validates the envelope and hands the dict to the daemon's
handler; the commands themselves (start, stop, mark, status, live; ``queued``: a one-off
command published a recording, deliver it now; ``mesh``: pairings changed, reconcile now)
are the daemon's business.

Access control is the file mode: the socket is 0660 and, when a group is configured, owned by
that group, inside a directory created 0750. The socket is bound under a temporary name,
restricted, then renamed into place, so it is never reachable with looser permissions.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recorder.errors import RecorderError, ServiceError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]

MAX_REQUEST = 64 * 1024  # bytes; a control command is a few dozen
CLIENT_TIMEOUT = 5.0  # seconds a connected client may take to send its line
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


class ControlServer:
    """Serve `handler` on the unix socket `path` from a background thread until :meth:`close`.

    `handler` receives the request dict (with its ``"command"`` key) and returns a reply dict;
    a :class:`RecorderError` it raises becomes ``{"ok": false, "error": message, "exit_code":
    its exit code}``, any other exception is logged and reported as an internal error. The
    server keeps serving either way.
    Raises :class:`ServiceError` if another live service already listens on `path`, if `path`
    exists and is not a socket, or if it cannot be set up (name too long, group unknown).
    """

    def __init__(self, path: Path, handler: Handler, group: str = "") -> None:
        self.path = Path(path)
        self._handler = handler
        # The temporary name is the longest one this server binds.
        longest = len(os.fsencode(_temp_name(self.path)))
        if longest > _SUN_PATH_MAX:
            raise ServiceError(
                f"control socket path too long for a unix socket ({longest} bytes with the "
                f"temporary suffix, max {_SUN_PATH_MAX}): {path}"
            )
        gid = _group_id(group)
        _make_dir(self.path.parent)
        _remove_stale(self.path)
        self._sock, self._inode = _bind_restricted(self.path, gid)
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def close(self) -> None:
        """Stop accepting, wait for the serving thread, remove the socket file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5.0)
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        # Only unlink our own socket: a successor may already have replaced it.
        with contextlib.suppress(OSError):
            if self.path.lstat().st_ino == self._inode:
                self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._closed:
            waiting: list[Any] = [self._sock, self._wake_r]
            ready, _, _ = select.select(waiting, [], [])
            if self._wake_r in ready or self._closed:
                return
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                log.warning("control socket accept failed: %s", exc)
                continue
            # One short-lived thread per client: a client that connects and stalls must not
            # block the next `recorder ctl` (it times out on its own after CLIENT_TIMEOUT).
            threading.Thread(
                target=self._serve_client, args=(conn,), name="control-client", daemon=True
            ).start()

    def _serve_client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CLIENT_TIMEOUT)
            try:
                line = _read_line(conn)
            except (OSError, ValueError) as exc:
                reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                reply = self._answer(line)
            try:
                conn.sendall(_encode(reply))
            except OSError as exc:
                log.info("control client went away before the reply: %s", exc)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return {"ok": False, "error": "bad request: not a JSON line"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'bad request: expected {"command": "...", ...}'}
        try:
            reply = self._handler(request)
        except RecorderError as exc:
            return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:
            log.exception("control command %r failed", request["command"])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if not isinstance(reply, dict):
            log.error("control handler returned %r for %r", type(reply), request["command"])
            return {"ok": False, "error": "internal error: handler returned no dict"}
        return {"ok": True, **reply}


def send_command(
    path: str | os.PathLike[str], command: str, *, timeout: float = 5.0, **args: Any
) -> dict[str, Any]:
    """Send `command` with `args` to the service listening on `path`; return its reply dict.

    Raises :class:`ServiceError` with a one-line message when the service is not running (no
    socket, nobody listening), access is denied, it does not answer within `timeout` seconds,
    the reply is malformed, or the reply says ``"ok": false``. A refusal carries the exit code
    of the service's error; a generic one (1) or none at all is the refusal code 8.
    """
    path = Path(path)
    request = {**args, "command": command}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            sock.sendall(_encode(request))
            line = _read_line(sock)
        except FileNotFoundError:
            raise ServiceError(
                f"recorder service is not running (no control socket at {path})"
            ) from None
        except ConnectionRefusedError:
            raise ServiceError(
                f"recorder service is not running (nothing listening on {path})"
            ) from None
        except PermissionError:
            raise ServiceError(
                f"permission denied on {path}: is this user in the service's socket group?"
            ) from None
        except TimeoutError:
            raise ServiceError(
                f"recorder service did not answer {command!r} within {timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            raise ServiceError(f"control socket {path}: {exc}") from None
    try:
        reply = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ServiceError(f"recorder service sent a malformed reply to {command!r}") from None
    if not isinstance(reply, dict):
        raise ServiceError(f"recorder service sent a malformed reply to {command!r}")
    if not reply.get("ok"):
        raise _refused(command, reply)
    return reply


def _refused(command: str, reply: dict[str, Any]) -> ServiceError:
    error = ServiceError(f"{command}: {reply.get('error') or 'refused by the service'}")
    code = reply.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and code > 1:
        error.exit_code = code  # what the service's own error means (README's exit codes)
    return error


# --- internals -------------------------------------------------------------------------------


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


def _read_line(sock: socket.socket) -> bytes:
    """Read up to the first newline (or EOF). Raises ValueError on oversize or empty input."""
    data = bytearray()
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"line longer than {MAX_REQUEST} bytes")
    line = bytes(data).split(b"\n", 1)[0]
    if not line.strip():
        raise ValueError("empty message")
    return line


def _group_id(group: str) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ServiceError(f"service.socket_group: no such group {group!r}") from None


def _make_dir(directory: Path) -> None:
    if directory.is_dir():
        return  # an existing directory keeps the mode its owner gave it
    try:
        directory.mkdir(parents=True, mode=0o750)
        os.chmod(directory, 0o750)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise ServiceError(f"cannot create control socket directory {directory}: {exc}") from None


def _remove_stale(path: Path) -> None:
    """Remove a socket file left by a dead service; refuse to touch anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServiceError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: nobody listening
        except OSError as exc:
            raise ServiceError(f"cannot check existing control socket {path}: {exc}") from None
        else:
            raise ServiceError(f"another recorder service is already listening on {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    log.info("removed stale control socket %s", path)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _bind_restricted(path: Path, gid: int | None) -> tuple[socket.socket, int]:
    """Bind under a temporary name, set mode and group, then rename into place."""
    tmp = _temp_name(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock.bind(os.fspath(tmp))
        os.chmod(tmp, 0o660)
        if gid is not None:
            os.chown(tmp, -1, gid)
        sock.listen(8)
        os.rename(tmp, path)
        return sock, path.lstat().st_ino
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.EPERM and gid is not None:
            raise ServiceError(
                f"cannot give control socket {path} to group id {gid}: the service user must "
                "be a member of service.socket_group"
            ) from None
        raise ServiceError(f"cannot create control socket {path}: {exc}") from None
