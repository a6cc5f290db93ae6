"""Icecast 2.4 source client: one ``PUT`` per connection, then an endless request body.

Icecast 2.4.4 takes a source as ``PUT <mount>`` with basic auth and a content type, and no
``Content-Length`` (the body is the stream until the source hangs up). With
``Expect: 100-continue`` it answers ``HTTP/1.1 100 Continue`` once the mount is ours, without it
``HTTP/1.0 200 OK``; either means live. Refusals come as ``401`` (wrong user or password) and
``403`` with a plain-text reason such as ``Mountpoint in use`` (measured against icecast2 2.4.4).

Every failure raises `IcecastError` with one line that says what happened, for status and logs.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from recorder.config import RadioConfig
from recorder.errors import ConfigError, RemoteError
from recorder.secrets import read_secret

CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 5.0
# A send that makes no progress for this long means a dead or stalled link: give up and
# reconnect rather than let the stream fall ever further behind live.
SEND_TIMEOUT = 10.0
# A modest send buffer keeps a slow link from hiding seconds of stale audio in the kernel;
# 64 KiB still carries several times the stream's bitrate over a long-RTT path.
SEND_BUFFER = 64 * 1024
MAX_RESPONSE_HEAD = 16 * 1024


class IcecastError(RemoteError):
    """Icecast refused the source or the connection failed. `status`: the HTTP code, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StreamInfo:
    """What listeners and directories see about the stream (the ``Ice-*`` headers)."""

    name: str = ""
    description: str = ""
    genre: str = ""
    content_type: str = "audio/ogg"
    audio_info: str = ""  # e.g. "samplerate=48000;channels=1"


class IcecastSource:
    """A source connection to one mount. `connect()`, then `send()` until it raises, `close()`."""

    def __init__(
        self,
        url: str,
        mount: str,
        username: str,
        password: str,
        info: StreamInfo = StreamInfo(),
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        response_timeout: float = RESPONSE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        send_buffer: int | None = SEND_BUFFER,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"radio.url: must be an http:// or https:// URL; got {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.path = parts.path.rstrip("/") + mount
        self.where = f"{self.host}:{self.port}"
        self.mount = mount
        self.username = username
        self._password = password
        self.info = info
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.send_timeout = send_timeout
        self.send_buffer = send_buffer
        self.bytes_sent = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_config(
        cls,
        radio: RadioConfig,
        audio_info: str = "",
        *,
        send_timeout: float = SEND_TIMEOUT,
        send_buffer: int | None = SEND_BUFFER,
    ) -> IcecastSource:
        """A source for `[radio]`; reads the password file now (so a fixed file is picked up).

        With ``radio.station`` the source goes to the station's harbor (``radio.harbor_url``,
        which speaks the same protocol), with ``harbor_password_file`` if one is set.
        """
        # To the station: FLAC (recorder.radio.oggstream says why); the station encodes for
        # listeners itself.
        content_type = "audio/flac" if radio.station else "audio/ogg"
        info = StreamInfo(radio.name, radio.description, radio.genre, content_type, audio_info)
        url = radio.harbor_url if radio.station else radio.url
        if radio.station and radio.harbor_password_file is not None:
            password = read_secret(radio.harbor_password_file, "radio.harbor_password_file")
        else:
            password = read_secret(radio.password_file, "radio.password_file")
        return cls(
            url,
            radio.mount,
            radio.username,
            password,
            info,
            send_timeout=send_timeout,
            send_buffer=send_buffer,
        )

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection and claim the mount; raise IcecastError saying why not."""
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError:
            raise IcecastError(f"cannot reach Icecast at {self.where}: timed out") from None
        except OSError as exc:
            raise IcecastError(f"cannot reach Icecast at {self.where}: {_reason(exc)}") from None
        try:
            if self.send_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            # Ogg pages go out whole; waiting for ACKs to coalesce them only adds latency.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.response_timeout)
            sock.sendall(self._request_head())
            status, reason, body = self._read_response(sock)
        except IcecastError:
            sock.close()
            raise
        except TimeoutError:
            sock.close()
            raise IcecastError(
                f"Icecast at {self.where} did not answer within {self.response_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise IcecastError(f"Icecast at {self.where} failed: {_reason(exc)}") from None
        if status not in (100, 200):
            sock.close()
            raise self._refusal(status, reason, body)
        sock.settimeout(self.send_timeout)
        self._sock = sock

    def send(self, data: bytes) -> None:
        """Send stream bytes; raise IcecastError (and close) when the link is gone or stalled."""
        if self._sock is None:
            raise IcecastError(f"not connected to Icecast at {self.where}")
        try:
            self._sock.sendall(data)
        except TimeoutError:
            self.close()
            raise IcecastError(
                f"Icecast link stalled: nothing sent for {self.send_timeout:g} s to {self.where}"
            ) from None
        except OSError as exc:
            self.close()
            raise IcecastError(
                f"lost connection to Icecast at {self.where}: {_reason(exc)}"
            ) from None
        self.bytes_sent += len(data)

    def interrupt(self) -> None:
        """From another thread: make a blocked `send()` fail now. The owner still calls close()."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Hang up (Icecast then frees the mount). Never raises."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    # --- protocol ------------------------------------------------------------------------------

    def _request_head(self) -> bytes:
        credentials = f"{self.username}:{self._password}".encode()
        host = self.host if ":" not in self.host else f"[{self.host}]"
        lines = [
            f"PUT {urllib.parse.quote(self.path)} HTTP/1.1",
            f"Host: {host}:{self.port}",
            "Authorization: Basic " + base64.b64encode(credentials).decode("ascii"),
            "User-Agent: recorderpi",
            f"Content-Type: {self.info.content_type}",
            "Ice-Public: 0",
            "Expect: 100-continue",
        ]
        for header, value in (
            ("Ice-Name", self.info.name),
            ("Ice-Description", self.info.description),
            ("Ice-Genre", self.info.genre),
            ("Ice-Audio-Info", self.info.audio_info),
        ):
            if value:
                lines.append(f"{header}: {_header_value(value)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _read_response(self, sock: socket.socket) -> tuple[int, str, str]:
        """(status, reason, first line of the body) of Icecast's answer to the PUT."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                if not data:
                    raise IcecastError(f"Icecast at {self.where} closed the connection unanswered")
                break
            data += chunk
            if len(data) > MAX_RESPONSE_HEAD:
                raise IcecastError(f"Icecast at {self.where} sent an oversized response")
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise IcecastError(
                f"Icecast at {self.where} sent no HTTP answer: {_printable(status_line)!r}"
            )
        status, reason = int(fields[1]), fields[2] if len(fields) > 2 else ""
        if status >= 300:
            body += _read_rest(sock, len(body))
        text = body.decode("utf-8", "replace").strip().split("\n", 1)[0].strip()
        return status, reason.strip(), _printable(text)

    def _refusal(self, status: int, reason: str, body: str) -> IcecastError:
        if status == 401:
            return IcecastError(
                f"Icecast at {self.where} refused the password for source user "
                f"{self.username!r} (401)",
                status,
            )
        if status == 403 and "in use" in body.lower():
            return IcecastError(
                f"Icecast mount {self.mount} is in use by another source (403 {body})", status
            )
        detail = body or reason
        return IcecastError(
            f"Icecast at {self.where} refused mount {self.mount}: {status} {detail}".rstrip(),
            status,
        )


def _read_rest(sock: socket.socket, have: int) -> bytes:
    """What follows a refusal (Icecast closes after a short text); best effort, bounded."""
    out = b""
    with contextlib.suppress(OSError):
        while have + len(out) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            out += chunk
    return out


def _header_value(value: str) -> str:
    # Config text must never be able to end the header line and inject another.
    return " ".join(value.split())


def _printable(text: str, limit: int = 120) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:limit].strip()


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
