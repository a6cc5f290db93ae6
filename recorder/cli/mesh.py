"""``recorder mesh setup|invite|join|remove-peer|add-peer|status``: pair devices and inspect
the Syncthing mesh (`recorder.mesh.membership.pairing.Membership`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from recorder.cli import mesh_net

if TYPE_CHECKING:  # imported where used: requests costs ~100 ms a command does not need
    from recorder.config import Config
    from recorder.db import Database
    from recorder.mesh.membership.pairing import Membership
    from recorder.mesh.net.syncthing import SyncthingClient


def register(subparsers: Any) -> None:
    """Add the ``mesh`` command group."""
    mesh = subparsers.add_parser("mesh", help="pair devices and check the Syncthing mesh")
    sub = mesh.add_subparsers(dest="mesh_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("setup", help="create this device's sendonly folder (idempotent)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_setup)

    p = sub.add_parser("invite", help="print a code (and a QR code) a new device joins the "
                       "mesh with, through this device")
    p.add_argument("--hours", type=float, default=24.0,
                   help="how long the code is valid (default 24)")
    p.add_argument("--uses", type=int, default=1,
                   help="how many devices may join with it (default 1)")
    p.add_argument("--address", action="append", default=[], metavar="URI",
                   help="an address the new device dials this one at (repeatable; default: "
                        "this device's yggdrasil address and its listen addresses)")
    qr = p.add_mutually_exclusive_group()
    qr.add_argument("--qr", action="store_true", default=None,
                    help="print the QR code (default when the output is a terminal)")
    qr.add_argument("--no-qr", action="store_false", dest="qr")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_invite)

    p = sub.add_parser("join", help="join the mesh with a code from `recorder mesh invite`")
    p.add_argument("code", metavar="CODE", help="the invite code (RPI1-...)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the inviter to accept (0: do not wait)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_join)

    p = sub.add_parser("remove-peer", help="undo a pairing, here and on every other member")
    p.add_argument("peer", metavar="PEER",
                   help="the peer's recorder id, Syncthing device id or name")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_remove_peer)

    p = sub.add_parser("add-peer", help="pair with one peer by hand and accept its folder "
                       "(idempotent; `invite`/`join` pair with the whole mesh)")
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
    from recorder.mesh.net.syncthing import SyncthingClient

    return SyncthingClient.from_config(cfg.syncthing)


def _membership(cfg: Config, database: Database | None = None) -> Membership:
    """This device's mesh membership, built once per command from its configuration."""
    from recorder.mesh.membership.pairing import Membership

    return Membership(cfg.layout, _client(cfg), cfg.syncthing, database,
                      yggdrasil_admin=cfg.yggdrasil.admin_endpoint)


def _print_changes(changes: list[str]) -> None:
    for line in changes or ["nothing to change"]:
        print(f"  {line}")


def _setup(args: argparse.Namespace, cfg: Config) -> int:
    result = _membership(cfg).provision.setup()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"this device: {cfg.device.id} (Syncthing {result['syncthing_id']})")
    print(f"folder {result['folder']} (sendonly) at {result['path']}")
    _print_changes(result["changes"])
    return 0


def _database(cfg: Config) -> Any:
    from recorder.cli import database_spec
    from recorder.dbrepair import open_database

    return open_database(database_spec(cfg))  # with the repair every command's database has


def _tell_service(cfg: Config) -> bool:
    """Ask a running service to reconcile the mesh now; quiet when none runs."""
    from recorder.control import send_command
    from recorder.errors import ServiceError

    try:
        send_command(cfg.service.control_socket, "mesh", timeout=2.0)
    except ServiceError:
        return False
    return True


def _invite(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.errors import ConfigError

    if args.hours <= 0 or args.uses < 1:
        raise ConfigError("--hours must be above 0 and --uses at least 1")
    with _database(cfg) as database:
        invite = _membership(cfg, database).make_invite(
            ttl=args.hours * 3600, uses=args.uses, addresses=tuple(args.address))
    code = invite.encode()
    service = _tell_service(cfg)
    if args.json:
        print(json.dumps({"code": code, "inviter": invite.recorder_id,
                          "syncthing_id": invite.syncthing_id,
                          "addresses": list(invite.addresses), "hours": args.hours,
                          "uses": args.uses, "service_running": service}))
        return 0
    print(f"invite to the mesh through {invite.recorder_id}, valid {args.hours:g} h for "
          f"{args.uses} device(s):")
    print(f"  {code}")
    print(f"on the new device: recorder mesh join {code}")
    print(f"it will dial: {', '.join(invite.addresses) or 'dynamic (LAN discovery)'}")
    if not service:
        print("note: the recorder service is not running here; it accepts the new device "
              "once it runs")
    if args.qr or (args.qr is None and sys.stdout.isatty()):
        import segno

        segno.make(code, error="m").terminal(out=sys.stdout, compact=True, border=2)
    return 0


def _join(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.errors import RemoteError
    from recorder.mesh.membership import invite as invites

    invite = invites.decode(args.code)
    with _database(cfg) as database:
        result = _membership(cfg, database).join(invite, wait=max(0.0, args.timeout))
    _tell_service(cfg)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"paired with {result['inviter']} ({result['inviter_syncthing_id']})")
        _print_changes(result["changes"])
    if not result["accepted"] and args.timeout > 0:
        raise RemoteError(
            f"{result['inviter']} has not accepted this device within {args.timeout:g} s (is "
            f"its service running and does it reach {', '.join(invite.addresses) or 'us'}?); "
            "this device keeps knocking: see `recorder mesh status`")
    if not args.json and result["accepted"]:
        print(f"accepted by {result['inviter']}: the services pair this device with every "
              "other member now (`recorder mesh status`)")
    return 0


def _remove_peer(args: argparse.Namespace, cfg: Config) -> int:
    with _database(cfg) as database:
        result = _membership(cfg, database).remove_peer(args.peer)
    _tell_service(cfg)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"removed {result['peer_id']} ({result['syncthing_id']}) from the mesh; the other "
          "members follow through the roster")
    _print_changes(result["changes"])
    return 0


def _add_peer(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.mesh.membership.roster import MEMBER, Roster

    result = _membership(cfg).provision.add_peer(args.device_id, args.name, args.address,
                                                 peer_recorder_id=args.peer_id)
    if result["peer_id"]:  # an explicit pairing: a member from now on (after any removal)
        with _database(cfg) as database:
            roster = Roster(database)
            known = roster.get(result["device_id"])
            if known is None or (known.state, known.device_id) != (MEMBER, result["peer_id"]):
                roster.decide(result["device_id"], result["peer_id"], MEMBER)
    _tell_service(cfg)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"peer {args.name}: {result['device_id']}")
    if result["peer_folder"]:
        print(f"its folder {result['peer_folder']} (receiveonly) at "
              f"{cfg.storage.sync_root / result['peer_id']}")
    else:
        print("its folder is not offered yet: the service accepts it (receive-only) as soon "
              "as the peer offers it (add this device on the peer)")
    _print_changes(result["changes"])
    return 0


def _status(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 0 even when Syncthing is down: the bridge's quarantine list is read from the
    database, and the warning line says what could not be shown."""
    import sys

    from recorder.errors import RemoteError
    from recorder.mesh.exchange.store import db_status

    try:
        membership = _membership(cfg)
        result = membership.provision.status()
        result["conflicts"] = membership.conflicts()
        result["syncthing_error"] = None
    except RemoteError as exc:
        result = {"device_id": cfg.device.id, "syncthing_id": None, "peers": [],
                  "folders": [], "conflicts": [], "syncthing_error": str(exc)}
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
    for line in result["conflicts"]:
        print(f"conflict: {line}")
    print("peers:" if result["peers"] else "peers: unknown (Syncthing unavailable)"
          if result["syncthing_error"] else "peers: none (recorder mesh invite / join)")
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
    from recorder.mesh.exchange.bridge import run_forever

    parts = app.assemble(cfg, app.Role.BRIDGE)
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
