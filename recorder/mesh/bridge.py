"""The sync bridge: bring the recordings peers send through Syncthing into this device.

Each peer owns ``<sync_root>/<peer-id>/``, which this device holds **receiveonly**. The bridge
finds the sidecars there (``recordings/YYYY/MM/DD/NAME.json``), checks each one and its OGG, and
then adds the recording to the Audio ID catalogue (origin ``peer:<id>``, duplicates recognised)
and queues it in the papad outbox (origin ``peer:<id>``), which registers it in the local papad.

Discovery is event-driven (Syncthing's ``/rest/events`` long poll: ``ItemFinished`` when a pulled
file is in place, ``LocalIndexUpdated`` when the folder's index changed), with a full scan at
start and every `rescan_interval` seconds as a safety net (Syncthing down, events missed across
a Syncthing restart).

Never trusted, never touched: a peer folder is Syncthing's receive-only copy, so the bridge only
reads it (anything it wrote or moved there would show as a local change). Per file it:

- ignores Syncthing temporary files (``.syncthing.*.tmp``, ``~syncthing~*``), conflict copies
  (``*.sync-conflict-*``), hidden files and names that are not sidecar names;
- refuses symlinks (``lstat``, then ``open`` with ``O_NOFOLLOW``), non-regular files, paths that
  resolve outside the peer folder, and sidecars over ``MAX_SIDECAR_BYTES``;
- validates the sidecar strictly (`recorder.sidecar.loads` and ``validate(expect_device=peer)``),
  checks it lies where its own ``path`` says, that its recording id is not already another
  device's or another sidecar's, and that the OGG is a regular file inside the folder with the
  sidecar's sha256.

Bad files are **quarantined in the database only** (state, reason, shown by `status()` and
``recorder mesh status``); a sidecar whose OGG has not arrived yet (Syncthing pulls files in
any order) is **pending** and retried on the next event or scan. Quarantined files are looked
at again when they change.

Per-file state lives in the ``bridge_files`` table (shared database): path, mtime, size and
sha256 of the sidecar and its OGG, so unchanged files cost one ``stat`` per scan and are never
re-hashed. The import is idempotent (catalogue upsert, outbox enqueue keyed by recording id), so
a bridge stopped mid-import finishes on restart without duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder import db
from recorder.config import Config
from recorder.deviceid import validate_device_id
from recorder.errors import ConfigError, RecorderError
from recorder.sidecar import MAX_SIDECAR_BYTES, SidecarError, loads, validate

log = logging.getLogger(__name__)

IMPORTED, PENDING, QUARANTINED = "imported", "pending", "quarantined"
SIDECAR, ANNOTATIONS = "sidecar", "annotations"
DEFAULT_RESCAN = 60.0
EVENT_TYPES = ("ItemFinished", "LocalIndexUpdated")
EVENT_POLL_S = 30.0
_HASH_CHUNK = 1 << 20
_SIDECAR_NAME = re.compile(r"^\d{8}T\d{6}Z_[a-z0-9._-]+_[0-9a-z]{8}\.json$")

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


class Pending(Exception):
    """Not importable yet (its recording file has not arrived); retried later."""


def ignored_name(name: str) -> bool:
    """True for names the bridge never reads: Syncthing temporaries, conflict copies, hidden
    and partial files."""
    return (
        name.startswith((".", "~syncthing~"))
        or ".sync-conflict-" in name
        or name.endswith((".tmp", ".partial"))
    )


def is_sidecar_name(name: str) -> bool:
    """True for ``<UTC time>_<device>_<short id>.json``, the only sidecar names there are."""
    return bool(_SIDECAR_NAME.match(name)) and not ignored_name(name)


@dataclass(frozen=True)
class FileStat:
    """What decides whether a file changed since it was last read."""

    mtime_ns: int
    size: int


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_regular(path: Path, st: os.stat_result, folder: Path, what: str = "") -> None:
    """Raise Quarantine unless `path` (lstat `st`) is a regular file, not a symlink, that
    resolves inside `folder`. `what` prefixes the reason ("recording file ")."""
    if stat.S_ISLNK(st.st_mode):
        raise Quarantine(f"{what}is a symlink")
    if not stat.S_ISREG(st.st_mode):
        raise Quarantine(f"{what}is not a regular file")
    if not _inside(os.path.realpath(path), os.path.realpath(folder)):
        raise Quarantine(f"{what}resolves outside the peer folder")


def read_regular(path: Path, folder: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file inside `folder` (no symlink anywhere), at most
    `limit` bytes; raise Quarantine otherwise (FileNotFoundError if it is gone)."""
    st = os.lstat(path)
    check_regular(path, st, folder)
    if st.st_size > limit:
        raise Quarantine(f"too large ({st.st_size} bytes > {limit})")
    fd = _open_nofollow(path)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise Quarantine(f"too large (more than {limit} bytes)")
    return data


def _open_nofollow(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a symlink swapped in after the lstat
            raise Quarantine("is a symlink") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Quarantine("is not a regular file")
    return fd


def _check_fields(doc: dict[str, Any]) -> None:
    """What the schema leaves loose but registering in papad relies on."""
    from recorder.papad.mapping import started_utc

    try:
        started_utc(doc)
    except (ValueError, TypeError, OverflowError):
        raise Quarantine("sidecar field 'started_at' is not a timestamp") from None
    if not 0 <= float(doc["duration"]) < 1e7 or doc["bytes"] < 0:
        raise Quarantine("sidecar fields 'duration'/'bytes' are out of range")


def hash_regular(path: Path) -> str:
    """sha256 of a regular file opened without following symlinks."""
    digest = hashlib.sha256()
    with os.fdopen(_open_nofollow(path), "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BridgeStore:
    """The ``bridge_files`` table: one row per peer file the bridge has looked at."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.clock = clock
        db.ensure_schema(conn, SCHEMA)

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


def store_summary(conn: sqlite3.Connection, limit: int = 100) -> dict[str, Any]:
    """Counts per peer and state, and the quarantined and pending files with their reasons."""
    db.ensure_schema(conn, SCHEMA)
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

    return {"peers": peers, "quarantined": listing(QUARANTINED), "pending": listing(PENDING)}


def db_status(db_path: Path) -> dict[str, Any]:
    """`store_summary` of the database at `db_path` (empty when there is none yet)."""
    if not db_path.exists():
        return {"peers": {}, "quarantined": [], "pending": []}
    conn = db.connect(db_path)
    try:
        return store_summary(conn)
    finally:
        conn.close()


@dataclass
class ScanReport:
    """What one scan of one or more peer folders did."""

    imported: int = 0
    pending: int = 0
    quarantined: int = 0
    unchanged: int = 0
    ignored: int = 0
    removed: int = 0
    seconds: float = 0.0

    def add(self, other: ScanReport) -> None:
        for key in ("imported", "pending", "quarantined", "unchanged", "ignored", "removed"):
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Bridge:
    """The bridge as a service worker (``start``/``stop``/``status``) or a one-shot scanner
    (`run_once`).

    `outbox`: the papad outbox to queue peer recordings in (shared with the papad worker);
    None opens one when ``[papad] api`` is not "none". `on_queued` is called after new
    recordings were queued (pass the outbox worker's ``wake``, so registration starts at once).
    `syncthing`: a `SyncthingClient` for events and scan hand-offs; None builds one from
    ``[syncthing]`` when an API key file is configured (else the bridge only scans
    periodically). `exchange`: the annotation exchange (`recorder.mesh.annotations`); None
    builds one when papad is configured, False disables it.
    """

    name = "bridge"

    def __init__(
        self,
        cfg: Config,
        *,
        outbox: Any = None,
        on_queued: Callable[[], None] | None = None,
        syncthing: Any = None,
        exchange: Any = None,
        rescan_interval: float = DEFAULT_RESCAN,
        export_interval: float | None = None,
        event_timeout: float = EVENT_POLL_S,
    ) -> None:
        self.cfg = cfg
        self.own_id = cfg.device.id
        self.sync_root = cfg.storage.sync_root
        self.rescan_interval = rescan_interval
        self.event_timeout = event_timeout
        self.on_queued = on_queued
        if outbox is None and cfg.papad.api != "none":
            from recorder.papad.outbox import Outbox

            outbox = Outbox(cfg.db_path)
        self.outbox = outbox
        if syncthing is None and cfg.syncthing.api_key_file is not None:
            from recorder.mesh.syncthing import SyncthingClient

            syncthing = SyncthingClient.from_config(cfg.syncthing)
        self.syncthing = syncthing or None
        self._conn = db.connect(cfg.db_path, check_same_thread=False)
        self.store = BridgeStore(self._conn)
        self._catalogue: Any = None
        if exchange is None and cfg.papad.api != "none" and self.outbox is not None:
            from recorder.mesh.annotations import DEFAULT_EXPORT_INTERVAL, AnnotationExchange

            exchange = AnnotationExchange(
                cfg, self.outbox, syncthing=self.syncthing,
                export_interval=export_interval or DEFAULT_EXPORT_INTERVAL,
            )
        self.exchange = exchange or None
        self._lock = threading.RLock()  # one scan at a time; guards the connection
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._last: dict[str, Any] = {"scan_at": None, "scan": None, "full_scan_at": None,
                                      "events": "off", "errors": 0}

    # -- service worker ------------------------------------------------------------------

    def start(self) -> None:
        """Scan everything now, then run the event listener and the periodic scan."""
        if self._threads:
            return
        self._stopping.clear()
        self._wake.set()  # the first pass of the loop is a full scan
        self._threads = [threading.Thread(target=self._loop, name="bridge", daemon=True)]
        if self.syncthing is not None:
            self._threads.append(
                threading.Thread(target=self._events_loop, name="bridge-events", daemon=True)
            )
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the file in hand (the event long poll is abandoned, not waited for)."""
        self._stopping.set()
        self._wake.set()
        for t in self._threads:
            if t.name == "bridge":
                t.join(timeout)
        self._threads = []

    def wake(self, peer: str | None = None) -> None:
        """Scan `peer`'s folder (None: every folder) as soon as possible."""
        with self._dirty_lock:
            self._dirty.add(peer or "*")
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """Counts per peer, quarantined and pending files with reasons, last scan."""
        with self._lock:
            summary = store_summary(self._conn)
        out = {**summary, **self._last, "running": bool(self._threads)}
        if self.exchange is not None:
            out["annotations"] = self.exchange.status()
        return out

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self.exchange is not None:
                self.exchange.close()
            self._conn.close()

    def _loop(self) -> None:
        next_full = 0.0
        while not self._stopping.is_set():
            wait = next_full - time.monotonic()
            if self.exchange is not None:
                due = self.exchange.next_due_in()
                if due is not None:
                    wait = min(wait, due)
            self._wake.wait(max(0.0, wait))
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            try:
                if time.monotonic() >= next_full or "*" in dirty:
                    next_full = time.monotonic() + self.rescan_interval
                    self.run_once()
                else:
                    if dirty:
                        self.scan(sorted(dirty))
                    if self.exchange is not None:
                        self.exchange.run_due()
            except Exception:  # the bridge must outlive any bug or database hiccup
                self._last["errors"] += 1
                log.exception("bridge: scan failed")
                self._stopping.wait(1.0)

    def _events_loop(self) -> None:
        from recorder.mesh.provision import owner_of

        since: int | None = None
        while not self._stopping.is_set():
            try:
                if since is None:
                    # A filtered subscription numbers its events on its own (from 1, measured
                    # on 1.19): the starting point must come from the same filter.
                    latest = self.syncthing.events(since=0, timeout=0, types=EVENT_TYPES)
                    since = latest[-1]["id"] if latest else 0
                    self._last["events"] = "on"
                    self.wake()  # events may have been missed while we were not listening
                events = self.syncthing.events(since=since, timeout=self.event_timeout,
                                               types=EVENT_TYPES)
            except Exception as exc:
                if since is not None:
                    log.info("bridge: Syncthing events unavailable (%s); periodic scans only", exc)
                since = None
                self._last["events"] = "unavailable"
                self._stopping.wait(5.0)
                continue
            for event in events:
                since = max(since, int(event.get("id", since)))
                data = event.get("data") or {}
                owner = owner_of(str(data.get("folder", "")))
                if owner and owner != self.own_id:
                    if event.get("type") == "ItemFinished" and data.get("error"):
                        continue
                    self.wake(owner)

    # -- scanning ------------------------------------------------------------------------

    def peers(self) -> list[str]:
        """Peer folders under the sync root: every safe device id except our own."""
        try:
            entries = sorted(os.scandir(self.sync_root), key=lambda e: e.name)
        except OSError:
            return []
        out = []
        for entry in entries:
            if entry.name == self.own_id or ignored_name(entry.name):
                continue
            try:
                validate_device_id(entry.name, "peer folder")
            except ConfigError:
                continue
            if entry.is_dir(follow_symlinks=False):
                out.append(entry.name)
            elif entry.is_symlink():
                log.warning("bridge: peer folder %s is a symlink: ignored", entry.path)
        return out

    def run_once(self) -> ScanReport:
        """A full pass: scan every peer folder, then exchange annotations."""
        if self.exchange is not None:
            try:
                self.exchange.export_now()
            except Exception:
                self._last["errors"] += 1
                log.exception("bridge: annotation export failed")
        report = self.scan(self.peers())
        self._last["full_scan_at"] = time.time()
        return report

    def scan(self, peers: list[str]) -> ScanReport:
        """Scan the named peer folders ("*" means all) and import what is new or changed."""
        if "*" in peers:
            peers = self.peers()
        total = ScanReport()
        started = time.monotonic()
        with self._lock:
            for peer in peers:
                if peer != self.own_id:
                    total.add(self._scan_peer(peer))
        if self.exchange is not None:
            for peer in peers:
                if peer != self.own_id:
                    self._import_annotations(peer)
        total.seconds = time.monotonic() - started
        self._last["scan_at"] = time.time()
        self._last["scan"] = total.as_dict()
        if total.imported and self.on_queued is not None:
            try:
                self.on_queued()
            except Exception:
                log.exception("bridge: on_queued callback failed")
        if total.imported or total.quarantined:
            log.info("bridge: %s", total.as_dict())
        return total

    def _import_annotations(self, peer: str) -> None:
        try:
            self.exchange.import_peer(peer)
        except Exception:
            self._last["errors"] += 1
            log.exception("bridge: importing %s's annotations failed", peer)

    def _walk(self, folder: Path) -> Iterator[tuple[str, Path, os.stat_result | None]]:
        """(relative path, path, lstat or None) of every candidate sidecar under
        ``recordings/``, not following symlinked directories; symlinked directories and
        odd entries are yielded with ``None`` so they are quarantined."""
        root = folder / "recordings"
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            yield "recordings", root, None
            return
        stack = [root]
        while stack:
            here = stack.pop()
            try:
                entries = sorted(os.scandir(here), key=lambda e: e.name)
            except OSError as exc:
                log.warning("bridge: cannot list %s: %s", here, exc)
                continue
            for entry in entries:
                if ignored_name(entry.name):
                    continue
                rel = os.path.relpath(entry.path, folder)
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(est.st_mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISLNK(est.st_mode):
                    if entry.name.endswith(".json") or entry.is_dir():
                        yield rel, Path(entry.path), None
                elif entry.name.endswith(".json"):
                    yield rel, Path(entry.path), est

    def _scan_peer(self, peer: str) -> ScanReport:
        folder = self.sync_root / peer
        report = ScanReport()
        known = self.store.rows(peer)
        seen: set[str] = set()
        for rel, path, st in self._walk(folder):
            if not is_sidecar_name(path.name) and st is not None:
                report.ignored += 1
                continue
            seen.add(rel)
            if st is None:  # a symlink, or "recordings" is not a directory
                row = known.get(rel)
                if row is None or row["state"] != QUARANTINED:
                    self.store.put(peer, rel, SIDECAR, None, QUARANTINED,
                                   reason="is a symlink or not a regular file")
                    log.warning("bridge: quarantined %s/%s: symlink or special file", peer, rel)
                    report.quarantined += 1
                else:
                    report.unchanged += 1
                continue
            fst = FileStat(st.st_mtime_ns, st.st_size)
            row = known.get(rel)
            if row is not None and self._unchanged(row, fst, folder):
                report.unchanged += 1
                continue
            state = self._import(peer, folder, rel, path, fst, row)
            setattr(report, state, getattr(report, state) + 1)
        gone = [p for p, r in known.items() if p not in seen and r["kind"] == SIDECAR]
        if gone:
            self.store.forget(peer, gone)
            report.removed += len(gone)
        return report

    def _unchanged(self, row: sqlite3.Row, fst: FileStat, folder: Path) -> bool:
        if (row["mtime_ns"], row["size"]) != (fst.mtime_ns, fst.size):
            return False
        if row["state"] == IMPORTED:
            return True
        if row["state"] == QUARANTINED and row["ogg_mtime_ns"] is None:
            return True  # the sidecar itself is bad: only a new version can change that
        # Pending (no OGG yet), or quarantined because of its OGG: look again once the OGG
        # arrived or changed.
        ogg = self._ogg_stat(folder, row)
        if row["state"] == PENDING:
            return ogg is None
        return ogg is not None and (ogg.mtime_ns, ogg.size) == (row["ogg_mtime_ns"],
                                                                  row["ogg_size"])

    def _ogg_stat(self, folder: Path, row: sqlite3.Row) -> FileStat | None:
        rel = Path(row["path"]).with_suffix(".ogg")
        for candidate in (rel, rel.with_suffix(".opus")):
            try:
                st = os.lstat(folder / candidate)
            except OSError:
                continue
            return FileStat(st.st_mtime_ns, st.st_size)
        return None

    def _import(self, peer: str, folder: Path, rel: str, path: Path, fst: FileStat,
                row: sqlite3.Row | None) -> str:
        """Check one sidecar and import it; record and return its state."""
        try:
            data = read_regular(path, folder, MAX_SIDECAR_BYTES)
        except FileNotFoundError:
            return "ignored"
        except Quarantine as exc:
            return self._quarantine(peer, rel, fst, f"sidecar {exc}")
        except OSError as exc:
            return self._quarantine(peer, rel, fst, f"cannot read sidecar: {exc.strerror}")
        sha = hashlib.sha256(data).hexdigest()
        try:
            doc = loads(data)
            validate(doc, expect_device=peer)
            expected = str(Path(doc["path"]).with_suffix(".json"))
            if expected != rel:
                raise Quarantine(f"sidecar lies at {rel} but its path says {expected}")
            _check_fields(doc)
            self._check_identity(peer, rel, doc)
        except (SidecarError, Quarantine) as exc:
            return self._quarantine(peer, rel, fst, str(exc), sha=sha)
        except Exception as exc:  # a validator bug must not stop the bridge
            log.exception("bridge: unexpected failure validating %s/%s", peer, rel)
            return self._quarantine(peer, rel, fst, f"internal error: {type(exc).__name__}",
                                    sha=sha)
        ogg_path = folder / doc["path"]
        try:
            ogg_st = os.lstat(ogg_path)
        except FileNotFoundError:
            self.store.put(peer, rel, SIDECAR, fst, PENDING, sha256=sha,
                           reason="recording file not here yet",
                           recording_id=doc["recording_id"])
            return PENDING
        except OSError as exc:
            return self._quarantine(peer, rel, fst, f"recording file: {exc.strerror}", sha=sha)
        ogg = FileStat(ogg_st.st_mtime_ns, ogg_st.st_size)
        try:
            check_regular(ogg_path, ogg_st, folder, "recording file ")
            if ogg.size != doc["bytes"]:
                raise Quarantine(f"recording file has {ogg.size} bytes, sidecar says "
                                 f"{doc['bytes']}")
            reuse = (row is not None and row["ogg_sha256"]
                     and (row["ogg_mtime_ns"], row["ogg_size"]) == (ogg.mtime_ns, ogg.size))
            ogg_sha = row["ogg_sha256"] if reuse else hash_regular(ogg_path)
            if ogg_sha != doc["sha256"]:
                raise Quarantine("recording file sha256 does not match the sidecar")
        except FileNotFoundError:
            self.store.put(peer, rel, SIDECAR, fst, PENDING, sha256=sha,
                           reason="recording file not here yet",
                           recording_id=doc["recording_id"])
            return PENDING
        except Quarantine as exc:
            # Remember the OGG's stat: a later version of it is looked at again.
            return self._quarantine(peer, rel, fst, str(exc), sha=sha, ogg=ogg)
        try:
            duplicate_of = self._catalogue_add(doc, peer)
        except SidecarError as exc:
            return self._quarantine(peer, rel, fst, str(exc), sha=sha, ogg=ogg)
        if self.outbox is not None:
            self.outbox.enqueue(doc, ogg_path, origin=f"peer:{peer}")
        self.store.put(peer, rel, SIDECAR, fst, IMPORTED, sha256=sha, ogg=ogg,
                       ogg_sha256=ogg_sha, recording_id=doc["recording_id"],
                       duplicate_of=duplicate_of)
        log.info("bridge: imported %s from %s%s", doc["recording_id"], peer,
                 f" (duplicate of {duplicate_of})" if duplicate_of else "")
        return IMPORTED

    def _check_identity(self, peer: str, rel: str, doc: dict[str, Any]) -> None:
        """A recording id belongs to one device and one sidecar: a peer cannot take over
        another device's recording (or its own other recording) by reusing its id."""
        rid = doc["recording_id"]
        owner = self.store.recording_owner(rid)
        if owner is not None and owner != (peer, rel):
            raise Quarantine(f"recording id {rid} is already used by {owner[0]}/{owner[1]}")
        entry = self.catalogue().get(rid)
        if entry is not None and (entry.device_id != peer or entry.path != doc["path"]):
            raise Quarantine(f"recording id {rid} is already used by {entry.device_id}/"
                             f"{entry.path}")

    def catalogue(self) -> Any:
        if self._catalogue is None:
            from recorder.audioid.catalogue import Catalogue

            self._catalogue = Catalogue.from_config(self._conn, self.cfg.audioid)
        return self._catalogue

    def _catalogue_add(self, doc: dict[str, Any], peer: str) -> str | None:
        return self.catalogue().add(doc, origin=f"peer:{peer}")

    def _quarantine(self, peer: str, rel: str, fst: FileStat, reason: str, *,
                    sha: str | None = None, ogg: FileStat | None = None) -> str:
        reason = " ".join(reason.split())[:300]
        self.store.put(peer, rel, SIDECAR, fst, QUARANTINED, reason=reason, sha256=sha, ogg=ogg)
        log.warning("bridge: quarantined %s/%s: %s", peer, rel, reason)
        return QUARANTINED


def run_forever(bridge: Bridge, stop: threading.Event) -> None:
    """Run `bridge` as a service until `stop` is set (``recorder mesh bridge``)."""
    bridge.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        with contextlib.suppress(Exception):
            bridge.stop()


__all__ = ["Bridge", "BridgeStore", "RecorderError", "ScanReport", "db_status", "ignored_name",
           "is_sidecar_name", "read_regular", "run_forever"]
