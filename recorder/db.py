"""The one way this package opens SQLite: WAL, synchronous=FULL, a busy timeout.

WAL with synchronous=FULL survives power loss without corrupting the database, which is the
failure the field keeps hitting with SQLite on SD cards.
"""

from __future__ import annotations

import sqlite3
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
