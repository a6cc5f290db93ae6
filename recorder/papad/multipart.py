"""A streamed ``multipart/form-data`` body with a known length.

`requests` builds multipart bodies in memory; a three-hour recording would then sit in RAM
twice on a small Pi. This body reads the file in blocks while sending and still tells
`requests` its exact length, so the request carries a Content-Length (servers behind WSGI
rarely accept chunked uploads).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

_BLOCK = 64 * 1024


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")


class MultipartBody:
    """Form fields plus at most one file part, readable once as a stream.

    Build a new body for every attempt: a body is consumed by sending it.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        file_field: str | None = None,
        file_path: Path | None = None,
        file_type: str = "application/octet-stream",
    ) -> None:
        self.boundary = "rpi-" + secrets.token_hex(16)
        self._segments: list[bytes | Path] = []
        for name, value in fields.items():
            self._segments.append(
                (
                    f"--{self.boundary}\r\n"
                    f'Content-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
                ).encode()
                + str(value).encode("utf-8")
                + b"\r\n"
            )
        if file_field is not None and file_path is not None:
            self._segments.append(
                (
                    f"--{self.boundary}\r\n"
                    f'Content-Disposition: form-data; name="{_quote(file_field)}"; '
                    f'filename="{_quote(file_path.name)}"\r\n'
                    f"Content-Type: {file_type}\r\n\r\n"
                ).encode()
            )
            self._segments.append(file_path)
            self._segments.append(b"\r\n")
        self._segments.append(f"--{self.boundary}--\r\n".encode())
        # Fixed now: a file that changes size while being sent would corrupt the body.
        self._length = sum(
            s.stat().st_size if isinstance(s, Path) else len(s) for s in self._segments
        )
        self._index = 0
        self._offset = 0
        self._fh: BinaryIO | None = None

    @property
    def content_type(self) -> str:
        """The request's Content-Type header value."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the body (all the rest for -1); b"" at the end."""
        want = self._length if size is None or size < 0 else size
        out = bytearray()
        while len(out) < want and self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, Path):
                if self._fh is None:
                    self._fh = open(segment, "rb")  # noqa: SIM115 - closed at segment end
                chunk = self._fh.read(want - len(out))
                if chunk:
                    out += chunk
                    continue
                self._fh.close()
                self._fh = None
            else:
                chunk = segment[self._offset : self._offset + want - len(out)]
                out += chunk
                self._offset += len(chunk)
                if self._offset < len(segment):
                    continue
            self._index += 1
            self._offset = 0
        return bytes(out)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_BLOCK):
            yield chunk

    def close(self) -> None:
        """Release the open file, if any."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
