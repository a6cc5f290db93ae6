"""The sidecar: the JSON document published next to every recording.

It names the recording (id, device, path), says what it is (codec, rate, frames, sha256),
when and how it was made (UTC start, clock-synchronised flag, boot id, monotonic start, trigger,
pre-roll, stop reason), how it sounded (levels) and what people said about it (title, tags,
bookmarks). Peers read it to import the recording, so `validate()` is strict: it is the gate
hostile or broken peer data must pass.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
import time
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from recorder.deviceid import validate_device_id
from recorder.errors import RecorderError
from recorder.safefile import UnsafeFile, read_regular

SCHEMA = "recorderpi.sidecar/1"
MAX_SIDECAR_BYTES = 1024 * 1024  # a 3-hour Audio ID print is about 380 kB
# The shortest recording kept: below a tenth of a second nothing can be heard (a syllable lasts
# longer), so a shorter recording or input file holds no audio and is never published.
MIN_RECORDING_SECONDS = 0.1
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")
_NAME_RE = re.compile(r"^\d{8}T\d{6}Z_[a-z0-9._-]+_[0-9a-z]{8}\.(ogg|opus)$")
_SIDECAR_NAME_RE = re.compile(r"^\d{8}T\d{6}Z_[a-z0-9._-]+_[0-9a-z]{8}\.json$")


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


def loads(data: bytes, *, expect_device: str | None = None) -> dict[str, Any]:
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


def _no_constant(name: str) -> Any:
    # json accepts NaN, Infinity and -Infinity, which are not JSON: a NaN bookmark once
    # became "t=0,4" on papad.
    raise SidecarError(f"sidecar is not valid JSON: {name} is not a number")


# What peers' free text may hold once it reaches papad (titles, tags, bookmark labels).
TITLE_MAX = 200
TAG_MAX = 64
LABEL_MAX = 500
# Bidirectional controls reorder what a reader sees ("evil‮gpj.exe"): never shown.
_BIDI = frozenset("؜‎‏‪‫‬‭‮⁦⁧⁨⁩")


def clean_text(value: Any, limit: int = TITLE_MAX, *, ellipsis: bool = True) -> str:
    """Free text from a sidecar, safe to show: one line, no control characters (NUL, escape
    sequences, C1), no bidirectional overrides or isolates, no lone surrogates, whitespace
    runs collapsed, cut to `limit` characters (ending in an ellipsis unless `ellipsis` is
    false: a tag is a name, not prose). Joiners (ZWJ, ZWNJ) stay: Indic scripts and emoji
    need them. Not a string: "".
    """
    if not isinstance(value, str):
        return ""
    kept = []
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in ("Zl", "Zp") or ch.isspace():
            kept.append(" ")
        elif cat in ("Cc", "Cs", "Co", "Cn") or ch in _BIDI:
            continue
        else:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…" if ellipsis else text[:limit].rstrip()


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


# --- sidecars on disk ---------------------------------------------------------------------------
# The one rule for which files in a device folder are sidecars and how one is read. The bridge
# (peers' folders), the outbox's reconcile, the catalogue rebuild and the playlist all use it.


def ignored_name(name: str) -> bool:
    """True for names never read as data: Syncthing temporaries, conflict copies, hidden and
    partial files."""
    return (
        name.startswith((".", "~syncthing~"))
        or ".sync-conflict-" in name
        or name.endswith((".tmp", ".partial"))
    )


def is_sidecar_name(name: str) -> bool:
    """True for ``<UTC time>_<device>_<short id>.json``, the only sidecar names there are."""
    return bool(_SIDECAR_NAME_RE.match(name)) and not ignored_name(name)


@dataclass(frozen=True)
class Candidate:
    """A ``.json`` entry under a device folder's ``recordings/``.

    `lstat` is None for an entry that must never be followed: a symlink where a sidecar or a
    directory should be, or a ``recordings`` that is not a directory.
    """

    rel: str  # relative to the device folder
    path: Path
    lstat: os.stat_result | None
    ignored: bool = False  # an ignored name (conflict copy, temporary file): never read


def candidates(device_folder: Path, *, with_ignored: bool = False) -> Iterator[Candidate]:
    """Every ``.json`` entry below ``<device_folder>/recordings/`` in a stable order, without
    following symlinked directories. Ignored names are skipped, or with `with_ignored`
    yielded marked ``ignored`` (to report them)."""
    root = device_folder / "recordings"
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        yield Candidate("recordings", root, None)
        return
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if ignored_name(entry.name):
                if with_ignored and entry.name.endswith(".json"):
                    rel = os.path.relpath(entry.path, device_folder)
                    yield Candidate(rel, Path(entry.path), None, ignored=True)
                continue
            rel = os.path.relpath(entry.path, device_folder)
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISLNK(est.st_mode):
                if entry.name.endswith(".json") or entry.is_dir():
                    yield Candidate(rel, Path(entry.path), None)
            elif entry.name.endswith(".json"):
                yield Candidate(rel, Path(entry.path), est)


@dataclass(frozen=True)
class SidecarFile:
    """A sidecar read from disk: the validated document and the bytes it came from."""

    doc: dict[str, Any]
    data: bytes


def read_sidecar(path: Path, device_folder: Path) -> SidecarFile:
    """Read and validate the sidecar at `path` in `device_folder`.

    It must be a regular file inside the folder (never a symlink: checked on the descriptor
    read), at most MAX_SIDECAR_BYTES, valid, name the folder's device, and lie where its own
    ``path`` says. Raises SidecarError with the reason (FileNotFoundError if it vanished).
    """
    try:
        data = read_regular(path, device_folder, MAX_SIDECAR_BYTES)
    except UnsafeFile as exc:
        raise SidecarError(f"sidecar {exc}") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar: {exc.strerror or exc}") from None
    doc = loads(data, expect_device=device_folder.name)
    expected = str(PurePosixPath(doc["path"]).with_suffix(".json"))
    rel = os.path.relpath(path, device_folder)
    if expected != rel:
        raise SidecarError(f"sidecar lies at {rel} but its path says {expected}")
    return SidecarFile(doc, data)


@dataclass(frozen=True)
class Found:
    """A sidecar-named file found in a device folder."""

    path: Path
    doc: dict[str, Any] | None  # the valid sidecar, or None
    problem: str = ""  # why `doc` is None
    ignored: bool = False  # a conflict copy or temporary file: never read


def published_sidecars(device_folder: Path, *, with_ignored: bool = False) -> Iterator[Found]:
    """Every sidecar in `device_folder`, read with `read_sidecar`; invalid ones come with
    their problem, ignored names (conflict copies, ...) only with `with_ignored`."""
    for cand in candidates(device_folder, with_ignored=with_ignored):
        if cand.ignored:
            yield Found(cand.path, None, "ignored name", ignored=True)
            continue
        if not is_sidecar_name(cand.path.name):
            yield Found(cand.path, None, "not a sidecar name (<UTC time>_<device>_<id>.json)")
            continue
        if cand.lstat is None:
            yield Found(cand.path, None, "sidecar is a symlink or not a regular file")
            continue
        try:
            yield Found(cand.path, read_sidecar(cand.path, device_folder).doc)
        except FileNotFoundError:
            continue
        except SidecarError as exc:
            yield Found(cand.path, None, str(exc))
