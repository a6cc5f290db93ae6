"""The network side of ``recorder mesh``: yggdrasil and mesh time.

``mesh yggdrasil-config`` keeps yggdrasil's config in step with ``[yggdrasil]``
(`recorder.mesh.net.yggdrasil_conf`), ``mesh time-sources`` gives chrony the peers' yggdrasil
addresses (`recorder.mesh.net.timesync`), and ``mesh status`` shows this device's yggdrasil address,
its yggdrasil peers and each Syncthing peer's yggdrasil address (`recorder.mesh.net.yggdrasil`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.mesh.net import timesync, yggdrasil_conf

if TYPE_CHECKING:  # requests: only the commands that talk to Syncthing import it
    from recorder.config import Config
    from recorder.mesh.net.syncthing import SyncthingClient


def register(sub: Any, client: Callable[[Config], SyncthingClient]) -> None:
    """Add ``time-sources`` and ``yggdrasil-config`` to the ``mesh`` sub-commands."""
    p = sub.add_parser("time-sources", help="the mesh peers' yggdrasil addresses as chrony "
                       "sources (time without internet)")
    p.add_argument("--write", metavar="PATH", nargs="?", const=str(timesync.SOURCES_FILE),
                   help=f"replace PATH atomically (default {timesync.SOURCES_FILE}) instead of "
                        "printing; prints 'changed' or 'unchanged'")
    p.set_defaults(func=lambda args, cfg: _time_sources(args, client(cfg)))

    p = sub.add_parser("yggdrasil-config", help="create yggdrasil's config (keys, once) and "
                       "apply [yggdrasil] to it (run as root before yggdrasil starts)")
    p.add_argument("--write", metavar="PATH", default=str(yggdrasil_conf.CONFIG_FILE),
                   help=f"yggdrasil's config file (default {yggdrasil_conf.CONFIG_FILE})")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_yggdrasil_config)

    p = sub.add_parser("firewall", help="the nftables rule set letting only mesh members in "
                       "over yggdrasil: print it, load it once (--apply) or keep it loaded")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="load it now (needs CAP_NET_ADMIN)")
    mode.add_argument("--keep", action="store_true", help="load it and keep it in step with "
                      "the roster until stopped (the compose stack's host-network service)")
    mode.add_argument("--check", action="store_true", help="exit 1 unless the loaded rule "
                      "set is the one the roster asks for (doctor's check)")
    p.set_defaults(func=lambda args, cfg: _firewall(args, cfg, client(cfg)))


def add_status(result: dict[str, Any], cfg: Config) -> None:
    """Add ``yggdrasil`` (this node, or None when not configured) and each peer's yggdrasil
    addresses (those of its Syncthing addresses inside 200::/7) to a `Provisioner.status`."""
    from recorder.mesh.net import yggdrasil

    endpoint = cfg.yggdrasil.admin_endpoint
    result["yggdrasil"] = yggdrasil.status(endpoint) if endpoint else None
    for peer in result["peers"]:
        peer["yggdrasil"] = timesync.peer_yggdrasil_addresses([peer["addresses"]])


def print_yggdrasil(info: dict[str, Any] | None) -> None:
    if info is None:
        print("yggdrasil: not configured ([yggdrasil] admin_endpoint)")
    elif info["error"]:
        print(f"yggdrasil: unavailable: {info['error']}")
    else:
        print(f"yggdrasil {info['address']} (peers dial {info['syncthing_address']}); "
              f"{len(info['peers'])} yggdrasil peer(s)")
        for peer in info["peers"]:
            print(f"  yggdrasil peer {peer['address']} via {peer['remote']}")


def print_peer(peer: dict[str, Any]) -> None:
    for address in peer.get("yggdrasil", []):
        print(f"    yggdrasil {address}")


def _time_sources(args: argparse.Namespace, client: SyncthingClient) -> int:
    my_id = client.device_id()
    addresses = timesync.peer_yggdrasil_addresses(
        d.get("addresses", []) for d in client.devices() if d["deviceID"] != my_id)
    if args.write is None:
        print(timesync.sources_text(addresses), end="")
        return 0
    changed = timesync.write_sources(Path(args.write), addresses)
    print(f"{'changed' if changed else 'unchanged'}: {args.write} ({len(addresses)} source(s))")
    return 0


def _firewall(args: argparse.Namespace, cfg: Config, client: SyncthingClient) -> int:
    import time

    from recorder.cli import database_spec
    from recorder.dbrepair import open_database
    from recorder.mesh.membership import firewall

    settings = firewall.Settings.of(cfg.yggdrasil, cfg.web, cfg.radio)
    with open_database(database_spec(cfg)) as database:
        if args.check:
            print(firewall.check(settings, client, database))
            return 0
        if args.keep:
            keeper = firewall.Firewall(settings)
            while True:  # stopped by SIGTERM/SIGINT, like any foreground service
                keeper.sync(client, database)
                time.sleep(firewall.CHECK_INTERVAL)
        policy = firewall.wanted(settings, client, database)
    if args.apply:
        firewall.apply(policy)
        print(f"loaded: table {firewall.FAMILY} {firewall.TABLE} "
              f"({len(policy.members)} member address(es))")
    else:
        print(firewall.render(policy), end="")
    return 0


def _yggdrasil_config(args: argparse.Namespace, cfg: Config) -> int:
    changes = yggdrasil_conf.apply(cfg.yggdrasil, cfg.device.id, Path(args.write))
    if args.json:
        print(json.dumps({"path": args.write, "changes": changes}))
    else:
        print(f"{'changed' if changes else 'unchanged'}: {args.write}"
              + (f" ({', '.join(changes)})" if changes else ""))
    return 0
