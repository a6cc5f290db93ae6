"""Network namespaces, LANs, sites and real yggdrasil nodes for tests (needs root, iproute2).

The building blocks, all owned by one `NetLab` (a context manager, or the `netlab` fixture
factory) so that everything is torn down on exit, even when a test fails:

- `Namespace`: one network namespace (``ip netns``) with its loopback up and IPv6 duplicate
  address detection off (addresses are usable at once); `exec()` runs a command inside it with a
  timeout, `popen()` starts a long-running one whose process the lab stops at the end.
- `Lan`: a layer-2 segment, a bridge in a namespace of its own (multicast snooping off so
  yggdrasil's link-local beacons reach every port), with an IPv4 /24 for static peering.
- `Node`: a namespace with one veth port ``lan0`` on a `Lan` and an IPv4 address on it. It can
  run a real yggdrasil (`start_yggdrasil`; its address in `ygg_address`), a real Syncthing
  listening on ``tcp://[<ygg address>]:22000`` (`start_syncthing`), and have its link cut and
  restored (`cut` / `restore`: ``ip link set lan0 down|up``, no process is killed).
- `NetLab.router()`: a namespace joining several LANs with IPv4 forwarding: a second "site" that
  yggdrasil multicast cannot reach (link-local only), but a static ``Peers`` entry can.

yggdrasil (Debian 12's 0.4.7): the config is made by ``yggdrasil -genconf -json`` and adjusted
here (admin socket ``unix://<node dir>/ygg.sock``, ``IfName`` per node, ``MulticastInterfaces``
only on ``lan0`` or none, static ``Peers``, ``Listen``). The admin socket is a file, so the test
process (outside the namespace) talks to it directly: ``yggdrasilctl -endpoint unix://...``.

Syncthing's REST API listens on 127.0.0.1 *inside* the node's namespace. It is made reachable
at the same port on the test's own 127.0.0.1 by two socat processes meeting at a unix socket
(unix sockets are files, shared by all namespaces):
``ip netns exec NS socat UNIX-LISTEN:S,fork TCP:127.0.0.1:P`` inside and
``socat TCP-LISTEN:P,bind=127.0.0.1,fork UNIX-CONNECT:S`` outside. So the usual
`tests.syncthing_harness.Instance` (REST client, recorder config) and the ``recorder`` CLI work
unchanged from the test process.

Names are unique per run (``rpt<pid>x<hex>-<name>``); namespaces left by a killed test run
(whose pid is gone) are removed when the next lab starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need, need_root, terminate, wait_until
from tests.syncthing_harness import Instance

CMD_TIMEOUT = 30.0
START_TIMEOUT = 60.0  # generous: other engineers load the same 2-core machine
YGG_NET = ipaddress.ip_network("200::/7")
DEV = "lan0"
SYNC_PORT = 22000

_STALE = re.compile(r"^rpt(\d+)x[0-9a-f]+-")


def _run(args: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True,
         **kw: Any) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): "
                           f"{(res.stderr or res.stdout).strip()[:500]}")
    return res


def _stop(proc: subprocess.Popen[Any]) -> None:
    terminate(proc, 10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_netns(name: str) -> None:
    """Kill whatever still runs in namespace `name`, then delete it."""
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run(["ip", "netns", "delete", name], check=False)


def reap_stale_namespaces() -> list[str]:
    """Delete namespaces made by earlier test runs whose process is gone; return their names."""
    listing = _run(["ip", "netns", "list"], check=False).stdout
    gone = []
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _STALE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_netns(name)
            gone.append(name)
    return gone


class Namespace:
    """One network namespace; processes started with `popen` are stopped by the lab."""

    def __init__(self, lab: NetLab, name: str) -> None:
        self.lab = lab
        self.short = name
        self.name = f"{lab.tag}-{name}"
        self.dir = lab.base / name
        self.dir.mkdir(parents=True)
        _run(["ip", "netns", "add", self.name])
        lab._namespaces.append(self)
        # Before any interface exists, so every new one inherits "no DAD": link-local and
        # static IPv6 addresses are usable at once instead of after about a second.
        self.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                  "net.ipv6.conf.default.accept_dad=0")
        self.ip("link", "set", "lo", "up")

    def exec(self, *args: str, timeout: float = CMD_TIMEOUT,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `args` inside the namespace and return the finished process (text output)."""
        return _run(["ip", "netns", "exec", self.name, *args], timeout=timeout, check=check)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NS ARGS``."""
        return _run(["ip", "-n", self.name, *args], check=check)

    def popen(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start `args` inside the namespace, output to `log`; stopped when the lab closes."""
        return self.lab.popen(["ip", "netns", "exec", self.name, *args], log)

    @property
    def prefix(self) -> list[str]:
        """The command prefix running a program inside this namespace."""
        return ["ip", "netns", "exec", self.name]


class Lan:
    """A bridge in its own namespace, with an IPv4 /24 handed out to the ports attached."""

    def __init__(self, lab: NetLab, name: str, index: int) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.switch = Namespace(lab, f"{name}-sw")
        self.switch.ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self.switch.ip("link", "set", "br0", "up")
        self.network = ipaddress.ip_network(f"10.{200 + index}.0.0/24")
        self._hosts = self.network.hosts()
        self.gateway: str | None = None
        self._ports = 0

    def next_address(self) -> str:
        return str(next(self._hosts))

    def attach(self, ns: Namespace, dev: str) -> tuple[str, str]:
        """Give `ns` a port `dev` on this LAN with the next IPv4 address; return (addr, port)."""
        self._ports += 1
        port = f"p{self._ports}"
        _run(["ip", "link", "add", dev, "netns", ns.name, "type", "veth", "peer", "name", port,
              "netns", self.switch.name])
        self.switch.ip("link", "set", port, "master", "br0", "up")
        addr = self.next_address()
        ns.ip("addr", "add", f"{addr}/{self.network.prefixlen}", "dev", dev)
        ns.ip("link", "set", dev, "up")
        return addr, port


class Yggdrasil:
    """A real yggdrasil daemon of one node (config from ``yggdrasil -genconf -json``)."""

    def __init__(self, node: Node, *, multicast: bool, peers: Sequence[str],
                 listen: Sequence[str]) -> None:
        self.node = node
        self.binary = need("yggdrasil")
        self.ctl = need("yggdrasilctl", "yggdrasil")
        self.dir = node.dir / "yggdrasil"
        self.dir.mkdir()
        self.socket = self.dir / "ygg.sock"
        self.endpoint = f"unix://{self.socket}"
        self.ifname = f"ygg-{node.short}"[:15]
        gen = json.loads(_run([self.binary, "-genconf", "-json"]).stdout)
        gen.update({
            "AdminListen": self.endpoint,
            "IfName": self.ifname,
            "MulticastInterfaces": [
                {"Regex": f"^{DEV}$", "Beacon": True, "Listen": True, "Port": 0, "Priority": 0}
            ] if multicast else [],
            "Peers": list(peers),
            "Listen": list(listen),
            "NodeInfo": {"name": node.short},
        })
        self.public_key = gen["PublicKey"]
        self.config = self.dir / "yggdrasil.conf"
        self.config.write_text(json.dumps(gen, indent=2))
        self.config.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> str:
        """Start the daemon; wait for its admin socket and tun address; return the address."""
        self.proc = self.node.popen([self.binary, "-useconffile", str(self.config)],
                                    self.dir / "yggdrasil.log")

        def ready() -> str:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"yggdrasil on {self.node.short} exited {self.proc.returncode}: "
                            f"{(self.dir / 'yggdrasil.log').read_text()[-800:]}")
            if not self.socket.exists():
                return ""
            res = _run([self.ctl, "-json", "-endpoint", self.endpoint, "getSelf"], check=False)
            if res.returncode != 0:
                return ""
            addr = json.loads(res.stdout).get("address", "")
            shown = self.node.ip("-6", "addr", "show", "dev", self.ifname, check=False).stdout
            return addr if addr and f"{addr}/7" in shown else ""

        self.address = wait_until(ready, START_TIMEOUT, 0.05, f"yggdrasil on {self.node.short}")
        assert ipaddress.ip_address(self.address) in YGG_NET
        return self.address

    def ctl_json(self, command: str, *args: str) -> Any:
        """``yggdrasilctl -json -endpoint ... COMMAND ARGS`` decoded."""
        res = _run([self.ctl, "-json", "-endpoint", self.endpoint, command, *args])
        return json.loads(res.stdout)

    def peers(self) -> list[dict[str, Any]]:
        """The directly connected peers (``getPeers``): address, key, remote URI, ..."""
        return self.ctl_json("getPeers").get("peers") or []

    def peer_keys(self) -> set[str]:
        return {p["key"] for p in self.peers()}


class Node(Namespace):
    """A host on a LAN: namespace, port ``lan0`` with an IPv4 address, optional services."""

    def __init__(self, lab: NetLab, name: str, lan: Lan) -> None:
        super().__init__(lab, name)
        self.lan = lan
        self.ipv4, self.port = lan.attach(self, DEV)
        if lan.gateway:
            self.ip("route", "add", "default", "via", lan.gateway)
        self.ygg: Yggdrasil | None = None
        self.syncthing: Instance | None = None

    # -- yggdrasil -------------------------------------------------------------------------

    def start_yggdrasil(self, *, multicast: bool = True, peers: Sequence[str] = (),
                        listen: Sequence[str] = ()) -> str:
        """Run yggdrasil here (LAN multicast on ``lan0`` unless `multicast` is False, static
        `peers` and `listen` URIs as given); return its 200::/7 address."""
        self.ygg = Yggdrasil(self, multicast=multicast, peers=peers, listen=listen)
        return self.ygg.start()

    @property
    def ygg_address(self) -> str:
        assert self.ygg is not None, f"{self.short}: yggdrasil not started"
        return self.ygg.address

    @property
    def ygg_key(self) -> str:
        assert self.ygg is not None, f"{self.short}: yggdrasil not started"
        return self.ygg.public_key

    @property
    def sync_address(self) -> str:
        """The Syncthing address peers dial: ``tcp://[<ygg address>]:22000``."""
        return f"tcp://[{self.ygg_address}]:{SYNC_PORT}"

    # -- link ------------------------------------------------------------------------------

    def cut(self) -> None:
        """Take this node's LAN link down (``ip link set lan0 down``); processes keep running."""
        self.ip("link", "set", DEV, "down")

    def restore(self) -> None:
        """Bring the LAN link back up (addresses and routes are restored as they were)."""
        self.ip("link", "set", DEV, "up")
        with contextlib.suppress(RuntimeError):  # the kernel drops it with the link
            self.ip("addr", "add", f"{self.ipv4}/{self.lan.network.prefixlen}", "dev", DEV)
        if self.lan.gateway:
            self.ip("route", "replace", "default", "via", self.lan.gateway)

    # -- syncthing -------------------------------------------------------------------------

    def start_syncthing(self, recorder_id: str | None = None) -> Instance:
        """A real Syncthing here, listening on the yggdrasil address only (port 22000), its REST
        API forwarded to the same port on the test's 127.0.0.1; started and ready."""
        binary = need("syncthing")
        socat = need("socat")
        inst = Instance(binary, self.dir, "syncthing", recorder_id or f"dev-{self.short}",
                        prefix=self.prefix, listen=self.sync_address)
        sock = self.dir / "rest.sock"
        self.popen([socat, f"UNIX-LISTEN:{sock},fork", f"TCP:127.0.0.1:{inst.gui_port}"],
                   self.dir / "socat-in.log")
        wait_until(sock.exists, START_TIMEOUT, 0.02, f"REST socket of {self.short}")
        self.lab.popen([socat, f"TCP-LISTEN:{inst.gui_port},bind=127.0.0.1,fork,reuseaddr",
                        f"UNIX-CONNECT:{sock}"], self.dir / "socat-out.log")
        self.lab.instances.append(inst)
        inst.start()
        self.syncthing = inst
        return inst


class NetLab:
    """Owner of every namespace, link and process of one test setup; `close()` removes all."""

    def __init__(self, base: Path) -> None:
        for tool in ("ip", "sysctl"):
            need(tool, "iproute2" if tool == "ip" else "procps")
        need_root("network namespaces need root")
        reap_stale_namespaces()
        self.tag = f"rpt{os.getpid()}x{secrets.token_hex(2)}"
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self._namespaces: list[Namespace] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self.instances: list[Instance] = []
        self.lans: list[Lan] = []

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def popen(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a process (output to `log`) that `close()` will stop."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        return proc

    def lan(self, name: str) -> Lan:
        """A new LAN segment (bridge) with the IPv4 network 10.<200+n>.0.0/24."""
        lan = Lan(self, name, len(self.lans) + 1)
        self.lans.append(lan)
        return lan

    def node(self, name: str, lan: Lan) -> Node:
        """A new host on `lan` (port ``lan0``, next IPv4 address, default route if routed)."""
        return Node(self, name, lan)

    def router(self, name: str, *lans: Lan) -> Namespace:
        """A namespace forwarding IPv4 between `lans`; it becomes their default gateway (set
        this before adding nodes to them)."""
        ns = Namespace(self, name)
        ns.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        for i, lan in enumerate(lans):
            addr, _ = lan.attach(ns, f"net{i}")
            lan.gateway = addr
        return ns

    def close(self) -> None:
        """Stop Syncthing (REST shutdown), every process, then delete every namespace."""
        for inst in self.instances:
            with contextlib.suppress(Exception):
                inst.stop()
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                _stop(proc)
        for ns in reversed(self._namespaces):
            _delete_netns(ns.name)
        self._namespaces.clear()


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[Callable[[], NetLab]]:
    """Factory fixture: ``lab = netlab()``; everything it made is removed afterwards."""
    made: list[NetLab] = []

    def make() -> NetLab:
        lab = NetLab(tmp_path / f"lab{len(made)}")
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.close()

