"""The appliance's firewall: nobody outside the mesh gets in over yggdrasil.

yggdrasil makes this device reachable at its 200::/7 address by every node of the overlay it
is connected to (a public peer, or a peer's peer, is thousands of strangers). This module is
the one owner of the nftables rule set that limits what arrives on the yggdrasil interface
(``[yggdrasil] interface``):

- replies to connections this device opened are let in (``ct direction reply``);
- the mesh members' yggdrasil addresses (the roster's members and the Syncthing devices they
  are configured as, removed ones excepted) may reach Syncthing (TCP and UDP 22000), chrony
  (UDP 123, mesh time) and ping; the web page (``[web] port``) and the document root (80) too
  when ``[web] mesh = true``;
- anyone on the overlay may reach Syncthing's port while an invite is open (the new device is
  not known by address until it knocks; Syncthing itself admits only the device whose join
  proof matches) and the station's Icecast port when ``[radio] public = true``;
- everything else arriving on the interface is dropped, IPv6 and IPv4, every packet (not only
  new connections): a removed member's open connections stop with the rule set that drops it.

On the other interfaces (the LAN) everything is let through, except the web page and the
document root when ``[web] lan = false``. The chain hooks ``prerouting`` (priority -150,
after connection tracking, before Docker's DNAT), so ports a container publishes (the compose
stack) are filtered exactly like the native install's sockets.

The rule set lives in its own table (``inet recorderpi``) and is always replaced whole, in one
``nft -f`` transaction (create-if-missing, delete, define): never a half-applied state, and no
other table (Docker's, the administrator's) is touched. A comment in the table carries a digest
of the rules, so `installed` can tell whether what is loaded is what the roster asks for.

Who applies it: the service's mesh keeper (`Firewall.sync` after every roster pass, on every
Syncthing config change, and every `CHECK_INTERVAL` seconds to restore a flushed rule set); the
native install grants ``recorder.service`` CAP_NET_ADMIN for it. The compose stack runs
``recorder mesh firewall --keep`` in a host-network container instead.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from recorder.errors import RecorderError

if TYPE_CHECKING:
    from recorder.config import RadioConfig, WebConfig, YggdrasilConfig
    from recorder.db import Database
    from recorder.mesh.net.syncthing import SyncthingClient

log = logging.getLogger(__name__)

TABLE = "recorderpi"
FAMILY = "inet"
SYNCTHING_PORT = 22000
NTP_PORT = 123
DOCROOT_PORT = 80  # services/nginx/recorder-docroot.conf
CHECK_INTERVAL = 2.0  # seconds between checks that the rule set is still loaded
TIMEOUT = 15.0


class FirewallError(RecorderError):
    """nft is missing, refused the rule set, or the rule set is not what it should be."""


@dataclass(frozen=True)
class Settings:
    """What the rule set depends on besides the members (from ``[yggdrasil]``, ``[web]`` and
    ``[radio]``: `of`)."""

    interface: str  # the yggdrasil interface the rules filter
    web_port: int | None  # the web page's port; None when the page is off
    web_mesh: bool  # members may open the page and the document root
    web_lan: bool  # the LAN may open them
    station_port: int | None  # Icecast's port, open to the whole overlay; None: not public

    @classmethod
    def of(cls, yggdrasil: YggdrasilConfig, web: WebConfig, radio: RadioConfig) -> Settings:
        return cls(interface=yggdrasil.interface,
                   web_port=web.port if web.enabled else None, web_mesh=web.mesh,
                   web_lan=web.lan,
                   station_port=station_port(radio.url) if radio.public else None)


@dataclass(frozen=True)
class Policy:
    """What the rule set lets in; `render` turns it into nftables' language."""

    interface: str
    members: tuple[str, ...]  # yggdrasil addresses, sorted
    member_tcp: tuple[int, ...]
    member_udp: tuple[int, ...]
    open_tcp: tuple[int, ...]  # to anyone on the overlay
    lan_closed_tcp: tuple[int, ...]  # dropped from the LAN (not loopback, not the overlay)


def policy(settings: Settings, members: Iterable[str], joining: bool = False) -> Policy:
    """The policy `settings` ask for, with `members`' yggdrasil addresses (others are
    ignored) and Syncthing open to the overlay while `joining` (an invite is open)."""
    from recorder.mesh.net.yggdrasil import is_yggdrasil_address

    web = (DOCROOT_PORT,) if settings.web_port is None else (settings.web_port, DOCROOT_PORT)
    member_tcp = {SYNCTHING_PORT, *(web if settings.web_mesh else ())}
    open_tcp = {SYNCTHING_PORT} if joining else set()
    if settings.station_port is not None:
        open_tcp.add(settings.station_port)
    addresses = sorted({str(ipaddress.ip_address(a)) for a in members
                        if is_yggdrasil_address(a)})
    return Policy(interface=settings.interface, members=tuple(addresses),
                  member_tcp=tuple(sorted(member_tcp)),
                  member_udp=(NTP_PORT, SYNCTHING_PORT), open_tcp=tuple(sorted(open_tcp)),
                  lan_closed_tcp=() if settings.web_lan else tuple(sorted(set(web))))


def station_port(url: str) -> int:
    """The port listeners reach Icecast at (``[radio] url``)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _set(values: Iterable[object]) -> str:
    return "{ " + ", ".join(str(v) for v in values) + " }"


def _body(p: Policy) -> list[str]:
    ifname = f'"{p.interface}"'
    lines = ["  chain inbound {",
             "    type filter hook prerouting priority -150; policy accept;",
             f"    iifname {ifname} jump overlay"]
    if p.lan_closed_tcp:
        lines.append(f'    iifname != {{ "lo", {ifname} }} fib daddr type local '
                     f"tcp dport {_set(p.lan_closed_tcp)} drop")
    lines += ["  }", "  chain overlay {",
              "    ct direction reply accept",
              "    ct state related accept",
              "    meta nfproto ipv4 drop"]
    if p.members:
        lines += [f"    ip6 saddr @members tcp dport {_set(p.member_tcp)} accept",
                  f"    ip6 saddr @members udp dport {_set(p.member_udp)} accept",
                  "    ip6 saddr @members icmpv6 type echo-request accept"]
    if p.open_tcp:
        lines.append(f"    tcp dport {_set(p.open_tcp)} accept")
    # The counter: what the overlay tried (``nft list table inet recorderpi`` shows it).
    lines += ["    counter drop", "  }"]
    members = [f"    elements = {_set(p.members)}"] if p.members else []
    return ["  set members {", "    type ipv6_addr", *members, "  }", *lines]


def digest(p: Policy) -> str:
    """A short digest of the rules `p` makes (carried in the table's comment)."""
    return hashlib.sha256("\n".join(_body(p)).encode()).hexdigest()[:16]


def render(p: Policy) -> str:
    """The ``nft -f`` script replacing the table whole, in one transaction."""
    return "\n".join([
        f"table {FAMILY} {TABLE} {{}}",  # so the delete below never fails on a first run
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        f'  comment "recorderpi firewall {digest(p)}"',
        *_body(p), "}", ""])


def _nft(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    # /usr/sbin is not on every user's PATH (the service's is systemd's default, which has it).
    binary = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if binary is None:
        raise FirewallError("nft not found (apt-get install nftables)")
    try:
        return subprocess.run([binary, *args], input=script, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise FirewallError(f"nft {' '.join(args)}: no result (timeout)") from None


def apply(p: Policy) -> None:
    """Load the rule set for `p` (atomically); raises FirewallError with nft's reason."""
    res = _nft("-f", "-", script=render(p))
    if res.returncode != 0:
        detail = " ".join((res.stderr or res.stdout).split())[:300]
        raise FirewallError(f"nft refused the rule set: {detail}")


PERMISSION_DENIED = ("cannot read the nftables rule set: needs root or CAP_NET_ADMIN "
                     "(sudo recorder doctor)")


def is_permission_error(exc: Exception) -> bool:
    """True when `exc` says nftables could not be read for want of privilege."""
    return str(exc) == PERMISSION_DENIED


def loaded_digest() -> str | None:
    """The digest of the recorderpi table loaded now, or None when there is none.

    Raises FirewallError when nft cannot be asked (missing, or not permitted)."""
    res = _nft("list", "table", FAMILY, TABLE)
    if res.returncode != 0:
        detail = " ".join(res.stderr.split())
        if "No such file" in detail:
            return None
        if "Operation not permitted" in detail:
            raise FirewallError(PERMISSION_DENIED)
        raise FirewallError(f"nft list table {FAMILY} {TABLE}: {detail[:200]}")
    for line in res.stdout.splitlines():
        words = line.strip().strip('";').split()
        if line.strip().startswith("comment") and words[-2:-1] == ["firewall"]:
            return words[-1]
    return ""


def member_addresses(client: SyncthingClient, database: Database) -> list[str]:
    """The yggdrasil addresses of the mesh's members, this device excepted: the roster's
    members' addresses and the configured Syncthing devices' ones, less removed devices'.

    Raises RemoteError when Syncthing cannot be asked."""
    from recorder.mesh.membership.roster import REMOVED, Roster
    from recorder.mesh.net.yggdrasil import address_of

    roster = Roster(database)
    removed = {s.syncthing_id for s in roster.all() if s.state == REMOVED}
    my_id = client.device_id()
    uris = [a for s in roster.members() if s.syncthing_id != my_id for a in s.addresses]
    uris += [a for d in client.devices() if d["deviceID"] not in removed | {my_id}
             for a in d.get("addresses") or []]
    return sorted({x for u in uris if (x := address_of(str(u))) is not None})


def wanted(settings: Settings, client: SyncthingClient, database: Database) -> Policy:
    """The policy for the mesh as it is now (raises RemoteError without Syncthing)."""
    from recorder.mesh.membership.invite import InviteStore

    return policy(settings, member_addresses(client, database),
                  joining=InviteStore(database).count_open() > 0)


class Firewall:
    """Keeps the loaded rule set equal to what the roster and `settings` ask for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.applied: str | None = None  # digest of the last rule set we loaded
        self.error: str | None = None

    def sync(self, client: SyncthingClient, database: Database) -> bool:
        """Load the rule set if it differs from what is loaded; True when it was loaded.

        Without Syncthing, a missing table is loaded from the roster alone (closed rather than
        open); a loaded one is kept. Never raises: a failure is logged once and kept in
        `error` (``ctl status``, ``doctor``)."""
        from recorder.errors import RemoteError

        try:
            try:
                p = wanted(self.settings, client, database)
            except RemoteError:
                if self.applied is not None and loaded_digest() is not None:
                    return False
                from recorder.mesh.membership.roster import Roster
                from recorder.mesh.net.yggdrasil import address_of

                p = policy(self.settings, [x for s in Roster(database).members()
                                      for a in s.addresses if (x := address_of(a))])
            want = digest(p)
            if loaded_digest() == want:
                self.applied = want
                self._ok()
                return False
            apply(p)
        except FirewallError as exc:
            if str(exc) != self.error:
                log.error("firewall: %s", exc)
            self.error = str(exc)
            return False
        except Exception as exc:  # the keeper's thread must outlive any bug or database hiccup
            log.exception("firewall: sync failed")
            self.error = f"sync failed: {type(exc).__name__}"
            return False
        if self.applied != want:
            log.info("firewall: %d member address(es) may reach this device over yggdrasil",
                     len(p.members))
        else:
            log.warning("firewall: the rule set was gone or changed; loaded it again")
        self.applied = want
        self._ok()
        return True

    def _ok(self) -> None:
        if self.error is not None:
            log.info("firewall: in place again")
        self.error = None


def check(settings: Settings, client: SyncthingClient | None,
          database: Database | None) -> str:
    """``recorder doctor``'s check: the loaded table is the one the mesh asks for."""
    got = loaded_digest()
    if got is None:
        raise FirewallError(f"no nftables table {FAMILY} {TABLE}: the overlay is unfiltered "
                            "(is the service running with CAP_NET_ADMIN?)")
    if client is None or database is None:
        return f"table {FAMILY} {TABLE} loaded"
    p = wanted(settings, client, database)
    if got != digest(p):
        raise FirewallError(f"table {FAMILY} {TABLE} is not the rule set the roster asks for "
                            "(the service reloads it within seconds)")
    return (f"table {FAMILY} {TABLE} in place: {len(p.members)} member address(es) on "
            f"{p.interface}")
