"""Mesh provisioning against three real Syncthing 1.19 instances on 127.0.0.1.

One module-scoped full mesh (a, b, c; recorder ids dev-a, dev-b, dev-c) is provisioned with
`recorder.mesh.membership.provision`: a and b pair with --peer-id, c pairs without it and accepts
the folders its peers offer. Tests that stop an instance restart it before they end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytest

from recorder.cli import mesh as mesh_cli
from recorder.errors import ConfigError, RecorderError, RemoteError
from recorder.mesh.membership import provision
from recorder.mesh.net.syncthing import SyncthingClient
from tests.conftest import free_port, run_cli, wait_until
from tests.syncthing_harness import Instance, SyncthingCluster

WATCHER_DELAY = 60  # so anything arriving fast came through the scan hand-off


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with SyncthingCluster(3, tmp_path_factory.mktemp("mesh")) as cluster:
        a, b, c = cluster
        first = {}
        for me in (a, b):
            for peer in cluster:
                if peer is not me:
                    first[(me.name, peer.name)] = _prov(me).add_peer(
                        peer.device_id, peer.name, peer.address,
                        peer_recorder_id=peer.recorder_id)
        # c does not know the recorder ids: it reads them from the folders a and b offer.
        for peer in (a, b):
            first[("c", peer.name)] = _prov(c).add_peer(peer.device_id, peer.name, peer.address)
        cluster.wait_connected()
        wanted = {"recorderpi-dev-a", "recorderpi-dev-b"}

        def offered_or_accepted() -> bool:
            known = set(c.client.pending_folders()) | {f["id"] for f in c.client.folders()}
            return wanted <= known

        wait_until(offered_or_accepted, 30, 0.1, "a's and b's offers reach c")
        first["c-setup"] = _prov(c).setup()
        cluster.first = first  # type: ignore[attr-defined]
        yield cluster


def _prov(inst: Instance) -> provision.Provisioner:
    """The provisioner `recorder mesh setup` and ``add-peer`` use, for `inst`."""
    return provision.Provisioner(inst.cfg.layout, inst.client, inst.cfg.syncthing)


def _publish(inst: Instance, relpath: str, data: bytes) -> Path:
    """Write like the publisher does: stage outside the synced tree, fsync, rename."""
    staging = inst.root / "staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / Path(relpath).name
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    dest = inst.folder_path(inst.recorder_id) / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def _scan(inst: Instance, relpath: str) -> bool:
    return inst.client.scan_quietly(provision.folder_id(inst.recorder_id), relpath)


def test_full_mesh_folders_and_types(mesh):
    for inst in mesh:
        folders = {f["id"]: f for f in inst.client.folders()}
        assert set(folders) == {"recorderpi-dev-a", "recorderpi-dev-b", "recorderpi-dev-c"}
        for f in folders.values():
            owner = f["id"].removeprefix("recorderpi-")
            assert f["path"] == str(inst.sync_root / owner)
            assert f["label"] == owner
            assert f["fsWatcherEnabled"] is True
            assert f["fsWatcherDelayS"] == WATCHER_DELAY
            assert f["rescanIntervalS"] == 3600
            devices = {d["deviceID"] for d in f["devices"]}
            if owner == inst.recorder_id:
                assert f["type"] == "sendonly"
                assert devices == {i.device_id for i in mesh}
            else:
                # Shared with its owner only: no third device may feed us its copy.
                assert f["type"] == "receiveonly"
                owner_inst = next(i for i in mesh if i.recorder_id == owner)
                assert devices == {inst.device_id, owner_inst.device_id}
            assert (Path(f["path"]) / ".stfolder").is_dir()
        assert inst.client.options()["reconnectionIntervalS"] == provision.RECONNECT_INTERVAL_S


def test_peer_folder_derived_from_offer(mesh):
    first = mesh.first
    # c's first add-peer runs came before any offer could arrive, or found it: either way the
    # folder is accepted by the time setup re-runs, named after the offered recorder id.
    runs = [first[("c", "a")], first[("c", "b")], first["c-setup"]]
    accepted = [line.split()[2] for r in runs for line in r["changes"] if "(receiveonly)" in line]
    print(f"\nc accepted, in order: {accepted}")
    assert sorted(accepted) == ["recorderpi-dev-a", "recorderpi-dev-b"]
    assert (mesh[2].sync_root / "dev-a").is_dir()
    assert (mesh[2].sync_root / "dev-b").is_dir()


def test_published_file_reaches_all_peers(mesh):
    a, b, c = mesh
    data = os.urandom(200_000)
    _publish(a, "recordings/2024/01/02/one.ogg", data)
    assert _scan(a, "recordings/2024/01/02/one.ogg")
    for peer in (b, c):
        got = peer.wait_for_file("recordings/2024/01/02/one.ogg", "dev-a", timeout=30)
        wait_until(lambda got=got: got.stat().st_size == len(data), 10, 0.05, "complete file")
        assert got.read_bytes() == data


def test_file_added_in_receiveonly_copy_never_leaves(mesh):
    a, b, c = mesh
    rogue = b.folder_path("dev-a") / "rogue.ogg"
    rogue.write_bytes(b"not a's recording")
    assert b.client.scan_quietly("recorderpi-dev-a")
    wait_until(lambda: b.client.db_status("recorderpi-dev-a").get("receiveOnlyChangedFiles"),
               20, 0.1, "b notices its local change")
    # Force scans everywhere, then prove the channel still flows: a later file from a arrives
    # on b and c while the rogue file stays on b only.
    for inst in mesh:
        assert inst.client.scan_quietly("recorderpi-dev-a")
    _publish(a, "after-rogue.ogg", b"from a")
    assert _scan(a, "after-rogue.ogg")
    b.wait_for_file("after-rogue.ogg", "dev-a")
    c.wait_for_file("after-rogue.ogg", "dev-a")
    # b announces its files in order: once a counts b complete (b has after-rogue, which came
    # later), a has heard whatever b says about rogue.ogg, and still needs nothing.
    wait_until(lambda: a.client.completion("recorderpi-dev-a", b.device_id).get("completion")
               == 100, 30, 0.1, "a seeing b's announcement of after-rogue.ogg")
    assert a.client.db_status("recorderpi-dev-a")["needFiles"] == 0
    assert not (a.folder_path("dev-a") / "rogue.ogg").exists()
    assert not (c.folder_path("dev-a") / "rogue.ogg").exists()
    assert rogue.read_bytes() == b"not a's recording"  # nobody overwrote it either
    changed = {f["id"]: f["locally_changed"] for f in _prov(b).status()["folders"]}
    assert changed["recorderpi-dev-a"] == 1


def test_rerun_changes_nothing(mesh):
    before = [inst.client.config() for inst in mesh]
    for inst in mesh:
        assert _prov(inst).setup()["changes"] == []
        for peer in mesh:
            if peer is not inst:
                for peer_id in (peer.recorder_id, None):
                    result = _prov(inst).add_peer(peer.device_id.lower(),
                                                peer.name, peer.address, peer_recorder_id=peer_id)
                    assert result["changes"] == []
                    assert result["peer_id"] == peer.recorder_id
    assert [inst.client.config() for inst in mesh] == before


def test_scan_handoff_delivers_before_the_watcher(mesh):
    """Files arrive through the scan hand-off: the deadline is half the watcher delay, so the
    watcher cannot have sent them (how fast: tests/bench/bench_mesh.py)."""
    a, b, _ = mesh
    for i in range(3):
        rel = f"handoff/take{i}.ogg"
        data = os.urandom(50_000)
        _publish(a, rel, data)
        assert _scan(a, rel)
        got = b.wait_for_file(rel, "dev-a", timeout=WATCHER_DELAY / 2)
        size = len(data)
        wait_until(lambda got=got, size=size: got.stat().st_size == size, 10, 0.05, "whole")
        assert got.read_bytes() == data


def test_scan_quietly_when_syncthing_is_down(mesh):
    nobody = SyncthingClient(f"http://127.0.0.1:{free_port()}", "key", timeout=2)
    assert nobody.scan_quietly("recorderpi-dev-a", "x.ogg") is False  # no exception

    a, _, c = mesh
    c.kill()
    try:
        assert c.client.scan_quietly("recorderpi-dev-c") is False
        with pytest.raises(RemoteError, match="cannot connect"):
            c.client.scan("recorderpi-dev-c")
        # a publishes while c is down; c catches up after its restart.
        _publish(a, "while-c-down.ogg", b"x" * 1000)
        assert _scan(a, "while-c-down.ogg")
    finally:
        c.restart()
    c.wait_for_file("while-c-down.ogg", "dev-a", timeout=45)


def test_scan_of_unknown_folder_is_a_remote_error(mesh):
    a = mesh[0]
    with pytest.raises(RemoteError, match=r"HTTP (400|404|500)"):
        a.client.scan("no-such-folder")
    assert a.client.scan_quietly("no-such-folder") is False


def test_peer_cannot_take_over_another_peers_folder(mesh):
    a, b, c = mesh
    # c offers a its copy of b's folder, as a rogue or misconfigured peer could.
    rogue = [c.device_id, b.device_id, a.device_id]
    c.client.patch_folder("recorderpi-dev-b", {"devices": [{"deviceID": d} for d in rogue]})
    try:
        wait_until(lambda: "recorderpi-dev-b" in a.client.pending_folders(c.device_id), 30, 0.1,
                   "c's offer of dev-b reaches a")
        before = a.client.config()
        assert _prov(a).setup()["changes"] == []
        assert a.client.config() == before
        held = {d["deviceID"] for d in a.client.get_folder("recorderpi-dev-b")["devices"]}
        assert held == {a.device_id, b.device_id}
    finally:
        c.client.patch_folder("recorderpi-dev-b", {"devices": [{"deviceID": d} for d in
                                                               (c.device_id, b.device_id)]})


def _run_cli(argv: list[str], cfg) -> int:
    parser = argparse.ArgumentParser()
    mesh_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args, cfg)


def test_mesh_status_json(mesh, capsys):
    a, b, c = mesh
    wait_until(lambda: a.connected_to(b) and a.connected_to(c), 30, 0.1, "a connected")
    assert _run_cli(["mesh", "status", "--json"], a.cfg) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device_id"] == "dev-a"
    assert report["syncthing_id"] == a.device_id
    peers = {p["peer_id"]: p for p in report["peers"]}
    assert set(peers) == {"dev-b", "dev-c"}
    for peer, inst in ((peers["dev-b"], b), (peers["dev-c"], c)):
        assert peer["syncthing_id"] == inst.device_id
        assert peer["name"] == inst.name
        assert peer["connected"] is True
        assert peer["paused"] is False
        assert peer["client_version"].startswith("v1.")
    folders = {f["id"]: f for f in report["folders"]}
    assert folders["recorderpi-dev-a"]["type"] == "sendonly"
    assert folders["recorderpi-dev-a"]["own"] is True
    assert folders["recorderpi-dev-b"]["type"] == "receiveonly"
    assert folders["recorderpi-dev-b"]["owner"] == "dev-b"

    # A paused peer is reported as such; resuming reconnects.
    a.pause(b.device_id)
    try:
        wait_until(lambda: not a.connected_to(b), 30, 0.1, "a drops b")
        _run_cli(["mesh", "status", "--json"], a.cfg)
        report = json.loads(capsys.readouterr().out)
        peer_b = next(p for p in report["peers"] if p["peer_id"] == "dev-b")
        assert peer_b["paused"] is True
        assert peer_b["connected"] is False
    finally:
        a.resume(b.device_id)
    wait_until(lambda: a.connected_to(b), 30, 0.1, "a reconnects to b")

    assert _run_cli(["mesh", "status"], a.cfg) == 0
    text = capsys.readouterr().out
    assert "dev-b" in text and "connected" in text


def test_cli_setup_and_add_peer_json(mesh, capsys):
    a, b, _ = mesh
    assert _run_cli(["mesh", "setup", "--json"], a.cfg) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == []
    assert _run_cli(["mesh", "add-peer", b.device_id, "--name", "b", "--address",
                     b.address.removeprefix("tcp://"), "--json"], a.cfg) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"device_id": b.device_id, "peer_id": "dev-b",
                      "peer_folder": "recorderpi-dev-b", "changes": []}


def test_events_long_poll(mesh):
    a = mesh[0]
    events = a.client.events(since=0, timeout=1)
    assert events and all("id" in e and "type" in e for e in events)
    last = events[-1]["id"]
    start = time.monotonic()
    assert a.client.events(since=last + 10_000, timeout=1, types=["ItemFinished"]) == []
    assert time.monotonic() - start >= 0.9


# --- failure paths ---------------------------------------------------------------------------

def test_wrong_api_key_is_refused(mesh):
    a = mesh[0]
    bad = SyncthingClient(a.url, "wrong-key")
    with pytest.raises(RemoteError, match="forbidden"):
        bad.device_id()
    assert bad.ping_quietly() is False


def test_loose_key_file_is_refused(mesh, tmp_path):
    a = mesh[0]
    key = tmp_path / "loose.key"
    key.write_text(a.api_key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"syncthing\.api_key_file"):
        SyncthingClient.from_config(a.config(api_key_file=str(key)).syncthing)
    with pytest.raises(ConfigError, match=r"syncthing\.api_key_file"):
        _run_cli(["mesh", "status"], a.config(api_key_file=""))


def test_bad_peer_arguments_change_nothing(mesh):
    a, b, _ = mesh
    before = a.client.config()
    with pytest.raises(RecorderError, match="not a Syncthing device id"):
        _prov(a).add_peer("NOT-AN-ID", "x", "tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="--peer-id"):
        _prov(a).add_peer(b.device_id, "b", b.address, peer_recorder_id="../x")
    with pytest.raises(RecorderError, match="own Syncthing id"):
        _prov(a).add_peer(a.device_id, "me", a.address)
    assert a.client.config() == before


def test_unsafe_offered_folder_ids_are_refused(tmp_path):
    assert provision.owner_of("recorderpi-dev-a") == "dev-a"
    for hostile in ("recorderpi-../etc", "recorderpi-a/b", "recorderpi-", "other-dev-a",
                    "recorderpi-.hidden", "recorderpi-" + "x" * 70):
        assert provision.owner_of(hostile) is None
    # A real peer offering a folder whose id would name a path outside the sync root.
    with SyncthingCluster(2, tmp_path) as (x, y):
        hostile = "recorderpi-../../etc"
        y.client.add_device({"deviceID": x.device_id, "name": "x", "addresses": [x.address]})
        y.client.add_folder({"id": hostile, "label": "x", "path": str(y.root / "evil"),
                             "type": "sendonly", "devices": [{"deviceID": x.device_id}]})
        try:  # pairs with y; the offer may already be there (refused) or come later
            first = _prov(x).add_peer(y.device_id, "y", y.address)
        except RemoteError as exc:
            assert "unsafe id" in str(exc)
        else:
            assert first["peer_folder"] is None
        wait_until(lambda: hostile in x.client.pending_folders(y.device_id), 30, 0.1,
                   "y's offer reaches x")
        before = x.client.config()
        with pytest.raises(RemoteError, match="unsafe id"):
            _prov(x).add_peer(y.device_id, "y", y.address)
        assert x.client.config() == before
        assert hostile not in {f["id"] for f in x.client.folders()}
        assert not (x.sync_root.parent / "etc").exists()


def test_device_id_normalisation():
    canonical = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"
    assert provision.normalize_device_id(canonical.lower().replace("-", "")) == canonical
    assert provision.normalize_address("10.0.0.2:22000") == "tcp://10.0.0.2:22000"
    assert provision.normalize_address("dynamic") == "dynamic"


def test_harness_cleans_up_on_failure(tmp_path):
    cluster = SyncthingCluster(1, tmp_path)
    with pytest.raises(RuntimeError), cluster:
        proc = cluster[0].proc
        assert proc is not None and proc.poll() is None
        raise RuntimeError("test failed")
    assert proc.poll() is not None  # reaped, not orphaned
    assert cluster[0].proc is None


def test_cli_exit_code_when_syncthing_is_down(tmp_path):
    key = tmp_path / "st.key"
    key.write_text("k")
    key.chmod(0o600)
    conf = tmp_path / "recorder.toml"
    conf.write_text(
        f'[device]\nid = "dev-z"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[syncthing]\nurl = "http://127.0.0.1:{free_port()}"\napi_key_file = "{key}"\n'
    )
    # Syncthing down: the bridge's state (quarantine list) is still shown, exit 0 and one
    # warning line (issue 12); commands that need Syncthing still exit 7.
    proc = run_cli("--config", str(conf), "mesh", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.strip()
    assert "cannot connect" in err and len(err.splitlines()) == 1 and "warning" in err
    status = json.loads(proc.stdout)
    assert "cannot connect" in status["syncthing_error"] and status["bridge"]["quarantined"] == []
    setup = run_cli("--config", str(conf), "mesh", "setup")
    assert setup.returncode == RemoteError.exit_code == 7, setup.stderr


@pytest.mark.parametrize("placeholder", ["set-me", "changeme", "example", "xxxx", "---",
                                         "please-set-me"])
def test_placeholder_device_ids_are_refused(tmp_path, placeholder):
    from tests.conftest import run_cli, toml_config

    cfg = toml_config(tmp_path / "r.toml", {"device": {"id": placeholder},
                                            "storage": {"data_dir": str(tmp_path / "d")}})
    res = run_cli("--config", cfg, "doctor", timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith(f"recorder: error: device.id: {placeholder!r} is a placeholder")
    assert len(res.stderr.strip().splitlines()) == 1


def test_add_peer_never_re_points_a_folder(mesh):
    a, _, c = mesh
    # c claims to own b's id: add-peer refuses, naming both devices, and changes nothing.
    before = a.client.config()
    with pytest.raises(provision.DuplicateIdError, match="duplicate device id 'dev-b'") as exc:
        _prov(a).add_peer(c.device_id, "c", c.address, peer_recorder_id="dev-b")
    assert "--peer-id" not in str(exc.value) and "remove-peer dev-b" in str(exc.value)
    assert a.client.config() == before


def test_public_discovery_and_relays_are_off_unless_asked_for(mesh):
    """Provisioning turns a real Syncthing's global discovery and relays off (the device id
    is never announced to the public servers), ``[syncthing] global_discovery`` and
    ``relays`` turn them back on, and a re-run changes nothing either way."""
    from recorder.config import parse_config

    a = mesh[0]
    servers = a.client.options()["globalAnnounceServers"]
    # Syncthing's defaults, but announcing to a closed local port: the test reaches no public
    # server whatever the code under test does.
    a.client.patch_options({"globalAnnounceServers": ["https://127.0.0.1:1/"],
                            "globalAnnounceEnabled": True, "relaysEnabled": True})
    try:
        first = _prov(a).setup()["changes"]
        assert "set globalAnnounceEnabled True -> False" in first
        assert "set relaysEnabled True -> False" in first
        options = a.client.options()
        assert (options["globalAnnounceEnabled"], options["relaysEnabled"]) == (False, False)
        assert options["localAnnounceEnabled"] is False  # the harness's; never touched
        assert _prov(a).setup()["changes"] == []

        on = a.config(global_discovery=True, relays=True)
        again = provision.Provisioner(on.layout, a.client, on.syncthing)
        assert sorted(again.setup()["changes"]) == [
            "set globalAnnounceEnabled False -> True", "set relaysEnabled False -> True"]
        options = a.client.options()
        assert (options["globalAnnounceEnabled"], options["relaysEnabled"]) == (True, True)
        assert again.setup()["changes"] == []
    finally:
        _prov(a).setup()
        a.client.patch_options({"globalAnnounceServers": servers})
    with pytest.raises(ConfigError, match=r"^syncthing\.relays: "):
        parse_config({"syncthing": {"relays": "no"}})
