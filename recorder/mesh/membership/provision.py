"""Provision this device's place in the Syncthing mesh, idempotently, through the REST API.

The model (shared/syncthing.md, "Folder types"): every recorder owns one folder,
``<sync_root>/<recorder-device-id>/``, with the Syncthing folder id ``recorderpi-<recorder-id>``
and label ``<recorder-id>``.

- The owner shares it **sendonly**: it never takes changes from anybody.
- Every peer holds it **receiveonly** at ``<sync_root>/<owner's recorder id>/``: a file a peer adds
  there stays local ("locally changed") and is never sent on.
- A peer's folder is shared with its owner only, never with third devices. Syncthing accepts a
  folder's updates from every device it is shared with, and a receive-only copy does not stop
  that: if B's copy of A's folder were shared with C, C could switch its copy to sendreceive and
  rewrite A's recordings on B. The cost is no store-and-forward: A's recordings reach C only when
  A and C are connected.

Because the folder id carries the recorder id, a peer's folder can be created before the peer
offers it (``add_peer(..., peer_recorder_id=...)``), and when the id is not given it is read from
the folder the peer offers (``/rest/cluster/pending/folders``); it is validated as a single safe
path component before it becomes a path. Offers are accepted only from devices we already share
our own folder with, and nothing ever takes over a folder held from another device: two devices
claiming one recorder id are refused (`DuplicateIdError`); a peer reinstalled with new keys is
first removed (``recorder mesh remove-peer``), then paired again.

Public services: Syncthing's global discovery (announcing this device's id and addresses to
the public discovery servers) and its relays are turned off (``syncthing.global_discovery`` and
``syncthing.relays`` turn them back on): members find each other over yggdrasil and the LAN.

Field settings: the watcher is on (``fsWatcherDelayS`` = ``syncthing.watcher_delay``; the
publisher also asks for a scan right away, so the delay is only a fallback), the periodic rescan
is ``syncthing.rescan_interval``, and ``reconnectionIntervalS`` is lowered from 60 to 5 (the
lowest value Syncthing 1.19 keeps): after a second connection drop within the interval Syncthing
waits up to the whole interval before redialling (57 s measured), far too long on a flaky field
link, and a redial every 5 s to a handful of peers costs nothing.

`Provisioner` does it for one device (its `Layout`, its Syncthing client and the
``[syncthing]`` folder settings). Every method only changes what differs from the wanted state,
so re-running changes nothing. Each reports the changes it made (empty when already
provisioned). The wanted state
includes "not paused": re-running un-pauses our folders and the named peer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.deviceid import validate_device_id
from recorder.errors import ConfigError, RecorderError, RemoteError

if TYPE_CHECKING:
    from recorder.config import SyncthingConfig
    from recorder.layout import Layout
    from recorder.mesh.net.syncthing import Folder, SyncthingClient

FOLDER_PREFIX = "recorderpi-"
RECONNECT_INTERVAL_S = 5

log = logging.getLogger(__name__)

_SYNCTHING_ID = re.compile(r"^[A-Z2-7]{56}$")


class DuplicateIdError(RecorderError):
    """Two Syncthing devices claim one recorder id: the second is refused."""

    exit_code = 1


def duplicate_message(owner: str, holder: str, claimant: str) -> str:
    """The one-line refusal shown everywhere (CLI, status, doctor, log) for a duplicate id."""
    return (f"duplicate device id {owner!r}: Syncthing device {claimant[:7]} claims it, but "
            f"{folder_id(owner)} is held from {holder[:7]}; refused (give one of them another "
            f"[device] id; if {owner} was reinstalled with new keys, run `recorder mesh "
            f"remove-peer {owner}` first)")


def holders(folder: Folder | None, my_id: str) -> set[str]:
    """The devices other than this one a folder is shared with."""
    if folder is None:
        return set()
    return {d["deviceID"] for d in folder.get("devices", [])} - {my_id}


def folder_id(recorder_id: str) -> str:
    """The Syncthing folder id of the folder owned by `recorder_id`."""
    return FOLDER_PREFIX + recorder_id


def owner_of(folder: str) -> str | None:
    """The recorder id owning Syncthing folder `folder`, or None if it is not a safe mesh id."""
    if not folder.startswith(FOLDER_PREFIX):
        return None
    try:
        return validate_device_id(folder[len(FOLDER_PREFIX) :], "folder id")
    except ConfigError:
        return None


def normalize_device_id(value: str) -> str:
    """A Syncthing device id in its canonical form (upper case, dashes every 7 characters).

    Syncthing accepts lower case and missing dashes but stores the canonical form; comparing
    canonical ids keeps re-runs idempotent. Raises RecorderError for anything else.
    """
    raw = re.sub(r"[\s-]", "", value).upper()
    if not _SYNCTHING_ID.match(raw):
        raise RecorderError(f"not a Syncthing device id (56 letters A-Z and digits 2-7): {value!r}")
    return "-".join(raw[i : i + 7] for i in range(0, 56, 7))


def normalize_address(value: str) -> str:
    """``host:port`` becomes ``tcp://host:port``; URLs and ``dynamic`` pass through."""
    value = value.strip()
    if not value:
        raise RecorderError("peer address is empty (use tcp://HOST:22000 or dynamic)")
    return value if value == "dynamic" or "://" in value else f"tcp://{value}"


def _ensure_folder(
    client: SyncthingClient, fid: str, settings: dict[str, Any], devices: list[str],
    exact_devices: bool, changes: list[str],
) -> None:
    """Create folder `fid` or patch the settings and device list that differ."""
    Path(settings["path"]).mkdir(parents=True, exist_ok=True)
    current = client.get_folder(fid)
    if current is None:
        client.add_folder({"id": fid, **settings, "devices": [{"deviceID": d} for d in devices]})
        changes.append(f"added folder {fid} ({settings['type']}) at {settings['path']}")
        return
    patch = {k: v for k, v in settings.items() if current.get(k) != v}
    have = [d["deviceID"] for d in current.get("devices", [])]
    want = devices if exact_devices else have + [d for d in devices if d not in have]
    if sorted(have) != sorted(want):
        # Keep the per-device entries Syncthing already has (encryption settings etc.).
        by_id = {d["deviceID"]: d for d in current.get("devices", [])}
        patch["devices"] = [by_id.get(d, {"deviceID": d}) for d in want]
    if patch:
        client.patch_folder(fid, patch)
        changes.append(f"updated folder {fid}: {', '.join(sorted(patch))}")


class Provisioner:
    """This device's folders and peers in its Syncthing: `layout` says where the folders are,
    `settings` (``[syncthing]``) how they are watched and rescanned."""

    def __init__(self, layout: Layout, client: SyncthingClient, settings: SyncthingConfig,
                 reconnect_interval: int = RECONNECT_INTERVAL_S) -> None:
        self.layout = layout
        self.client = client
        self.settings = settings
        self.reconnect_interval = reconnect_interval

    @property
    def own_folder(self) -> str:
        """The Syncthing folder id of this device's own (send-only) folder."""
        return folder_id(self.layout.device_id)

    def _folder_settings(self, kind: str, owner: str) -> dict[str, Any]:
        return {
            "label": owner,
            "path": str(self.layout.folder_of(owner).absolute()),
            "type": kind,
            "fsWatcherEnabled": True,
            "fsWatcherDelayS": self.settings.watcher_delay,
            "rescanIntervalS": self.settings.rescan_interval,
            "paused": False,
        }

    def setup(self) -> dict[str, Any]:
        """Create or correct this device's sendonly folder and the mesh options.

        Also accepts folders already offered by configured peers (see `accept_pending`).
        Returns ``{"syncthing_id", "folder", "path", "changes"}``; ``changes`` is empty on a
        re-run.
        """
        client = self.client
        my_id = client.device_id()
        changes: list[str] = []
        own = self.own_folder
        _ensure_folder(client, own, self._folder_settings("sendonly", self.layout.device_id),
                       [my_id], exact_devices=False, changes=changes)
        options = client.options()
        wanted = {"reconnectionIntervalS": self.reconnect_interval,
                  "globalAnnounceEnabled": self.settings.global_discovery,
                  "relaysEnabled": self.settings.relays}
        patch = {k: v for k, v in wanted.items() if options.get(k) != v}
        if patch:
            client.patch_options(patch)
            changes += [f"set {k} {options.get(k)} -> {v}" for k, v in patch.items()]
        changes += self.accept_pending()
        return {"syncthing_id": my_id, "folder": own, "path": str(self.layout.device_folder),
                "changes": changes}

    def share_own_folder(self, my_id: str, device_id: str, changes: list[str]) -> None:
        """Share this device's send-only folder with `device_id` too."""
        _ensure_folder(self.client, self.own_folder,
                       self._folder_settings("sendonly", self.layout.device_id),
                       [my_id, device_id], exact_devices=False, changes=changes)

    def _configured_owner(self, device_id: str) -> str | None:
        """The recorder id of the peer folder already accepted from `device_id`, if exactly
        one."""
        owners = {
            owner_of(f["id"]) for f in self.client.folders()
            if f["id"] != self.own_folder and f.get("type") == "receiveonly"
            and device_id in [d["deviceID"] for d in f.get("devices", [])]
        } - {None}
        return owners.pop() if len(owners) == 1 else None

    def _offered_owner(self, device_id: str) -> str | None:
        """The recorder id of the mesh folder `device_id` offers us, if it offers exactly
        one."""
        pending = self.client.pending_folders(device_id)
        owners: set[str] = set()
        for fid, info in (pending or {}).items():
            if device_id not in (info.get("offeredBy") or {}):
                continue
            if not fid.startswith(FOLDER_PREFIX):
                continue
            owner = owner_of(fid)
            if owner is None:
                raise RemoteError(
                    f"peer {device_id} offers a folder with an unsafe id: {fid[:80]!r}")
            if owner != self.layout.device_id:
                owners.add(owner)
        if len(owners) > 1:
            raise RemoteError(f"peer {device_id} offers several recorder folders: "
                              f"{', '.join(sorted(owners))}; pass --peer-id")
        return owners.pop() if owners else None

    def ensure_peer_folder(self, my_id: str, device_id: str, owner: str,
                           changes: list[str]) -> bool:
        """Create or correct `owner`'s receiveonly folder, shared with `device_id` and us only.

        A folder already held from another device is never taken over (two devices claim one
        id): returns False then, changing nothing.
        """
        if owner == self.layout.device_id:
            raise DuplicateIdError(f"duplicate device id {owner!r}: Syncthing device "
                                   f"{device_id[:7]} claims this device's own id; refused")
        fid = folder_id(owner)
        current = self.client.get_folder(fid)
        held = holders(current, my_id)
        if held and device_id not in held:
            log.warning("%s", duplicate_message(owner, sorted(held)[0], device_id))
            return False
        # Exactly owner and us: see the module docstring for why third devices are excluded.
        _ensure_folder(self.client, fid, self._folder_settings("receiveonly", owner),
                       [my_id, device_id], exact_devices=True, changes=changes)
        return True

    def accept_pending(self) -> list[str]:
        """Accept, receive-only, the mesh folder each configured peer offers; return the
        changes.

        Only devices this device already shares its own folder with count as peers, so an
        unknown device that connects cannot get a folder created.
        """
        own = self.client.get_folder(self.own_folder)
        if own is None:
            return []
        my_id = self.client.device_id()
        peers = [d["deviceID"] for d in own.get("devices", []) if d["deviceID"] != my_id]
        changes: list[str] = []
        for device_id in peers:
            try:
                owner = self._offered_owner(device_id)
            except RemoteError as exc:  # one odd peer must not stop the others' setup
                log.warning("not accepting offers: %s", exc)
                continue
            if owner is not None and owner != self.layout.device_id:
                self.ensure_peer_folder(my_id, device_id, owner, changes)
        return changes

    def add_peer(self, device_id: str, name: str, address: str = "dynamic",
                 peer_recorder_id: str | None = None) -> dict[str, Any]:
        """Pair with a peer: add its device, share our folder with it, accept its folder.

        Runs `setup` first. The peer's folder (``<sync_root>/<peer recorder id>/``,
        receiveonly) is created at once when `peer_recorder_id` is given, else when the peer
        already offers it; otherwise ``peer_folder`` is None and the service accepts it when
        the peer offers it (or re-running `add_peer` or `setup` does). Returns
        ``{"device_id", "peer_id", "peer_folder", "changes"}``. Raises DuplicateIdError,
        before changing anything, when the peer's id is held from another device (or is ours).
        """
        client = self.client
        device_id = normalize_device_id(device_id)
        address = normalize_address(address)
        if peer_recorder_id is not None:
            peer_recorder_id = validate_device_id(peer_recorder_id, "--peer-id")
        my_id = client.device_id()
        if device_id == my_id:
            raise RecorderError(f"{device_id} is this device's own Syncthing id")
        if peer_recorder_id is not None:
            self._refuse_duplicate(my_id, device_id, peer_recorder_id)
        result = self.setup()
        changes: list[str] = result["changes"]

        wanted = {"name": name, "addresses": [address], "autoAcceptFolders": False,
                  "introducer": False, "paused": False}
        current = client.get_device(device_id)
        if current is None:
            client.add_device({"deviceID": device_id, **wanted})
            changes.append(f"added device {device_id} ({name}) at {address}")
        else:
            patch = {k: v for k, v in wanted.items() if current.get(k) != v}
            if patch:
                client.patch_device(device_id, patch)
                changes.append(f"updated device {device_id}: {', '.join(sorted(patch))}")

        self.share_own_folder(my_id, device_id, changes)

        owner = (peer_recorder_id or self._configured_owner(device_id)
                 or self._offered_owner(device_id))
        if owner is not None:
            self._refuse_duplicate(my_id, device_id, owner)
            self.ensure_peer_folder(my_id, device_id, owner, changes)
        return {"device_id": device_id, "peer_id": owner,
                "peer_folder": folder_id(owner) if owner else None, "changes": changes}

    def _refuse_duplicate(self, my_id: str, device_id: str, owner: str) -> None:
        if owner == self.layout.device_id:
            raise DuplicateIdError(f"duplicate device id {owner!r}: Syncthing device "
                                   f"{device_id[:7]} claims this device's own id; refused")
        held = holders(self.client.get_folder(folder_id(owner)), my_id)
        if held and device_id not in held:
            message = duplicate_message(owner, sorted(held)[0], device_id)
            log.error("%s", message)
            raise DuplicateIdError(message)

    def status(self) -> dict[str, Any]:
        """Peers, their connection state and completion of every mesh folder.

        ``{"device_id", "syncthing_id", "folder", "peers": [...], "folders": [...]}``: each peer has
        its name, addresses, ``connected``, ``paused``, remote ``address``, ``client_version``, the
        recorder id it owns (``peer_id``, from the folders shared with it) and ``completion``, how
        much of our folder it has (percent). Each mesh folder has its owner, type, path, state,
        local ``completion`` and the count of ``locally_changed`` files (receiveonly only).
        """
        client = self.client
        my_id = client.device_id()
        own = self.own_folder
        folders = [f for f in client.folders() if f["id"].startswith(FOLDER_PREFIX)]
        connections = client.connections().get("connections", {})
        own_devices = next(
            ([d["deviceID"] for d in f.get("devices", [])] for f in folders if f["id"] == own), []
        )
        peers = []
        for dev in client.devices():
            did = dev["deviceID"]
            if did == my_id:
                continue
            conn = connections.get(did, {})
            owned = [owner_of(f["id"]) for f in folders if f["id"] != own
                     and did in [d["deviceID"] for d in f.get("devices", [])]]
            peer: dict[str, Any] = {
                "syncthing_id": did,
                "name": dev.get("name", ""),
                "addresses": dev.get("addresses", []),
                "peer_id": owned[0] if len(owned) == 1 else None,
                "connected": bool(conn.get("connected")),
                "paused": bool(conn.get("paused") or dev.get("paused")),
                "address": conn.get("address") or None,
                "client_version": conn.get("clientVersion") or None,
                "completion": None,
            }
            if did in own_devices:
                peer["completion"] = client.completion(own, did).get("completion")
            peers.append(peer)
        out_folders = []
        for f in folders:
            db = client.db_status(f["id"])
            out_folders.append({
                "id": f["id"],
                "owner": owner_of(f["id"]),
                "own": f["id"] == own,
                "type": f.get("type"),
                "path": f.get("path"),
                "paused": bool(f.get("paused")),
                "state": db.get("state"),
                "completion": client.completion(f["id"]).get("completion"),
                "files": db.get("localFiles"),
                "need_files": db.get("needFiles"),
                "locally_changed": db.get("receiveOnlyChangedFiles", 0),
                "errors": db.get("errors", 0) + db.get("pullErrors", 0),
            })
        return {"device_id": self.layout.device_id, "syncthing_id": my_id, "folder": own,
                "peers": peers, "folders": out_folders}
