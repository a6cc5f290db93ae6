"""``recorder mesh setup|add-peer|status``: provision and inspect the Syncthing mesh."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import TYPE_CHECKING, Any

from recorder.cli import mesh_net

if TYPE_CHECKING:  # imported where used: requests costs ~100 ms a command does not need
    from recorder.config import Config
    from recorder.mesh.syncthing import SyncthingClient


def register(subparsers: Any) -> None:
    """Add the ``mesh`` command group."""
    mesh = subparsers.add_parser("mesh", help="pair devices and check the Syncthing mesh")
    sub = mesh.add_subparsers(dest="mesh_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("setup", help="create this device's sendonly folder (idempotent)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_setup)

    p = sub.add_parser("add-peer", help="pair with a peer and accept its folder (idempotent)")
    p.add_argument("device_id", metavar="DEVICE_ID", help="the peer's Syncthing device id")
    p.add_argument("--name", required=True, help="a name for the peer")
    p.add_argument("--address", required=True,
                   help="tcp://HOST:PORT (HOST:PORT is read as tcp://), or dynamic")
    p.add_argument("--peer-id", metavar="ID",
                   help="the peer's recorder device id (its folder name); default: read from "
                        "the folder the peer offers once it has added this device")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_add_peer)

    p = sub.add_parser("status", help="peers, connection state and completion")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_status)

    mesh_net.register(sub, _client)

    p = sub.add_parser("bridge", help="import peers' recordings and annotations into papad "
                       "(the service runs this itself; use when it is not running)")
    p.add_argument("--once", action="store_true",
                   help="one full scan and annotation exchange, then exit")
    p.add_argument("--json", action="store_true", help="with --once: print one JSON document")
    p.set_defaults(func=_bridge)


def _client(cfg: Config) -> SyncthingClient:
    from recorder.mesh.syncthing import SyncthingClient

    return SyncthingClient.from_config(cfg.syncthing)


def _print_changes(changes: list[str]) -> None:
    for line in changes or ["nothing to change"]:
        print(f"  {line}")


def _setup(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.mesh import provision

    result = provision.setup(cfg, _client(cfg))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"this device: {cfg.device.id} (Syncthing {result['syncthing_id']})")
    print(f"folder {result['folder']} (sendonly) at {result['path']}")
    _print_changes(result["changes"])
    return 0


def _add_peer(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.mesh import provision

    result = provision.add_peer(cfg, _client(cfg), args.device_id, args.name, args.address,
                                peer_recorder_id=args.peer_id)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"peer {args.name}: {result['device_id']}")
    if result["peer_folder"]:
        print(f"its folder {result['peer_folder']} (receiveonly) at "
              f"{cfg.storage.sync_root / result['peer_id']}")
    else:
        print("its folder is not offered yet: add this device on the peer, then re-run this "
              "command (or pass --peer-id)")
    _print_changes(result["changes"])
    return 0


def _status(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 0 even when Syncthing is down: the bridge's quarantine list is read from the
    database, and the warning line says what could not be shown."""
    import sys

    from recorder.errors import RemoteError
    from recorder.mesh import provision
    from recorder.mesh.store import db_status

    try:
        result = provision.status(cfg, _client(cfg))
        result["syncthing_error"] = None
    except RemoteError as exc:
        result = {"device_id": cfg.device.id, "syncthing_id": None, "peers": [],
                  "folders": [], "syncthing_error": str(exc)}
        print(f"recorder: warning: Syncthing unavailable ({exc}): peers and folders unknown, "
              "showing what the bridge knows", file=sys.stderr)
    result["bridge"] = db_status(cfg.db_path)
    mesh_net.add_status(result, cfg)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"this device: {result['device_id']} (Syncthing "
          f"{result['syncthing_id'] or 'unavailable'})")
    mesh_net.print_yggdrasil(result["yggdrasil"])
    print("peers:" if result["peers"] else "peers: unknown (Syncthing unavailable)"
          if result["syncthing_error"] else "peers: none (recorder mesh add-peer)")
    for p in result["peers"]:
        state = "paused" if p["paused"] else "connected" if p["connected"] else "disconnected"
        has = "" if p["completion"] is None else f", has {p['completion']:.0f}% of ours"
        print(f"  {p['name'] or '?'} [{p['peer_id'] or '?'}] {state}{has}  {p['syncthing_id']}")
        mesh_net.print_peer(p)
    print("folders:")
    for f in result["folders"]:
        extra = f", {f['locally_changed']} locally changed" if f["locally_changed"] else ""
        print(f"  {f['id']} {f['type']} {f['state']} {f['completion']:.0f}%{extra}  {f['path']}")
    bridge = result["bridge"]
    for peer, counts in sorted(bridge["peers"].items()):
        print(f"bridge {peer}: {counts['imported']} imported, {counts['pending']} pending, "
              f"{counts['quarantined']} quarantined")
    for q in bridge["quarantined"]:
        print(f"  quarantined {q['peer']}/{q['path']}: {q['reason']}")
    return 0


def _bridge(args: argparse.Namespace, cfg: Config) -> int:
    from recorder import app
    from recorder.mesh.bridge import run_forever

    parts = app.assemble(cfg, service=True, radio=False, bridge=True)
    bridge = parts.bridge
    assert bridge is not None
    worker = parts.registration.worker if parts.registration is not None else None
    try:
        if args.once:
            report = bridge.run_once()
            if worker is not None:
                worker.run_once()
            status = bridge.status()
            if args.json:
                print(json.dumps({"scan": report.as_dict(), **status}))
            else:
                print(f"imported {report.imported}, pending {report.pending}, "
                      f"quarantined {report.quarantined}, unchanged {report.unchanged}")
                for q in status["quarantined"]:
                    print(f"  quarantined {q['peer']}/{q['path']}: {q['reason']}")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if worker is not None:
            worker.start()
        print(f"bridge running for {cfg.device.id} (Ctrl-C to stop)", flush=True)
        run_forever(bridge, stop)
        return 0
    finally:
        if worker is not None:
            worker.stop()
        bridge.stop()
        parts.close()
