"""The papad outbox: a durable SQLite queue of registrations, and the worker that drains it.

One row per recording (``recording_id`` is unique, so enqueueing twice is harmless), one child
row per bookmark. A row is ``pending`` until papad has the media and every annotation
(``delivered``), or ``parked`` when papad refused it for good; ``retry`` makes it pending again.

Exactly once: the attempt counter is committed *before* each create request, so any later
attempt knows an earlier one may have reached papad. Every attempt without a remembered remote
id looks the media up first (papad's search for the recording id in the description; the
legacy API by audio URL), the first one too: a lost answer, a restart mid-request and a lost or
rebuilt database all look the same from here. Annotations already delivered are looked up
before a retry posts them again. (No full listing of the group: on current papad its cost per
item grows with the archive, and at a few thousand media a page outlasts the timeout.)

Retries that end. papad being down, slow, overloaded or throttling (connection failures,
timeouts, 502/503/504, 429) is retried for ever with exponential backoff (429: at least its
``Retry-After``), holding the whole queue so delivery stays in order. A 500 is different: it
may be papad's bug tripped by this one entry, and would repeat for ever. An attempt that meets
a 500 tries again at once, up to `QUICK_RETRIES` more times (papadam's flaky "Event loop is
closed" passes on the next try; each try looks the media up first, so none duplicates);
when attempts keep ending in a 500 for the same request, the entry is parked with papad's
answer after `MAX_SERVER_ERRORS` attempts in a row and at least `SERVER_ERROR_PERIOD` seconds
after the first of them. `recorder outbox retry` makes it pending again with a fresh count.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder import db
from recorder.errors import RecorderError
from recorder.papad.errors import (
    PapadError,
    PermanentError,
    RetryableError,
    ServerError,
    relabel,
)

# `recorder outbox list` needs only SQLite: the papad client (requests, ~100 ms) is imported for
# typing only, the sidecar rules and the papad mapping where entries are made and delivered.
if TYPE_CHECKING:
    from recorder.papad.client import PapadClient
    from recorder.recording import Recording

log = logging.getLogger(__name__)

PENDING, DELIVERED, PARKED = "pending", "delivered", "parked"

QUICK_RETRIES = 2  # more tries of an attempt that met a 500, `QUICK_RETRY_PAUSE` s apart
QUICK_RETRY_PAUSE = 1.0
MAX_SERVER_ERRORS = 6  # attempts in a row ending in a 500 for the same request ...
SERVER_ERROR_PERIOD = 600.0  # ... and at least this long since the first: parked

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS papad_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        recording_id TEXT NOT NULL UNIQUE,
        origin TEXT NOT NULL DEFAULT 'own',
        sidecar TEXT NOT NULL,
        ogg_path TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'delivered', 'parked')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        enqueued_at REAL NOT NULL,
        delivered_at REAL,
        last_error TEXT,
        remote_id TEXT,
        server_errors INTEGER NOT NULL DEFAULT 0,
        server_error_request TEXT,
        server_error_since REAL
    )""",
    "CREATE INDEX IF NOT EXISTS papad_outbox_due ON papad_outbox (state, next_attempt_at, id)",
    """CREATE TABLE IF NOT EXISTS papad_outbox_annotations (
        outbox_id INTEGER NOT NULL REFERENCES papad_outbox (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (outbox_id, idx)
    )""",
)
# Columns added after the first release: ALTER TABLE for databases made before them.
_ADDED_COLUMNS = {
    "server_errors": "INTEGER NOT NULL DEFAULT 0",
    "server_error_request": "TEXT",
    "server_error_since": "REAL",
}


@dataclass(frozen=True)
class Entry:
    """One queued registration as stored."""

    id: int
    recording_id: str
    origin: str
    sidecar: dict[str, Any]
    ogg_path: Path
    state: str
    attempts: int
    next_attempt_at: float
    enqueued_at: float
    delivered_at: float | None
    last_error: str | None
    remote_id: str | None
    annotations: int
    annotations_delivered: int
    server_errors: int = 0

    @property
    def recording(self) -> Recording:
        """The queued sidecar as the typed recording (validated when it was queued)."""
        from recorder.recording import Recording

        return Recording.from_doc(self.sidecar)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no sidecar body; nothing secret lives here)."""
        return {
            "id": self.id,
            "recording_id": self.recording_id,
            "origin": self.origin,
            "path": self.sidecar.get("path"),
            "file": str(self.ogg_path),
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "enqueued_at": self.enqueued_at,
            "delivered_at": self.delivered_at,
            "last_error": self.last_error,
            "remote_id": self.remote_id,
            "annotations": self.annotations,
            "annotations_delivered": self.annotations_delivered,
            "server_errors": self.server_errors,
        }


_SELECT = """
    SELECT o.*,
        (SELECT COUNT(*) FROM papad_outbox_annotations a WHERE a.outbox_id = o.id) AS n_ann,
        (SELECT COUNT(*) FROM papad_outbox_annotations a
            WHERE a.outbox_id = o.id AND a.delivered) AS n_ann_done
    FROM papad_outbox o
"""


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"],
        recording_id=row["recording_id"],
        origin=row["origin"],
        sidecar=json.loads(row["sidecar"]),
        ogg_path=Path(row["ogg_path"]),
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        enqueued_at=row["enqueued_at"],
        delivered_at=row["delivered_at"],
        last_error=row["last_error"],
        remote_id=row["remote_id"],
        annotations=row["n_ann"],
        annotations_delivered=row["n_ann_done"],
        server_errors=row["server_errors"],
    )


_FRESH_COUNT = " server_errors = 0, server_error_request = NULL, server_error_since = NULL"


class Outbox:
    """The queue, in the shared database (WAL, synchronous=FULL).

    Thread-safe: each thread uses its own connection of the `Database`; the lock keeps each
    read-modify-write of one instance in order.
    """

    def __init__(self, database: db.Database, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.database = database
        database.ensure_schema(SCHEMA)
        with db.transaction(self._conn) as conn:
            have = {r[1] for r in conn.execute("PRAGMA table_info(papad_outbox)")}
            for name, decl in _ADDED_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE papad_outbox ADD COLUMN {name} {decl}")

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.database.conn

    def now(self) -> float:
        """The outbox clock (wall time, seconds): what `next_attempt_at` is measured in."""
        return self._clock()

    # -- producing -------------------------------------------------------------------------

    def enqueue(self, sidecar: dict[str, Any], ogg_path: Path, origin: str = "own") -> int:
        """Queue the registration of a published recording; return its outbox id.

        Idempotent: a recording already queued (in any state) keeps its row and id.
        """
        from recorder.sidecar import validate

        doc = validate(sidecar)
        now = self._clock()
        with self._lock, db.transaction(self._conn) as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO papad_outbox (recording_id, origin, sidecar, ogg_path,"
                " next_attempt_at, enqueued_at) VALUES (?, ?, ?, ?, ?, ?)",
                (doc["recording_id"], origin, json.dumps(doc, sort_keys=True),
                 str(ogg_path), now, now),
            )
            if cur.rowcount:
                outbox_id = int(cur.lastrowid or 0)
                conn.executemany(
                    "INSERT INTO papad_outbox_annotations (outbox_id, idx) VALUES (?, ?)",
                    [(outbox_id, i) for i in range(len(doc["bookmarks"]))],
                )
                log.info("papad outbox: queued %s (#%d)", doc["recording_id"], outbox_id)
                return outbox_id
            row = conn.execute(
                "SELECT id FROM papad_outbox WHERE recording_id = ?", (doc["recording_id"],)
            ).fetchone()
            return int(row["id"])

    def reconcile(self, folder: Path, origin: str = "own") -> int:
        """Queue every published sidecar under ``<folder>/recordings/`` missing from the outbox.

        This is the safety net for a crash between publishing and enqueueing. Syncthing
        conflict copies, hidden/partial files and sidecars whose recording file is missing
        are skipped. Returns how many entries were added.
        """
        from recorder.sidecar import published_sidecars

        with self._lock:
            known = {r[0] for r in self._conn.execute("SELECT recording_id FROM papad_outbox")}
        added = 0
        for found in published_sidecars(folder):
            if found.doc is None:
                log.warning("papad outbox: skipping sidecar %s: %s", found.path, found.problem)
                continue
            doc = found.doc
            if doc["recording_id"] in known:
                continue
            audio = folder / doc["path"]
            if not audio.is_file():
                log.warning("papad outbox: %s has no recording file %s", found.path, audio)
                continue
            self.enqueue(doc, audio, origin)
            known.add(doc["recording_id"])
            added += 1
        if added:
            log.info("papad outbox: reconcile queued %d published recording(s)", added)
        return added

    # -- inspecting ------------------------------------------------------------------------

    def get(self, outbox_id: int) -> Entry | None:
        """One entry by outbox id."""
        with self._lock:
            row = self._conn.execute(_SELECT + " WHERE o.id = ?", (outbox_id,)).fetchone()
        return _entry(row) if row else None

    def entries(self, state: str | None = None) -> list[Entry]:
        """All entries (optionally only those in `state`), oldest first."""
        where, args = (" WHERE o.state = ?", (state,)) if state else ("", ())
        with self._lock:
            rows = self._conn.execute(_SELECT + where + " ORDER BY o.id", args).fetchall()
        return [_entry(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of entries per state."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, COUNT(*) FROM papad_outbox GROUP BY state"
            ).fetchall()
        out = {PENDING: 0, DELIVERED: 0, PARKED: 0}
        out.update({r[0]: r[1] for r in rows})
        return out

    def depth(self) -> int:
        """Entries not delivered yet (pending plus parked)."""
        counts = self.counts()
        return counts[PENDING] + counts[PARKED]

    def oldest_age(self) -> float | None:
        """Seconds since the oldest undelivered entry was queued; None when there is none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(enqueued_at) FROM papad_outbox WHERE state != 'delivered'"
            ).fetchone()
        return None if row[0] is None else max(0.0, self._clock() - row[0])

    def remote_id(self, recording_id: str) -> str | None:
        """The papad id (media uuid or legacy ``$oid``) a recording was registered under."""
        with self._lock:
            row = self._conn.execute(
                "SELECT remote_id FROM papad_outbox WHERE recording_id = ?", (recording_id,)
            ).fetchone()
        return row[0] if row else None

    def states(self, recording_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The registration of each queued recording among `recording_ids`, by recording id:
        ``{"id", "state", "attempts", "last_error", "remote_id"}`` (one query, no sidecars
        parsed: for a page listing recordings). Recordings never queued are absent."""
        if not recording_ids:
            return {}
        marks = ",".join("?" * len(recording_ids))
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, recording_id, state, attempts, last_error, remote_id"
                f" FROM papad_outbox WHERE recording_id IN ({marks})", recording_ids,
            ).fetchall()
        return {r["recording_id"]: {"id": r["id"], "state": r["state"],
                                    "attempts": r["attempts"], "last_error": r["last_error"],
                                    "remote_id": r["remote_id"]} for r in rows}

    def next_due_in(self) -> float | None:
        """Seconds until the next pending entry is due (0 if one is due now); None if none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(next_attempt_at) FROM papad_outbox WHERE state = 'pending'"
            ).fetchone()
        return None if row[0] is None else max(0.0, row[0] - self._clock())

    # -- operator actions ------------------------------------------------------------------

    def retry(self, outbox_id: int) -> Entry:
        """Make a parked (or waiting) entry due now. Raises RecorderError for an unknown id."""
        with self._lock, db.transaction(self._conn) as conn:
            cur = conn.execute(
                "UPDATE papad_outbox SET state = 'pending', next_attempt_at = ?," + _FRESH_COUNT
                + " WHERE id = ? AND state != 'delivered'",
                (self._clock(), outbox_id),
            )
            if not cur.rowcount:
                exists = conn.execute(
                    "SELECT 1 FROM papad_outbox WHERE id = ?", (outbox_id,)
                ).fetchone()
                if not exists:
                    raise RecorderError(f"outbox entry {outbox_id} does not exist")
        entry = self.get(outbox_id)
        assert entry is not None
        return entry

    def retry_all(self) -> int:
        """Make every parked or waiting entry due now; return how many."""
        with self._lock, db.transaction(self._conn) as conn:
            cur = conn.execute(
                "UPDATE papad_outbox SET state = 'pending', next_attempt_at = ?," + _FRESH_COUNT
                + " WHERE state != 'delivered'",
                (self._clock(),),
            )
            return cur.rowcount

    # -- used by the worker ----------------------------------------------------------------

    def due(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Entry]:
        """Pending entries whose time has come, oldest first (at most `limit`)."""
        with self._lock:
            rows = self._conn.execute(
                _SELECT + " WHERE o.state = 'pending' AND o.next_attempt_at <= ?"
                " ORDER BY o.id LIMIT ?",
                (self._clock(), limit + len(exclude)),
            ).fetchall()
        return [_entry(r) for r in rows if r["id"] not in exclude][:limit]

    def begin_attempt(self, outbox_id: int) -> None:
        """Count an attempt, durably, before any request that could create something."""
        with self._lock:
            self._conn.execute(
                "UPDATE papad_outbox SET attempts = attempts + 1 WHERE id = ?", (outbox_id,)
            )

    def set_remote_id(self, outbox_id: int, remote_id: str) -> None:
        """Remember the papad id of the media."""
        with self._lock:
            self._conn.execute(
                "UPDATE papad_outbox SET remote_id = ? WHERE id = ?", (remote_id, outbox_id)
            )

    def pending_annotations(self, outbox_id: int) -> list[tuple[int, int]]:
        """(bookmark index, attempts so far) of annotations not yet delivered."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT idx, attempts FROM papad_outbox_annotations"
                " WHERE outbox_id = ? AND NOT delivered ORDER BY idx",
                (outbox_id,),
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def begin_annotation(self, outbox_id: int, idx: int) -> None:
        """Count an annotation attempt, durably, before posting it."""
        with self._lock:
            self._conn.execute(
                "UPDATE papad_outbox_annotations SET attempts = attempts + 1"
                " WHERE outbox_id = ? AND idx = ?",
                (outbox_id, idx),
            )

    def annotation_delivered(self, outbox_id: int, idx: int) -> None:
        """Mark one annotation delivered."""
        with self._lock:
            self._conn.execute(
                "UPDATE papad_outbox_annotations SET delivered = 1, last_error = NULL"
                " WHERE outbox_id = ? AND idx = ?",
                (outbox_id, idx),
            )

    def mark_delivered(self, outbox_id: int) -> None:
        """The media and all its annotations are on papad."""
        with self._lock:
            self._conn.execute(
                "UPDATE papad_outbox SET state = 'delivered', delivered_at = ?, last_error = NULL,"
                + _FRESH_COUNT + " WHERE id = ?",
                (self._clock(), outbox_id),
            )

    def count_server_error(self, outbox_id: int, request: str) -> tuple[int, float]:
        """Count an attempt that ended in a 500 for `request`; return (attempts in a row for
        that same request, when the first of them failed). Another request restarts the count.
        """
        now = self._clock()
        with self._lock, db.transaction(self._conn) as conn:
            conn.execute(
                "UPDATE papad_outbox SET"
                " server_errors = CASE WHEN server_error_request IS ? THEN server_errors + 1"
                " ELSE 1 END,"
                " server_error_since = CASE WHEN server_error_request IS ?"
                " THEN COALESCE(server_error_since, ?) ELSE ? END,"
                " server_error_request = ? WHERE id = ?",
                (request, request, now, now, request, outbox_id),
            )
            row = conn.execute(
                "SELECT server_errors, server_error_since FROM papad_outbox WHERE id = ?",
                (outbox_id,),
            ).fetchone()
        return int(row[0]), float(row[1])

    def clear_server_errors(self, outbox_id: int) -> None:
        """The failing request got past its 500s (or failed otherwise): start counting anew."""
        with self._lock:
            self._conn.execute("UPDATE papad_outbox SET" + _FRESH_COUNT + " WHERE id = ?",
                               (outbox_id,))

    def mark_failed(self, outbox_id: int, error: str, retry_at: float | None) -> None:
        """Record a failure: retry at `retry_at`, or park the entry when it is None."""
        with self._lock:
            if retry_at is None:
                self._conn.execute(
                    "UPDATE papad_outbox SET state = 'parked', last_error = ? WHERE id = ?",
                    (error, outbox_id),
                )
            else:
                self._conn.execute(
                    "UPDATE papad_outbox SET last_error = ?,"
                    " next_attempt_at = MAX(next_attempt_at, ?) WHERE id = ? AND state = 'pending'",
                    (error, retry_at, outbox_id),
                )

    def hold_all_until(self, when: float) -> None:
        """papad is unavailable: no pending entry is due before `when`.

        Holding everyone (not just the entry that failed) keeps delivery in queue order
        when papad comes back, also across a restart.
        """
        with self._lock:
            self._conn.execute(
                "UPDATE papad_outbox SET next_attempt_at = MAX(next_attempt_at, ?)"
                " WHERE state = 'pending'",
                (when,),
            )


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class OutboxWorker:
    """Delivers due outbox entries to papad with at most `concurrency` requests in flight.

    `run_once()` delivers everything due now; `start()` runs it in a background thread that
    sleeps until the next entry is due or `wake()` is called. `on_delivered(recording_id,
    remote_id)` is called after each delivery (to put remote ids into the catalogue).
    """

    def __init__(
        self,
        outbox: Outbox,
        client: PapadClient,
        concurrency: int = 2,
        *,
        base_delay: float = 5.0,
        max_delay: float = 900.0,
        idle_poll: float = 60.0,
        on_delivered: Callable[[str, str], None] | None = None,
        quick_retries: int = QUICK_RETRIES,
        quick_retry_pause: float = QUICK_RETRY_PAUSE,
        max_server_errors: int = MAX_SERVER_ERRORS,
        server_error_period: float = SERVER_ERROR_PERIOD,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.concurrency = max(1, int(concurrency))
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.idle_poll = idle_poll
        self.on_delivered = on_delivered
        self.quick_retries = max(0, int(quick_retries))
        self.quick_retry_pause = quick_retry_pause
        self.max_server_errors = max(1, int(max_server_errors))
        self.server_error_period = server_error_period
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="papad-outbox")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_lock = threading.Lock()

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the delivery loop in a daemon thread."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="papad-outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was queued (or retried): deliver now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop after the requests in flight (each bounded by the client timeout)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # the loop must survive a bug or a database hiccup
                log.exception("papad outbox: delivery pass failed")
            try:
                due_in = self.outbox.next_due_in()
            except sqlite3.Error:
                due_in = None
            wait = self.idle_poll if due_in is None else min(self.idle_poll, due_in)
            self._wake.wait(max(0.0, wait))

    # -- delivering ------------------------------------------------------------------------

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: base·2^(n-1), capped, scaled by 0.5..1."""
        delay = min(self.max_delay, self.base_delay * 2 ** max(0, min(attempts - 1, 30)))
        return delay * random.uniform(0.5, 1.0)

    def run_once(self) -> int:
        """Try every entry due now once, in queue order; return how many were delivered.

        Stops early when papad is unavailable (the rest would fail the same way).
        """
        delivered = 0
        with self._run_lock:
            tried: set[int] = set()
            unavailable = threading.Event()
            while not self._stopping.is_set() and not unavailable.is_set():
                batch = self.outbox.due(self.concurrency * 4, exclude=tried)
                if not batch:
                    break
                tried.update(e.id for e in batch)
                futures = [self._pool.submit(self._deliver, e, unavailable) for e in batch]
                delivered += sum(1 for f in futures if f.result())
        return delivered

    def _deliver(self, entry: Entry, unavailable: threading.Event) -> bool:
        if unavailable.is_set() or self._stopping.is_set():
            return False  # skipped: stays due, keeps its place in the queue
        current: Entry | None = entry
        for try_no in range(self.quick_retries + 1):
            if current is None or current.state != PENDING:
                return False  # retried, delivered or parked meanwhile (operator action)
            try:
                self._deliver_entry(current)
            except ServerError as exc:
                if try_no < self.quick_retries and not self._stopping.is_set():
                    log.info("papad outbox: #%d: %s; trying again", entry.id, exc)
                    self._stopping.wait(self.quick_retry_pause)
                    current = self.outbox.get(entry.id)  # attempts counted: look up first
                    continue
                self._failed(current, exc, unavailable)
                return False
            except PapadError as exc:
                self._failed(current, exc, unavailable)
                return False
            except Exception as exc:
                log.exception("papad outbox: unexpected failure delivering #%d", entry.id)
                self._failed(current, RetryableError(
                    f"internal error: {type(exc).__name__}: {exc}"), unavailable)
                return False
            return True
        return False

    def _deliver_entry(self, entry: Entry) -> None:
        sidecar = entry.sidecar
        self.outbox.begin_attempt(entry.id)
        remote = entry.remote_id
        if remote is None:
            # papad never de-duplicates: an earlier attempt, or this device before its database
            # was lost, may have registered it already.
            remote = self.client.find_media(sidecar)
            if remote is not None:
                log.info("papad outbox: %s already on papad as %s", entry.recording_id, remote)
        created = remote is None
        if remote is None:
            if not entry.ogg_path.is_file():
                raise PermanentError(f"recording file missing: {entry.ogg_path}")
            remote = self.client.create_media(sidecar, entry.ogg_path)
            log.info("papad outbox: registered %s as %s", entry.recording_id, remote)
        self.outbox.set_remote_id(entry.id, remote)
        self._deliver_annotations(entry, remote, fresh=created)
        self.outbox.mark_delivered(entry.id)
        if self.on_delivered is not None:
            try:
                self.on_delivered(entry.recording_id, remote)
            except Exception:
                log.exception("papad outbox: on_delivered callback failed")

    def _deliver_annotations(self, entry: Entry, remote: str, *, fresh: bool) -> None:
        """Post the entry's pending bookmarks. A bookmark is the annotation of that media with
        its target and text: papad is asked which are there already, unless the media was
        created just now (`fresh`) and it is the bookmark's first try, so neither a retry nor
        a device whose database was lost (the media found again by the lookup) posts one
        twice."""
        from recorder.papad import mapping

        pending = self.outbox.pending_annotations(entry.id)
        if not pending:
            return
        annotations = mapping.bookmark_annotations(entry.recording, self.client.annotation_span)
        existing: set[tuple[str, str]] | None = None
        for idx, attempts in pending:
            if idx >= len(annotations):  # the bookmark list shrank: nothing to post
                self.outbox.annotation_delivered(entry.id, idx)
                continue
            annotation = annotations[idx]
            if attempts > 0 or not fresh:
                if existing is None:
                    existing = self.client.annotation_keys(remote, entry.sidecar)
                if annotation.key in existing:
                    self.outbox.annotation_delivered(entry.id, idx)
                    continue
            self.outbox.begin_annotation(entry.id, idx)
            try:
                self.client.create_annotation(remote, entry.sidecar, annotation)
            except PapadError as exc:
                raise relabel(exc, f"bookmark {idx + 1}: ") from None
            self.outbox.annotation_delivered(entry.id, idx)

    def _failed(self, entry: Entry, exc: PapadError, unavailable: threading.Event) -> None:
        reason = " ".join(str(exc).split())[:300]
        delay = self.backoff(entry.attempts + 1)
        if isinstance(exc, ServerError):
            count, since = self.outbox.count_server_error(entry.id, exc.request or "?")
            delay = self.backoff(count)  # one step per attempt, not per quick try
            period = self.outbox.now() - since
            if count >= self.max_server_errors and period >= self.server_error_period:
                reason = (f"papad answered HTTP {exc.status} to {exc.request} on {count} attempts"
                          f" in a row over {_span(period)}; parked (fix the cause, then"
                          f" `recorder outbox retry {entry.id}`): {reason}")[:500]
                log.warning("papad outbox: parked #%d (%s): %s", entry.id, entry.recording_id,
                            reason)
                self.outbox.mark_failed(entry.id, reason, None)
                return
        elif not exc.unavailable:
            self.outbox.clear_server_errors(entry.id)
        if not exc.retryable:
            log.warning("papad outbox: parked #%d (%s): %s", entry.id, entry.recording_id, reason)
            self.outbox.mark_failed(entry.id, reason, None)
            return
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)  # papad said when: never earlier
        retry_at = self.outbox.now() + delay
        self.outbox.mark_failed(entry.id, reason, retry_at)
        if exc.unavailable:
            unavailable.set()
            self.outbox.hold_all_until(retry_at)
        log.info(
            "papad outbox: #%d attempt %d failed, retry in %.1f s: %s",
            entry.id, entry.attempts + 1, max(0.0, retry_at - self.outbox.now()), reason,
        )
