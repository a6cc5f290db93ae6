"""What the sync bridge remembers about peers' files: the ``bridge_files`` table.

One row per peer file the bridge (recordings' sidecars) or the annotation exchange (a peer's
``papad/annotations.json``) has looked at: its path, the stat that decides whether it changed,
the sha256 of the sidecar and of its OGG, and its state:

- ``imported``: in the catalogue and the outbox (or merged into papad);
- ``pending``: not importable yet (its recording has not arrived), retried later;
- ``quarantined``: refused, with the reason shown by ``recorder mesh status``; looked at again
  only when the file changes.

Both the bridge and the annotation exchange use one `BridgeStore` (built in `recorder.app`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.db import Database

IMPORTED, PENDING, QUARANTINED = "imported", "pending", "quarantined"
SIDECAR, ANNOTATIONS = "sidecar", "annotations"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bridge_files (
        peer TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'sidecar',
        mtime_ns INTEGER,
        size INTEGER,
        sha256 TEXT,
        ogg_mtime_ns INTEGER,
        ogg_size INTEGER,
        ogg_sha256 TEXT,
        state TEXT NOT NULL CHECK (state IN ('imported', 'pending', 'quarantined')),
        reason TEXT,
        recording_id TEXT,
        duplicate_of TEXT,
        first_seen REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (peer, path)
    )""",
    "CREATE INDEX IF NOT EXISTS bridge_files_state ON bridge_files (state)",
)


class Quarantine(Exception):
    """This peer file must not be imported; the message is the reason shown to the user."""


@dataclass(frozen=True)
class FileStat:
    """What decides whether a file changed since it was last read."""

    mtime_ns: int
    size: int


class BridgeStore:
    """The ``bridge_files`` table: one row per peer file the bridge has looked at."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = database
        self.clock = clock
        database.ensure_schema(SCHEMA)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def rows(self, peer: str) -> dict[str, sqlite3.Row]:
        """Every row of one peer folder, by path."""
        cur = self.conn.execute("SELECT * FROM bridge_files WHERE peer = ?", (peer,))
        return {r["path"]: r for r in cur}

    def put(self, peer: str, path: str, kind: str, st: FileStat | None, state: str, *,
            reason: str | None = None, sha256: str | None = None,
            ogg: FileStat | None = None, ogg_sha256: str | None = None,
            recording_id: str | None = None, duplicate_of: str | None = None) -> None:
        now = self.clock()
        self.conn.execute(
            """INSERT INTO bridge_files (peer, path, kind, mtime_ns, size, sha256, ogg_mtime_ns,
                   ogg_size, ogg_sha256, state, reason, recording_id, duplicate_of, first_seen,
                   updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (peer, path) DO UPDATE SET kind = excluded.kind,
                   mtime_ns = excluded.mtime_ns, size = excluded.size, sha256 = excluded.sha256,
                   ogg_mtime_ns = excluded.ogg_mtime_ns, ogg_size = excluded.ogg_size,
                   ogg_sha256 = excluded.ogg_sha256, state = excluded.state,
                   reason = excluded.reason, recording_id = excluded.recording_id,
                   duplicate_of = excluded.duplicate_of, updated_at = excluded.updated_at""",
            (peer, path, kind, st.mtime_ns if st else None, st.size if st else None, sha256,
             ogg.mtime_ns if ogg else None, ogg.size if ogg else None, ogg_sha256, state,
             reason, recording_id, duplicate_of, now, now),
        )

    def forget(self, peer: str, paths: list[str]) -> None:
        self.conn.executemany("DELETE FROM bridge_files WHERE peer = ? AND path = ?",
                              [(peer, p) for p in paths])

    def recording_owner(self, recording_id: str) -> tuple[str, str] | None:
        """(peer, path) of the imported sidecar carrying `recording_id`, if any."""
        row = self.conn.execute(
            "SELECT peer, path FROM bridge_files WHERE recording_id = ? AND state = 'imported'",
            (recording_id,),
        ).fetchone()
        return (row["peer"], row["path"]) if row else None

    def summary(self, limit: int = 100) -> dict[str, Any]:
        """Counts per peer and state, and the quarantined and pending files with reasons."""
        conn = self.conn
        peers: dict[str, dict[str, int]] = {}
        for row in conn.execute(
            "SELECT peer, state, COUNT(*) AS n FROM bridge_files GROUP BY peer, state"
        ):
            counts = peers.setdefault(row["peer"], {IMPORTED: 0, PENDING: 0, QUARANTINED: 0})
            counts[row["state"]] = row["n"]

        def listing(state: str) -> list[dict[str, Any]]:
            return [
                {"peer": r["peer"], "path": r["path"], "kind": r["kind"], "reason": r["reason"],
                 "since": r["updated_at"]}
                for r in conn.execute(
                    "SELECT * FROM bridge_files WHERE state = ? ORDER BY peer, path LIMIT ?",
                    (state, limit),
                )
            ]

        return {"peers": peers, "quarantined": listing(QUARANTINED),
                "pending": listing(PENDING)}


def db_status(db_path: Path) -> dict[str, Any]:
    """`BridgeStore.summary` of the database at `db_path` (empty when there is none yet), for
    commands that run without the service."""
    if not db_path.exists():
        return {"peers": {}, "quarantined": [], "pending": []}
    database = Database(db_path)
    try:
        return BridgeStore(database).summary()
    finally:
        database.close()
