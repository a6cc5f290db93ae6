"""The recordings page's index: a compact copy of the catalogue, kept by SQLite itself.

The catalogue's ``recordings`` rows carry whole sidecars and fingerprints (several kilobytes
each), and know nothing of titles or tags: listing 10,000 of them newest first, or searching
them, would read every row. ``web_listing`` keeps, per recording, only what a page lists and
searches, with an index on the start time and on ``duplicate_of``. Triggers on ``recordings``
keep it in step inside the catalogue's own transactions, whoever writes (the publisher, the
bridge, ``recorder index rebuild``, a one-off ``recorder record``), so nothing else has to know
this table exists; `Listing.__init__` fills it once if it was created after the catalogue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from recorder.db import Database, transaction

PAGE_SIZE = 20

# One row of web_listing from a recordings row `r` (the triggers' NEW, or the table itself).
_COLUMNS = ("recording_id, device_id, origin, started_at, duration, title, tags, search, "
            "duplicate_of, card")
_VALUES = """{r}.recording_id, {r}.device_id, {r}.origin, {r}.started_at, {r}.duration,
    COALESCE(json_extract({r}.sidecar, '$.title'), ''),
    COALESCE(json_extract({r}.sidecar, '$.tags'), '[]'),
    COALESCE(json_extract({r}.sidecar, '$.title'), '') || ' '
        || COALESCE(json_extract({r}.sidecar, '$.tags'), ''),
    {r}.duplicate_of,
    json_object('path', {r}.path, 'bytes', json_extract({r}.sidecar, '$.bytes'),
        'codec', json_extract({r}.sidecar, '$.codec'),
        'bookmarks', json(COALESCE(json_extract({r}.sidecar, '$.bookmarks'), '[]')),
        'trigger', json_extract({r}.sidecar, '$.trigger'),
        'stop_reason', json_extract({r}.sidecar, '$.stop_reason'),
        'clock_synced', json(CASE json_type({r}.sidecar, '$.clock_synced')
            WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE 'null' END),
        'levels', json(COALESCE(json_extract({r}.sidecar, '$.levels'), '{{}}')),
        'source', json_extract({r}.sidecar, '$.source'),
        'original_name', json_extract({r}.sidecar, '$.original_name'),
        'caller', json_extract({r}.sidecar, '$.caller.name'),
        'contains', json(COALESCE(json_extract({r}.sidecar, '$.contains'), '[]')))"""
_UPSERT = f"INSERT OR REPLACE INTO web_listing ({_COLUMNS}) SELECT {_VALUES.format(r='r')}"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_listing (
        recording_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        started_at TEXT NOT NULL,
        duration REAL NOT NULL,
        title TEXT NOT NULL,
        tags TEXT NOT NULL,
        search TEXT NOT NULL,
        duplicate_of TEXT,
        card TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS web_listing_started ON web_listing (started_at, recording_id)",
    "CREATE INDEX IF NOT EXISTS web_listing_duplicate ON web_listing (duplicate_of)",
    # The card gained the import fields (issue 25): triggers of an older database are
    # replaced (version in their names), so recordings added from now on carry them.
    "DROP TRIGGER IF EXISTS web_listing_added",
    "DROP TRIGGER IF EXISTS web_listing_changed",
    f"""CREATE TRIGGER IF NOT EXISTS web_listing_added2 AFTER INSERT ON recordings BEGIN
        INSERT OR REPLACE INTO web_listing ({_COLUMNS}) VALUES ({_VALUES.format(r='NEW')});
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS web_listing_changed2 AFTER UPDATE ON recordings BEGIN
        DELETE FROM web_listing WHERE recording_id = OLD.recording_id;
        INSERT OR REPLACE INTO web_listing ({_COLUMNS}) VALUES ({_VALUES.format(r='NEW')});
    END""",
    """CREATE TRIGGER IF NOT EXISTS web_listing_removed AFTER DELETE ON recordings BEGIN
        DELETE FROM web_listing WHERE recording_id = OLD.recording_id;
    END""",
)


@dataclass(frozen=True)
class ListedRecording:
    """One recording as the page lists it: a ``web_listing`` row, read in `Listing._item`
    only. The JSON API sends `as_dict` (these names, in this order)."""

    recording_id: str
    device_id: str
    origin: str  # ``own`` or ``peer:<device-id>`` (`recorder.layout.origin_label`)
    started_at: str
    duration: float
    title: str
    tags: list[str]
    duplicate_of: str | None
    # From the sidecar (the card column): None where the sidecar has no such field.
    path: str
    bytes: int | None
    codec: str | None
    bookmarks: list[dict[str, Any]]
    trigger: str | None
    stop_reason: str | None
    clock_synced: bool | None
    levels: dict[str, Any]
    source: str | None
    original_name: str | None
    caller: str | None
    contains: list[Any]
    duplicates: list[str]  # the recordings marked as copies of this one

    def as_dict(self) -> dict[str, Any]:
        """The JSON the page reads (a fresh dict: the views add the papad state to it)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Page:
    """One page of recordings, newest first."""

    items: list[ListedRecording]
    page: int
    pages: int
    total: int


class Listing:
    """Pages of the catalogue for the web page (the catalogue's ``recordings`` must exist:
    build the `Catalogue` first). Safe from any thread: each uses its own connection."""

    def __init__(self, database: Database) -> None:
        self.db = database
        database.ensure_schema(SCHEMA)
        self._fill()

    def _fill(self) -> None:
        """Copy what the triggers did not see (the table is new, or an older database)."""
        conn = self.db.conn
        with transaction(conn):
            (missing,) = conn.execute(
                "SELECT (SELECT COUNT(*) FROM recordings) - (SELECT COUNT(*) FROM web_listing)"
            ).fetchone()
            if missing:
                conn.execute("DELETE FROM web_listing WHERE recording_id NOT IN "
                             "(SELECT recording_id FROM recordings)")
                conn.execute(_UPSERT + " FROM recordings r WHERE r.recording_id NOT IN "
                             "(SELECT recording_id FROM web_listing)")

    def page(self, page: int = 1, *, query: str = "", tag: str = "", origin: str = "",
             size: int = PAGE_SIZE) -> Page:
        """Recordings newest first, `size` a page (`page` counts from 1): only those whose
        title or tags contain `query` (any case), carrying `tag` exactly, or of `origin`
        (``own``, ``peers`` or a device id)."""
        where, args = [], []
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("search LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?)")
            args.append(tag)
        if origin == "own":
            where.append("origin = 'own'")
        elif origin == "peers":
            where.append("origin != 'own'")
        elif origin:
            where.append("device_id = ?")
            args.append(origin)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        conn = self.db.conn
        (total,) = conn.execute(f"SELECT COUNT(*) FROM web_listing{clause}", args).fetchone()
        pages = max(1, -(-total // size))
        page = min(max(1, page), pages)
        rows = conn.execute(
            f"SELECT * FROM web_listing{clause} ORDER BY started_at DESC, recording_id DESC"
            " LIMIT ? OFFSET ?", [*args, size, (page - 1) * size]).fetchall()
        return Page(self._with_duplicates([self._item(r) for r in rows]), page, pages, total)

    def get(self, recording_id: str) -> ListedRecording | None:
        """One recording as the page lists it, or None."""
        row = self.db.conn.execute("SELECT * FROM web_listing WHERE recording_id = ?",
                                   (recording_id,)).fetchone()
        if row is None:
            return None
        return self._with_duplicates([self._item(row)])[0]

    def own_byte_rate(self, recent: int = 20) -> float | None:
        """Bytes per second of audio over this device's `recent` latest recordings (None
        before the first): what hours of recording the free space holds."""
        row = self.db.conn.execute(
            "SELECT SUM(json_extract(card, '$.bytes')), SUM(duration) FROM (SELECT card,"
            " duration FROM web_listing WHERE origin = 'own' AND duration >= 1"
            " ORDER BY started_at DESC LIMIT ?)", (recent,)).fetchone()
        return row[0] / row[1] if row[0] and row[1] else None

    def counts(self) -> dict[str, int]:
        """Recordings per origin (``own`` and each ``peer:<id>``)."""
        return {r[0]: r[1] for r in self.db.conn.execute(
            "SELECT origin, COUNT(*) FROM web_listing GROUP BY origin")}

    @staticmethod
    def _item(row: Any) -> ListedRecording:
        """The one place a ``web_listing`` row becomes a value (its duplicates still empty)."""
        card = json.loads(row["card"])
        return ListedRecording(
            recording_id=row["recording_id"], device_id=row["device_id"], origin=row["origin"],
            started_at=row["started_at"], duration=row["duration"], title=row["title"],
            tags=json.loads(row["tags"]), duplicate_of=row["duplicate_of"],
            path=card["path"], bytes=card["bytes"], codec=card["codec"],
            bookmarks=card["bookmarks"], trigger=card["trigger"],
            stop_reason=card["stop_reason"], clock_synced=card["clock_synced"],
            levels=card["levels"],
            # Cards written by the triggers before issue 25 lack the import fields.
            source=card.get("source"), original_name=card.get("original_name"),
            caller=card.get("caller"), contains=card.get("contains") or [], duplicates=[])

    def _with_duplicates(self, items: list[ListedRecording]) -> list[ListedRecording]:
        """`items`, each with its ``duplicates``: the recordings marked as copies of it."""
        ids = [i.recording_id for i in items]
        found: dict[str, list[str]] = {i: [] for i in ids}
        if ids:
            marks = ",".join("?" * len(ids))
            for r in self.db.conn.execute(
                    f"SELECT duplicate_of, recording_id FROM web_listing WHERE duplicate_of"
                    f" IN ({marks}) ORDER BY started_at", ids):
                found[r[0]].append(r[1])
        return [replace(item, duplicates=found[item.recording_id]) for item in items]
