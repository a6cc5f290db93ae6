"""The one way this package opens SQLite: WAL, synchronous=FULL, a busy timeout.

WAL with synchronous=FULL survives power loss without corrupting the database, which is the
failure the field keeps hitting with SQLite on SD cards.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating parent directories) a database at `path` with the durable settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), timeout=30.0, isolation_level=None, check_same_thread=check_same_thread
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def ensure_schema(conn: sqlite3.Connection, statements: Iterable[str]) -> None:
    """Run idempotent DDL (``CREATE ... IF NOT EXISTS``) in one transaction."""
    with transaction(conn):
        for statement in statements:
            conn.execute(statement)


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class Database:
    """The one owner of the service's SQLite database: every component that keeps tables in
    it (catalogue, outbox, bridge, annotation links) is handed this object, never a path.

    Each thread gets its own connection (`conn`), opened on first use with the durable
    settings above, so components shared by the pump's publisher thread, the bridge and the
    control thread never share a connection or need a lock for it. `close()` closes them all
    (at shutdown, after the threads stopped).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schemas: set[tuple[str, ...]] = set()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def ensure_schema(self, statements: Iterable[str]) -> None:
        """Run a component's idempotent DDL once per process."""
        key = tuple(statements)
        with self._lock:
            if key in self._schemas:
                return
        ensure_schema(self.conn, key)
        with self._lock:
            self._schemas.add(key)

    def close(self) -> None:
        """Close every connection opened so far (the threads using them must be done)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
