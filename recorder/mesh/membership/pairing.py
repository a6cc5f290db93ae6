"""Pairing in one step per device: invite, join, remove, and the service's reconcile.

``recorder mesh invite`` (any member) → ``recorder mesh join CODE`` (the new device):

1. The new device pairs with the inviter only, the way ``add-peer`` does (device, own folder
   shared send-only, the inviter's folder accepted receive-only), and names itself in its own
   Syncthing config with a proof of holding the code (`recorder.mesh.membership.invite`).
2. Syncthing on the inviter rejects the unknown device and lists it under
   ``/rest/cluster/pending/devices`` with that name; the inviter's service (`reconcile`, run by
   `recorder.mesh.membership.keeper`) checks the proof against its open invites and admits the
   device to its roster (`recorder.mesh.membership.roster`).
3. Every device applies its roster to Syncthing: each member is a device, our folder is shared
   with it, its folder is held receive-only and shared with it alone; and publishes the roster in
   its folder. The others read the inviter's roster and pair with the new device; the new device
   reads it and pairs with them. Nothing depends on order: any member can invite, devices may be
   offline for a while, and folders offered before their owner is known are accepted later
   (which also ends ``add-peer``'s "not offered yet").

`Membership` is all of it for one device: it owns the device's Syncthing client, `Layout`,
roster and open invites; the CLI and the service's keeper each build one and call its methods.

Duplicate recorder ids are refused, never re-pointed: a device offering, joining with or listed
under a recorder id whose folder is held from another Syncthing device (or that is this device's
own id) is a conflict, reported by `reconcile` (status, doctor, log) and left unpaired.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from recorder.deviceid import is_device_id
from recorder.errors import RecorderError, RemoteError
from recorder.mesh.membership import roster as rosters
from recorder.mesh.membership.invite import (
    JOIN_NAME,
    Invite,
    InviteError,
    InviteStore,
    id_digest,
    join_name,
    parse_join_name,
)
from recorder.mesh.membership.provision import (
    FOLDER_PREFIX,
    DuplicateIdError,
    Provisioner,
    duplicate_message,
    folder_id,
    holders,
    normalize_address,
    normalize_device_id,
    owner_of,
)
from recorder.mesh.membership.roster import MEMBER, REMOVED, Roster, RosterError, Statement

if TYPE_CHECKING:
    from recorder.config import SyncthingConfig
    from recorder.db import Database
    from recorder.layout import Layout
    from recorder.mesh.net.syncthing import Folder, SyncthingClient

log = logging.getLogger(__name__)

SYNCTHING_PORT = 22000
JOIN_TIMEOUT = 120.0
KNOCK_AGAIN = 10.0  # seconds between join's own dials while the inviter is not connected
RECONNECT_AFTER = 30.0  # seconds without acceptance before join reconnects to the inviter
MAX_SKEW = 86400.0
# The service gives up the join name once a member's roster admits this device by a decision
# made no earlier than this many seconds before this device's own decision to pair with it
# (`join` records that): an older admission is a copy left from before a removal. Beyond this
# clock difference the name stays until `join` sees the admission itself (harmless: the
# proof's code is used up).
ADMISSION_SLACK = 600.0
_LISTEN = re.compile(r"^(tcp[46]?)://(\[[0-9a-fA-F:.]*\]|[^\[\]/:]*):(\d{1,5})$")
_WILDCARD = {"", "0.0.0.0", "[::]", "::", "[]"}


@dataclass
class ReconcileReport:
    """What one reconcile pass did and found."""

    changes: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # recorder ids admitted by invite
    conflicts: list[str] = field(default_factory=list)  # duplicate ids, one line each
    roster_errors: list[str] = field(default_factory=list)  # peers' unusable roster files
    added: list[str] = field(default_factory=list)  # Syncthing ids of devices added now

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Membership:
    """This device's membership of the mesh: invite, join, remove, reconcile, provision.

    Owns the device's Syncthing `client`, its `layout` (recorder id and sync root), the roster
    and the open invites (both in `database`), and a `Provisioner` for the folders
    (``[syncthing]`` `settings`). `yggdrasil_admin` is the yggdrasil admin endpoint whose
    address invites and the roster file offer first ("": none). Without a `database` only
    what reads no roster works (`conflicts`, the provisioner's calls)."""

    def __init__(self, layout: Layout, client: SyncthingClient, settings: SyncthingConfig,
                 database: Database | None = None, *, yggdrasil_admin: str = "") -> None:
        self.layout = layout
        self.client = client
        self.provision = Provisioner(layout, client, settings)
        self.yggdrasil_admin = yggdrasil_admin
        self._database = database
        self._roster: Roster | None = None
        self._invites: InviteStore | None = None

    @property
    def device_id(self) -> str:
        """This device's recorder id."""
        return self.layout.device_id

    @property
    def database(self) -> Database:
        """The service's database (the roster's and the invites')."""
        return self._need_database()

    @property
    def roster(self) -> Roster:
        """The members table (made on first use)."""
        if self._roster is None:
            self._roster = Roster(self._need_database())
        return self._roster

    @property
    def invites(self) -> InviteStore:
        """The open invites (made on first use)."""
        if self._invites is None:
            self._invites = InviteStore(self._need_database())
        return self._invites

    def _need_database(self) -> Database:
        if self._database is None:
            raise RecorderError("mesh membership: this call needs the service's database")
        return self._database

    # --- addresses ----------------------------------------------------------------------------

    def own_addresses(self) -> list[str]:
        """Where peers can dial this device's Syncthing: its yggdrasil address first (at the
        listening port), then the concrete (non-wildcard) TCP listen addresses."""
        from recorder.mesh.net import yggdrasil

        port, concrete = SYNCTHING_PORT, []
        for listen in self.client.options().get("listenAddresses", []):
            m = _LISTEN.match(str(listen))
            if not m:
                continue
            port = int(m.group(3))
            if m.group(2) not in _WILDCARD:
                concrete.append(f"tcp://{m.group(2)}:{m.group(3)}")
        out = []
        if self.yggdrasil_admin:
            node = yggdrasil.status(self.yggdrasil_admin)
            if node["address"]:
                out.append(yggdrasil.syncthing_address(node["address"], port))
        out += [a for a in concrete if a not in out]
        return out

    # --- invite and join ----------------------------------------------------------------------

    def make_invite(self, *, ttl: float, uses: int = 1,
                    addresses: tuple[str, ...] = ()) -> Invite:
        """A new invite for this device: a fresh token in the database, this device's
        Syncthing id and addresses (`addresses` first), and the digests of every recorder id in
        the mesh."""
        client = self.client
        self.provision.setup()
        my_id = client.device_id()
        ids = {self.device_id} | {s.device_id for s in self.roster.members()}
        ids |= {o for f in client.folders() if (o := owner_of(f["id"])) is not None}
        token = self.invites.create(ttl=ttl, uses=uses)
        listed = [normalize_address(a) for a in addresses]
        listed += [a for a in self.own_addresses() if a not in listed]
        return Invite(token, my_id, self.device_id, tuple(listed[:8]),
                      frozenset(id_digest(i) for i in ids))

    def join(self, invite: Invite, *, wait: float = JOIN_TIMEOUT,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Pair this device with the inviter and wait (up to `wait` s, 0: not at all) until
        the inviter has accepted it. Refuses, changing nothing, when this device's id is
        already in the mesh or the code was made here.

        Returns ``{"inviter", "inviter_syncthing_id", "accepted", "changes"}``."""
        client = self.client
        my_id = client.device_id()
        own = self.device_id
        if invite.syncthing_id == my_id:
            raise InviteError("invite code: it was made on this device; run `recorder mesh "
                              "join` on the new device")
        if invite.recorder_id == own or invite.id_taken(own):
            raise DuplicateIdError(
                f"duplicate device id {own!r}: a device of this mesh already uses it; set a "
                "unique [device] id in recorder.toml, restart, then join again")
        # Our own name carries the proof: Syncthing sends it in its hello to the inviter.
        client.patch_device(my_id, {"name": join_name(invite.token, my_id, own)})
        result = self.provision.add_peer(
            invite.syncthing_id, invite.recorder_id,
            address=invite.addresses[0] if invite.addresses else "dynamic",
            peer_recorder_id=invite.recorder_id)
        changes: list[str] = result["changes"]
        _ensure_addresses(client, invite.syncthing_id, invite.addresses, changes)
        self.roster.decide(invite.syncthing_id, invite.recorder_id, MEMBER, invite.addresses)
        # A copy of the inviter's roster from before a removal must not count as acceptance.
        stale = self._admission(invite.syncthing_id, invite.recorder_id, my_id)
        accepted = self._accepted(invite.syncthing_id, invite.recorder_id, my_id, stale)
        deadline = time.monotonic() + wait
        knock_at = time.monotonic() + KNOCK_AGAIN
        reconnect_at = time.monotonic() + RECONNECT_AFTER
        while not accepted and time.monotonic() < deadline:
            sleep(0.5)
            accepted = self._accepted(invite.syncthing_id, invite.recorder_id, my_id, stale)
            now = time.monotonic()
            if not accepted and now >= reconnect_at:
                # Connected, yet the inviter's folder brought no roster: Syncthing 1.19 sends
                # no index for a folder this side accepted after the connection's cluster
                # config ("Unexpected folder", seen in CI); a new connection exchanges both
                # again.
                reconnect_at = knock_at = now + RECONNECT_AFTER
                with contextlib.suppress(RemoteError):
                    client.redial(invite.syncthing_id)
            elif not accepted and now >= knock_at:
                knock_at = now + KNOCK_AGAIN
                _knock(client, invite.syncthing_id)
        if accepted:
            self.restore_name(my_id)
        return {"inviter": invite.recorder_id, "inviter_syncthing_id": invite.syncthing_id,
                "accepted": accepted, "changes": changes}

    def _admission(self, sid: str, rid: str, my_id: str) -> float | None:
        """When the member `rid` (Syncthing `sid`) admitted this device, by the roster of it
        that Syncthing brought into our copy of its folder; None when it lists us as no member
        (or there is no readable roster)."""
        try:
            peer = rosters.read_peer(self.layout.folder_of(rid))
        except RosterError:
            return None
        if peer is None or peer.syncthing_id != sid:
            return None
        return next((s.since for s in peer.statements
                     if s.syncthing_id == my_id and s.state == MEMBER), None)

    def _accepted(self, sid: str, rid: str, my_id: str, stale: float | None) -> bool:
        """The inviter has admitted this device: connected, and its roster (which reaches us
        only over a folder it shares with us) lists us as a member by a decision other than
        `stale`.

        Being connected alone proves nothing: Syncthing on the joining side reports the
        inviter connected for a moment before the inviter drops the unknown device, and giving
        up the join name then would leave the inviter without the proof when it next looks."""
        if not self.client.is_connected(sid):
            return False
        since = self._admission(sid, rid, my_id)
        return since is not None and since != stale

    def _joining(self, my_id: str) -> bool:
        """This device still carries a join name (the proof of an invite)."""
        me = self.client.get_device(my_id)
        return me is not None and str(me.get("name", "")).startswith(JOIN_NAME + " ")

    def _admitted_since(self, member: Statement, my_id: str) -> bool:
        """`member` has admitted this device since we decided to pair with it (give or take
        `ADMISSION_SLACK` of clock difference)."""
        if not self.client.is_connected(member.syncthing_id):
            return False
        since = self._admission(member.syncthing_id, member.device_id, my_id)
        return since is not None and since >= member.since - ADMISSION_SLACK

    def restore_name(self, my_id: str) -> bool:
        """Give this device its plain name (``recorder-<id>``) back after a join; True if it
        did."""
        if not self._joining(my_id):
            return False
        self.client.patch_device(my_id, {"name": f"recorder-{self.device_id}"})
        return True

    # --- remove -------------------------------------------------------------------------------

    def find_peer(self, who: str) -> Statement:
        """The peer `who` names: a recorder id, a Syncthing device id or a configured name."""
        client = self.client
        entries = self.roster.all()
        try:
            sid = normalize_device_id(who)
        except RecorderError:
            sid = None
        for s in entries:
            if s.syncthing_id == sid or (s.device_id == who and s.state == MEMBER):
                return s
        my_id = client.device_id()
        folders = client.folders()
        for f in folders:  # a pairing made with add-peer before the roster knew it
            owner = owner_of(f["id"])
            held = holders(f, my_id)
            if owner is not None and owner != self.device_id and len(held) == 1 and (
                    owner == who or held == {sid}):
                return Statement(held.pop(), owner, MEMBER, 0.0)
        for d in client.devices():
            if d["deviceID"] != my_id and (d["deviceID"] == sid or d.get("name") == who):
                owner = next((o for f in folders if d["deviceID"] in holders(f, my_id)
                              and (o := owner_of(f["id"])) not in (None, self.device_id)),
                             None)
                name = str(d.get("name", ""))
                return Statement(d["deviceID"],
                                 owner or (name if is_device_id(name) else "unknown"),
                                 MEMBER, 0.0)
        raise RecorderError(f"no peer {who!r} (give its recorder id, Syncthing device id or "
                            "name; see `recorder mesh status`)")

    def remove_peer(self, who: str) -> dict[str, Any]:
        """Undo a pairing here at once, and on every other member through the roster.

        The peer's folder leaves the Syncthing config (its files stay on disk), the device is
        removed, and a "removed" statement is published, so the other members drop it too
        until a new invite or add-peer admits it again."""
        peer = self.find_peer(who)
        self.roster.decide(peer.syncthing_id, peer.device_id, REMOVED)
        my_id = self.client.device_id()
        changes = self._remove(my_id, peer)
        self.publish(my_id)
        return {"peer_id": peer.device_id, "syncthing_id": peer.syncthing_id,
                "changes": changes}

    def _remove(self, my_id: str, peer: Statement) -> list[str]:
        client = self.client
        changes: list[str] = []
        sid = peer.syncthing_id
        own_id = self.provision.own_folder
        own = client.get_folder(own_id)
        if own is not None and sid in holders(own, my_id):
            client.patch_folder(own["id"], {"devices": [d for d in own["devices"]
                                                        if d["deviceID"] != sid]})
            changes.append(f"stopped sharing {own['id']} with {sid[:7]}")
        for f in client.folders():
            if f["id"] != own_id and holders(f, my_id) == {sid}:
                client.remove_folder(f["id"])
                changes.append(f"removed folder {f['id']} (files kept at {f.get('path')})")
        if client.get_device(sid) is not None:
            client.remove_device(sid)
            changes.append(f"removed device {sid} ({peer.device_id})")
        return changes

    # --- the service's reconcile --------------------------------------------------------------

    def publish(self, my_id: str) -> bool:
        """Write this device's roster file if it changed and hand it to Syncthing at once;
        True if written.

        The hand-off is checked on every pass, not trusted: a scan asked while Syncthing
        restarts the folder (it does when a device is added to it) can fail, and the file would
        then wait for the watcher or the next full rescan while the joining device waits for
        it."""
        text = rosters.render(self.device_id, my_id, self.own_addresses(), self.roster.all())
        written = rosters.write(self.layout.device_folder, text, self.layout.staging_dir)
        if written or not self._roster_indexed():
            self.client.scan_quietly(self.provision.own_folder, sub="mesh")
        return written

    def _roster_indexed(self) -> bool:
        """Syncthing's index holds this device's roster file as it lies on disk (same size and
        modification time)."""
        try:
            st = (self.layout.device_folder / rosters.ROSTER_PATH).stat()
            local = self.client.file_info(self.provision.own_folder,
                                          rosters.ROSTER_PATH).get("local")
        except (OSError, RemoteError, AttributeError):
            return False
        if not isinstance(local, dict) or local.get("deleted") or \
                local.get("size") != st.st_size:
            return False
        try:  # Syncthing's ``modified``: RFC 3339, up to nanoseconds (Python keeps microseconds)
            indexed = datetime.fromisoformat(str(local.get("modified", ""))).timestamp()
        except ValueError:
            return False
        return abs(indexed - st.st_mtime) < 0.001

    def reconcile(self) -> ReconcileReport:
        """One pass: admit invited devices, merge the peers' rosters, apply the roster to
        Syncthing, accept the folders peers offer, find duplicate ids, publish our roster.

        Idempotent: a pass over a settled mesh changes nothing. Raises RemoteError when
        Syncthing cannot be reached (the caller retries later)."""
        client = self.client
        report = ReconcileReport(changes=self.provision.setup()["changes"])
        roster = self.roster
        my_id = client.device_id()
        folders = {f["id"]: f for f in client.folders()}
        self._seed(folders, my_id)
        self._admit(folders, my_id, report)
        self._merge(folders, my_id, report)
        self._apply(my_id, report)
        report.changes += self.provision.accept_pending()
        self._offers(my_id, report)
        if self._joining(my_id) and any(self._admitted_since(s, my_id)
                                        for s in roster.members()):
            self.restore_name(my_id)
        if self.publish(my_id):
            report.changes.append(f"published the roster ({len(roster.members())} member(s))")
        report.conflicts = sorted(set(report.conflicts))
        return report

    def _peer_folders(self, folders: dict[str, Folder], my_id: str) -> dict[str, str]:
        """Recorder id -> the one Syncthing device its (receive-only) folder is held from."""
        out = {}
        for fid, f in folders.items():
            owner = owner_of(fid)
            held = holders(f, my_id)
            if owner is not None and owner != self.device_id and len(held) == 1:
                out[owner] = next(iter(held))
        return out

    def _seed(self, folders: dict[str, Folder], my_id: str) -> None:
        """Pairings made before the roster (add-peer) become members, older than any
        decision."""
        for owner, sid in self._peer_folders(folders, my_id).items():
            if self.roster.get(sid) is None:
                self.roster.merge(Statement(sid, owner, MEMBER, 0.0))

    def _holder(self, rid: str, sid: str, since: float, folders: dict[str, Folder],
                my_id: str) -> str | None:
        """The Syncthing device other than `sid` that has recorder id `rid` first: this
        device (our own id), the device its folder is held from, or the member admitted
        earlier."""
        if rid == self.device_id:
            return my_id
        held = holders(folders.get(folder_id(rid)), my_id) - {sid}
        if held:
            return sorted(held)[0]
        earlier = [s for s in self.roster.members() if s.device_id == rid
                   and s.syncthing_id != sid and (s.since, s.syncthing_id) < (since, sid)]
        return min(earlier, key=lambda s: (s.since, s.syncthing_id)).syncthing_id if earlier \
            else None

    def _admit(self, folders: dict[str, Folder], my_id: str,
               report: ReconcileReport) -> None:
        """Devices knocking with a valid invite proof become members."""
        pending = self.client.pending_devices()
        invites = self.invites
        if not pending or not invites.open_tokens():
            return
        for sid, info in pending.items():
            parsed = parse_join_name(str((info or {}).get("name", "")))
            if parsed is None:
                continue
            rid, given = parsed
            token = invites.match(sid, rid, given)
            if token is None:
                continue
            holder = self._holder(rid, sid, time.time(), folders, my_id)
            if holder is not None:
                report.conflicts.append(_claim(rid, holder, sid, my_id))
                continue
            # Syncthing dials from its listening port: the address it knocked from is where it
            # listens, so we can dial it back at once instead of waiting for its next attempt.
            knocked = _dialable(str((info or {}).get("address", "")))
            self.roster.decide(sid, rid, MEMBER, (knocked,) if knocked else ())
            invites.use(token, rid)
            report.accepted.append(rid)
            log.info("mesh: %s (%s) joined with an invite", rid, sid)

    def _merge(self, folders: dict[str, Folder], my_id: str,
               report: ReconcileReport) -> None:
        """Take the newer statements from every member's roster file."""
        roster = self.roster
        held = self._peer_folders(folders, my_id)
        for member in roster.members():
            if held.get(member.device_id) != member.syncthing_id:
                continue  # its folder is not (yet) held from it: nothing it says is authenticated
            try:
                peer = rosters.read_peer(self.layout.folder_of(member.device_id))
            except RosterError as exc:
                report.roster_errors.append(f"{member.device_id}: {exc}")
                continue
            if peer is None:
                continue
            if peer.syncthing_id != member.syncthing_id:
                report.roster_errors.append(
                    f"{member.device_id}: roster names Syncthing device "
                    f"{peer.syncthing_id[:7]}, but the folder is held from "
                    f"{member.syncthing_id[:7]}")
                continue
            roster.set_addresses(member.syncthing_id, peer.addresses)
            report.conflicts += self._own_id_claims(peer, my_id)
            # A device never vouches for itself, and a decision "from the future" (beyond a day
            # of clock skew) could never be overruled: both are ignored.
            latest = time.time() + MAX_SKEW
            for stmt in peer.statements:
                if stmt.syncthing_id in (my_id, member.syncthing_id) or stmt.since > latest:
                    continue
                if not (stmt.device_id == self.device_id and stmt.state == MEMBER):
                    roster.merge(stmt)

    def _own_id_claims(self, peer: rosters.PeerRoster, my_id: str) -> list[str]:
        """A peer's roster listing another Syncthing device under this device's own id."""
        return [_claim(s.device_id, my_id, s.syncthing_id, my_id)
                + f" (listed by {peer.device_id})" for s in peer.statements
                if s.device_id == self.device_id and s.state == MEMBER
                and s.syncthing_id != my_id]

    def _apply(self, my_id: str, report: ReconcileReport) -> None:
        """Make Syncthing's config say what the roster says."""
        client = self.client
        for stmt in self.roster.all():
            if stmt.syncthing_id == my_id:
                continue
            folders = {f["id"]: f for f in client.folders()}
            if stmt.state == REMOVED:
                if client.get_device(stmt.syncthing_id) is not None:
                    report.changes += self._remove(my_id, stmt)
                    log.info("mesh: %s (%s) removed from the mesh", stmt.device_id,
                             stmt.syncthing_id)
                continue
            holder = self._holder(stmt.device_id, stmt.syncthing_id, stmt.since, folders,
                                  my_id)
            if holder is not None:
                report.conflicts.append(_claim(stmt.device_id, holder, stmt.syncthing_id,
                                               my_id))
                continue
            if client.get_device(stmt.syncthing_id) is None:
                client.add_device({"deviceID": stmt.syncthing_id, "name": stmt.device_id,
                                   "addresses": [*stmt.addresses, "dynamic"],
                                   "autoAcceptFolders": False, "introducer": False})
                report.changes.append(f"added device {stmt.syncthing_id} ({stmt.device_id})")
                report.added.append(stmt.syncthing_id)
            else:
                _ensure_addresses(client, stmt.syncthing_id, stmt.addresses, report.changes)
            self.provision.share_own_folder(my_id, stmt.syncthing_id, report.changes)
            self.provision.ensure_peer_folder(my_id, stmt.syncthing_id, stmt.device_id,
                                              report.changes)

    def _offers(self, my_id: str, report: ReconcileReport) -> None:
        """Mesh folders offered by a device other than the one already paired for that id."""
        try:
            pending = self.client.pending_folders() or {}
        except RemoteError:
            return
        folders = {f["id"]: f for f in self.client.folders()}
        for fid, info in pending.items():
            if not fid.startswith(FOLDER_PREFIX):
                continue
            owner = owner_of(fid)
            if owner is None:
                continue
            for offerer in (info or {}).get("offeredBy") or {}:
                if owner == self.device_id:
                    report.conflicts.append(_claim(owner, my_id, offerer, my_id))
                    continue
                held = holders(folders.get(fid), my_id)
                if held and offerer not in held:
                    report.conflicts.append(duplicate_message(owner, sorted(held)[0], offerer))

    def conflicts(self) -> list[str]:
        """The duplicate-id conflicts visible without the service (``doctor``, ``mesh
        status``): folders offered by a second device, and peers' rosters naming another
        device under this device's id. Reads only (and no database)."""
        report = ReconcileReport()
        my_id = self.client.device_id()
        self._offers(my_id, report)
        folders = {f["id"]: f for f in self.client.folders()}
        for owner, sid in self._peer_folders(folders, my_id).items():
            try:
                peer = rosters.read_peer(self.layout.folder_of(owner))
            except RosterError:
                continue
            if peer is not None and peer.syncthing_id == sid:
                report.conflicts += self._own_id_claims(peer, my_id)
        return sorted(set(report.conflicts))


def _knock(client: SyncthingClient, device_id: str) -> None:
    """Have Syncthing dial the inviter now unless connected: after the inviter refused our
    first dial, Syncthing 1.19 waits half a minute or more before the next one, and the
    inviter's own dial back may not reach us (an address it cannot route to)."""
    try:
        client.dial_unless_connected(device_id)
    except RemoteError as exc:
        log.info("mesh: could not knock again: %s", exc)


def _ensure_addresses(client: SyncthingClient, device_id: str, addresses: tuple[str, ...],
                      changes: list[str]) -> None:
    """Add `addresses` (and ``dynamic``) to a configured device's, keeping what it has."""
    current = client.get_device(device_id)
    if current is None:
        return
    have = list(current.get("addresses") or [])
    want = have + [a for a in (*addresses, "dynamic") if a not in have]
    if want != have:
        client.patch_device(device_id, {"addresses": want})
        changes.append(f"device {device_id[:7]}: addresses {', '.join(want)}")


def _claim(rid: str, holder: str, claimant: str, my_id: str) -> str:
    if holder == my_id:
        return (f"duplicate device id {rid!r}: Syncthing device {claimant[:7]} claims this "
                "device's own id; refused (give one of them another [device] id)")
    return duplicate_message(rid, holder, claimant)


def _dialable(address: str) -> str | None:
    """``tcp://HOST:PORT`` for a pending device's ``address`` (``1.2.3.4:22000``,
    ``[200::1]:22000``), or None."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[0-9.]+):(\d{1,5})", address)
    return f"tcp://{m.group(1)}:{m.group(2)}" if m else None


__all__ = ["Membership", "ReconcileReport"]
