"""The station feed: recent recordings of this device and its peers, as M3U and JSON.

The playlist lives at ``<sync_root>/<device-id>/radio/playlist.m3u`` (and ``playlist.json``),
so it reaches peers through Syncthing and the station through the local document root, which
serves the sync root. Entries are newest first, at most ``radio.playlist_length`` of them, none
older than ``radio.playlist_max_age_days``, and never a recording Audio ID marked as a
duplicate of another (``duplicate_of``). Paths are relative to the playlist's own folder, so the
file works both on disk and over HTTP; with a ``base_url`` they are absolute URLs instead.

The same selection goes to the station (Liquidsoap, `recorder.radio.station`) as
``<state_dir>/radio/station.m3u``: absolute paths, each with the sidecar's title, device and
recording id as ``annotate:`` metadata, which Liquidsoap puts into the stream (what players and
Icecast show). It stays outside the synced tree: the paths are this device's own.

``playlist.json`` also carries ``played``, the station's play log (newest first, at most
``radio.play_log_length``): what went on the air when, from the station's own reports
(`recorder.radio.nowplaying`).

Files are written atomically and only when their content changes: Syncthing and the station
see a new version only when there is something new.
"""

from __future__ import annotations

import base64
import json
import logging
import posixpath
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder import sidecar
from recorder.atomic import atomic_write_text
from recorder.layout import device_folders
from recorder.radio.settings import PLAYLIST_DIR, RadioSettings
from recorder.recording import Recording

if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue

log = logging.getLogger(__name__)

PLAYLIST_SCHEMA = "recorderpi.playlist/1"
M3U_NAME = "playlist.m3u"
JSON_NAME = "playlist.json"
# The service writes these files from several threads (publisher, bridge, play log): one at a
# time, so a play logged while the playlist is rebuilt is never lost.
_files_lock = threading.RLock()


@dataclass(frozen=True)
class Playable:
    """What the playlist needs of one recording, typed: from a `Recording` (a sidecar) or a
    catalogue row (`Catalogue.newest_originals` reads only these fields: a big catalogue's
    whole sidecars would cost the service tens of MB)."""

    recording_id: str
    device_id: str
    path: str
    started_at: str  # "" when unreadable: such a recording cannot be placed in time
    title: str = ""
    duration: float = 0.0
    duplicate_of: str | None = None

    @classmethod
    def of(cls, rec: Recording) -> Playable:
        dup = rec.extra.get("duplicate_of")
        return cls(rec.recording_id, rec.device_id, rec.path, rec.started_at,
                   title=rec.start.title, duration=rec.duration,
                   duplicate_of=dup if isinstance(dup, str) and dup else None)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Playable:
        """A catalogue row or a sidecar document (``recording_id``, ``device_id``, ``path``
        required; ``started_at``, ``title``, ``duration``, ``duplicate_of`` optional)."""
        started, dup = row.get("started_at"), row.get("duplicate_of")
        return cls(str(row["recording_id"]), str(row["device_id"]), str(row["path"]),
                   started if isinstance(started, str) else "",
                   title=str(row.get("title") or ""),
                   duration=float(row.get("duration") or 0.0),
                   duplicate_of=str(dup) if dup else None)


Record = Playable | Recording | Mapping[str, Any]
"""What the playlist functions accept; each is made a `Playable` first."""


def playable(record: Record) -> Playable:
    if isinstance(record, Playable):
        return record
    if isinstance(record, Recording):
        return Playable.of(record)
    return Playable.from_row(record)


@dataclass(frozen=True)
class Entry:
    """One playlist line: where the audio is (relative path or URL), its title and length."""

    location: str
    title: str
    duration: float
    recording_id: str
    device_id: str
    started_at: str


def select(
    records: Iterable[Record],
    *,
    length: int,
    max_age_days: float,
    now: datetime | None = None,
) -> list[Playable]:
    """The records to play: newest first, no duplicates, within the age limit, at most `length`.

    A record with ``duplicate_of`` set is left out, and so is one with an unreadable
    ``started_at`` (it cannot be placed in time).
    """
    oldest = (now or datetime.now(UTC)) - timedelta(days=max_age_days)
    dated = []
    seen: set[str] = set()
    for record in map(playable, records):
        if record.duplicate_of or record.recording_id in seen:
            continue
        started = _parse_time(record.started_at)
        if started is None or started < oldest:
            continue
        seen.add(record.recording_id)
        dated.append((started, record.recording_id, record))
    dated.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [record for _, _, record in dated[:length]]


def entries(
    records: Iterable[Record], playlist_device: str, base_url: str | None = None
) -> list[Entry]:
    """Playlist entries for `records` (already selected and ordered).

    Locations are relative to the playlist's folder ``<sync_root>/<playlist_device>/radio/``
    (``../recordings/...`` for its own, ``../../<peer>/recordings/...`` for a peer's), or
    ``<base_url>/<device>/<path>`` when `base_url` (the document root's URL) is given.
    """
    here = posixpath.join(playlist_device, PLAYLIST_DIR)
    out = []
    for record in map(playable, records):
        device, path = record.device_id, record.path
        if base_url:
            location = f"{base_url.rstrip('/')}/{urllib.parse.quote(f'{device}/{path}')}"
        else:
            location = posixpath.relpath(posixpath.join(device, path), here)
        out.append(
            Entry(
                location=location,
                title=_title(record),
                duration=record.duration,
                recording_id=record.recording_id,
                device_id=device,
                started_at=record.started_at,
            )
        )
    return out


def render_m3u(items: Iterable[Entry]) -> str:
    """Extended M3U: ``#EXTM3U``, then ``#EXTINF:<seconds>,<title>`` and the location per entry."""
    lines = ["#EXTM3U"]
    for item in items:
        lines.append(f"#EXTINF:{round(item.duration)},{item.title}")
        lines.append(item.location)
    return "\n".join(lines) + "\n"


def render_json(items: Iterable[Entry], played: Iterable[Mapping[str, Any]] = ()) -> str:
    """The same list as JSON (``{"schema", "entries": [...], "played": [...]}``),
    deterministic. `played`: the play log, newest first (see `add_plays`)."""
    doc = {
        "schema": PLAYLIST_SCHEMA,
        "entries": [
            {
                "location": item.location,
                "title": item.title,
                "duration": round(item.duration, 3),
                "recording_id": item.recording_id,
                "device_id": item.device_id,
                "started_at": item.started_at,
            }
            for item in items
        ],
        "played": [dict(play) for play in played],
    }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_station(records: Iterable[Record], sync_root: Path) -> str:
    """The station's M3U: ``annotate:<metadata>:<absolute path>`` lines, in order.

    The metadata are the device (``artist``), ``recording_id``, ``recorderpi_source`` and the
    title as ``recorderpi_title``, base64 (UTF-8): Liquidsoap's annotate parser is its script
    lexer, which a ``#{`` in a title breaks; the station script decodes it into ``title``.
    """
    lines = ["#EXTM3U"]
    for record in map(playable, records):
        meta = annotate({"recorderpi_title": _title(record), "artist": record.device_id,
                         "recording_id": record.recording_id,
                         "recorderpi_source": "playlist"})
        path = sync_root / record.device_id / record.path
        lines.append(f"annotate:{meta}:{path}")
    return "\n".join(lines) + "\n"


def annotate(fields: Mapping[str, str]) -> str:
    """``key="value",...`` for a Liquidsoap ``annotate:`` URI; ``recorderpi_title`` is
    base64-encoded (see `render_station`), other values escaped."""
    parts = []
    for key, value in fields.items():
        if key == "recorderpi_title":
            value = base64.b64encode(value.encode("utf-8")).decode("ascii")
        value = "".join(c for c in value if c.isprintable())
        value = value.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{key}="{value}"')
    return ",".join(parts)


def parse_m3u(text: str) -> list[tuple[int, str, str]]:
    """(seconds, title, location) for each entry of an extended M3U (for tests and tools)."""
    out = []
    pending: tuple[int, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "#EXTM3U":
            continue
        if line.startswith("#EXTINF:"):
            length, _, title = line[len("#EXTINF:") :].partition(",")
            pending = (int(float(length)), title)
        elif not line.startswith("#"):
            seconds, name = pending or (-1, "")
            out.append((seconds, name, line))
            pending = None
    return out


def scan_sidecars(sync_root: Path) -> list[Recording]:
    """Recording records from every valid sidecar under ``<sync_root>/*/recordings/`` (the
    shared rule of `recorder.sidecar.published_sidecars`), without the catalogue. Recordings
    whose audio file has not arrived yet (Syncthing may deliver the sidecar first) are left
    out: the station must be able to play what it lists."""
    records = []
    for folder in device_folders(sync_root):
        for found in sidecar.published_sidecars(folder):
            if found.recording is None:
                log.debug("playlist: skipping %s: %s", found.path, found.problem)
            elif (folder / found.recording.path).is_file():
                records.append(found.recording)
    return records


def write_playlist(
    settings: RadioSettings,
    records: Iterable[Record] | None = None,
    *,
    base_url: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Rebuild this device's playlist files and the station's from `records` (default: scan
    the sidecars).

    Returns True when a file changed. Each file is replaced atomically, and only if its content
    differs from what is already there; the play log in ``playlist.json`` is kept.
    """
    if records is None:
        records = scan_sidecars(settings.sync_root)
    chosen = select(
        records,
        length=settings.radio.playlist_length,
        max_age_days=settings.radio.playlist_max_age_days,
        now=now,
    )
    items = entries(chosen, settings.device_id, base_url)
    folder = settings.playlist_dir
    with _files_lock:
        played = read_played(settings)
        return _write_all([
            (folder / M3U_NAME, render_m3u(items)),
            (folder / JSON_NAME, render_json(items, played)),
            (settings.station_playlist, render_station(chosen, settings.sync_root)),
        ])


def add_plays(settings: RadioSettings, plays: Iterable[Mapping[str, Any]]) -> int:
    """Add station plays (``at``, ``source``, ``title``, ``device_id``, ``recording_id``) to
    the play log in ``playlist.json``; return how many were new.

    The log stays newest first, without repeats (a play is its ``at``, ``source`` and
    ``title``), and at most ``radio.play_log_length`` long. Nothing is written when nothing
    is new, or before the playlist itself exists.
    """
    target = settings.playlist_dir / JSON_NAME
    with _files_lock:
        try:
            doc = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        known = [p for p in doc.get("played") or [] if isinstance(p, dict)]
        seen = {_play_key(p) for p in known}
        fresh = []
        for play in plays:
            key = _play_key(play)
            if key not in seen:
                seen.add(key)
                fresh.append(dict(play))
        if not fresh:
            return 0
        merged = sorted(known + fresh, key=lambda p: str(p.get("at", "")), reverse=True)
        doc["played"] = merged[: settings.radio.play_log_length]
        atomic_write_text(target, json.dumps(doc, indent=2, sort_keys=True,
                                             ensure_ascii=False) + "\n")
        return len(fresh)


def read_played(settings: RadioSettings) -> list[dict[str, Any]]:
    """The play log in this device's ``playlist.json``, newest first ([] when there is none)."""
    try:
        doc = json.loads((settings.playlist_dir / JSON_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    played = doc.get("played") if isinstance(doc, dict) else None
    return [p for p in played or [] if isinstance(p, dict)][: settings.radio.play_log_length]


def catalogue_records(catalogue: Catalogue, sync_root: Path,
                      limit: int | None = None) -> list[Playable]:
    """The catalogue's newest recordings that are no duplicate and whose audio is in place,
    at most `limit` (the playlist's length). The catalogue is read, not every sidecar re-parsed
    per publish, and it knows duplicates across devices; only the rows the playlist can use are
    read (reading all 10,000 sidecars of a big catalogue cost the service 34 MB of RSS)."""
    out: list[Playable] = []
    for row in catalogue.newest_originals():
        if limit is not None and len(out) >= limit:
            break
        record = Playable.from_row(row)
        if (sync_root / record.device_id / record.path).is_file():
            out.append(record)
    return out


def station_playlist_path(settings: RadioSettings) -> Path:
    """``<state_dir>/radio/station.m3u``: the station's playlist (absolute paths, metadata)."""
    return settings.station_playlist


def _write_all(files: list[tuple[Path, str]]) -> bool:
    changed = False
    for target, text in files:
        try:
            if target.read_text(encoding="utf-8") == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_text(target, text)
        changed = True
    return changed


def _play_key(play: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(play.get("at", "")), str(play.get("source", "")), str(play.get("title", "")))


def playlist_dir(settings: RadioSettings) -> Path:
    """``<sync_root>/<device-id>/radio``: where this device's playlist files live."""
    return settings.playlist_dir


def _title(record: Playable) -> str:
    title = record.title.strip()
    if not title:
        title = f"{record.device_id} {record.started_at}"
    # One M3U line per field: a newline in a title would start a bogus entry.
    return " ".join(title.split())


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
