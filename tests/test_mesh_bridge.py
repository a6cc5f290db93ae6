"""The sync bridge, the annotation exchange and the document root.

Part 1 (no Syncthing): the bridge against peer folders written directly on disk: hostile,
conflict and partial files, fuzzed sidecars, a restart mid-import.

Part 2 (three real Syncthing 1.19 instances on 127.0.0.1, one module-scoped mesh): devices a
and b run current papad, c runs legacy papad-api; each has its own in-process papad, outbox
worker and bridge, as `recorder run` has. Recordings are made on a through the real pipeline.
Tests share the mesh (and the recording_one fixture) but run in any order; each leaves every
instance running and connected.

Part 3: the document root: nginx with the shipped config serves the `audio_url` c's legacy papad
got for a peer recording.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder import app
from recorder import sidecar as sc
from recorder.audioid.catalogue import Catalogue
from recorder.db import Database
from recorder.mesh.exchange.annotations import EXPORT_PATH, SCHEMA_ID, AnnotationExchange
from recorder.mesh.exchange.bridge import Bridge
from recorder.mesh.exchange.store import db_status
from recorder.papad.client import make_client
from recorder.papad.outbox import Outbox
from recorder.sidecar import ignored_name, is_sidecar_name
from tests.clips import speech
from tests.conftest import free_port, wait_until
from tests.docroot import http_session, serve_docroot
from tests.fake_papad import FakePapad
from tests.mesh_devices import Device
from tests.papad_recordings import make_recording, ogg_bytes
from tests.papad_setup import current_config, drain, fast_worker
from tests.syncthing_harness import SyncthingCluster

# --- part 1: the bridge on plain folders ---------------------------------------------------


@pytest.fixture
def papad():
    server = FakePapad().start()
    server.add_user("recorder", token="tok-3f9c2e81d04b4a7fa2f1secret", groups=(1,))
    yield server
    server.stop()


@pytest.fixture
def local(cfg_factory, tmp_path, papad):
    """A device 'testdev01' with a papad, an outbox and a bridge (no Syncthing)."""
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    database = Database(cfg.db_path)
    outbox = Outbox(database)
    assemblies: list[app.Assembly] = []

    def make_bridge() -> Bridge:
        """The bridge as the service assembles it (each call: a restarted service)."""
        parts = app.assemble(cfg, app.Role.BRIDGE)
        assemblies.append(parts)
        assert parts.bridge is not None
        return parts.bridge

    yield cfg, outbox, make_bridge
    for parts in assemblies:
        assert parts.bridge is not None
        parts.bridge.stop()
        parts.close()
    database.close()


def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under `root`: (mtime_ns, size, symlink target) - to prove nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            out[str(p)] = (st.st_mtime_ns, st.st_size,
                           os.readlink(p) if p.is_symlink() else "")
    return out


def test_names():
    assert is_sidecar_name("20261128T170102Z_dev-a_abcdefgh.json")
    for bad in ("20261128T170102Z_dev-a_abcdefgh.sync-conflict-20261128-120000-ABCDEFG.json",
                ".syncthing.20261128T170102Z_dev-a_abcdefgh.json.tmp",
                "~syncthing~20261128T170102Z_dev-a_abcdefgh.json.tmp",
                ".20261128T170102Z_dev-a_abcdefgh.json", "notes.json", "x.json"):
        assert not is_sidecar_name(bad), bad
    assert ignored_name(".stfolder") and ignored_name("a.sync-conflict-x.json")


def test_imports_valid_peer_recording_once(local, papad):
    cfg, outbox, make_bridge = local
    peer = cfg.storage.sync_root / "dev-p"
    docs = [make_recording(peer, index=i, bookmarks=[{"at": 0.1, "label": "x"}])[0]
            for i in range(3)]
    bridge = make_bridge()
    report = bridge.run_once()
    assert (report.imported, report.quarantined, report.pending) == (3, 0, 0)
    assert bridge.run_once().unchanged == 3  # nothing re-read, nothing re-queued
    entries = {e.recording_id: e for e in outbox.entries()}
    assert set(entries) == {d["recording_id"] for d in docs}
    assert all(e.origin == "peer:dev-p" for e in entries.values())
    cat = Catalogue(Database(cfg.db_path))
    assert cat.get(docs[0]["recording_id"]).origin == "peer:dev-p"
    drain(fast_worker(outbox, make_client(cfg.papad)), outbox, 3)
    assert len(papad.media) == 3 and len(papad.annotations) == 3


def test_sidecar_before_its_ogg_is_pending_then_imported(local):
    cfg, outbox, make_bridge = local
    peer = cfg.storage.sync_root / "dev-p"
    doc, ogg = make_recording(peer)
    data = ogg.read_bytes()
    ogg.unlink()  # Syncthing delivered the sidecar first (it does: measured)
    bridge = make_bridge()
    assert bridge.run_once().pending == 1
    assert bridge.status()["pending"][0]["reason"] == "recording file not here yet"
    assert outbox.entries() == []
    ogg.write_bytes(data)
    assert bridge.run_once().imported == 1
    assert [e.recording_id for e in outbox.entries()] == [doc["recording_id"]]


def test_conflict_copies_and_partial_files_never_imported(local):
    cfg, outbox, make_bridge = local
    peer = cfg.storage.sync_root / "dev-p"
    doc, ogg = make_recording(peer)
    sidecar_path = ogg.with_suffix(".json")
    # Conflict copy and temporaries hold *valid* sidecars of other recordings: still ignored.
    for i, name in enumerate([
        f"{ogg.stem}.sync-conflict-20261128-120000-ABCDEFG.json",
        f".syncthing.{ogg.stem}.json.tmp",
        f"~syncthing~{ogg.stem}.json.tmp",
        f".{ogg.stem}.json.1234.partial",
    ]):
        other = dict(doc, recording_id=sc.new_recording_id(1e9 + i))
        (sidecar_path.parent / name).write_text(sc.dumps(other))
    bridge = make_bridge()
    report = bridge.run_once()
    assert report.imported == 1 and report.quarantined == 0
    assert [e.recording_id for e in outbox.entries()] == [doc["recording_id"]]
    assert db_status(cfg.db_path)["peers"] == {
        "dev-p": {"imported": 1, "pending": 0, "quarantined": 0}}


def test_hostile_peer_files_are_quarantined_and_nothing_is_touched(local, tmp_path):
    cfg, outbox, make_bridge = local
    root = cfg.storage.sync_root
    peer = root / "dev-evil"
    good, good_ogg = make_recording(peer, index=0)
    day = good_ogg.parent
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.ogg"
    secret.write_bytes(good_ogg.read_bytes())

    def sidecar_for(index: int, data: bytes | None = None):
        return make_recording(peer, index=index, data=data)

    # 1. bad JSON
    (day / "20261128T180000Z_dev-evil_badjson1.json").write_text("{not json")
    # 2. names another device
    doc, p2 = sidecar_for(2)
    doc2 = dict(doc, device_id="dev-a",
                path=doc["path"].replace("_dev-evil_", "_dev-a_"))
    p2.with_suffix(".json").write_text(sc.dumps(doc2))
    # 3. path escaping the folder
    doc, p3 = sidecar_for(3)
    p3.with_suffix(".json").write_text(sc.dumps(dict(doc, path="../../outside/secret.ogg")))
    # 4. the sidecar is a symlink (to a valid sidecar elsewhere)
    doc, p4 = sidecar_for(4)
    real = outside / "real.json"
    real.write_text(p4.with_suffix(".json").read_text())
    p4.with_suffix(".json").unlink()
    p4.with_suffix(".json").symlink_to(real)
    # 5. the OGG is a symlink to a file outside with the right bytes
    doc, p5 = sidecar_for(5, secret.read_bytes())
    p5.unlink()
    p5.symlink_to(secret)
    # 6. oversized
    (day / "20261128T180600Z_dev-evil_toolarge.json").write_text(
        '{"x": "' + "a" * (sc.MAX_SIDECAR_BYTES + 10) + '"}')
    # 7. sha256 mismatch
    doc, p7 = sidecar_for(7)
    p7.write_bytes(ogg_bytes(0.5, 900))
    p7.with_suffix(".json").write_text(sc.dumps(dict(doc, bytes=p7.stat().st_size)))
    # 8. a symlinked directory under recordings/
    (peer / "recordings" / "2027").symlink_to(outside, target_is_directory=True)
    # 9. takes over a recording id another sidecar already has
    doc, p9 = sidecar_for(9)
    p9.with_suffix(".json").write_text(sc.dumps(dict(doc, recording_id=good["recording_id"])))

    before_peer, before_outside = _tree(peer), _tree(outside)
    bridge = make_bridge()
    report = bridge.run_once()
    assert report.imported == 1, bridge.status()["quarantined"]
    assert [e.recording_id for e in outbox.entries()] == [good["recording_id"]]
    reasons = {q["path"].rsplit("/", 1)[-1]: q["reason"] for q in bridge.status()["quarantined"]}
    print("\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(reasons.items())))
    expect = {
        "20261128T180000Z_dev-evil_badjson1.json": "not valid JSON",
        p2.with_suffix(".json").name: "names device 'dev-a'",
        p3.with_suffix(".json").name: "'path' is not a recording path",
        p4.with_suffix(".json").name: "symlink",
        p5.with_suffix(".json").name: "recording file is a symlink",
        "20261128T180600Z_dev-evil_toolarge.json": "too large",
        p7.with_suffix(".json").name: "sha256 does not match",
        "2027": "symlink",
        p9.with_suffix(".json").name: "already used by",
    }
    for name, words in expect.items():
        assert words in reasons.get(name, ""), (name, reasons.get(name))
    assert _tree(peer) == before_peer and _tree(outside) == before_outside
    assert secret.read_bytes() == good_ogg.read_bytes()
    # The status command shows them too.
    assert len(db_status(cfg.db_path)["quarantined"]) == len(expect)
    # Quarantined files stay quarantined without being re-read (and never crash a rescan).
    assert bridge.run_once().quarantined == 0


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=600),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda kids: st.lists(kids, max_size=4)
                 | st.dictionaries(st.text(max_size=10), kids, max_size=6), max_leaves=20)
    .map(lambda v: json.dumps(v).encode()),
))
def test_fuzzed_sidecars_never_crash_the_bridge(local, payload):
    cfg, _outbox, make_bridge = local
    path = (cfg.storage.sync_root / "dev-fuzz" / "recordings/2026/11/28"
            / "20261128T170102Z_dev-fuzz_abcdefgh.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    bridge = make_bridge()
    report = bridge.scan(["dev-fuzz"])
    assert report.imported == 0
    assert report.quarantined + report.unchanged == 1


def test_fuzzed_mutations_of_a_valid_sidecar(local):
    """Single-field corruptions of a valid sidecar never crash the bridge or import anything
    but the one recording; the ones papad registration relies on are quarantined."""
    cfg, outbox, make_bridge = local
    peer = cfg.storage.sync_root / "dev-m"
    doc, ogg = make_recording(peer)
    side = ogg.with_suffix(".json")
    bridge = make_bridge()
    for key in sorted(doc):
        for bad in (None, 7, -1.5, "", "../x", [], {"a": 1}, "2026-13-45T99:00:00Z"):
            side.write_text(sc.dumps({**doc, key: bad}))
            os.utime(side, ns=(time.time_ns(), time.time_ns()))
            report = bridge.scan(["dev-m"])
            assert report.imported + report.quarantined == 1
            if key in ("recording_id", "device_id", "path", "sha256", "started_at", "bytes",
                       "duration", "schema", "samplerate", "channels") and (
                    not isinstance(bad, (int, float)) or bad < 0):
                assert report.quarantined == 1, (key, bad)
    assert {e.recording_id for e in outbox.entries()} <= {doc["recording_id"]}


class Crash(BaseException):
    """A power cut inside the bridge (not an Exception: nothing catches it)."""


def test_restart_mid_import_finishes_without_duplicates(local, papad, monkeypatch):
    cfg, outbox, make_bridge = local
    peer = cfg.storage.sync_root / "dev-r"
    docs = [make_recording(peer, index=i)[0] for i in range(12)]
    calls = {"n": 0}
    real_enqueue = Outbox.enqueue

    def crashing_enqueue(self, *args, **kw):
        result = real_enqueue(self, *args, **kw)  # committed...
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash()  # ...but the bridge dies before recording its own state
        return result

    monkeypatch.setattr(Outbox, "enqueue", crashing_enqueue)
    with pytest.raises(Crash):
        make_bridge().run_once()
    monkeypatch.setattr(Outbox, "enqueue", real_enqueue)
    assert len(outbox.entries()) == 5
    report = make_bridge().run_once()  # "restarted"
    assert report.imported == 12 - 4  # the 5th is re-checked and re-queued (a no-op)
    assert sorted(e.recording_id for e in outbox.entries()) == sorted(
        d["recording_id"] for d in docs)
    drain(fast_worker(outbox, make_client(cfg.papad)), outbox, 12)
    rids = [m["description"].split("Recording id: ")[1].split("\n")[0] for m in papad.media]
    assert sorted(rids) == sorted(d["recording_id"] for d in docs)
    assert Catalogue(Database(cfg.db_path)).count() == 12


def test_hostile_annotation_exports_are_quarantined(local, cfg_factory, tmp_path):
    cfg, _, make_bridge = local
    exchange = make_bridge().exchange
    assert isinstance(exchange, AnnotationExchange)
    rid = sc.new_recording_id()
    good = {"id": f"{rid}:abc", "recording_id": rid, "origin": "dev-q", "media_target": "t=1,2",
            "text": "hi", "tags": []}
    cases = {
        "not json": b"{",
        "other device": json.dumps({"schema": SCHEMA_ID, "device_id": "dev-a",
                                    "annotations": []}).encode(),
        "claims origin": json.dumps({"schema": SCHEMA_ID, "device_id": "dev-q", "annotations": [
            dict(good, origin="dev-a")]}).encode(),
        "bad target": json.dumps({"schema": SCHEMA_ID, "device_id": "dev-q", "annotations": [
            dict(good, media_target="javascript:x")]}).encode(),
        "duplicate id": json.dumps({"schema": SCHEMA_ID, "device_id": "dev-q",
                                    "annotations": [good, good]}).encode(),
        "oversized": b" " * (9 * 1024 * 1024),
    }
    path = cfg.storage.sync_root / "dev-q" / EXPORT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    for what, data in cases.items():
        path.write_bytes(data)
        os.utime(path, ns=(time.time_ns(), time.time_ns()))
        assert exchange.import_peer("dev-q") == "quarantined", what
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps(
        {"schema": SCHEMA_ID, "device_id": "dev-q", "annotations": []}))
    assert exchange.import_peer("dev-q") == "quarantined"
    assert "symlink" in db_status(cfg.db_path)["quarantined"][0]["reason"]


# --- part 2: three real Syncthing instances -------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    base = tmp_path_factory.mktemp("clips")
    texts = {
        "one": "Grind the coconut with green chillies and a little cumin for the chutney. ",
        "two": "The river rose in the night and the ferry did not run until noon. ",
        "three": "Plant the seedlings after the first rain, one hand apart, in rows. ",
        "four": "We sang the harvest song twice, once slowly and once very fast. ",
        "five": "Bring the goats in before dark; the new fence is not finished yet. ",
    }
    out = {}
    for name, text in texts.items():
        speech(base / f"{name}.wav", text)
        out[name] = base / f"{name}.wav"
    return out


@pytest.fixture(scope="module")
def nginx_port():
    return free_port()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, nginx_port):
    with SyncthingCluster(3, tmp_path_factory.mktemp("bridge")) as cluster:
        a, b, c = cluster
        cluster.pair_all()
        devices = [Device(a), Device(b),
                   Device(c, legacy=True, docroot_host=f"127.0.0.1:{nginx_port}")]
        try:
            for d in devices:
                d.start()
            yield devices
        finally:
            for d in devices:
                d.stop()


def _registered(dev: Device, rid: str) -> bool:
    return dev.registration.outbox.remote_id(rid) is not None and dev.media_id(rid) is not None


def _wait_annotations(dev: Device, rid: str, want: set[tuple[str, str]], timeout=60.0):
    def ok():
        got = {(t, x) for t, x, _ in dev.annotations(rid)}
        return got == want
    wait_until(ok, timeout, 0.1, f"annotations of {rid} on {dev.id}: want {want}, "
               f"have {dev.annotations(rid)}")


def _no_duplicates(dev: Device) -> None:
    dups = {rid: ids for rid, ids in dev.media().items() if len(ids) > 1}
    assert not dups, f"duplicate media on {dev.id}: {dups}"
    for rid in dev.media():
        anns = dev.annotations(rid)
        keys = [(t, x) for t, x, _ in anns]
        assert len(keys) == len(set(keys)), f"duplicate annotations on {dev.id}: {anns}"


@pytest.fixture(scope="module")
def recording_one(mesh, clips):
    """A recording made on a (one bookmark), registered on every device: its sidecar."""
    a, b, c = mesh
    t0 = time.monotonic()
    doc = a.record(clips["one"], marks=("chutney",)).sidecar
    rid = doc["recording_id"]
    for dev in (b, c):
        wait_until(lambda dev=dev: _registered(dev, rid), 60, 0.05, f"{rid} on {dev.id}")
    print(f"\nstop on a -> registered on b and c: {time.monotonic() - t0:.2f} s "
          f"(includes the 3 s recording)")
    wait_until(lambda: _registered(a, rid), 30, 0.05, "a's own registration")
    return doc


def test_recording_and_annotations_reach_every_peer(mesh, recording_one):
    a, b, c = mesh
    doc = recording_one
    rid = doc["recording_id"]
    assert doc["bookmarks"] and doc["audio_id"]["fingerprint"]
    # The Audio ID made it into the peers' catalogues.
    for dev in (b, c):
        entry = dev.catalogue().get(rid)
        assert entry is not None and entry.origin == "peer:dev-a"
        assert entry.fingerprint == doc["audio_id"]["fingerprint"]
    # An annotation made directly in a's papad, besides the bookmark.
    wait_until(lambda: _registered(a, rid), 30, 0.05, "a's own registration")
    wait_until(lambda: len(a.annotations(rid)) == 1, 30, 0.05, "bookmark on a")
    a.papad.add_annotation(a.media_id(rid), "Needs more salt", "t=1,2.5", ("Food", " taste ", ""))
    want = {(t, x) for t, x, _ in a.annotations(rid)}
    assert len(want) == 2
    for dev in (b, c):
        _wait_annotations(dev, rid, want)
        tags = {x: tg for _, x, tg in dev.annotations(rid)}
        assert tags["Needs more salt"] == ("food", "origin:dev-a", "taste")
        assert "origin:dev-a" in tags[doc["bookmarks"][0]["label"]]
    # No echo: a's papad still has exactly its two annotations, b's export none of them.
    time.sleep(2.5)
    assert {(t, x) for t, x, _ in a.annotations(rid)} == want and len(a.annotations(rid)) == 2
    for dev in (b, c):
        export = json.loads((dev.cfg.layout.device_folder / EXPORT_PATH).read_text())
        assert [x for x in export["annotations"] if x["recording_id"] == rid] == [], export
    for dev in mesh:
        _no_duplicates(dev)
    # A local annotation on a peer's recording travels too, with its own origin.
    b.papad.add_annotation(b.media_id(rid), "Sung by the river group", "t=0,1", ("song",))
    for dev in (a, c):
        wait_until(lambda dev=dev: any(x == "Sung by the river group"
                                       for _, x, _ in dev.annotations(rid)), 30, 0.1,
                   f"b's annotation on {dev.id}")
        tags = {x: tg for _, x, tg in dev.annotations(rid)}
        assert tags["Sung by the river group"] == ("origin:dev-b", "song")


def test_edits_and_deletions_follow_the_owner(mesh, recording_one):
    a, b, c = mesh
    rid = recording_one["recording_id"]
    # An annotation of this test's own on a, carried to b and c first.
    a.papad.add_annotation(a.media_id(rid), "Add tamarind", "t=2,3", ("Food", "sour"))
    for dev in (b, c):
        wait_until(lambda dev=dev: any(x == "Add tamarind" for _, x, _ in dev.annotations(rid)),
                   30, 0.1, f"the annotation on {dev.id}")
    with a.papad.lock:
        item = next(x for x in a.papad.annotations if x["annotation_text"] == "Add tamarind")
        item["annotation_text"] = "Add tamarind and jaggery"
        item["tags"] = [{"name": "food"}]
    for dev in (b, c):
        wait_until(lambda dev=dev: any(x == "Add tamarind and jaggery" and tg == (
            "food", "origin:dev-a") for _, x, tg in dev.annotations(rid)), 30, 0.1,
            f"edit on {dev.id}")
    # b edits its copy of a's annotation: stays local, never travels (a owns it).
    with b.papad.lock:
        mine = next(x for x in b.papad.annotations
                    if x["annotation_text"] == "Add tamarind and jaggery")
        mine["annotation_text"] = "b says: too sour"
    time.sleep(3)
    assert not any("too sour" in x for _, x, _ in a.annotations(rid) + c.annotations(rid))
    # a deletes it: gone everywhere.
    with a.papad.lock:
        a.papad.annotations.remove(next(x for x in a.papad.annotations
                                        if x["annotation_text"] == "Add tamarind and jaggery"))
    for dev in (b, c):
        wait_until(lambda dev=dev: not any("tamarind" in x or "too sour" in x
                                           for _, x, _ in dev.annotations(rid)), 30, 0.1,
                   f"deletion on {dev.id}")
    for dev in mesh:
        _no_duplicates(dev)


def _converged(mesh, rids):
    for dev in mesh:
        for rid in rids:
            if not _registered(dev, rid):
                return False
    return True


def _annotations_agree(mesh, rids) -> bool:
    for rid in rids:
        sets = [{(t, x) for t, x, _ in dev.annotations(rid)} for dev in mesh]
        if not sets[0] or any(s != sets[0] for s in sets):
            return False
    return True


# Either order: Instance.resume() also clears the pause Syncthing 1.19 keeps in config.xml.
@pytest.mark.parametrize("outage", ["kill", "pause"])
def test_interrupted_connectivity_converges(mesh, clips, outage):
    a, b, c = mesh
    b_inst = b.inst
    if outage == "pause":
        b_inst.pause()
    else:
        b_inst.kill()
    try:
        clip_a, clip_c = ("two", "three") if outage == "pause" else ("four", "five")
        ra = a.record(clips[clip_a], marks=("first",)).sidecar["recording_id"]
        rc = c.record(clips[clip_c], marks=("second",)).sidecar["recording_id"]
        wait_until(lambda: _registered(c, ra) and _registered(a, rc), 60, 0.1, "a <-> c")
        a.papad.add_annotation(a.media_id(ra), f"while b was away ({outage})", "t=0.5,1.5")
        wait_until(lambda: any("while b was away" in x for _, x, _ in c.annotations(ra)),
                   30, 0.1, "a's annotation on c")
        assert not _registered(b, ra) and not _registered(b, rc)
    finally:
        if outage == "pause":
            b_inst.resume()
        else:
            b_inst.start()
    wait_until(lambda: _converged(mesh, [ra, rc]), 90, 0.2, "b catches up")
    wait_until(lambda: _annotations_agree(mesh, [ra, rc]), 60, 0.2, "annotations agree")
    for dev in mesh:
        _no_duplicates(dev)
    assert len(b.annotations(ra)) == 2 and len(b.annotations(rc)) == 1
    if outage == "kill":
        assert b.bridge.status()["events"] == "on"  # re-subscribed after the restart


def test_bridge_status_and_cli_section(mesh, recording_one):
    from tests.conftest import run_cli, toml_config

    b = mesh[1]
    status = b.bridge.status()
    assert status["peers"]["dev-a"]["imported"] >= 1 and status["quarantined"] == []
    cfg_path = toml_config(b.inst.root / "recorder.toml", {
        "device": {"id": b.id},
        "storage": {"data_dir": str(b.inst.root / "data"), "sync_root": str(b.inst.sync_root)},
        "syncthing": {"url": b.inst.url, "api_key_file": str(b.inst.key_file)},
    })
    proc = run_cli("--config", cfg_path, "mesh", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bridge"]["peers"]["dev-a"]["imported"] == status["peers"]["dev-a"]["imported"]


# --- part 3: the document root --------------------------------------------------------------

def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_document_root_serves_the_registered_audio_url(mesh, recording_one, nginx_port,
                                                       tmp_path):
    _a, _b, c = mesh
    rid = recording_one["recording_id"]
    url = c.audio_url(rid)
    assert url is not None and url.startswith(f"http://127.0.0.1:{nginx_port}/dev-a/recordings/")
    with serve_docroot(c.cfg.storage.sync_root, nginx_port, tmp_path):
        http = http_session()
        got = http.get(url, timeout=10)
        ogg = c.cfg.storage.sync_root / "dev-a" / c.catalogue().get(rid).path
        assert got.status_code == 200
        assert got.content == ogg.read_bytes()
        assert hashlib.sha256(got.content).hexdigest() == c.catalogue().get(rid).sha256
        assert got.headers["Content-Type"] == "audio/ogg"
        # Refused: traversal, directory listing, Syncthing's files, conflict copies, writes,
        # and a symlink a peer placed pointing outside the tree.
        outside = tmp_path / "secret.txt"
        outside.write_text("secret")
        link = c.cfg.storage.sync_root / "dev-x" / "leak.txt"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(outside)
        conflict = ogg.with_name(ogg.stem + ".sync-conflict-20261128-120000-ABCDEFG.ogg")
        shutil.copy(ogg, conflict)
        try:
            for path, statuses in {
                "/../../../etc/passwd": (400, 404),
                "/dev-a/../../secret.txt": (400, 404),
                "/dev-a/%2e%2e/%2e%2e/secret.txt": (400, 404),
                "/dev-a/": (403, 404),
                "/dev-a/recordings/": (403, 404),
                "/dev-a/.stfolder/": (404,),
                "/dev-x/leak.txt": (403, 404),
                "/dev-a/" + str(conflict.relative_to(ogg.parents[4])): (404,),
            }.items():
                status, body = _raw_get(nginx_port, path)  # sent as is, not normalised
                assert status in statuses, (path, status)
                assert b"secret" not in body
            resp = http.put(url, data=b"x", timeout=5)
            assert resp.status_code in (403, 405)
            resp = http.delete(url, timeout=5)
            assert resp.status_code in (403, 405)
            assert ogg.read_bytes() == got.content
        finally:
            conflict.unlink()
            link.unlink()
