"""Invite codes: what a new device needs to join the mesh through one existing member.

``recorder mesh invite`` on any member makes a code; ``recorder mesh join CODE`` on the new
device pairs it with that member (the inviter), and the services of the mesh do the rest
(`recorder.mesh.membership.pairing`). A code carries, compactly:

- the inviter's Syncthing device id (32 bytes: Syncthing's own 56-character form is these bytes
  in base32 with Luhn check characters, rebuilt exactly by `syncthing_id_from_bytes`), its
  recorder device id and the addresses it listens on (its yggdrasil address first);
- a one-time secret (``token``, 10 random bytes) the inviter keeps in its database until the
  code is used or expires;
- a 4-byte digest of every recorder id the inviter knows in the mesh, so a new device whose id
  is already taken is refused at once, before anything is changed;
- a 4-byte checksum, so a mistyped code is a clear error.

It is written in RFC 4648 base32 (upper case, digits 2-7), grouped by dashes, behind ``RPI1-``:
the characters of a QR code's alphanumeric mode, so the QR code stays small.

**Proof.** The joining device proves it holds the code without ever sending the secret: it
names itself, in its own Syncthing config, ``recorderpi-join <recorder id> <proof>`` where the
proof is an HMAC of its Syncthing device id and recorder id keyed with the token. Syncthing
sends that name in its hello to the inviter, which lists the connection attempt under
``/rest/cluster/pending/devices`` with the name; the inviter's service checks the proof against
its open invites (`InviteStore.match`). The Syncthing device id is the TLS certificate's hash,
so a proof cannot be replayed by another device.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import sqlite3
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recorder.deviceid import is_device_id
from recorder.errors import RecorderError

if TYPE_CHECKING:
    from recorder.db import Database

PREFIX = "RPI1-"
VERSION = 1
TOKEN_BYTES = 10
DIGEST_BYTES = 4
CHECK_BYTES = 4
DEFAULT_TTL = 24 * 3600.0
JOIN_NAME = "recorderpi-join"

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ADDR_V4, _ADDR_V6, _ADDR_URI = 4, 6, 0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mesh_invites (
        token TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        uses_left INTEGER NOT NULL,
        used_by TEXT NOT NULL DEFAULT ''
    )""",
)


class InviteError(RecorderError):
    """An invite code that cannot be used: damaged, expired, or for this very device."""

    exit_code = 2


# --- Syncthing device ids as bytes ------------------------------------------------------------


def _luhn32(chars: str) -> str:
    """Syncthing's Luhn mod 32 check character over base32 `chars`."""
    factor, total = 1, 0
    for ch in chars:
        addend = factor * _B32.index(ch)
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return _B32[(32 - total % 32) % 32]


def syncthing_id_to_bytes(device_id: str) -> bytes:
    """The 32 bytes behind a Syncthing device id (dashes and check characters dropped)."""
    raw = re.sub(r"[\s-]", "", device_id).upper()
    if len(raw) != 56 or any(c not in _B32 for c in raw):
        raise InviteError(f"not a Syncthing device id: {device_id!r}")
    groups = [raw[i:i + 14] for i in range(0, 56, 14)]
    data = "".join(g[:13] for g in groups)
    if any(_luhn32(g[:13]) != g[13] for g in groups):
        raise InviteError(f"Syncthing device id fails its check characters: {device_id!r}")
    return base64.b32decode(data + "====")


def syncthing_id_from_bytes(data: bytes) -> str:
    """Syncthing's canonical id text for 32 id bytes (``XXXXXXX-XXXXXXX-...``)."""
    text = base64.b32encode(data).decode().rstrip("=")
    chunks = [text[i:i + 13] for i in range(0, 52, 13)]
    full = "".join(c + _luhn32(c) for c in chunks)
    return "-".join(full[i:i + 7] for i in range(0, 56, 7))


# --- the code ---------------------------------------------------------------------------------


def id_digest(recorder_id: str) -> bytes:
    """The short digest of a recorder id carried in a code (collisions: 1 in 4 billion)."""
    return hashlib.sha256(b"recorderpi-id:" + recorder_id.encode()).digest()[:DIGEST_BYTES]


@dataclass(frozen=True)
class Invite:
    """What a code says."""

    token: bytes
    syncthing_id: str
    recorder_id: str
    addresses: tuple[str, ...]
    members: frozenset[bytes] = field(default_factory=frozenset)  # id digests, inviter's too

    def encode(self) -> str:
        """The code text, ``RPI1-XXXXX-XXXXX-...``."""
        rid = self.recorder_id.encode()
        out = bytearray([VERSION]) + self.token + syncthing_id_to_bytes(self.syncthing_id)
        out += bytes([len(rid)]) + rid
        addrs = [_pack_address(a) for a in self.addresses]
        out += bytes([len(addrs)]) + b"".join(addrs)
        out += bytes([len(self.members)]) + b"".join(sorted(self.members))
        out += hashlib.sha256(bytes(out)).digest()[:CHECK_BYTES]
        text = base64.b32encode(bytes(out)).decode().rstrip("=")
        return PREFIX + "-".join(text[i:i + 5] for i in range(0, len(text), 5))

    def id_taken(self, recorder_id: str) -> bool:
        """True if `recorder_id` is (very probably) already a member's id."""
        return id_digest(recorder_id) in self.members


def decode(code: str) -> Invite:
    """Parse a code (case, dashes and spaces do not matter); InviteError when it is damaged."""
    text = re.sub(r"[\s-]", "", code).upper()
    if not text.startswith(PREFIX.rstrip("-")):
        raise InviteError("invite code: not a recorderpi invite (it starts with RPI1-)")
    text = text[len(PREFIX) - 1:]
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        raise InviteError("invite code: damaged (characters other than A-Z and 2-7)") from None
    body, check = data[:-CHECK_BYTES], data[-CHECK_BYTES:]
    if len(data) < 1 + TOKEN_BYTES + 32 + 3 + CHECK_BYTES or \
            hashlib.sha256(body).digest()[:CHECK_BYTES] != check:
        raise InviteError("invite code: damaged or incomplete (checksum): copy it again")
    if body[0] != VERSION:
        raise InviteError(f"invite code: version {body[0]} is not understood by this recorder")
    try:
        return _parse(body)
    except (IndexError, ValueError, struct.error):
        raise InviteError("invite code: damaged (bad structure)") from None


def _parse(body: bytes) -> Invite:
    pos = 1
    token = body[pos:pos + TOKEN_BYTES]
    pos += TOKEN_BYTES
    st_id = syncthing_id_from_bytes(body[pos:pos + 32])
    pos += 32
    n = body[pos]
    rid = body[pos + 1:pos + 1 + n].decode("ascii")
    pos += 1 + n
    if not is_device_id(rid):
        raise ValueError("recorder id")
    addresses = []
    n_addresses = body[pos]
    pos += 1
    for _ in range(n_addresses):
        address, pos = _unpack_address(body, pos)
        addresses.append(address)
    count = body[pos]
    pos += 1
    members = frozenset(body[pos + i * DIGEST_BYTES:pos + (i + 1) * DIGEST_BYTES]
                        for i in range(count))
    if pos + count * DIGEST_BYTES != len(body):
        raise ValueError("length")
    return Invite(token, st_id, rid, tuple(addresses), members)


def _pack_address(uri: str) -> bytes:
    """``tcp://1.2.3.4:22000`` and ``tcp://[200::1]:22000`` in 7 and 19 bytes, anything else
    as its text."""
    m = re.fullmatch(r"tcp://(?:\[([0-9a-fA-F:]+)\]|([0-9.]+)):(\d{1,5})", uri)
    if m:
        ip = ipaddress.ip_address(m.group(1) or m.group(2))
        kind = _ADDR_V6 if ip.version == 6 else _ADDR_V4
        return bytes([kind]) + ip.packed + struct.pack(">H", int(m.group(3)))
    raw = uri.encode()
    if len(raw) > 255:
        raise InviteError(f"address too long for an invite: {uri[:80]!r}")
    return bytes([_ADDR_URI, len(raw)]) + raw


def _unpack_address(body: bytes, pos: int) -> tuple[str, int]:
    kind = body[pos]
    if kind in (_ADDR_V4, _ADDR_V6):
        size = 4 if kind == _ADDR_V4 else 16
        ip = ipaddress.ip_address(body[pos + 1:pos + 1 + size])
        (port,) = struct.unpack(">H", body[pos + 1 + size:pos + 3 + size])
        host = f"[{ip}]" if kind == _ADDR_V6 else str(ip)
        return f"tcp://{host}:{port}", pos + 3 + size
    if kind != _ADDR_URI:
        raise ValueError("address kind")
    n = body[pos + 1]
    return body[pos + 2:pos + 2 + n].decode("utf-8"), pos + 2 + n


# --- proof ------------------------------------------------------------------------------------


def proof(token: bytes, syncthing_id: str, recorder_id: str) -> str:
    """The joining device's proof of holding `token` (16 base32 characters)."""
    msg = f"{syncthing_id}\n{recorder_id}".encode()
    mac = hmac.new(token, msg, hashlib.sha256).digest()
    return base64.b32encode(mac).decode()[:16]


def join_name(token: bytes, syncthing_id: str, recorder_id: str) -> str:
    """The Syncthing device name a joining device gives itself until it is accepted."""
    return f"{JOIN_NAME} {recorder_id} {proof(token, syncthing_id, recorder_id)}"


def parse_join_name(name: str) -> tuple[str, str] | None:
    """(recorder id, proof) from a pending device's name, or None if it is not a join."""
    parts = name.split()
    if len(parts) != 3 or parts[0] != JOIN_NAME or not is_device_id(parts[1]):
        return None
    if not re.fullmatch(r"[A-Z2-7]{16}", parts[2]):
        return None
    return parts[1], parts[2]


# --- the inviter's open invites ---------------------------------------------------------------


class InviteStore:
    """Open invites in the service's database (``mesh_invites``): made by ``mesh invite``,
    checked and used up by the service when the new device knocks."""

    def __init__(self, database: Database) -> None:
        self.db = database
        database.ensure_schema(SCHEMA)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    def create(self, ttl: float = DEFAULT_TTL, uses: int = 1, now: float | None = None) -> bytes:
        """A new token valid for `ttl` seconds and `uses` joins."""
        token = secrets.token_bytes(TOKEN_BYTES)
        when = time.time() if now is None else now
        self._conn.execute(
            "INSERT INTO mesh_invites (token, created_at, expires_at, uses_left) "
            "VALUES (?, ?, ?, ?)", (token.hex(), when, when + ttl, uses))
        return token

    def open_tokens(self, now: float | None = None) -> list[bytes]:
        when = time.time() if now is None else now
        rows = self._conn.execute(
            "SELECT token FROM mesh_invites WHERE uses_left > 0 AND expires_at > ?", (when,))
        return [bytes.fromhex(r[0]) for r in rows]

    def match(self, syncthing_id: str, recorder_id: str, given: str,
              now: float | None = None) -> bytes | None:
        """The open token `given` proves, if any."""
        for token in self.open_tokens(now):
            if hmac.compare_digest(proof(token, syncthing_id, recorder_id), given):
                return token
        return None

    def use(self, token: bytes, by: str) -> None:
        """Count one join against `token`."""
        self._conn.execute(
            "UPDATE mesh_invites SET uses_left = uses_left - 1, used_by = used_by || ? "
            "WHERE token = ?", (by + " ", token.hex()))

    def count_open(self, now: float | None = None) -> int:
        return len(self.open_tokens(now))
