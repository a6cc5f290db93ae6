"""The one way this package opens SQLite: WAL, synchronous=FULL, a busy timeout.

WAL with synchronous=FULL survives power loss without corrupting the database, which is the
failure the field keeps hitting with SQLite on SD cards.

A database that is corrupt all the same (a dying card, a file overwritten by hand) never stops a
command: `Database` moves it aside (``recorder.db.corrupt-<UTC time>``, kept for inspection),
starts an empty one and says so in one warning line; everything in it can be rebuilt from the
files on disk, and the `rebuild` callback it is given (see `recorder.dbrepair`) does that, at
once or, if this command has none, in the next one that has. A directory or file that cannot
be opened at all is a one-line `StorageError` naming the key.

Beside the database lies ``recorder.db.spare`` (`SPARE_BYTES`, made once there is room): when a
full disk keeps SQLite from opening the database (its WAL and shared-memory files need room),
the spare is given up and the open retried, so a service that starts on a full disk still has
its catalogue and outbox; it is made again once the disk has room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from recorder.storage import (
    MIN_FREE_BYTES,
    SPARE_BYTES,
    DiskFullError,
    StorageError,
    free_bytes,
    is_disk_full,
)

log = logging.getLogger(__name__)

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xff).
_CORRUPT, _NOTADB = 11, 26
_FULL, _CANTOPEN, _IOERR, _READONLY, _PERM = 13, 14, 10, 8, 3
_REPAIR_TABLE = "CREATE TABLE IF NOT EXISTS recorder_repair (moved_to TEXT, at REAL)"


def make_state_dir(directory: Path) -> None:
    """Create the state directory (database, control socket) private to the service's user
    and group (0750), if it does not exist; an existing one keeps the mode its owner gave it."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, mode=0o750, exist_ok=True)
    os.chmod(directory, 0o750)  # mkdir's mode is filtered by the umask


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating parent directories) a database at `path` with the durable settings."""
    make_state_dir(path.parent)
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

    def __init__(self, path: Path, *,
                 rebuild: Callable[[Database], None] | None = None) -> None:
        """`rebuild`: fills a database that replaced a corrupt one from the files on disk
        (the catalogue from the sidecars, the outbox by reconciling); see `recorder.dbrepair`."""
        self.path = Path(path)
        self.rebuild = rebuild
        self.moved_aside: Path | None = None  # where a corrupt database went, this process
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schemas: set[tuple[str, ...]] = set()
        self._pending: list[tuple[str, ...]] = []  # DDL waiting for the database to open
        self._checked = False  # the file was found readable (or replaced) by this process
        self._repairing = False

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection. The first one a process opens checks the file and
        replaces a corrupt database (see the module doc); raises StorageError or DiskFullError
        (one line) when the database cannot be opened at all."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
            if not self._checked:
                self._checked = True
                self._finish_repair(conn)
        if self._pending:
            self._apply_pending(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            make_state_dir(self.path.parent)
        except OSError as exc:
            raise StorageError(f"storage.state_dir: cannot create {self.path.parent}: "
                               f"{exc.strerror or exc}") from None
        try:
            conn = self._connect_checked()
        except sqlite3.DatabaseError as exc:
            code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
            if code in (_CORRUPT, _NOTADB) and not self._checked:
                self._move_aside(exc)
                conn = self._connect_checked()
            elif code in (_FULL, _IOERR, _CANTOPEN) and self._release_spare():
                try:
                    conn = self._connect_checked()
                except sqlite3.DatabaseError as again:
                    code = (getattr(again, "sqlite_errorcode", 0) or 0) & 0xFF
                    raise self._open_error(again, code) from None
            else:
                raise self._open_error(exc, code) from None
        self._make_spare()
        return conn

    @property
    def _spare(self) -> Path:
        return self.path.with_name(self.path.name + ".spare")

    def _release_spare(self) -> bool:
        try:
            self._spare.unlink()
        except OSError:
            return False
        log.warning("disk full: gave up the database's spare room (%s) to open it",
                    self._spare.name)
        return True

    def _make_spare(self) -> None:
        if self._spare.exists():
            return
        try:
            fd = os.open(self._spare, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, SPARE_BYTES)
        except OSError as exc:
            if is_disk_full(exc):  # no room now: made by a later open
                os.close(fd)
                fd = -1
                self._spare.unlink(missing_ok=True)
        finally:
            if fd >= 0:
                os.close(fd)

    def _connect_checked(self) -> sqlite3.Connection:
        conn = connect(self.path, check_same_thread=False)
        if not self._checked:
            try:
                # Reading the schema parses its pages: a damaged file fails here, at open,
                # instead of in the middle of some later command.
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                conn.close()
                raise
        return conn

    def _open_error(self, exc: sqlite3.DatabaseError, code: int) -> Exception:
        detail = " ".join(str(exc).split())
        with contextlib.suppress(OSError):
            if code in (_IOERR, _CANTOPEN) and free_bytes(self.path.parent) < MIN_FREE_BYTES:
                code = _FULL  # SQLite could not create its WAL or shared-memory file
        if code == _FULL:
            return DiskFullError(f"disk full: cannot open the database {self.path}")
        if code in (_CANTOPEN, _IOERR, _READONLY, _PERM):
            return StorageError(f"storage.state_dir: cannot open the database {self.path}: "
                                f"{detail}")
        return exc

    def _move_aside(self, exc: sqlite3.DatabaseError) -> None:
        """Rename the corrupt database (and its WAL) out of the way, kept for inspection."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        Path(f"{self.path}-shm").unlink(missing_ok=True)
        self.moved_aside = aside
        log.warning("database %s is corrupt (%s): moved aside to %s; starting an empty one "
                    "and rebuilding it from the recordings on disk", self.path,
                    " ".join(str(exc).split()), aside.name)
        conn = connect(self.path, check_same_thread=False)
        try:
            # The repair is owed until done: a command that cannot rebuild leaves it to the
            # next one, even across a crash.
            with transaction(conn):
                conn.execute(_REPAIR_TABLE)
                conn.execute("INSERT INTO recorder_repair VALUES (?, ?)",
                             (aside.name, time.time()))
        finally:
            conn.close()

    def _finish_repair(self, conn: sqlite3.Connection) -> None:
        """Run `rebuild` if a repair is owed (this process or an earlier one moved a corrupt
        database aside)."""
        if self.rebuild is None or self._repairing:
            return
        owed = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'recorder_repair'"
                            ).fetchone()
        if owed is None or conn.execute("SELECT 1 FROM recorder_repair").fetchone() is None:
            return
        self._repairing = True
        try:
            self.rebuild(self)
            with transaction(conn):
                conn.execute("DELETE FROM recorder_repair")
        finally:
            self._repairing = False

    def ensure_schema(self, statements: Iterable[str]) -> None:
        """Run a component's idempotent DDL once per process: now, or, when the disk is too
        full to open the database, as soon as it opens (so a service can start on a full
        disk; what needs the database fails, one line each, until then)."""
        key = tuple(statements)
        with self._lock:
            if key in self._schemas or key in self._pending:
                return
            self._pending.append(key)
        try:
            _ = self.conn  # opens it and runs the pending DDL
        except DiskFullError as exc:
            log.error("%s: the database opens once there is room", exc)

    def _apply_pending(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        try:
            for key in pending:
                ensure_schema(conn, key)
                with self._lock:
                    self._schemas.add(key)
        except BaseException as exc:
            with self._lock:
                self._pending = [k for k in pending if k not in self._schemas] + self._pending
            code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
            if isinstance(exc, sqlite3.DatabaseError) and code == _FULL:
                # The file opened but a new table does not fit: the same "full" as at open.
                raise DiskFullError(f"disk full: cannot extend the database {self.path}") \
                    from None
            raise

    def close(self) -> None:
        """Close every connection opened so far (the threads using them must be done)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
