"""The mesh over real yggdrasil nodes in network namespaces made by the test (tests/netns.py).

One lab per module: a LAN with nodes a, b, c (yggdrasil peering by LAN multicast), a second site
with node d behind a router, reached only through a static ``Peers`` entry to a; real Syncthing
on a, b and d listening on their yggdrasil addresses only, provisioned with the appliance's own
``recorder mesh`` commands (a owns ``dev-a``, shared sendonly; b and d hold it receiveonly).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from recorder.mesh.net.yggdrasil import is_yggdrasil_address
from tests.chrony import one_clock, start_chronyd
from tests.conftest import need, run_cli, toml_config, wait_until
from tests.netns import NetLab, Node

STATIC_PORT = 12345
DEADLINE = 90.0  # generous: other engineers load the same 2-core machine

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _config(node: Node, **yggdrasil: str) -> str:
    inst = node.syncthing
    assert inst is not None
    return toml_config(node.dir / f"recorder-{len(yggdrasil)}.toml", {
        "device": {"id": inst.recorder_id},
        "storage": {"data_dir": str(inst.root / "data"), "sync_root": str(inst.sync_root),
                    "reserve_mb": 0},
        "syncthing": {"url": inst.url, "api_key_file": str(inst.key_file),
                      "watcher_delay": 60, "rescan_interval": 3600},
        "yggdrasil": {"admin_endpoint": yggdrasil.get("endpoint", node.ygg.endpoint)},
    })


def _cli(node: Node, *args: str, **yggdrasil: str) -> subprocess.CompletedProcess[str]:
    res = run_cli("--config", _config(node, **yggdrasil), *args, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def _pair(owner: Node, peer: Node) -> None:
    """`recorder mesh add-peer` on both sides with the other's yggdrasil Syncthing address."""
    for me, other in ((owner, peer), (peer, owner)):
        assert me.syncthing and other.syncthing
        res = _cli(me, "mesh", "add-peer", other.syncthing.device_id, "--name", other.short,
                   "--address", other.sync_address, "--peer-id", other.syncthing.recorder_id)
        assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    for tool in ("yggdrasil", "socat", "syncthing"):
        need(tool)
    with NetLab(tmp_path_factory.mktemp("netlab")) as lab:
        lan, site = lab.lan("lan"), lab.lan("site")
        lab.router("router", lan, site)
        nodes = {name: lab.node(name, lan) for name in "abc"}
        nodes["d"] = lab.node("d", site)
        a = nodes["a"]
        a.start_yggdrasil(listen=[f"tls://{a.ipv4}:{STATIC_PORT}"])
        nodes["b"].start_yggdrasil()
        nodes["c"].start_yggdrasil()
        nodes["d"].start_yggdrasil(multicast=False, peers=[f"tls://{a.ipv4}:{STATIC_PORT}"])
        for name in "abd":
            nodes[name].start_syncthing()
        _pair(a, nodes["b"])
        _pair(a, nodes["d"])
        _pair(nodes["b"], nodes["d"])  # a full mesh, as the appliance pairs devices
        lab.nodes = nodes
        yield lab


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=30).stdout


def test_lab_removes_everything_even_when_the_test_fails(netlab):
    lab = netlab()
    with pytest.raises(RuntimeError, match="the test failed"), lab:
        lan = lab.lan("lan")
        node = lab.node("x", lan)
        node.start_yggdrasil()
        proc = lab._procs[-1]
        assert lab.tag in _namespaces()
        raise RuntimeError("the test failed")
    assert lab.tag not in _namespaces()
    assert proc.poll() is not None  # yggdrasil stopped, not left running


def test_lan_nodes_peer_by_lan_multicast(lab):
    a, b, c = (lab.nodes[n] for n in "abc")
    addresses = {n.ygg_address for n in lab.nodes.values()}
    assert len(addresses) == 4 and all(is_yggdrasil_address(x) for x in addresses)
    for node in (a, b, c):
        others = {n.ygg_key for n in (a, b, c) if n is not node}
        wait_until(lambda node=node, others=others: others <= node.ygg.peer_keys(), DEADLINE,
                   0.1, f"{node.short} peered with the other LAN nodes")
        lan_links = [p for p in node.ygg.peers() if p["key"] in others]
        # Multicast peerings run over the link-local address of lan0.
        assert all(p["remote"].startswith("tls://[fe80:") for p in lan_links), lan_links
    d = lab.nodes["d"]
    assert d.ygg_key not in b.ygg.peer_keys() | c.ygg.peer_keys()


def test_other_site_is_reached_only_through_its_static_peer(lab):
    a, c, d = (lab.nodes[n] for n in "acd")
    wait_until(lambda: a.ygg_key in d.ygg.peer_keys(), DEADLINE, 0.1, "d peered with a")
    peers = d.ygg.peers()
    assert [(p["key"], p["remote"]) for p in peers] == [
        (a.ygg_key, f"tls://{a.ipv4}:{STATIC_PORT}")]
    assert d.ygg.ctl_json("getMulticastInterfaces").get("multicast_interfaces") in ([], None)

    def c_answers() -> dict | None:
        try:  # a node two hops away answers d's node-info request over the mesh
            return d.ygg.ctl_json("getNodeInfo", f"key={c.ygg_key}")
        except RuntimeError:
            return None

    info = wait_until(c_answers, DEADLINE, 0.5, "c's node info seen from d")
    assert info[c.ygg_key]["name"] == "c"


def _publish(node: Node, rel: str, data: bytes) -> Path:
    """Write a file into the node's own folder the appliance's way (stage, rename), scan."""
    inst = node.syncthing
    assert inst is not None
    target = inst.folder_path(inst.recorder_id) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = inst.root / f".{target.name}.staged"
    staged.write_bytes(data)
    os.replace(staged, target)
    inst.client.scan(f"recorderpi-{inst.recorder_id}")
    return target


def _connected_over_yggdrasil(node: Node, other: Node) -> bool:
    assert node.syncthing and other.syncthing
    conns = node.syncthing.client.connections().get("connections", {})
    conn = conns.get(other.syncthing.device_id, {})
    return bool(conn.get("connected")) and other.ygg_address in conn.get("address", "")


def test_syncthing_syncs_a_sendonly_folder_over_yggdrasil_addresses(lab):
    a, b, d = (lab.nodes[n] for n in "abd")
    for peer in (b, d):
        wait_until(lambda peer=peer: _connected_over_yggdrasil(a, peer), DEADLINE, 0.2,
                   f"a connected to {peer.short} at its yggdrasil address")
    assert a.syncthing.client.get_folder("recorderpi-dev-a")["type"] == "sendonly"
    for peer in (b, d):
        assert peer.syncthing.client.get_folder("recorderpi-dev-a")["type"] == "receiveonly"
    _publish(a, "recordings/one.ogg", b"OggS over yggdrasil")
    for peer in (b, d):  # b on the LAN, d on the other site
        got = peer.syncthing.wait_for_file("recordings/one.ogg", "dev-a", DEADLINE)
        assert got.read_bytes() == b"OggS over yggdrasil"


def test_cut_link_is_detected_and_healed(lab):
    a, b, d = (lab.nodes[n] for n in "abd")
    wait_until(lambda: b.ygg_key in a.ygg.peer_keys(), DEADLINE, 0.1, "a peered with b")
    b.cut()
    try:
        wait_until(lambda: b.ygg_key not in a.ygg.peer_keys(), DEADLINE, 0.2,
                   "a noticing the cut link to b")
        wait_until(lambda: b.ygg.peers() == [], DEADLINE, 0.2, "b noticing its link is gone")
        _publish(a, "recordings/two.ogg", b"made while b was cut off")
        d.syncthing.wait_for_file("recordings/two.ogg", "dev-a", DEADLINE)  # d is unaffected
    finally:
        b.restore()
    wait_until(lambda: b.ygg_key in a.ygg.peer_keys(), DEADLINE, 0.2, "b re-peered with a")
    got = b.syncthing.wait_for_file("recordings/two.ogg", "dev-a", DEADLINE)
    assert got.read_bytes() == b"made while b was cut off"
    assert b.ygg_address in {p["address"] for p in a.ygg.peers()}  # same address after healing


def test_mesh_status_shows_yggdrasil_addresses(lab):
    a, b, d = (lab.nodes[n] for n in "abd")
    wait_until(lambda: {b.ygg_key, d.ygg_key} <= a.ygg.peer_keys(), DEADLINE, 0.1,
               "a peered with b and d")
    res = _cli(a, "mesh", "status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    ygg = status["yggdrasil"]
    assert ygg["error"] is None
    assert ygg["address"] == a.ygg_address and ygg["key"] == a.ygg_key
    assert ygg["syncthing_address"] == a.sync_address
    assert {b.ygg_address, d.ygg_address} <= {p["address"] for p in ygg["peers"]}
    by_name = {p["name"]: p for p in status["peers"]}
    assert by_name["b"]["yggdrasil"] == [b.ygg_address]
    assert by_name["d"]["yggdrasil"] == [d.ygg_address]

    text = _cli(a, "mesh", "status")
    assert text.returncode == 0, text.stderr
    assert f"yggdrasil {a.ygg_address} (peers dial {a.sync_address})" in text.stdout
    assert f"    yggdrasil {b.ygg_address}" in text.stdout
    # d dialled a's static listener: a sees the link coming from d's address.
    assert f"yggdrasil peer {d.ygg_address} via tls://{d.ipv4}:" in text.stdout


def test_mesh_status_when_yggdrasil_is_down_or_misconfigured(lab, tmp_path):
    a = lab.nodes["a"]
    gone = f"unix://{tmp_path}/no-such.sock"
    res = _cli(a, "mesh", "status", endpoint=gone)
    assert res.returncode == 0, res.stderr  # the rest of the status still shows
    line = next(x for x in res.stdout.splitlines() if x.startswith("yggdrasil"))
    assert line == (f"yggdrasil: unavailable: yggdrasil getSelf at {gone}: no admin socket "
                    "(is yggdrasil running?)")
    bad = _cli(a, "mesh", "status", endpoint="/run/yggdrasil.sock")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        "yggdrasil.admin_endpoint: must be unix:///PATH or tcp://HOST:PORT (or empty); "
        "got '/run/yggdrasil.sock'")
    off = _cli(a, "mesh", "status", "--json", endpoint="")
    assert off.returncode == 0 and json.loads(off.stdout)["yggdrasil"] is None


# --- time without internet ------------------------------------------------------------------

def test_mesh_time_sources_and_chrony_over_yggdrasil(lab, tmp_path):
    """Offline, the mesh agrees on one clock: chrony on a, b and d, each with all its Syncthing
    peers' yggdrasil addresses as sources (``recorder mesh time-sources --write``) and the
    appliance's mesh config (orphan mode, which needs every device to poll every other).
    Exactly one device runs on its local reference and every other one is synchronised to a
    peer. chronyd runs with -x: it measures, selects and serves time but never touches the
    clock the namespaces share with the host."""
    a, b, d = (lab.nodes[n] for n in "abd")
    peers = {a: {b.ygg_address, d.ygg_address}, b: {a.ygg_address, d.ygg_address},
             d: {a.ygg_address, b.ygg_address}}
    chronys = {}
    for node, expected in peers.items():
        sources_dir = tmp_path / f"sources-{node.short}"
        sources_dir.mkdir()
        target = sources_dir / "recorderpi-mesh.sources"
        res = _cli(node, "mesh", "time-sources", "--write", str(target))
        assert res.returncode == 0 and res.stdout.startswith("changed"), res.stderr
        text = target.read_text()
        assert {line.split()[1] for line in text.splitlines() if line.startswith("server ")} \
            == expected
        assert all(f"server {x} iburst\n" in text for x in expected)
        again = _cli(node, "mesh", "time-sources", "--write", str(target))
        assert again.stdout.startswith("unchanged"), again.stdout
        assert [p.name for p in sources_dir.iterdir()] == [target.name]  # no temp file left
        chronys[start_chronyd(node, sources_dir)] = expected

    def state() -> str:
        return "\n".join(f"{c.node.short}: {c.sources()}" for c in chronys)

    wait_until(lambda: one_clock(chronys), DEADLINE, 0.5,
               "one chrony root on its local reference, two synced", detail=state)


def test_mesh_time_sources_write_failure_is_one_line(lab, tmp_path):
    a = lab.nodes["a"]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    res = _cli(a, "mesh", "time-sources", "--write", str(blocker / "x.sources"))
    assert res.returncode == 1
    assert res.stderr == (f"recorder: error: cannot write chrony sources {blocker}/x.sources: "
                          "Not a directory\n")


# --- the appliance's yggdrasil config -------------------------------------------------------


def test_yggdrasil_config_command_makes_a_working_node(lab, tmp_path):
    """`recorder mesh yggdrasil-config` (what the appliance runs before yggdrasil starts)
    writes a config a real yggdrasil runs with: keys made once, the admin socket directory
    created, LAN multicast and the static peer from [yggdrasil]; a re-run changes nothing."""
    a = lab.nodes["a"]
    e = lab.node("e", lab.lans[1])  # on the other site, next to d (which has multicast off)
    conf = tmp_path / "etc/yggdrasil.conf"
    conf.parent.mkdir()
    sock = tmp_path / "run/yggdrasil/yggdrasil.sock"  # run/yggdrasil does not exist yet
    config = tmp_path / "recorder.toml"
    config.write_text(
        f'[device]\nid = "dev-e"\n[storage]\ndata_dir = "{tmp_path}/data"\n'
        f'[yggdrasil]\nadmin_endpoint = "unix://{sock}"\n'
        f'peers = ["tls://{a.ipv4}:{STATIC_PORT}"]\nmulticast = "^lan0$"\n'
        'interface = "ygg-e"\n')
    first = run_cli("--config", str(config), "mesh", "yggdrasil-config", "--write", str(conf),
                    "--json", timeout=60)
    assert first.returncode == 0, first.stderr
    assert "generated keys" in json.loads(first.stdout)["changes"]
    assert conf.stat().st_mode & 0o077 == 0o040  # the private key: owner and group only
    assert sock.parent.is_dir()
    written = json.loads(conf.read_text())
    again = run_cli("--config", str(config), "mesh", "yggdrasil-config", "--write", str(conf),
                    timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stdout
    assert json.loads(conf.read_text())["PrivateKey"] == written["PrivateKey"]

    yggdrasil = need("yggdrasil")
    e.popen([yggdrasil, "-useconffile", str(conf)], tmp_path / "yggdrasil.log")
    endpoint = f"unix://{sock}"

    def e_peers() -> list[dict] | None:
        res = subprocess.run(["yggdrasilctl", "-json", "-endpoint", endpoint, "getPeers"],
                             capture_output=True, text=True, timeout=30)
        try:  # while yggdrasil starts, yggdrasilctl may print an error and still exit 0
            return json.loads(res.stdout).get("peers") or None
        except ValueError:
            return None

    peers = wait_until(e_peers, DEADLINE, 0.1, "e peered through its static peer")
    assert [p["key"] for p in peers] == [a.ygg_key]
    assert e.ygg is None  # started from the product's config, not the harness's
