"""The mesh roster: which Syncthing devices are members, under which recorder id.

Every device keeps its view in the ``mesh_members`` table and publishes it in its own
(send-only) folder as ``<sync_root>/<device-id>/mesh/members.json``, which Syncthing carries to
every peer. A peer's file is read only from the folder held from that peer's own Syncthing
device (`recorder.mesh.membership.pairing`), so what it says is authenticated by Syncthing's TLS.

Why not Syncthing's introducer flag: an introducer shares the folders it has in common with the
introduced device with every other device of those folders, so a new device would share its
receive-only copy of the inviter's folder with all the inviter's peers (measured on 1.19.2), and
any of them could then feed it changed recordings. The roster carries the same information
(devices and their ids) without touching folder sharing, and each device then applies the
owner-only rule itself.

Each entry is a statement ``(syncthing id, recorder id, member|removed, since)``: a device
decided at `since` (its wall clock, seconds) that the Syncthing device is a member or has been
removed. Views merge by last writer wins (a later statement replaces an earlier one; at the
same time "removed" wins), so every device ends with the same roster whatever the order the
files arrive in, and a device removed on one member is removed everywhere, until a later
invite or ``add-peer`` admits it again. A member's own file also gives the addresses it
listens on (``addresses``), so the others can dial it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.atomic import atomic_write_text
from recorder.deviceid import is_device_id
from recorder.safefile import UnsafeFile, read_regular

if TYPE_CHECKING:
    from recorder.db import Database

SCHEMA_ID = "recorderpi.mesh/1"
ROSTER_PATH = "mesh/members.json"
MAX_ROSTER_BYTES = 256 * 1024
MAX_ENTRIES = 1000
MAX_ADDRESSES = 8
MEMBER, REMOVED = "member", "removed"

_ST_ID = re.compile(r"^[A-Z2-7]{7}(-[A-Z2-7]{7}){7}$")
_ADDRESS = re.compile(r"^(tcp|quic|relay)://[^\s]{1,250}$")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mesh_members (
        syncthing_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('member', 'removed')),
        since REAL NOT NULL,
        addresses TEXT NOT NULL DEFAULT '[]'
    )""",
)


class RosterError(Exception):
    """A peer's roster file that is not usable; the message says why (one line)."""


@dataclass(frozen=True)
class Statement:
    """One roster entry."""

    syncthing_id: str
    device_id: str
    state: str
    since: float
    addresses: tuple[str, ...] = ()

    def newer_than(self, other: Statement | None) -> bool:
        """True if this statement replaces `other` (last writer wins, removal on a tie)."""
        if other is None:
            return True
        if self.since != other.since:
            return self.since > other.since
        return self.state == REMOVED and other.state != REMOVED

    def as_dict(self) -> dict[str, Any]:
        return {"syncthing_id": self.syncthing_id, "device_id": self.device_id,
                "state": self.state, "since": round(self.since, 3),
                "addresses": list(self.addresses)}


class Roster:
    """This device's view of the mesh (``mesh_members``), shared by the CLI and the service."""

    def __init__(self, database: Database) -> None:
        self.db = database
        database.ensure_schema(SCHEMA)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    def all(self) -> list[Statement]:
        rows = self._conn.execute("SELECT * FROM mesh_members ORDER BY device_id, syncthing_id")
        return [_statement(r) for r in rows]

    def members(self) -> list[Statement]:
        return [s for s in self.all() if s.state == MEMBER]

    def get(self, syncthing_id: str) -> Statement | None:
        row = self._conn.execute("SELECT * FROM mesh_members WHERE syncthing_id = ?",
                                 (syncthing_id,)).fetchone()
        return _statement(row) if row is not None else None

    def decide(self, syncthing_id: str, device_id: str, state: str,
               addresses: Iterable[str] = (), now: float | None = None) -> Statement:
        """Record this device's own decision, stamped now."""
        old = self.get(syncthing_id)
        kept = tuple(addresses) or (old.addresses if old is not None else ())
        stmt = Statement(syncthing_id, device_id, state, time.time() if now is None else now,
                         kept)
        self._put(stmt)
        return stmt

    def merge(self, stmt: Statement) -> bool:
        """Take a peer's statement if it is newer than ours; True when the roster changed.

        Addresses a peer passes on fill in ours only when we have none."""
        old = self.get(stmt.syncthing_id)
        if stmt.newer_than(old):
            addresses = stmt.addresses or (old.addresses if old is not None else ())
            self._put(Statement(stmt.syncthing_id, stmt.device_id, stmt.state, stmt.since,
                                addresses))
            return True
        if old is not None and not old.addresses and stmt.addresses:
            self.set_addresses(stmt.syncthing_id, stmt.addresses)
        return False

    def set_addresses(self, syncthing_id: str, addresses: Iterable[str]) -> bool:
        """A member's own report of where it listens; True when it changed."""
        text = json.dumps(list(addresses))
        cur = self._conn.execute(
            "UPDATE mesh_members SET addresses = ? WHERE syncthing_id = ? AND addresses != ?",
            (text, syncthing_id, text))
        return cur.rowcount > 0

    def _put(self, stmt: Statement) -> None:
        self._conn.execute(
            """INSERT INTO mesh_members (syncthing_id, device_id, state, since, addresses)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (syncthing_id) DO UPDATE SET device_id = excluded.device_id,
                   state = excluded.state, since = excluded.since,
                   addresses = excluded.addresses""",
            (stmt.syncthing_id, stmt.device_id, stmt.state, stmt.since,
             json.dumps(list(stmt.addresses))))


def _statement(row: sqlite3.Row) -> Statement:
    return Statement(row["syncthing_id"], row["device_id"], row["state"], row["since"],
                     tuple(json.loads(row["addresses"])))


# --- the file ---------------------------------------------------------------------------------


def render(device_id: str, syncthing_id: str, addresses: Iterable[str],
           statements: Iterable[Statement]) -> str:
    """The roster file's text (stable: sorted, so an unchanged roster is an unchanged file)."""
    doc = {
        "schema": SCHEMA_ID,
        "device_id": device_id,
        "syncthing_id": syncthing_id,
        "addresses": sorted(set(addresses))[:MAX_ADDRESSES],
        "members": sorted((s.as_dict() for s in statements if s.syncthing_id != syncthing_id),
                          key=lambda d: (d["device_id"], d["syncthing_id"])),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def write(device_folder: Path, text: str, staging_dir: Path) -> bool:
    """Replace this device's roster file atomically if its content changed; True if written."""
    target = device_folder / ROSTER_PATH
    try:
        if target.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(target, text, staging_dir=staging_dir)
    return True


@dataclass(frozen=True)
class PeerRoster:
    """A peer's roster file, checked."""

    device_id: str
    syncthing_id: str
    addresses: tuple[str, ...]
    statements: tuple[Statement, ...]


def read_peer(folder: Path) -> PeerRoster | None:
    """The roster in a peer's folder (None when there is none yet); RosterError when bad.

    The folder's name is the peer's recorder id: the file must name it, and every entry must be
    well-formed (ids, state, time, addresses)."""
    path = folder / ROSTER_PATH
    try:
        data = read_regular(path, folder, MAX_ROSTER_BYTES)
    except FileNotFoundError:
        return None
    except UnsafeFile as exc:
        raise RosterError(f"roster {exc}") from None
    except OSError as exc:
        raise RosterError(f"roster: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RosterError("roster is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        raise RosterError("roster: not a recorderpi.mesh/1 document")
    if doc.get("device_id") != folder.name:
        raise RosterError(f"roster names device {str(doc.get('device_id'))[:80]!r} but lies "
                          f"in {folder.name!r}'s folder")
    sid = doc.get("syncthing_id")
    if not isinstance(sid, str) or not _ST_ID.match(sid):
        raise RosterError("roster: syncthing_id is not a Syncthing device id")
    members = doc.get("members")
    if not isinstance(members, list) or len(members) > MAX_ENTRIES:
        raise RosterError(f"roster: members must be a list of at most {MAX_ENTRIES}")
    statements = []
    for n, item in enumerate(members):
        if not isinstance(item, dict):
            raise RosterError(f"roster entry {n + 1} is not an object")
        st_id, rid, state = item.get("syncthing_id"), item.get("device_id"), item.get("state")
        since = item.get("since")
        if not isinstance(st_id, str) or not _ST_ID.match(st_id):
            raise RosterError(f"roster entry {n + 1}: syncthing_id is not a device id")
        if not isinstance(rid, str) or not is_device_id(rid):
            raise RosterError(f"roster entry {n + 1}: device_id is not a recorder id")
        if state not in (MEMBER, REMOVED):
            raise RosterError(f"roster entry {n + 1}: state must be member or removed")
        if isinstance(since, bool) or not isinstance(since, (int, float)) or \
                not 0 <= since < 1e11:
            raise RosterError(f"roster entry {n + 1}: since is not a time")
        statements.append(Statement(st_id, rid, state, float(since),
                                    _addresses(item.get("addresses"), f"entry {n + 1}")))
    return PeerRoster(folder.name, sid, _addresses(doc.get("addresses"), "addresses"),
                      tuple(statements))


def _addresses(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if (not isinstance(value, list) or len(value) > MAX_ADDRESSES
            or not all(isinstance(a, str) and _ADDRESS.match(a) for a in value)):
        raise RosterError(f"roster {where}: addresses must be at most {MAX_ADDRESSES} "
                          "tcp:// or quic:// URIs")
    return tuple(value)
