"""The appliance's firewall (recorder.mesh.membership.firewall) with real yggdrasil nodes in network
namespaces (tests/netns.py): nobody outside the mesh gets in.

One lab per module. LAN "lan": the device ``dev`` (yggdrasil with LAN multicast and a static
listener, real Syncthing on its yggdrasil address, the real service ``recorder run`` inside its
namespace with ``[yggdrasil] firewall = true`` and ``[web] mesh = true``), a member ``m``
(yggdrasil, Syncthing, paired with ``recorder mesh add-peer``), a stranger ``s`` peered with
dev by LAN multicast, and a phone ``p`` without yggdrasil (the LAN). Site "site", behind a
router: a stranger ``f`` peered with dev through its static listener only.

The rule set is loaded only inside dev's namespace (the service runs there), never on the host.
Port scans use nmap (Debian's): SYN scan of all 65535 TCP ports and UDP scan of all 65535 UDP
ports; a port that answers (open, or closed: RST / ICMP unreachable) fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recorder.config import parse_config
from recorder.control import send_command
from recorder.errors import ConfigError, ServiceError
from recorder.mesh.membership import firewall
from recorder.mesh.net import yggdrasil_conf
from tests.chrony import start_chronyd
from tests.conftest import need, run_cli, terminate, toml_config, wait_until
from tests.docroot import nginx_config
from tests.netns import NetLab, Node, Yggdrasil
from tests.service_harness import loop_wav  # noqa: F401 - a fixture used below

STATIC_PORT = 12345
WEB_PORT = 8080
SYNC_PORT = 22000
# Probes/s of each stranger's scan. yggdrasil carries most of 2 x 4000/s here; far faster and
# most probes never arrive. The ports whose probe was lost are scanned again.
SCAN_RATE = 4000
DEADLINE = 90.0  # generous: other engineers load the same 2-core machine
ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs/ARCHITECTURE.md"


# --- the rule set, from the config (no root needed) -----------------------------------------


def _policy(members=("200:1::1",), joining=False, **sections):
    cfg = parse_config(sections)
    settings = firewall.Settings.of(cfg.yggdrasil, cfg.web, cfg.radio)
    return firewall.policy(settings, members, joining)


def test_policy_follows_the_config():
    p = _policy(members=["200:0001::1", "10.0.0.1", "fd00::1", "201:abcd::5", "junk"])
    assert p.members == ("200:1::1", "201:abcd::5")  # yggdrasil addresses only, normalised
    assert (p.member_tcp, p.member_udp, p.open_tcp, p.lan_closed_tcp) == \
        ((22000,), (123, 22000), (), ())
    assert p.interface == "ygg0"
    web = _policy(web={"mesh": True, "port": 8090})
    assert web.member_tcp == (80, 8090, 22000) and web.lan_closed_tcp == ()
    assert _policy(web={"lan": False}).lan_closed_tcp == (80, 8080)
    assert _policy(radio={"public": True, "url": "http://127.0.0.1:8011"}).open_tcp == (8011,)
    assert _policy(joining=True).open_tcp == (22000,)
    assert _policy(yggdrasil={"interface": "tun7"}).interface == "tun7"


def test_rule_set_replaces_its_own_table_whole():
    p = _policy(web={"mesh": True, "lan": False})
    text = firewall.render(p)
    lines = text.splitlines()
    # Create-if-missing, delete, define: one transaction, never another table touched.
    assert lines[:3] == ["table inet recorderpi {}", "delete table inet recorderpi",
                         "table inet recorderpi {"]
    assert f'comment "recorderpi firewall {firewall.digest(p)}"' in text
    assert "elements = { 200:1::1 }" in text
    assert 'iifname "ygg0" jump overlay' in text and "meta nfproto ipv4 drop" in text
    assert "ip6 saddr @members tcp dport { 80, 8080, 22000 } accept" in text
    assert 'iifname != { "lo", "ygg0" } fib daddr type local tcp dport { 80, 8080 } drop' in text
    assert lines[-3:] == ["    counter drop", "  }", "}"]
    # Nobody yet: no member rule, everything on the overlay dropped (but replies).
    empty = firewall.render(_policy(members=()))
    assert "@members tcp" not in empty and "elements" not in empty
    assert firewall.digest(_policy(members=("200:1::2",))) != firewall.digest(p)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("yggdrasil", "allowed_peers", ["abc"], "must be a list of yggdrasil public keys"),
    ("yggdrasil", "allowed_peers", "f" * 64, "must be a list of yggdrasil public keys"),
    ("yggdrasil", "firewall", "yes", "must be true or false"),
    ("web", "mesh", 1, "must be true or false"),
    ("web", "lan", "no", "must be true or false"),
    ("radio", "public", "on", "must be true or false"),
])
def test_config_keys_are_validated(section, key, value, message):
    with pytest.raises(ConfigError, match=f"^{section}\\.{key}: {message}"):
        parse_config({section: {key: value}})


def test_allowed_peers_become_allowed_public_keys():
    key = "AB" * 32
    cfg = parse_config({"yggdrasil": {"allowed_peers": [key]}})
    assert cfg.yggdrasil.allowed_peers == (key.lower(),)
    assert yggdrasil_conf.wanted_settings(cfg.yggdrasil, "dev")["AllowedPublicKeys"] == \
        [key.lower()]
    default = parse_config({})
    assert default.yggdrasil.firewall is False  # on only in the shipped configs
    assert yggdrasil_conf.wanted_settings(default.yggdrasil, "dev")["AllowedPublicKeys"] == []


# --- with real yggdrasil nodes (root) -------------------------------------------------------


class DeviceService:
    """``recorder run`` inside `node`'s namespace (stopped by `stop` and the lab)."""

    def __init__(self, node: Node, config: str, data: Path) -> None:
        self.node, self.config, self.data = node, config, data
        self.log = node.dir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.node.prefix, sys.executable, "-m", "recorder", "--config", self.config,
                 "run"], env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self.status().get("state") == "idle", DEADLINE, 0.1,
                   "the device's service ready", detail=self.tail)

    def status(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        try:
            return send_command(self.data / "state/control.sock", "status", timeout=15)
        except ServiceError:
            return {}

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _cli(node: Node, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    res = run_cli("--config", config, *args, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def _base_config(node: Node) -> dict[str, dict[str, Any]]:
    inst = node.syncthing
    assert inst is not None and node.ygg is not None
    return {
        "device": {"id": inst.recorder_id},
        "storage": {"data_dir": str(inst.root / "data"), "sync_root": str(inst.sync_root),
                    "reserve_mb": 0},
        "syncthing": {"url": inst.url, "api_key_file": str(inst.key_file),
                      "watcher_delay": 60, "rescan_interval": 3600},
        "yggdrasil": {"admin_endpoint": node.ygg.endpoint, "interface": node.ygg.ifname},
    }


def _pair(a: Node, a_cfg: str, b: Node, b_cfg: str) -> None:
    for me, cfg, other in ((a, a_cfg, b), (b, b_cfg, a)):
        assert other.syncthing is not None
        res = _cli(me, cfg, "mesh", "add-peer", other.syncthing.device_id, "--name",
                   other.short, "--address", other.sync_address, "--peer-id",
                   other.syncthing.recorder_id)
        assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory, loop_wav) -> Iterator[NetLab]:  # noqa: F811
    for tool in ("yggdrasil", "socat", "syncthing", "nft", "nmap", "curl", "ss"):
        need(tool, {"nft": "nftables", "ss": "iproute2"}.get(tool))
    with NetLab(tmp_path_factory.mktemp("fwlab")) as lab:
        lan, site = lab.lan("lan"), lab.lan("site")
        lab.router("router", lan, site)
        dev, m, s, p = (lab.node(n, lan) for n in ("dev", "m", "s", "p"))
        f = lab.node("f", site)
        dev.start_yggdrasil(listen=[f"tls://{dev.ipv4}:{STATIC_PORT}"])
        m.start_yggdrasil()
        s.start_yggdrasil()
        f.start_yggdrasil(multicast=False, peers=[f"tls://{dev.ipv4}:{STATIC_PORT}"])
        for node in (dev, m):
            node.start_syncthing()
        m_cfg = toml_config(m.dir / "recorder.toml", _base_config(m))
        raw = _base_config(dev)
        raw["yggdrasil"]["firewall"] = True
        raw.update(audio={"source": f"file:{loop_wav}", "preroll": 0.5},
                   web={"listen": "", "port": WEB_PORT, "mesh": True},
                   mesh={"probe_interval": 0})
        dev_cfg = toml_config(dev.dir / "recorder.toml", raw)
        _pair(dev, dev_cfg, m, m_cfg)
        _start_docroot(dev)
        start_chronyd(dev, None)  # mesh time: serves 200::/7 on UDP 123
        service = DeviceService(dev, dev_cfg, dev.syncthing.root / "data")
        service.start()
        lab.nodes = {"dev": dev, "m": m, "s": s, "p": p, "f": f}
        lab.dev_cfg, lab.m_cfg, lab.service = dev_cfg, m_cfg, service
        try:
            wait_until(lambda: _table(dev) is not None, DEADLINE, 0.2,
                       "the service loaded its rule set", detail=service.tail)
            yield lab
        finally:
            service.stop()


def _start_docroot(node: Node) -> None:
    """nginx with the shipped document root server block, listening as shipped (port 80,
    IPv4 and IPv6, every address) inside `node`'s namespace."""
    nginx = need("nginx", "nginx-light")
    work = node.dir / "nginx"
    work.mkdir(exist_ok=True)
    root = node.syncthing.sync_root if node.syncthing else work
    conf = nginx_config(root, 80, work)
    conf.write_text(conf.read_text().replace(
        "listen 127.0.0.1:80;", "listen 80 default_server;\n    listen [::]:80 default_server;"))
    node.popen([nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)],
               work / "nginx.out")
    wait_until(lambda: _http(node, "127.0.0.1", 80, path="/_health") == 200, DEADLINE, 0.1,
               "the document root up", detail=lambda: (work / "error.log").read_text())


def _table(node: Node) -> str | None:
    res = node.exec("nft", "list", "table", "inet", "recorderpi", check=False)
    return res.stdout if res.returncode == 0 else None


def _http(node: Node, host: str, port: int = WEB_PORT, timeout: float = 3.0,
          path: str = "/") -> int:
    """The HTTP status `node` gets from http://host:port/path (0: no answer in `timeout`)."""
    where = f"[{host}]" if ":" in host else host
    res = node.exec("curl", "-g", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                    "--connect-timeout", str(timeout), "-m", str(timeout + 5),
                    f"http://{where}:{port}{path}", check=False, timeout=timeout + 20)
    return int(res.stdout or 0)


def _connects(node: Node, host: str, port: int, timeout: float = 1.0) -> bool:
    res = node.exec(sys.executable, "-c",
                    "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])),"
                    f" {timeout}).close()", host, str(port), check=False, timeout=30)
    return res.returncode == 0


def _nmap(node: Node, target: str, *flags: str, ports: str = "1-65535", rate: int = SCAN_RATE,
          retries: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*node.prefix, "nmap", "-6", "-n", "-Pn", "--min-rate", str(rate), "--max-rate",
         str(rate), "--max-retries", str(retries), "-oX", "-", *flags, f"-p{ports}", target],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _states(proc: subprocess.Popen[str]) -> dict[str, set[int]]:
    """Port numbers by state (``open``, ``closed``, ...) from a finished nmap's XML."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    states: dict[str, set[int]] = {}
    for port in ET.fromstring(out).iter("port"):
        state = port.find("state")
        assert state is not None
        states.setdefault(state.get("state", "?"), set()).add(int(port.get("portid", 0)))
    return states


def _scan(node: Node, target: str, *flags: str, ports: str = "1-65535") -> dict[str, set[int]]:
    """nmap from inside `node` (slowly: every answer counts): port numbers by state."""
    return _states(_nmap(node, target, *flags, ports=ports, rate=1000, retries=2))


def _peered(a: Node, b: Node) -> bool:
    assert a.ygg is not None
    return b.ygg_key in a.ygg.peer_keys()


def _reaches(node: Node, target: Node) -> bool:
    """`node` has a route to `target` over the overlay (node info answered)."""
    assert node.ygg is not None
    try:
        node.ygg.ctl_json("getNodeInfo", f"key={target.ygg_key}")
    except RuntimeError:
        return False
    return True


# --- members in, strangers out --------------------------------------------------------------


def test_member_reaches_syncthing_and_the_web_page_over_yggdrasil(lab):
    dev, m = lab.nodes["dev"], lab.nodes["m"]

    def connected() -> bool:
        conns = dev.syncthing.client.connections().get("connections", {})
        conn = conns.get(m.syncthing.device_id, {})
        return bool(conn.get("connected")) and m.ygg_address in conn.get("address", "")

    wait_until(connected, DEADLINE, 0.2, "dev and m connected over yggdrasil")
    wait_until(lambda: _http(m, dev.ygg_address) == 200, DEADLINE, 0.5,
               "m opening dev's web page over yggdrasil")
    # The member's view, scanned like the strangers' below: exactly what it may use answers.
    states = _scan(m, dev.ygg_address, "-sS", ports="1-1024,8000-8100,21000-23000")
    assert states.get("open") == {80, WEB_PORT, SYNC_PORT} and not states.get("closed"), states
    assert _http(m, dev.ygg_address, 80, path="/_health") == 200  # the document root
    assert _scan(m, dev.ygg_address, "-sU", ports="123").get("open") == {123}  # mesh time


def test_strangers_on_the_overlay_get_no_answer_on_any_port(lab):
    """s (peered with dev through the LAN) and f (through dev's static listener, from the
    other site) scan all 65535 TCP (SYN) and UDP ports of dev's yggdrasil address, at once."""
    dev, s, f = (lab.nodes[n] for n in ("dev", "s", "f"))
    wait_until(lambda: _peered(dev, s), DEADLINE, 0.2, "s peered with dev (LAN multicast)")
    wait_until(lambda: _peered(f, dev), DEADLINE, 0.2, "f peered with dev (static peer)")
    for stranger in (s, f):
        wait_until(lambda stranger=stranger: _reaches(stranger, dev), DEADLINE, 0.5,
                   f"{stranger.short} routing to dev")
        assert _http(stranger, dev.ygg_address) == 0
    started = time.monotonic()
    _log_probes(dev)
    try:
        for kind, proto in (("-sS", "tcp"), ("-sU", "udp")):
            rounds = _scan_every_port(dev, (s, f), kind, proto)
            print(f"\n{proto}: every port probed from s and f ({rounds} round(s)), no answer")
    finally:
        dev.exec("nft", "delete", "table", "inet", "probes", check=False)
    print(f"full TCP+UDP scans from s and f: {time.monotonic() - started:.1f} s")


def _log_probes(dev: Node) -> None:
    """A table of the test's own in dev's namespace, hooked before the firewall's chain: each
    probe arriving removes its (source, port) from a set loaded with every one expected, so
    what is left was never probed (lost on the way)."""
    assert dev.ygg is not None
    iif = f'iifname "{dev.ygg.ifname}"'
    syn = "tcp flags & (syn | ack) == syn"
    kind = "type ipv6_addr . inet_service; flags dynamic; size 262144;"
    _nft_script(dev, f"""table inet probes {{
  set left_tcp {{ {kind} }}
  set left_udp {{ {kind} }}
  chain arrived {{
    type filter hook prerouting priority -200; policy accept;
    {iif} {syn} delete @left_tcp {{ ip6 saddr . tcp dport }}
    {iif} meta l4proto udp delete @left_udp {{ ip6 saddr . udp dport }}
  }}
}}
""")


def _nft_script(dev: Node, script: str) -> None:
    path = dev.dir / "probes.nft"
    path.write_text(script)
    dev.exec("nft", "-f", str(path), timeout=120)


def _unprobed(dev: Node, proto: str) -> dict[str, set[int]]:
    """The ports no probe arrived at yet, by source address."""
    text = dev.exec("nft", "-nn", "list", "set", "inet", "probes", f"left_{proto}").stdout
    left: dict[str, set[int]] = {}
    for addr, port in re.findall(r"([0-9a-f:]+) \. (\d+)", text):
        left.setdefault(addr, set()).add(int(port))
    return left


def _scan_every_port(dev: Node, strangers: tuple[Node, ...], kind: str, proto: str) -> int:
    """Scan all 65535 ports of dev from every stranger at once, then again the ports whose
    probe was lost on the way (yggdrasil drops some under load) until each arrived; assert no
    port answered. Returns the number of rounds."""
    every = ", ".join(f"{n.ygg_address} . {p}" for n in strangers for p in range(1, 65536))
    _nft_script(dev, f"add element inet probes left_{proto} {{ {every} }}\n")
    todo = {n: set(range(1, 65536)) for n in strangers}
    for round_ in range(1, 11):
        scans = {n: _nmap(n, dev.ygg_address, kind, ports=_ports(todo[n])) for n in todo}
        for n, proc in scans.items():
            states = _states(proc)
            # No port listed: every one probed was filtered (no answer at all).
            assert not states.get("open") and not states.get("closed"), (n.short, states)
        left = _unprobed(dev, proto)
        todo = {n: ports for n in todo if (ports := left.get(n.ygg_address, set()))}
        if not todo:
            return round_
    raise AssertionError(f"{proto} probes never arrived: "
                         f"{ {n.short: len(ports) for n, ports in todo.items()} }")


def _ports(ports: set[int]) -> str:
    """nmap's -p list for `ports`, as ranges (one covering range when the list would be too
    long for a command line: many scattered ports lost)."""
    out, ordered = [], sorted(ports)
    start = prev = ordered[0]
    for p in [*ordered[1:], -1]:
        if p != prev + 1:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = p
        prev = p
    text = ",".join(out)
    return text if len(text) < 20000 else f"{ordered[0]}-{ordered[-1]}"


def test_an_open_invite_opens_syncthing_to_the_overlay_until_it_expires(lab):
    """The device joining is not known by address until it knocks: while an invite is open,
    anyone on the overlay may reach Syncthing's port (Syncthing admits only the proof), and
    nothing else; when the invite expires the port closes again."""
    dev, s = lab.nodes["dev"], lab.nodes["s"]
    assert not _connects(s, dev.ygg_address, SYNC_PORT)
    res = _cli(dev, lab.dev_cfg, "mesh", "invite", "--hours", str(12 / 3600))
    assert res.returncode == 0, res.stderr
    wait_until(lambda: _connects(s, dev.ygg_address, SYNC_PORT), DEADLINE, 0.2,
               "Syncthing open to the overlay while the invite is open", detail=lab.service.tail)
    assert not _connects(s, dev.ygg_address, WEB_PORT)
    wait_until(lambda: not _connects(s, dev.ygg_address, SYNC_PORT), DEADLINE, 0.2,
               "Syncthing closed again once the invite expired", detail=lab.service.tail)


def test_lan_client_keeps_its_access(lab):
    dev, p = lab.nodes["dev"], lab.nodes["p"]
    assert _http(p, dev.ipv4) == 200
    assert _http(p, dev.ipv4, 80, path="/_health") == 200


def test_removed_member_is_shut_out_then_admitted_again(lab):
    dev, m = lab.nodes["dev"], lab.nodes["m"]
    wait_until(lambda: _http(m, dev.ygg_address) == 200, DEADLINE, 0.5, "m reaching dev")
    started = time.monotonic()
    res = _cli(dev, lab.dev_cfg, "mesh", "remove-peer", m.syncthing.recorder_id)
    assert res.returncode == 0, res.stderr
    try:
        wait_until(lambda: not _connects(m, dev.ygg_address, WEB_PORT), DEADLINE, 0.1,
                   "m shut out", detail=lab.service.tail)
        shut = time.monotonic() - started
        assert not _connects(m, dev.ygg_address, SYNC_PORT)
        print(f"\nremoved member shut out {shut:.2f} s after `mesh remove-peer` began")
    finally:
        again = _cli(dev, lab.dev_cfg, "mesh", "add-peer", m.syncthing.device_id, "--name", "m",
                     "--address", m.sync_address, "--peer-id", m.syncthing.recorder_id)
        assert again.returncode == 0, again.stderr
    started = time.monotonic()
    wait_until(lambda: _connects(m, dev.ygg_address, WEB_PORT), DEADLINE, 0.1,
               "m let in again", detail=lab.service.tail)
    print(f"re-admitted member let in {time.monotonic() - started:.2f} s after add-peer")


# --- the rule set stays in place ------------------------------------------------------------


def _blocked_for_stranger(lab) -> bool:
    dev, s = lab.nodes["dev"], lab.nodes["s"]
    return not _connects(s, dev.ygg_address, WEB_PORT)


def test_rules_are_restored_after_an_nftables_flush(lab):
    dev = lab.nodes["dev"]
    # What nftables.service does on (re)start: Debian's /etc/nftables.conf ("flush ruleset").
    conf = Path("/etc/nftables.conf")
    if conf.is_file() and "flush ruleset" in conf.read_text():
        dev.exec("nft", "-f", str(conf))
    else:
        dev.exec("nft", "flush", "ruleset")
    started = time.monotonic()
    assert _table(dev) is None
    wait_until(lambda: _table(dev) is not None, DEADLINE, 0.05, "the rule set loaded again",
               detail=lab.service.tail)
    print(f"\nrule set back {time.monotonic() - started:.2f} s after the flush")
    assert _blocked_for_stranger(lab)
    assert _http(lab.nodes["m"], dev.ygg_address) == 200


def test_rules_survive_a_service_restart(lab):
    dev = lab.nodes["dev"]
    lab.service.stop()
    try:
        # Stopped, the service leaves its rules loaded: the overlay stays closed.
        assert _table(dev) is not None and _blocked_for_stranger(lab)
        dev.exec("nft", "delete", "table", "inet", "recorderpi")
    finally:
        lab.service.start()
    wait_until(lambda: _table(dev) is not None, DEADLINE, 0.1, "rules loaded at start",
               detail=lab.service.tail)
    assert _blocked_for_stranger(lab)
    wait_until(lambda: _http(lab.nodes["m"], dev.ygg_address) == 200, DEADLINE, 0.5,
               "m reaching dev after the restart")


def _doctor(node: Node, config: str) -> dict[str, Any]:
    res = node.exec(sys.executable, "-m", "recorder", "--config", config, "doctor", "--json",
                    check=False, timeout=120)
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    return checks["firewall"]


def test_doctor_checks_the_rules_are_in_place(lab):
    dev, s = lab.nodes["dev"], lab.nodes["s"]
    wait_until(lambda: _doctor(dev, lab.dev_cfg)["ok"], DEADLINE, 1.0, "doctor's firewall ok")
    assert "1 member address(es)" in _doctor(dev, lab.dev_cfg)["detail"]
    # The same config where no rule set is loaded (the stranger's namespace): a failure.
    missing = _doctor(s, lab.dev_cfg)
    assert not missing["ok"] and missing["severity"] == "error"
    assert missing["detail"].startswith("no nftables table inet recorderpi"), missing
    # Without CAP_NET_ADMIN (doctor run as the recorder user): one line saying what it needs.
    res = dev.exec("setpriv", "--bounding-set", "-all", "--inh-caps", "-all", sys.executable,
                   "-m", "recorder", "--config", lab.dev_cfg, "mesh", "firewall", "--check",
                   check=False, timeout=120)
    assert res.returncode == 1 and res.stderr == (
        "recorder: error: cannot read the nftables rule set: needs root or CAP_NET_ADMIN "
        "(sudo recorder doctor)\n"), res.stderr
    ok = dev.exec(sys.executable, "-m", "recorder", "--config", lab.dev_cfg, "mesh",
                  "firewall", "--check", timeout=120)
    assert ok.stdout.startswith("table inet recorderpi in place: 1 member address(es) on ygg-dev")


# --- every listening socket accounted for ---------------------------------------------------


def _documented() -> list[dict[str, str]]:
    """The rows of docs/ARCHITECTURE.md's "Listening sockets" table."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Listening sockets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip().lower() for c in rows[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in r.strip("|").split("|")), strict=True))
            for r in rows[2:]]


def _documented_port(row: dict[str, str], proto: str, port: int, process: str,
                     addr: str) -> bool:
    if process not in row["process"] or proto not in row["protocol"].lower():
        return False
    spec = row["port"].strip("`")
    if spec == "ephemeral":  # yggdrasil's multicast listeners: link-local addresses only
        return addr.startswith("fe80:")
    return str(port) in re.findall(r"\d+", spec)


def _undocumented(node: Node) -> tuple[list[tuple[str, int, str, str]], list[tuple]]:
    """(every socket listening beyond loopback in `node`, those without a row in the table)."""
    rows = _documented()
    assert rows, "no rows in the Listening sockets table"
    out = node.exec("ss", "-H", "-l", "-n", "-t", "-u", "-p").stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        proto, local = fields[0], fields[4]
        addr, _, port = local.rpartition(":")
        addr = addr.split("%")[0].strip("[]")
        if addr == "::1" or addr.startswith("127."):
            continue
        m = re.search(r'users:\(\("([^"]+)"', line)
        found.append((proto, int(port), m.group(1) if m else "?", addr))
    missing = [f for f in found if not any(_documented_port(r, *f) for r in rows)]
    return found, missing


def test_every_listening_socket_is_documented(lab):
    """Everything listening on dev (yggdrasil, Syncthing, the service with its web page, the
    document root's nginx, chronyd) on an address other than loopback has its row in
    docs/ARCHITECTURE.md; a new listener would not."""
    dev = lab.nodes["dev"]
    found, missing = _undocumented(dev)
    print("\nlistening beyond loopback:", sorted(set(found)))
    # The listing is real: it sees the web page, Syncthing, nginx, chronyd and yggdrasil.
    assert {WEB_PORT, SYNC_PORT, 80, 123, STATIC_PORT} <= {p for _, p, _, _ in found}, found
    assert not missing, f"listening but not in docs/ARCHITECTURE.md: {missing}"
    stray = dev.popen(["socat", "TCP6-LISTEN:4444,fork", "SYSTEM:true"], dev.dir / "stray.log")
    try:
        wait_until(lambda: any(p == 4444 for _, p, _, _ in _undocumented(dev)[1]), DEADLINE,
                   0.1, "a new listener found undocumented")
    finally:
        terminate(stray)


# --- yggdrasil: direct peerings from members' keys only -------------------------------------


def test_allowed_peers_refuses_direct_peerings_from_other_keys(netlab, tmp_path):
    """``[yggdrasil] allowed_peers`` becomes yggdrasil's AllowedPublicKeys (written by the
    appliance's own `recorder mesh yggdrasil-config`): a node whose key is listed peers with
    the device's static listener, another node dialling the same listener is refused; a LAN
    neighbour found by multicast is not affected."""
    lab = netlab()
    lan = lab.lan("lan")
    x, ok, no = (lab.node(n, lan) for n in ("x", "ok", "no"))
    listener = f"tls://{x.ipv4}:{STATIC_PORT}"
    # Their configs (keys) first; started once x listens (a failed dial backs off for long).
    for node in (ok, no):
        node.ygg = Yggdrasil(node, multicast=False, peers=[listener], listen=[])
    conf, sock = tmp_path / "yggdrasil.conf", tmp_path / "run/ygg.sock"
    config = toml_config(tmp_path / "recorder.toml", {
        "device": {"id": "dev-x"}, "storage": {"data_dir": str(tmp_path / "data")},
        "yggdrasil": {"admin_endpoint": f"unix://{sock}", "multicast": "^lan0$",
                      "interface": "ygg-x"}})
    with open(config, "a") as f:  # lists: beyond toml_config's flat values
        f.write(f'listen = ["tls://{x.ipv4}:{STATIC_PORT}"]\nallowed_peers = ["{ok.ygg_key}"]\n')
    res = run_cli("--config", config, "mesh", "yggdrasil-config", "--write", str(conf),
                  timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(conf.read_text())["AllowedPublicKeys"] == [ok.ygg_key]
    x.popen([need("yggdrasil"), "-useconffile", str(conf)], tmp_path / "x.log")
    wait_until(sock.exists, DEADLINE, 0.05, "x's yggdrasil up")
    for node in (ok, no):
        node.ygg.start()

    def peer_keys() -> set[str]:
        res = subprocess.run(["yggdrasilctl", "-json", "-endpoint", f"unix://{sock}",
                              "getPeers"], capture_output=True, text=True, timeout=30)
        try:
            return {p["key"] for p in json.loads(res.stdout).get("peers") or []}
        except ValueError:
            return set()

    wait_until(lambda: ok.ygg_key in peer_keys(), DEADLINE, 0.2, "the allowed node peered")
    # Both nodes dial every few seconds; the other one is refused each time.
    refusal = f'node public key "{no.ygg_key}" is not in AllowedPublicKeys'
    wait_until(lambda: refusal in (tmp_path / "x.log").read_text(), DEADLINE, 0.2,
               "the other node's peering refused",
               detail=lambda: (tmp_path / "x.log").read_text()[-2000:])
    assert no.ygg_key not in peer_keys() and no.ygg.peers() == []
    # What it does not do (yggdrasil 0.4.7, as documented in the field guide): a LAN neighbour
    # found by multicast still peers, whatever its key. The firewall keeps it out.
    neighbour = lab.node("mc", lan)
    neighbour.start_yggdrasil()
    wait_until(lambda: neighbour.ygg_key in peer_keys(), DEADLINE, 0.2, "LAN neighbour peered")
