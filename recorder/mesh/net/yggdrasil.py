"""This device's yggdrasil node, read through its admin socket; yggdrasil addresses in general.

yggdrasil (Debian 12: 0.4.7) gives every node a fixed IPv6 address in ``200::/7`` derived from
its key, reachable from every other node of the mesh whatever network each one is on (LAN
multicast discovery, or static ``Peers`` between sites). Syncthing peers dial each other at
``tcp://[<yggdrasil address>]:22000``: the address never changes with the LAN or the site.

The admin protocol is one JSON request per connection on the socket named by
``yggdrasil.admin_endpoint`` (``unix:///run/yggdrasil/yggdrasil.sock`` or ``tcp://HOST:PORT``,
the same syntax as ``yggdrasilctl -endpoint``): ``{"request": "getSelf"}`` answers
``{"status": "success", "response": {...}}`` or ``{"status": "error", "error": "..."}``. No
program is run and no shell is involved. Every failure is a `YggdrasilError` with a one-line
message (exit code 7, a remote service failed).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from recorder.errors import RemoteError

YGGDRASIL_NET = ipaddress.ip_network("200::/7")
SYNCTHING_PORT = 22000
DEFAULT_ENDPOINT = "unix:///run/yggdrasil/yggdrasil.sock"
DEFAULT_TIMEOUT = 5.0
_MAX_REPLY = 4 * 1024 * 1024


class YggdrasilError(RemoteError):
    """The yggdrasil admin socket is unreachable, refused a request or answered nonsense."""


@dataclass(frozen=True)
class NodeInfo:
    """This node: its ``200::/7`` address, routed ``300::/64`` subnet and public key."""

    address: str
    subnet: str
    key: str


@dataclass(frozen=True)
class Peer:
    """A directly connected yggdrasil peer and the link it is connected over."""

    address: str
    key: str
    remote: str  # e.g. tls://[fe80::1%eth0]:34567 (LAN multicast) or tls://203.0.113.5:12345
    uptime: float


def is_yggdrasil_address(value: str) -> bool:
    """Whether `value` is an IPv6 address inside yggdrasil's ``200::/7``."""
    try:
        return ipaddress.ip_address(value.strip("[]")) in YGGDRASIL_NET
    except ValueError:
        return False


def address_of(uri: str) -> str | None:
    """The yggdrasil address a Syncthing address like ``tcp://[200:...]:22000`` dials, if any.

    Returns None for ``dynamic``, other hosts and anything unparsable.
    """
    try:
        host = urlsplit(uri.strip()).hostname
    except ValueError:
        return None
    if host is None or not is_yggdrasil_address(host):
        return None
    return str(ipaddress.ip_address(host))


def syncthing_address(address: str, port: int = SYNCTHING_PORT) -> str:
    """The Syncthing address peers should dial for a device at yggdrasil `address`.

    ``tcp://[ADDR]:22000``; raises YggdrasilError when `address` is not in ``200::/7``.
    """
    if not is_yggdrasil_address(address):
        raise YggdrasilError(f"not a yggdrasil address (200::/7): {address!r}")
    return f"tcp://[{ipaddress.ip_address(address)}]:{port}"


class AdminClient:
    """Requests to one yggdrasil admin endpoint (``unix:///PATH`` or ``tcp://HOST:PORT``)."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = DEFAULT_TIMEOUT):
        self.endpoint = endpoint
        self.timeout = timeout
        parts = urlsplit(endpoint)
        if parts.scheme == "unix" and (parts.netloc + parts.path):
            self._family = socket.AF_UNIX
            self._target: Any = parts.netloc + parts.path
        elif parts.scheme == "tcp" and parts.hostname and parts.port:
            self._family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
            self._target = (parts.hostname, parts.port)
        else:
            raise YggdrasilError(
                f"yggdrasil admin endpoint must be unix:///PATH or tcp://HOST:PORT; "
                f"got {endpoint!r}")

    def request(self, name: str, **arguments: Any) -> dict[str, Any]:
        """Send request `name` (with `arguments`) and return its ``response`` object."""
        where = f"yggdrasil {name} at {self.endpoint}"
        try:
            with socket.socket(self._family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self._target)
                sock.sendall(json.dumps({"request": name, **arguments}).encode() + b"\n")
                reply = _read_document(sock)
        except FileNotFoundError:
            raise YggdrasilError(f"{where}: no admin socket (is yggdrasil running?)") from None
        except PermissionError:
            raise YggdrasilError(f"{where}: permission denied (the user must be in group "
                                 "yggdrasil)") from None
        except (ConnectionRefusedError, ConnectionResetError):
            raise YggdrasilError(f"{where}: connection refused (is yggdrasil running?)") \
                from None
        except TimeoutError:
            raise YggdrasilError(f"{where}: no answer (timeout)") from None
        except OSError as exc:
            raise YggdrasilError(f"{where}: {exc.strerror or type(exc).__name__}") from None
        if not isinstance(reply, dict):
            raise YggdrasilError(f"{where}: unexpected reply")
        if reply.get("status") != "success":
            raise YggdrasilError(f"{where}: {str(reply.get('error') or 'refused')[:200]}")
        response = reply.get("response")
        if not isinstance(response, dict):
            raise YggdrasilError(f"{where}: reply without a response object")
        return response

    def node(self) -> NodeInfo:
        """This node (``getSelf``)."""
        r = self.request("getSelf")
        address = r.get("address")
        if not isinstance(address, str) or not is_yggdrasil_address(address):
            raise YggdrasilError(f"yggdrasil getSelf at {self.endpoint}: no 200::/7 address")
        return NodeInfo(address=address, subnet=str(r.get("subnet") or ""),
                        key=str(r.get("key") or ""))

    def peers(self) -> list[Peer]:
        """The directly connected peers (``getPeers``), sorted by address."""
        raw = self.request("getPeers").get("peers") or []
        if not isinstance(raw, list):
            raise YggdrasilError(f"yggdrasil getPeers at {self.endpoint}: peers is not a list")
        out = []
        for p in raw:
            if isinstance(p, dict) and is_yggdrasil_address(str(p.get("address", ""))):
                out.append(Peer(address=str(p["address"]), key=str(p.get("key") or ""),
                                remote=str(p.get("remote") or ""),
                                uptime=float(p.get("uptime") or 0.0)))
        return sorted(out, key=lambda p: p.address)


def _read_document(sock: socket.socket) -> Any:
    """Read until the bytes received form one JSON document (or the peer closes)."""
    data = b""
    decoder = json.JSONDecoder()
    while len(data) < _MAX_REPLY:
        chunk = sock.recv(65536)
        if chunk:
            data += chunk
        text = data.decode("utf-8", "replace").strip()
        if text:
            try:
                return decoder.raw_decode(text)[0]
            except json.JSONDecodeError:
                if not chunk:
                    raise YggdrasilError("yggdrasil admin socket: malformed reply") from None
        if not chunk:
            raise YggdrasilError("yggdrasil admin socket: closed without a reply")
    raise YggdrasilError("yggdrasil admin socket: reply too large")


def status(endpoint: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """This node and its peers as a JSON-ready dict; never raises.

    ``{"endpoint", "address", "subnet", "key", "syncthing_address", "peers": [...], "error"}``;
    when the admin socket fails, ``address`` is None and ``error`` holds the one-line reason.
    """
    out: dict[str, Any] = {"endpoint": endpoint, "address": None, "subnet": None, "key": None,
                           "syncthing_address": None, "peers": [], "error": None}
    try:
        client = AdminClient(endpoint, timeout)
        node = client.node()
        out.update(address=node.address, subnet=node.subnet, key=node.key,
                   syncthing_address=syncthing_address(node.address))
        out["peers"] = [asdict(p) for p in client.peers()]
    except YggdrasilError as exc:
        out["error"] = str(exc)
    return out
