"""A recording as typed values, and every rule about its sidecar document.

Three frozen values describe one recording:

- `Start`: what is known when it starts (also the staged ``<id>.meta.json`` recovery reads);
- `AudioFacts`: what the encoder reports when the file is closed (format, frames, sha256, size);
- `Recording`: the published sidecar, the two above plus how it ended, its levels and the
  fields others add (Audio ID, ``duplicate_of``, ``clock_corrected``, a peer's own keys).

`Recording.from_doc` / `Recording.to_doc` convert to and from the JSON document and keep every
key they do not know, so a sidecar read and written again is the same document: peers running
an older or newer version must read what this one writes. The validator (the gate hostile or
broken peer data must pass), the recording id codec and the time parsing live here too, so a
new field is one change in this module plus the places that use it, each found by mypy.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from recorder.deviceid import validate_device_id
from recorder.errors import RecorderError

SCHEMA = "recorderpi.sidecar/1"
MEDIA_TYPE = "audio/ogg"
MAX_SIDECAR_BYTES = 1024 * 1024  # a 3-hour Audio ID print is about 380 kB
# The shortest recording kept: below a tenth of a second nothing can be heard (a syllable lasts
# longer), so a shorter recording or input file holds no audio and is never published.
MIN_RECORDING_SECONDS = 0.1
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")
_NAME_RE = re.compile(r"^\d{8}T\d{6}Z_[a-z0-9._-]+_[0-9a-z]{8}\.(ogg|opus)$")

JSON = Any  # a value of a JSON document (what json.loads returns)


class StopReason(StrEnum):
    """Why a recording ended (the sidecar's ``stop_reason``)."""

    STOPPED = "stopped"  # button, `ctl stop`, signal, end of --seconds
    MAX_LENGTH = "max_length"  # storage.max_seconds reached
    DISK_RESERVE = "disk_reserve"  # free space reached the reserve
    DISK_FULL = "disk_full"  # a write failed with ENOSPC: finished with what is on disk
    DEVICE_LOST = "device_lost"
    END_OF_INPUT = "end_of_input"  # a file source ended
    SHUTDOWN = "shutdown"  # the service stopped
    WRITE_ERROR = "write_error"  # any other write failure
    INTERNAL_ERROR = "internal_error"  # a bug stopped the pump: what was recorded is kept
    RECOVERED = "recovered"  # rebuilt by `recorder recover` after a crash


class SidecarError(RecorderError):
    """A sidecar is malformed; the message says which field and why."""

    exit_code = 5


# --- the recording id, names and times ------------------------------------------------------


def new_recording_id(now: float | None = None) -> str:
    """A ULID-style id (26 Crockford base32 chars, lowercase): sortable by creation time."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def is_recording_id(text: str) -> bool:
    """True for a recording id (26 lowercase Crockford base32 characters)."""
    return bool(ID_RE.match(text))


def recording_id_time(recording_id: str) -> float:
    """The creation time (epoch seconds) a recording id carries in its first 10 characters
    (48 bits of milliseconds). ValueError for a character outside the alphabet."""
    ms = 0
    for ch in recording_id[:10]:
        ms = ms * 32 + _CROCKFORD.index(ch)
    return ms / 1000


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


def parse_utc(text: str) -> datetime:
    """A sidecar time (``2026-11-28T17:01:02.123Z``) as an aware UTC datetime; one without a
    zone is taken as UTC. ValueError when it is not an ISO time."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


# --- the typed values -----------------------------------------------------------------------


def _rest(doc: Mapping[str, JSON], known: frozenset[str]) -> dict[str, JSON]:
    return {k: v for k, v in doc.items() if k not in known}


@dataclass(frozen=True)
class Bookmark:
    """A moment of the recording: `at` seconds from its start, with a label. `extra` holds the
    keys other writers put beside them (a peer's ``note``, ``tags``), kept as they are."""

    at: float
    label: str | None = None  # None: the document has no (string) label
    extra: Mapping[str, JSON] = field(default_factory=dict)

    _KEYS = frozenset({"at", "label"})

    @classmethod
    def from_doc(cls, doc: Mapping[str, JSON]) -> Bookmark:
        label = doc.get("label")
        if not isinstance(label, str):
            return cls(doc["at"], None, _rest(doc, frozenset({"at"})))
        return cls(doc["at"], label, _rest(doc, cls._KEYS))

    def to_doc(self) -> dict[str, JSON]:
        doc: dict[str, JSON] = {**self.extra, "at": self.at}
        if self.label is not None:
            doc["label"] = self.label
        return doc


@dataclass(frozen=True)
class Overflows:
    """Audio lost before it reached the recording: input overflows reported by the device and
    frames the ring buffer dropped."""

    input: int = 0
    ring_frames: int = 0

    def to_doc(self) -> dict[str, JSON]:
        return {"input": self.input, "ring_frames": self.ring_frames}


@dataclass(frozen=True)
class Levels:
    """How a recording sounded (the level meter's summary)."""

    peak_dbfs: float
    rms_dbfs: float
    clipped_fraction: float
    silent: bool

    def to_doc(self) -> dict[str, JSON]:
        return {"peak_dbfs": self.peak_dbfs, "rms_dbfs": self.rms_dbfs,
                "clipped_fraction": self.clipped_fraction, "silent": self.silent}


@dataclass(frozen=True)
class AudioFacts:
    """What the encoder knows once the file is closed (or what decoding a complete file
    tells): the sidecar's format, length and integrity fields."""

    codec: str
    samplerate: int
    channels: int
    frames: int
    duration: float
    sha256: str
    bytes: int
    # The encoder's settings, e.g. {"vorbis_quality": 4.0}; None: the document has none.
    encoder: Mapping[str, JSON] | None = None

    _KEYS = frozenset({"codec", "samplerate", "channels", "frames", "duration", "sha256",
                       "bytes", "encoder"})

    def to_doc(self) -> dict[str, JSON]:
        doc: dict[str, JSON] = {
            "codec": self.codec, "samplerate": self.samplerate, "channels": self.channels,
            "frames": self.frames, "duration": self.duration, "sha256": self.sha256,
            "bytes": self.bytes}
        if self.encoder is not None:
            doc["encoder"] = dict(self.encoder)
        return doc


@dataclass(frozen=True)
class Start:
    """What is known when a recording starts: its names, planned format, clocks, trigger and
    what people said so far (title, tags, bookmarks). Staged as ``<id>.meta.json``."""

    recording_id: str
    device_id: str
    path: str  # inside the device folder: recordings/YYYY/MM/DD/<name>.ogg
    codec: str
    samplerate: int
    channels: int
    started_at: str  # UTC, utc_iso
    clock_synced: bool
    boot_id: str
    monotonic_start: float
    trigger: str
    preroll: float
    title: str = ""
    tags: tuple[str, ...] = ()
    bookmarks: tuple[Bookmark, ...] = ()
    overflows: Overflows | None = None  # None: not counted (a recording rebuilt from its id)
    software: str | None = None
    media_type: str = MEDIA_TYPE
    schema: str = SCHEMA

    _KEYS = frozenset({"recording_id", "device_id", "path", "codec", "samplerate", "channels",
                       "started_at", "clock_synced", "boot_id", "monotonic_start", "trigger",
                       "preroll", "title", "tags", "bookmarks", "overflows", "software",
                       "media_type", "schema"})
    # What staged metadata must hold to be used (recovery rebuilds the rest from the id).
    STAGED_REQUIRED = ("device_id", "path", "samplerate", "channels", "started_at")

    @property
    def started(self) -> datetime:
        """The UTC start time (ValueError for a malformed ``started_at``)."""
        return parse_utc(self.started_at)

    @property
    def name(self) -> str:
        """``<UTC time>_<device>_<short id>``: the file name without its extension."""
        return PurePosixPath(self.path).stem

    def with_bookmark(self, mark: Bookmark) -> Start:
        return replace(self, bookmarks=(*self.bookmarks, mark))

    def to_doc(self) -> dict[str, JSON]:
        doc: dict[str, JSON] = {
            "schema": self.schema, "recording_id": self.recording_id,
            "device_id": self.device_id, "path": self.path, "media_type": self.media_type,
            "codec": self.codec, "samplerate": self.samplerate, "channels": self.channels,
            "started_at": self.started_at, "clock_synced": self.clock_synced,
            "boot_id": self.boot_id, "monotonic_start": self.monotonic_start,
            "trigger": self.trigger, "preroll": self.preroll, "title": self.title,
            "tags": list(self.tags), "bookmarks": [b.to_doc() for b in self.bookmarks],
        }
        if self.overflows is not None:
            doc["overflows"] = self.overflows.to_doc()
        if self.software is not None:
            doc["software"] = self.software
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, JSON]) -> Start:
        """The start fields of a sidecar or of staged metadata; KeyError names a missing one.
        Optional fields missing from older staged metadata take their defaults."""
        ov = doc.get("overflows")
        return cls(
            recording_id=doc["recording_id"], device_id=doc["device_id"], path=doc["path"],
            codec=doc.get("codec", "vorbis"), samplerate=int(doc["samplerate"]),
            channels=int(doc["channels"]), started_at=doc["started_at"],
            clock_synced=doc.get("clock_synced", False), boot_id=doc.get("boot_id", ""),
            monotonic_start=doc.get("monotonic_start", 0.0),
            trigger=doc.get("trigger", "unknown"), preroll=doc.get("preroll", 0.0),
            title=doc.get("title", ""), tags=tuple(doc.get("tags", ())),
            bookmarks=tuple(Bookmark.from_doc(b) for b in doc.get("bookmarks", ())),
            overflows=(Overflows(ov.get("input", 0), ov.get("ring_frames", 0))
                       if isinstance(ov, dict) else None),
            software=doc.get("software"), media_type=doc.get("media_type", MEDIA_TYPE),
            schema=doc.get("schema", SCHEMA),
        )


def new_start(*, recording_id: str, device_id: str, codec: str, samplerate: int,
              channels: int, started_utc: float, monotonic_start: float, clock_synced: bool,
              boot_id: str, trigger: str, preroll: float, title: str = "",
              tags: Sequence[str] = (), overflows: Overflows | None = None,
              software: str | None = None) -> Start:
    """The one way a recording's `Start` is made (a new recording, or one rebuilt from its id
    after a crash): its name and path from the start time, device and id; times rounded as
    sidecars carry them (``started_at`` to ms, monotonic to µs, pre-roll to ms)."""
    when = datetime.fromtimestamp(started_utc, UTC)
    name = recording_name(when, device_id, recording_id)
    return Start(
        recording_id=recording_id, device_id=device_id, path=relative_path(when, name),
        codec=codec, samplerate=samplerate, channels=channels,
        started_at=utc_iso(started_utc), clock_synced=clock_synced, boot_id=boot_id,
        monotonic_start=round(monotonic_start, 6), trigger=trigger, preroll=round(preroll, 3),
        title=title, tags=tuple(tags), overflows=overflows, software=software,
    )


@dataclass(frozen=True)
class Recording:
    """A published recording: its sidecar document as typed values.

    `levels` is the document's object as written (`Levels.to_doc` here; a peer's may hold
    other keys). `extra` holds every other field, as it is: ``audio_id``, ``duplicate_of``,
    ``clock_corrected`` and whatever a newer peer adds.
    """

    start: Start
    audio: AudioFacts
    stop_reason: str
    levels: Mapping[str, JSON]
    recovered: bool = False
    extra: Mapping[str, JSON] = field(default_factory=dict)

    _KEYS = Start._KEYS | AudioFacts._KEYS | frozenset({"stop_reason", "levels", "recovered"})

    # The fields most readers want, by name.
    @property
    def recording_id(self) -> str:
        return self.start.recording_id

    @property
    def device_id(self) -> str:
        return self.start.device_id

    @property
    def path(self) -> str:
        return self.start.path

    @property
    def started_at(self) -> str:
        return self.start.started_at

    @property
    def started(self) -> datetime:
        """The UTC start time (ValueError for a malformed ``started_at``)."""
        return self.start.started

    @property
    def duration(self) -> float:
        return self.audio.duration

    @property
    def sha256(self) -> str:
        return self.audio.sha256

    @property
    def audio_id(self) -> Mapping[str, JSON] | None:
        """The Audio ID object, or None (too short to fingerprint, or not a dict)."""
        aid = self.extra.get("audio_id")
        return aid if isinstance(aid, dict) else None

    def with_extra(self, fields: Mapping[str, JSON]) -> Recording:
        """This recording with `fields` added to (or replacing) its other fields."""
        return replace(self, extra={**self.extra, **fields})

    def with_start(self, **changes: Any) -> Recording:
        return replace(self, start=replace(self.start, **changes))

    def to_doc(self) -> dict[str, JSON]:
        """The sidecar document (`dumps` serialises it)."""
        doc: dict[str, JSON] = dict(self.extra)
        doc.update(self.start.to_doc())
        doc.update(self.audio.to_doc())
        doc.update(stop_reason=self.stop_reason, levels=dict(self.levels),
                   recovered=self.recovered)
        return doc

    @classmethod
    def from_doc(cls, doc: Any, *, expect_device: str | None = None) -> Recording:
        """Validate a sidecar document (see `validate`) and read it; SidecarError names the
        bad field."""
        doc = validate(doc, expect_device=expect_device)
        return cls(
            start=Start.from_doc(doc),
            audio=AudioFacts(codec=doc["codec"], samplerate=doc["samplerate"],
                             channels=doc["channels"], frames=doc["frames"],
                             duration=doc["duration"], sha256=doc["sha256"],
                             bytes=doc["bytes"], encoder=doc.get("encoder")),
            stop_reason=doc["stop_reason"], levels=doc["levels"], recovered=doc["recovered"],
            extra=_rest(doc, cls._KEYS),
        )


def finished(start: Start, audio: AudioFacts, *, stop_reason: str, levels: Mapping[str, JSON],
             recovered: bool = False, extra: Mapping[str, JSON] | None = None) -> Recording:
    """The one way a finished recording is put together (the session and recovery)."""
    return Recording(start, audio, str(stop_reason), levels, recovered, dict(extra or {}))


# --- the document ---------------------------------------------------------------------------


def dumps(doc: Mapping[str, JSON]) -> str:
    """Serialise a sidecar deterministically (sorted keys, UTF-8, trailing newline)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def loads(data: bytes, *, expect_device: str | None = None) -> dict[str, JSON]:
    """Parse and validate sidecar bytes (see `validate`); raise SidecarError with a one-line
    reason."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"sidecar too large ({len(data)} bytes > {MAX_SIDECAR_BYTES})")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"sidecar is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):
        # json raises these for numbers over Python's 4300-digit limit and for nesting
        # deeper than the interpreter's recursion limit: hostile, not a bug of ours.
        raise SidecarError("sidecar is not valid JSON: a number or nesting is too large") from None
    return validate(doc, expect_device=expect_device)


def _no_constant(name: str) -> JSON:
    # json accepts NaN, Infinity and -Infinity, which are not JSON: a NaN bookmark once
    # became "t=0,4" on papad.
    raise SidecarError(f"sidecar is not valid JSON: {name} is not a number")


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


def validate(doc: Any, *, expect_device: str | None = None) -> dict[str, JSON]:
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
    if not ID_RE.match(doc["recording_id"]):
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
    for key in ("duration", "monotonic_start", "preroll"):
        if not math.isfinite(doc[key]):
            raise SidecarError(f"sidecar field {key!r} is not a finite number")
    if not all(isinstance(t, str) for t in doc["tags"]):
        raise SidecarError("sidecar field 'tags' must be a list of strings")
    for mark in doc["bookmarks"]:
        at = mark.get("at") if isinstance(mark, dict) else None
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            raise SidecarError("sidecar field 'bookmarks' must hold objects with a numeric 'at'")
        if not math.isfinite(at) or at < 0:
            raise SidecarError("sidecar field 'bookmarks' has an 'at' that is not a finite, "
                               "non-negative number of seconds")
    return doc
