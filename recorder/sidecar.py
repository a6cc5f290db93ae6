"""The sidecar: the JSON document published next to every recording.

It names the recording (id, device, path), says what it is (codec, rate, frames, sha256),
when and how it was made (UTC start, clock-synchronised flag, boot id, monotonic start, trigger,
pre-roll, stop reason), how it sounded (levels) and what people said about it (title, tags,
bookmarks). Peers read it to import the recording, so `validate()` is strict: it is the gate
hostile or broken peer data must pass.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from recorder.deviceid import validate_device_id
from recorder.errors import RecorderError

SCHEMA = "recorderpi.sidecar/1"
MAX_SIDECAR_BYTES = 1024 * 1024  # a 3-hour Audio ID print is about 380 kB
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")
_NAME_RE = re.compile(r"^\d{8}T\d{6}Z_[a-z0-9._-]+_[0-9a-z]{8}\.(ogg|opus)$")


class SidecarError(RecorderError):
    """A sidecar is malformed; the message says which field and why."""

    exit_code = 5


def new_recording_id(now: float | None = None) -> str:
    """A ULID-style id (26 Crockford base32 chars, lowercase): sortable by creation time."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def recording_name(started_utc: datetime, device_id: str, recording_id: str) -> str:
    """``<UTC timestamp>_<device-id>_<short id>`` (sortable; no extension)."""
    return f"{started_utc:%Y%m%dT%H%M%SZ}_{device_id}_{recording_id[-8:]}"


def relative_path(started_utc: datetime, name: str, ext: str = "ogg") -> str:
    """The path of a recording inside its device folder: ``recordings/YYYY/MM/DD/NAME.ext``."""
    return f"recordings/{started_utc:%Y/%m/%d}/{name}.{ext}"


def utc_iso(ts: float) -> str:
    """A UTC timestamp with milliseconds, ``2026-11-28T17:01:02.123Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def dumps(doc: Mapping[str, Any]) -> str:
    """Serialise a sidecar deterministically (sorted keys, UTF-8, trailing newline)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def loads(data: bytes) -> dict[str, Any]:
    """Parse and validate sidecar bytes; raise SidecarError with a one-line reason."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"sidecar too large ({len(data)} bytes > {MAX_SIDECAR_BYTES})")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"sidecar is not valid JSON: {exc}") from None
    return validate(doc)


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "recording_id": str,
    "device_id": str,
    "path": str,
    "media_type": str,
    "codec": str,
    "samplerate": int,
    "channels": int,
    "frames": int,
    "duration": (int, float),
    "bytes": int,
    "sha256": str,
    "started_at": str,
    "clock_synced": bool,
    "boot_id": str,
    "monotonic_start": (int, float),
    "trigger": str,
    "preroll": (int, float),
    "stop_reason": str,
    "levels": dict,
    "title": str,
    "tags": list,
    "bookmarks": list,
    "recovered": bool,
}


def validate(doc: Any, *, expect_device: str | None = None) -> dict[str, Any]:
    """Check a sidecar document; return it, or raise SidecarError naming the bad field.

    `expect_device`: the folder the sidecar was found in; a sidecar naming another device is
    rejected (a peer must not speak for someone else).
    """
    if not isinstance(doc, dict):
        raise SidecarError("sidecar must be a JSON object")
    for key, kind in _REQUIRED.items():
        if key not in doc:
            raise SidecarError(f"sidecar field {key!r} is missing")
        value = doc[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise SidecarError(f"sidecar field {key!r} has the wrong type")
    if doc["schema"] != SCHEMA:
        raise SidecarError(f"unsupported sidecar schema {doc['schema']!r}")
    if not _ID_RE.match(doc["recording_id"]):
        raise SidecarError("sidecar field 'recording_id' is not a recording id")
    try:
        validate_device_id(doc["device_id"], key="sidecar field 'device_id'")
    except RecorderError as exc:
        raise SidecarError(str(exc)) from None
    if expect_device is not None and doc["device_id"] != expect_device:
        raise SidecarError(
            f"sidecar names device {doc['device_id']!r} but lies in {expect_device!r}'s folder"
        )
    path = PurePosixPath(doc["path"])
    if (
        path.is_absolute()
        or ".." in path.parts
        or len(path.parts) != 5
        or path.parts[0] != "recordings"
        or not _NAME_RE.match(path.name)
        or "\\" in doc["path"]
    ):
        raise SidecarError(f"sidecar field 'path' is not a recording path: {doc['path']!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", doc["sha256"]):
        raise SidecarError("sidecar field 'sha256' is not a sha256 hex digest")
    if doc["samplerate"] <= 0 or doc["channels"] not in (1, 2) or doc["frames"] < 0:
        raise SidecarError("sidecar audio format fields are out of range")
    if not all(isinstance(t, str) for t in doc["tags"]):
        raise SidecarError("sidecar field 'tags' must be a list of strings")
    for mark in doc["bookmarks"]:
        if not isinstance(mark, dict) or not isinstance(mark.get("at"), (int, float)):
            raise SidecarError("sidecar field 'bookmarks' must hold objects with a numeric 'at'")
    return doc
