"""The platform's test plan: one test per acceptance case, on real parts (issue 18).

Each test's docstring starts with the plan's own words (its first paragraph, quoted by
docs/test-results.md) and then says how the case is shown. Each records the figures it measures
as JUnit properties (the `figures` fixture); `python3 -m tests.plan_report JUNIT_XML` writes
docs/test-results.md from pytest's JUnit XML (`.ci/run` does after every run).

One mesh serves every case (module-scoped), set up the way a field team sets one up:

- two sites, "north" (a LAN with devices a and b) and "south" (a LAN with device c), joined by
  a router standing in for the internet (tests/netns.py: network namespaces made here); a real
  yggdrasil node on every device, peering by LAN multicast on each site and from c to a by a
  static peer across the router;
- real Syncthing on every device, listening on its yggdrasil address only;
- every device's own real papad (tests/papad_kit.py): a on upstream papad (Token) and b on
  papadam (JWT), the session's servers, and c on an upstream papad of this module's own, where
  it acts as the kit's ``other`` user in group 2 ("Closed"): ``[papad] group = 2``;
- the real ``recorder run`` of every device (a looping speech clip as its audio source, mock
  GPIO), outside the namespaces because papad listens on the host's 127.0.0.1 (Syncthing's REST
  API is forwarded there, tests/netns.py); so its dead-link pings, which must leave from the
  device's own network, are off (``[mesh] probe_interval = 0``: tests/test_mesh_health.py runs
  them inside a namespace);
- pairing as a user does it: ``recorder mesh invite`` on a, ``recorder mesh join CODE`` on b and
  on c, the services pairing b with c through the roster.

Cases 9 and 10 add a device of their own (l, e) and remove it again; case 11 cuts the link
between the sites and restores it; every case leaves the mesh as it found it, with its own
recordings registered everywhere, so the cases run in any order, and each alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chrony import one_clock, start_chronyd
from tests.clips import speech
from tests.conftest import free_port, need, run_cli, toml_config, wait_until
from tests.docroot import http_session, serve_docroot
from tests.fake_papad import FakeLegacyPapad
from tests.mesh_devices import described_recording_id, tagged_recording_id
from tests.netns import YGG_NET, Lan, NetLab, Node
from tests.papad_kit import OTHER_GROUP, PapadServer, require_kit
from tests.service_harness import RunningService
from tests.syncthing_harness import Instance
from tests.test_mesh_pairing import _full_mesh as full_mesh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

# The plan's headings, by the first case under each (tests/plan_report.py reads this).
SECTIONS = {
    1: "Syncthing (three folders shared from one device to several)",
    4: "papad",
    10: "Integration, with a couple of devices at different locations",
}

DEADLINE = 120.0  # generous: a 2-core machine shared with other engineers' tests
STATIC_PORT = 12345
SOUTH_LINK = "net1"  # the router's port on the south LAN: the link between the sites
EXPORT = "papad/annotations.json"
EXPORT_SCHEMA = "recorderpi.annotations/1"
SENTENCES = {
    "a": "Grind the coconut with green chillies and a little cumin for the chutney. ",
    "b": "The river rose in the night and the ferry did not run until noon. ",
    "c": "Plant the seedlings after the first rain, one hand apart, in rows. ",
    "e": "We sang the harvest song twice, once slowly and once very fast. ",
    "l": "Bring the goats in before dark; the new fence is not finished yet. ",
}


# --- figures -------------------------------------------------------------------------------


@pytest.fixture
def figures(record_property) -> Callable[..., float]:
    """``figures(name, value, unit="s")``: record a figure this test measured as a JUnit
    property (docs/test-results.md shows it); returns `value`."""

    def record(name: str, value: float, unit: str = "s") -> float:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        record_property(name, f"{text} {unit}".strip())
        return value

    return record


def arrivals(checks: dict[str, Callable[[], Any]], t0: float | dict[str, float], what: str,
             timeout: float = DEADLINE) -> dict[str, float]:
    """Poll every check until each has held once; return the seconds from `t0` (one for all,
    or one per check) to the start of the poll at which each first held (a check may take a
    while: a command line, a papad request)."""
    seen: dict[str, float] = {}
    starts = t0 if isinstance(t0, dict) else dict.fromkeys(checks, t0)

    def all_seen() -> bool:
        for name, check in checks.items():
            polled = time.monotonic()
            if name not in seen and check():
                seen[name] = polled - starts[name]
        return len(seen) == len(checks)

    wait_until(all_seen, timeout, 0.05, f"{what} (so far: {sorted(seen)})")
    return seen


# --- one device of the mesh ----------------------------------------------------------------


class Member:
    """A device: its namespace (yggdrasil, Syncthing), its papad, its ``recorder run``."""

    def __init__(self, node: Node, papad: Any, clip: Path, papad_section: dict[str, Any]):
        assert node.syncthing is not None and node.ygg is not None
        self.node = node
        self.inst: Instance = node.syncthing
        self.papad = papad
        self.id = self.inst.recorder_id
        self.cfg_path = Path(toml_config(self.inst.root / "recorder.toml", {
            "device": {"id": self.id},
            "storage": {"data_dir": str(self.inst.root / "data"),
                        "sync_root": str(self.inst.sync_root), "reserve_mb": 0},
            "audio": {"source": f"file:{clip}", "preroll": 0.5},
            "syncthing": {"url": self.inst.url, "api_key_file": str(self.inst.key_file),
                          "watcher_delay": 60, "rescan_interval": 3600},
            "papad": papad_section,
            # Annotations exported every second (the field default is 5 minutes).
            "mesh": {"export_interval": 1.0, "rescan_interval": 60.0, "probe_interval": 0},
            "yggdrasil": {"admin_endpoint": node.ygg.endpoint},
            "web": {"enabled": False},
        }))
        self.svc: RunningService | None = None

    def __repr__(self) -> str:
        return f"Member({self.id})"

    def start(self) -> Member:
        self.svc = RunningService(str(self.cfg_path), self.inst.root / "data", {}, timeout=90)
        return self

    def stop(self) -> None:
        if self.svc is not None:
            code = self.svc.stop()
            assert code == 0, self.svc.log.read_text()[-3000:]
            self.svc = None

    def cli(self, *args: str, timeout: float = 120) -> Any:
        res = run_cli("--config", str(self.cfg_path), *args, timeout=timeout)
        assert "Traceback" not in res.stderr, res.stderr
        return res

    # -- recordings ----------------------------------------------------------------------

    def folder(self, owner: str) -> Path:
        """This device's copy of `owner`'s folder (its own folder when `owner` is its id)."""
        return self.inst.sync_root / owner

    def record(self, seconds: float = 2.0, title: str = "", tags: tuple[str, ...] = ()) -> dict:
        """``recorder record`` beside the running service (which delivers it to papad at once);
        returns the published sidecar."""
        args = ["record", "--seconds", str(seconds), "--fast", "--json"]
        if title:
            args += ["--title", title]
        for tag in tags:
            args += ["--tag", tag]
        res = self.cli(*args)
        assert res.returncode == 0, res.stderr
        return json.loads(Path(json.loads(res.stdout)["sidecar"]).read_text())

    def record_on_service(self, seconds: float = 1.5) -> dict:
        """A recording made by the service itself, as its button makes one: ``recorder ctl
        start``, a bookmark (``ctl mark``), ``ctl stop``; returns the published sidecar."""
        svc = self.svc
        assert svc is not None
        started = svc.ctl("start", "--json")
        assert started.returncode == 0, started.stderr
        rid = json.loads(started.stdout)["recording_id"]
        svc.wait(lambda: svc.recorded() >= seconds / 2, 60, "half the recording")
        marked = svc.ctl("mark")
        assert marked.returncode == 0, marked.stderr
        svc.wait(lambda: svc.recorded() >= seconds, 60, "the rest of the recording")
        stopped = svc.ctl("stop")
        assert stopped.returncode == 0, stopped.stderr
        sidecar = wait_until(lambda: self.sidecar_path(self.id, rid), 60, 0.05,
                             f"{rid} published on {self.id}")
        return json.loads(sidecar.read_text())

    def published(self, doc: dict) -> float:
        """When this device published its recording `doc`, on the monotonic clock: its
        sidecar's mtime (the sidecar is renamed into place last), converted."""
        path = (self.folder(self.id) / doc["path"]).with_suffix(".json")
        return time.monotonic() - (time.time() - path.stat().st_mtime)

    def sidecars(self, owner: str, rid: str) -> list[Path]:
        """The sidecars of recording `rid` in this device's copy of `owner`'s folder, found by
        README's layout: ``recordings/YYYY/MM/DD/<UTC>_<device>_<last 8 of the id>.json``."""
        return sorted(self.folder(owner).glob(f"recordings/*/*/*/*_{owner}_{rid[-8:]}.json"))

    def sidecar_path(self, owner: str, rid: str) -> Path | None:
        found = self.sidecars(owner, rid)
        return found[0] if found else None

    def holds(self, doc: dict) -> bool:
        """This device has the recording's files: the OGG with the sidecar's sha256, and the
        sidecar as its owner wrote it."""
        folder = self.folder(doc["device_id"])
        ogg, side = folder / doc["path"], (folder / doc["path"]).with_suffix(".json")
        try:
            return (json.loads(side.read_text()) == doc
                    and hashlib.sha256(ogg.read_bytes()).hexdigest() == doc["sha256"])
        except (OSError, ValueError):
            return False

    # -- papad ---------------------------------------------------------------------------

    def media(self, rid: str) -> list[dict]:
        """The media this device's papad holds for recording `rid` (its account's group)."""
        return self.papad.media(rid)

    def delivered(self) -> dict[str, str]:
        """Recording id -> papad's id, of what this device's outbox has delivered (``recorder
        outbox list --json``)."""
        res = self.cli("outbox", "list", "--json", "--state", "delivered")
        assert res.returncode == 0, res.stderr
        return {e["recording_id"]: e["remote_id"] for e in json.loads(res.stdout)["entries"]}

    def registered(self, *rids: str) -> bool:
        """The recordings are in this device's papad for good: papad lists just the media the
        outbox delivered for each. (A media papad lists may still vanish: papadam rolls an
        upload back when it answers 500, and the outbox then uploads again.)"""
        found = {rid: self.media(rid) for rid in rids}
        if not all(found.values()):
            return False
        delivered = self.delivered()
        return all({m["uuid"] for m in found[rid]} == {delivered.get(rid)} for rid in rids)

    def notes(self, rid: str) -> dict[str, tuple[str, ...]]:
        """Annotation text -> sorted tags, on this device's papad's media for `rid`."""
        found = self.media(rid)
        if not found:
            return {}
        return {text: tags for _, text, tags in self.papad.annotation_set(found[0]["uuid"])}

    def tag(self, rid: str, text: str, tags: tuple[str, ...], target: str = "t=0.5,1.5"):
        """A person tags the recording in this device's papad (an annotation with tags,
        through papad's own API)."""
        [media] = self.media(rid)
        return self.papad.add_annotation(media["uuid"], text, target, tags)

    def latest_media(self) -> dict:
        """The newest media in this device's papad listing (papad lists oldest first)."""
        path = "/api/v1/archive/"
        first = self.papad.get_json(path, searchFrom="my_collections", page_size=1)
        last = self.papad.get_json(path, searchFrom="my_collections", page_size=1,
                                   page=first["count"])
        return last["results"][-1]


def tag_names(media: dict) -> set[str]:
    return {t["name"] if isinstance(t, dict) else str(t) for t in media.get("tags") or []}


def registered_once_everywhere(members: list[Member], docs: list[dict]) -> None:
    """Wait until every device's papad has each recording, then check: exactly once each."""
    rids = [doc["recording_id"] for doc in docs]
    for m in members:
        wait_until(lambda m=m: m.registered(*rids), DEADLINE, 0.2, f"{rids} in {m.id}'s papad")
    for doc in docs:
        for m in members:
            assert len(m.media(doc["recording_id"])) == 1, (m.id, doc["recording_id"])


def export_entries(member: Member, owner: str) -> list[dict]:
    """The annotation export `owner` wrote, as this device's copy of its folder holds it
    (``<device>/papad/annotations.json``, README), read here without the product's code."""
    try:
        doc = json.loads((member.folder(owner) / EXPORT).read_text())
    except (OSError, ValueError):
        return []
    assert doc["schema"] == EXPORT_SCHEMA and doc["device_id"] == owner, doc
    return doc["annotations"]


def conflict_copies(members: list[Member]) -> list[Path]:
    return [p for m in members for p in m.inst.sync_root.rglob("*.sync-conflict-*")]


def invite(inviter: Member) -> str:
    res = inviter.cli("mesh", "invite", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["code"]


def join(member: Member, inviter: Member) -> float:
    """``recorder mesh join`` with a fresh code from `inviter`; its seconds until accepted."""
    code = invite(inviter)
    t0 = time.monotonic()
    res = member.cli("mesh", "join", code, "--timeout", str(DEADLINE), timeout=DEADLINE + 60)
    assert res.returncode == 0, res.stderr + join_evidence(member, inviter)
    assert f"accepted by {inviter.id}" in res.stdout, res.stdout
    return time.monotonic() - t0


def join_evidence(member: Member, inviter: Member) -> str:
    """What both sides of a failed join saw: ``mesh status`` and the end of their logs."""
    parts = []
    for m in (inviter, member):
        status = m.cli("mesh", "status", timeout=60)
        log = m.svc.log.read_text(errors="replace")[-4000:] if m.svc is not None else ""
        st_log = m.inst.root / "syncthing.log"
        st = st_log.read_text(errors="replace")[-3000:] if st_log.exists() else ""
        parts.append(f"\n--- {m.id}: mesh status ---\n{status.stdout}{status.stderr}"
                     f"\n--- {m.id}: service log (end) ---\n{log}"
                     f"\n--- {m.id}: Syncthing log (end) ---\n{st}")
    return "".join(parts)


def remove(member: Member, mesh: Mesh) -> Any:
    """Take `member` out of the mesh again (``recorder mesh remove-peer`` on a) and stop it;
    returns the command's result (checked by the caller once nothing else failed)."""
    res = mesh.a.cli("mesh", "remove-peer", member.id)
    try:
        member.stop()
    finally:
        member.inst.stop()
    return res


class Mesh:
    """The module's mesh: the lab, its sites, devices a, b (north) and c (south)."""

    def __init__(self, lab: NetLab, north: Lan, south: Lan, router: Any,
                 members: list[Member], clips: dict[str, Path], spare_papad: Future) -> None:
        self.lab, self.north, self.south, self.router = lab, north, south, router
        self.a, self.b, self.c = members
        self.clips = clips
        self.spare_papad = spare_papad  # the papad of the device case 10 adds, started early

    @property
    def members(self) -> list[Member]:
        return [self.a, self.b, self.c]

    def cut(self) -> None:
        """Cut the link between the sites: the router's south port down (``ip link``)."""
        self.router.ip("link", "set", SOUTH_LINK, "down")

    def restore(self) -> None:
        self.router.ip("link", "set", SOUTH_LINK, "up")

    def connected(self) -> bool:
        return all(x.inst.connected_to(y.inst) for x in self.members for y in self.members
                   if x is not y)

    def add_node(self, name: str, lan: Lan) -> Node:
        """A new device's namespace on `lan`: yggdrasil (LAN multicast) and Syncthing."""
        node = self.lab.node(name, lan)
        node.start_yggdrasil()
        node.start_syncthing(f"dev-{name}")
        return node


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, papad_servers, record_testsuite_property) -> Iterator[Mesh]:
    for tool in ("yggdrasil", "socat", "syncthing"):
        need(tool)
    base = tmp_path_factory.mktemp("plan")
    t0 = time.monotonic()
    clips_dir = base / "clips"
    clips_dir.mkdir()
    own_papad = PapadServer(require_kit(), "upstream", base / "papad-c", account="other")
    spare_papad = PapadServer(require_kit(), "upstream", base / "papad-e")
    members: list[Member] = []
    stopped: list[Any] = []
    with NetLab(base / "lab") as lab, ThreadPoolExecutor(6) as pool:
        started_papad = pool.submit(own_papad.start)
        started_spare = pool.submit(spare_papad.start)  # awaited by case 10 only
        try:
            clip_jobs = {k: pool.submit(speech, clips_dir / f"{k}.wav", text)
                         for k, text in SENTENCES.items()}
            north, south = lab.lan("north"), lab.lan("south")
            router = lab.router("internet", north, south)
            nodes = [lab.node(name, lan) for name, lan in (("a", north), ("b", north),
                                                            ("c", south))]
            a_node, b_node, c_node = nodes
            static = f"tls://{a_node.ipv4}:{STATIC_PORT}"
            ygg_jobs = [pool.submit(a_node.start_yggdrasil, listen=[static]),
                        pool.submit(b_node.start_yggdrasil),
                        pool.submit(c_node.start_yggdrasil, peers=[static])]
            for job in ygg_jobs:
                job.result()
            for job in [pool.submit(n.start_syncthing, f"dev-{n.short}") for n in nodes]:
                job.result()
            for job in clip_jobs.values():
                job.result()
            clips = {k: clips_dir / f"{k}.wav" for k in clip_jobs}
            started_papad.result()
            papads = [papad_servers["upstream"], papad_servers["papadam"], own_papad]
            members += [Member(n, p, clips[n.short], p.papad_section(n.syncthing.root))
                        for n, p in zip(nodes, papads, strict=True)]
            for job in [pool.submit(m.start) for m in members]:
                job.result()
            ready = time.monotonic() - t0
            wait_until(lambda: {b_node.ygg_key, c_node.ygg_key} <= a_node.ygg.peer_keys(),
                       DEADLINE, 0.1, "a peered with b (LAN) and c (static, across the router)")
            a, b, c = members
            joins = (join(b, a), join(c, a))
            t1 = time.monotonic()
            wait_until(lambda: full_mesh([m.inst for m in members]), DEADLINE, 0.2,
                       "a full mesh of a, b and c")
            record_testsuite_property("plan mesh: three devices up (lab, papad, services)",
                                      f"{ready:.1f} s")
            record_testsuite_property("plan mesh: b joins a (recorder mesh join)",
                                      f"{joins[0]:.1f} s")
            record_testsuite_property("plan mesh: c joins a from the other site",
                                      f"{joins[1]:.1f} s")
            record_testsuite_property("plan mesh: full mesh after the second join",
                                      f"{time.monotonic() - t1:.1f} s")
            yield Mesh(lab, north, south, router, members, clips, started_spare)
        finally:
            stopped += [pool.submit(m.stop) for m in members]  # side by side
            for job in stopped:
                job.exception()
            for job in [pool.submit(i.stop) for i in lab.instances]:
                job.result()
            own_papad.stop()
            started_spare.exception()
            spare_papad.stop()
    errors = [job.exception() for job in stopped if job.exception() is not None]
    assert not errors, f"a service did not stop cleanly: {errors}"


# --- Syncthing -----------------------------------------------------------------------------


@contextlib.contextmanager
def plan_folder(mesh: Mesh, kind: str, types: dict[Member, str]) -> Iterator[dict[Member, Path]]:
    """A folder shared from a to b and c with real Syncthing's REST API, each device's copy of
    the type given (beside the appliance's own folders), removed again at the end. Syncthing's
    file watcher notices changes (1 s delay), as with a file a person drops in."""
    fid = f"plan-{kind}-{secrets.token_hex(3)}"
    paths = {m: m.inst.root / "plan" / fid for m in types}
    sharer = mesh.a
    for m, kind_here in types.items():
        paths[m].mkdir(parents=True)
        peers = [x for x in types if x is not m] if m is sharer else [sharer]
        m.inst.client.add_folder({
            "id": fid, "label": fid, "path": str(paths[m]), "type": kind_here,
            "fsWatcherEnabled": True, "fsWatcherDelayS": 1, "rescanIntervalS": 3600,
            "paused": False, "devices": [{"deviceID": x.inst.device_id} for x in peers]})
    try:
        for m in types:
            wait_until(lambda m=m: m.inst.client.db_status(fid).get("state") == "idle",
                       DEADLINE, 0.1, f"{fid} scanned on {m.id}")
        yield paths
        for m, kind_here in types.items():
            assert m.inst.client.get_folder(fid)["type"] == kind_here
    finally:
        for m in types:
            with contextlib.suppress(Exception):
                m.inst.client.remove_folder(fid)


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _appears(paths: dict[Member, Path], name: str, data: bytes, t0: float, what: str
             ) -> dict[str, float]:
    return arrivals({m.id: (lambda p=p: _content(p / name) == data) for m, p in paths.items()},
                    t0, what)


def _written_and_seen(paths: dict[Member, Path], writer: Member, readers: list[Member],
                      label: str, figures: Callable[..., float], size: int = 2000) -> None:
    """A person writes a new file of `size` bytes into `writer`'s copy of a folder; it appears,
    byte for byte, in every reader's copy (each one's latency recorded)."""
    name, data = f"from-{writer.id}.ogg", secrets.token_bytes(size)
    t0 = time.monotonic()
    (paths[writer] / name).write_bytes(data)
    got = _appears({m: paths[m] for m in readers}, name, data, t0,
                   f"{writer.id}'s file in the readers' copies")
    for reader, seconds in got.items():
        figures(f"{label}: {writer.id}'s file on {reader}", seconds)


def test_case_01_file_created_in_shared_folder_appears_on_all_devices(mesh, figures):
    """A file created on one device in a receive-only / send-receive shared folder appears on
    all devices.

    Two folders shared from a to b and c through Syncthing's REST API: one send-receive on every
    device, one send-receive on a and receive-only on b and c. A file a person writes into the
    send-receive folder on b (not the device sharing it) appears on a and, through a, on c; a
    file written on a into the folder whose other copies are receive-only appears on b and c.
    Syncthing's file watcher notices both (no scan is asked for)."""
    a, b, c = mesh.members
    with plan_folder(mesh, "sendreceive", {a: "sendreceive", b: "sendreceive",
                                           c: "sendreceive"}) as everywhere, \
            plan_folder(mesh, "receiveonly", {a: "sendreceive", b: "receiveonly",
                                              c: "receiveonly"}) as to_readers:
        _written_and_seen(everywhere, b, [a, c], "send-receive folder", figures)
        _written_and_seen(to_readers, a, [b, c], "receive-only copies", figures)


def test_case_02_file_added_to_sendonly_folder_appears_on_all_devices(mesh, figures):
    """A new file added to a send-only folder appears on all devices.

    A folder shared from a, send-only there and receive-only on b and c (the appliance's own
    folder model, set up here with Syncthing's REST API beside the appliance's folders, whose
    types are checked too): a file added on a appears on b and c, byte for byte."""
    a, b, c = mesh.members
    for m in mesh.members:  # the appliance's folders: each device's own sendonly
        for owner in mesh.members:
            want = "sendonly" if owner is m else "receiveonly"
            assert m.inst.client.get_folder(f"recorderpi-{owner.id}")["type"] == want
    with plan_folder(mesh, "sendonly", {a: "sendonly", b: "receiveonly",
                                        c: "receiveonly"}) as paths:
        _written_and_seen(paths, a, [b, c], "send-only folder, a new 200 kB file", figures,
                          size=200_000)


def _announced_clean(owner: Member, other: Member, fid: str) -> bool:
    """`owner` has heard everything `other` has to say about folder `fid` and needs nothing."""
    done = owner.inst.client.completion(fid, other.inst.device_id).get("completion") == 100
    return done and owner.inst.client.db_status(fid).get("needFiles") == 0


def test_case_03_file_added_to_receiveonly_copy_stays_local(mesh, figures):
    """A file added locally to a receive-only copy does not reach the other devices.

    In a plain receive-only copy (the folder shared from a, receive-only on b and c) a file
    added on b stays on b: Syncthing lists it as a local change, and after a later file from a
    has reached b and c and a counts b's copy complete (so a has heard everything b announces),
    neither a nor c has b's file. In the appliance's own folders the service goes further: the
    file added to b's copy of a's folder is reverted (removed) by b's mesh keeper and never
    reaches a or c either."""
    a, b, c = mesh.members
    with plan_folder(mesh, "readers", {a: "sendreceive", b: "receiveonly",
                                       c: "receiveonly"}) as paths:
        fid = paths[a].name
        (paths[b] / "rogue.txt").write_bytes(b"added on b")
        t0 = time.monotonic()
        wait_until(lambda: b.inst.client.db_status(fid).get("receiveOnlyChangedFiles"),
                   DEADLINE, 0.1, "b's Syncthing listing its local change")
        figures("plain receive-only copy: b's local change noticed", time.monotonic() - t0)
        (paths[a] / "later.txt").write_bytes(b"from a, after the rogue file")
        _appears({b: paths[b], c: paths[c]}, "later.txt", b"from a, after the rogue file",
                 time.monotonic(), "a's later file")
        wait_until(lambda: _announced_clean(a, b, fid), DEADLINE, 0.1,
                   "a counting b's copy complete")
        assert not (paths[a] / "rogue.txt").exists() and not (paths[c] / "rogue.txt").exists()
        assert (paths[b] / "rogue.txt").read_bytes() == b"added on b"

    # The appliance's folders: b's copy of a's folder.
    fid = f"recorderpi-{a.id}"
    rogue = b.folder(a.id) / "rogue.ogg"
    rogue.write_bytes(b"not a's recording")
    assert b.inst.client.scan_quietly(fid)
    t0 = time.monotonic()
    wait_until(lambda: not rogue.exists(), DEADLINE, 0.1, "b's service reverting the change")
    figures("appliance folder: b's local change reverted", time.monotonic() - t0)
    barrier = a.folder(a.id) / "plan-barrier.txt"
    barrier.write_bytes(secrets.token_bytes(16))
    assert a.inst.client.scan_quietly(fid)
    _appears({b: b.folder(a.id), c: c.folder(a.id)}, barrier.name, barrier.read_bytes(),
             time.monotonic(), "a's later file in its own folder")
    wait_until(lambda: _announced_clean(a, b, fid), DEADLINE, 0.1,
               "a counting b's copy of its folder complete")
    assert not (a.folder(a.id) / "rogue.ogg").exists()
    assert not (c.folder(a.id) / "rogue.ogg").exists()


# --- papad ---------------------------------------------------------------------------------


def _entry(entries: list[dict], text: str) -> dict | None:
    return next((e for e in entries if e["text"] == text), None)


def test_case_04_papad_export_annos_to_folder(mesh, figures):
    """`papad-export-annos-to-folder`: papad's data (annotations) exported into a synced folder,
    updated when papad changes.

    b records; a person annotates the recording in b's papad (papadam). b's service exports it
    into b's synced folder (``papad/annotations.json``: text, tags, time range, recording,
    origin), and Syncthing carries the file to a and c. Editing the annotation in papad updates
    the file, deleting it removes the entry, on b and in the copies on a and c. The export is
    written atomically: nothing but the one file is ever in that directory."""
    b = mesh.b
    doc = b.record()
    rid = doc["recording_id"]
    wait_until(lambda: b.registered(rid), DEADLINE, 0.2, "b's recording in b's papad")
    copies = {m.id: m for m in mesh.members}

    def everywhere(pred: Callable[[dict | None], bool], what: str) -> None:
        t0 = time.monotonic()
        got = arrivals({name: (lambda m=m: pred(_entry(export_entries(m, b.id), text)))
                        for name, m in copies.items()}, t0, what)
        for name, s in got.items():
            figures(f"{what}: in {name}'s copy", s)

    text = "The chorus starts here"
    made = b.tag(rid, text, ("Chorus", "harvest"))
    everywhere(lambda e: e is not None and e["tags"] == ["chorus", "harvest"]
               and e["recording_id"] == rid and e["origin"] == b.id
               and e["media_target"] == "t=0.5,1.5", "annotation exported")
    b.papad.edit_annotation(made["uuid"], annotation_text=text + ", and again at the end")
    text_before, text = text, text + ", and again at the end"
    everywhere(lambda e: e is not None, "edit exported")
    assert all(_entry(export_entries(m, b.id), text_before) is None for m in mesh.members)
    b.papad.delete_annotation(made["uuid"])
    everywhere(lambda e: e is None, "deletion exported")
    assert [p.name for p in (b.folder(b.id) / "papad").iterdir()] == ["annotations.json"]
    registered_once_everywhere(mesh.members, [doc])


def test_case_05_papad_sync_annos_to_device(mesh, figures):
    """`papad-sync-annos-to-device`: on n devices with Syncthing, the synced annotations are
    imported into each local papad, and its listing shows the latest audio and tags.

    n = 3 (a, b, c, each with its own papad: upstream, papadam, and upstream acting in group 2).
    c records with a title and tags; people annotate it in a's papad and in b's. Each device's
    papad listing then shows that recording as its latest media, with the recording's tags, and
    holds both annotations with their tags (imported ones also tagged with their origin), each
    exactly once."""
    a, b, c = mesh.members
    doc = c.record(title="Harvest song", tags=("harvest", "song"))
    rid = doc["recording_id"]
    got = arrivals({m.id: (lambda m=m: m.registered(rid)) for m in mesh.members},
                   c.published(doc),
                   "c's recording in every papad")
    for name, s in got.items():
        figures(f"c's recording in {name}'s papad, after publishing", s)
    for m in mesh.members:
        latest = m.latest_media()
        assert described_recording_id(latest) == rid, (m.id, latest.get("description"))
        assert {"harvest", "song"} <= tag_names(latest), (m.id, latest.get("tags"))
    notes = {a: ("Drums come in here", ("Drums",)), b: ("Sung by the north choir", ("choir",))}
    t0 = time.monotonic()
    for m, (text, tags) in notes.items():
        m.tag(rid, text, tags)

    def expected(m: Member) -> dict[str, tuple[str, ...]]:
        return {text: tuple(sorted({t.lower() for t in tags}
                                   | ({f"origin:{origin.id}"} if origin is not m else set())))
                for origin, (text, tags) in notes.items()}

    got = arrivals({m.id: (lambda m=m: m.notes(rid) == expected(m)) for m in mesh.members}, t0,
                   "both annotations in every papad")
    for name, s in got.items():
        figures(f"both annotations in {name}'s papad", s)
    for m in mesh.members:
        [media] = m.media(rid)
        assert len(m.papad.annotations(media["uuid"])) == len(notes)  # nothing twice
        assert m.latest_media()["uuid"] == media["uuid"]


def test_case_06_papad_sync_media_to_device(mesh, figures):
    """`papad-sync-media-to-device`: media folders sync to every device.

    Every device records at the same time; each recording's OGG and sidecar (README's layout,
    the OGG matching the sidecar's sha256) arrive in every other device's copy of its owner's
    media folder, and every papad registers all three."""
    members = mesh.members
    with ThreadPoolExecutor(3) as pool:
        docs = list(pool.map(lambda m: m.record(), members))
    owner = {m.id: m for m in members}
    checks = {f"{d['device_id']}'s recording on {m.id}": (lambda m=m, d=d: m.holds(d))
              for d in docs for m in members if m.id != d["device_id"]}
    starts = {f"{d['device_id']}'s recording on {m.id}": owner[d["device_id"]].published(d)
              for d in docs for m in members if m.id != d["device_id"]}
    got = arrivals(checks, starts, "every recording on every other device")
    for name, s in sorted(got.items()):
        figures(f"{name}, after publishing", s)
    assert all(m.holds(d) for d in docs for m in members if m.id == d["device_id"])
    registered_once_everywhere(members, docs)


def test_case_07_recorderPi_Papad_local(mesh, figures):
    """`recorderPi-Papad-local`: record on the recorder, the recording is added to the local
    papad, and it can be tagged there.

    The service on a records (``recorder ctl start``, a bookmark with ``ctl mark``, ``ctl
    stop``); a's papad (upstream) then holds it exactly once, the uploaded bytes being the
    published OGG, with the bookmark as an annotation, and ``recorder outbox list`` shows it
    delivered under papad's id. A person tags it through papad's API; papad lists the tag."""
    a = mesh.a
    doc = a.record_on_service()
    rid = doc["recording_id"]
    got = arrivals({"in a's papad": lambda: a.registered(rid)}, a.published(doc),
                   "the recording in a's papad")
    figures("in a's papad, after publishing", got["in a's papad"])
    [media] = a.media(rid)
    ogg = (a.folder(a.id) / doc["path"]).read_bytes()
    assert a.papad.download(media["upload"]) == ogg
    wait_until(lambda: len(a.notes(rid)) == 1, DEADLINE, 0.1, "the bookmark in a's papad")
    assert list(a.notes(rid).values()) == [("bookmark",)], a.notes(rid)
    listed = a.cli("outbox", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = [e for e in json.loads(listed.stdout)["entries"] if e["recording_id"] == rid]
    assert entry["state"] == "delivered" and entry["remote_id"] == media["uuid"], entry
    a.tag(rid, "Recipe: coconut chutney", ("recipe", "Food"))
    assert a.notes(rid)["Recipe: coconut chutney"] == ("food", "recipe")
    registered_once_everywhere(mesh.members, [doc])


def test_case_08_recorderPi_Papad_syncthing_to_remote(mesh, figures):
    """`recorderPi-Papad-syncthing-to-remote`: the remote device has the recording files, its
    papad has the entry, and it can be tagged there.

    The service on a records (with a bookmark). b on the same site and c on the other site
    receive the OGG and its sidecar through Syncthing (byte for byte); their papads (papadam on
    b, upstream in group 2 on c) hold it exactly once with the bookmark; a person tags it in c's
    papad and papad lists the tag."""
    a, b, c = mesh.members
    doc = a.record_on_service()
    rid = doc["recording_id"]
    t0 = a.published(doc)
    got = arrivals({f"files on {m.id}": (lambda m=m: m.holds(doc)) for m in (b, c)}
                   | {f"entry in {m.id}'s papad": (lambda m=m: m.registered(rid))
                      for m in (b, c)},
                   t0, "a's recording on b and c")
    for name, s in got.items():
        figures(f"{name}, after publishing on a", s)
    for m in (b, c):  # the bookmark, tagged with its origin once a's export is imported
        wait_until(lambda m=m: m.notes(rid), DEADLINE, 0.1, f"the bookmark in {m.id}'s papad")
        [tags] = m.notes(rid).values()
        assert "bookmark" in tags, (m.id, tags)
    c.tag(rid, "Heard at the south market", ("market", "south"))
    assert c.notes(rid)["Heard at the south market"] == ("market", "south")
    registered_once_everywhere(mesh.members, [doc])


def _legacy_record(fake: FakeLegacyPapad, rid: str) -> dict | None:
    with fake.lock:
        for r in fake.recordings:
            if tagged_recording_id(r.get("tags")) == rid:
                return json.loads(json.dumps(r))
    return None


def test_case_09_papad_remote_to_local(mesh, figures, tmp_path):
    """`papad-remote-to-local`: files arriving in a synced path served by a web server are added
    to the local papad in a chosen channel/group and can be tagged.

    A device l joins on the north site with the legacy papad-api (an imitation: the real one
    needs MongoDB), which stores a URL, not a file: ``[papad] station`` is the chosen channel and
    ``media_base_url`` points at nginx with the appliance's document-root config serving l's
    sync root. a records; the recording arrives in l's synced path, l's papad-api gets it in that
    station with a URL nginx answers with the very OGG, and it is tagged there. On c (current
    papad, ``[papad] group = 2``, the chosen group) the same recording arrives in c's synced
    path, which nginx serves too, and lands in group 2, where it is tagged. l leaves the mesh
    at the end."""
    a, c = mesh.a, mesh.c
    fake = FakeLegacyPapad().start()
    ports = {"l": free_port(), "c": free_port()}
    node = mesh.add_node("l", mesh.north)
    section = {"api": "papad-api", "url": fake.url, "timeout": 5.0, "station": "north-field",
               "host": f"127.0.0.1:{ports['l']}", "media_base_url": "http://{host}/{device_id}/"}
    l_dev = Member(node, fake, mesh.clips["l"], section).start()
    try:
        with serve_docroot(l_dev.inst.sync_root, ports["l"], tmp_path / "nginx-l") as l_web, \
                serve_docroot(c.inst.sync_root, ports["c"], tmp_path / "nginx-c") as c_web:
            figures("l joins the mesh", join(l_dev, a))
            doc = a.record()
            rid = doc["recording_id"]
            t0 = a.published(doc)
            got = arrivals({"files on l": lambda: l_dev.holds(doc),
                            "entry in l's papad-api": lambda: _legacy_record(fake, rid),
                            "files on c": lambda: c.holds(doc),
                            "entry in c's papad": lambda: c.registered(rid)}, t0,
                           "a's recording on l and c")
            for name, s in got.items():
                figures(f"{name}, after publishing on a", s)
            http = http_session()
            ogg = (a.folder(a.id) / doc["path"]).read_bytes()
            record = _legacy_record(fake, rid)
            assert record["station_name"] == "north-field"
            assert record["audio_url"] == f"{l_web}/{a.id}/{doc['path']}"
            served = http.get(record["audio_url"], timeout=10)
            assert served.status_code == 200 and served.content == ogg
            assert served.headers["Content-Type"] == "audio/ogg"
            record["tags"] += ",north,market"  # tagged in papad-api: PUT the record back
            resp = http.put(f"{fake.url}/recordings/{record['_id']['$oid']}", json=record,
                            timeout=10)
            assert resp.status_code == 200
            got_back = http.get(f"{fake.url}/recordings/{record['_id']['$oid']}", timeout=10)
            assert {"north", "market"} <= set(got_back.json()["tags"].split(","))

            [media] = c.media(rid)
            assert media["group"]["id"] == OTHER_GROUP and media["group"]["name"] == "Closed"
            served = http.get(f"{c_web}/{a.id}/{doc['path']}", timeout=10)
            assert served.status_code == 200 and served.content == ogg
            assert c.papad.download(media["upload"]) == ogg
            c.tag(rid, "Market day", ("market",))
            assert c.notes(rid)["Market day"] == ("market",)
    finally:
        try:
            removed = remove(l_dev, mesh)
        finally:
            fake.stop()
    assert removed.returncode == 0, removed.stderr
    registered_once_everywhere(mesh.members, [doc])


# --- integration: two sites ----------------------------------------------------------------


def test_case_10_with_internet_files_annotations_sync_and_device_joins(mesh, figures):
    """With internet: files and annotations sync; adding a device to the mesh.

    The sites are joined by the router (the "internet"). b records and a person annotates the
    recording in b's papad. Then a new device e is set up on the south site, with a papad of
    its own (an upstream papad the module started beforehand), and added to the mesh with one
    command: ``recorder mesh join`` with a code from ``recorder mesh invite`` on a, on the north
    site. Every member pairs with it; e receives b's recording (files, papad entry, b's
    annotation); e records, and its recording reaches a, b and c (files and papads); an
    annotation made in e's papad reaches a's. e leaves the mesh at the end (``recorder mesh
    remove-peer``)."""
    a, b = mesh.a, mesh.b
    with ThreadPoolExecutor(1) as pool:
        node_job = pool.submit(mesh.add_node, "e", mesh.south)
        before = b.record()
        rid_b = before["recording_id"]
        wait_until(lambda: b.registered(rid_b), DEADLINE, 0.2, "b's recording in b's papad")
        b.tag(rid_b, "Ferry times", ("river",))
        papad_e, node = mesh.spare_papad.result(), node_job.result()
    e = Member(node, papad_e, mesh.clips["e"], papad_e.papad_section(node.syncthing.root))
    e.start()
    try:
        figures("e joins the mesh (recorder mesh join)", join(e, a))
        members = [*mesh.members, e]
        t0 = time.monotonic()
        wait_until(lambda: full_mesh([m.inst for m in members]), DEADLINE, 0.2,
                   "a full mesh of a, b, c and e")
        figures("every member paired with e", time.monotonic() - t0)
        got = arrivals({"b's recording (files) on e": lambda: e.holds(before),
                        "b's recording in e's papad": lambda: e.registered(rid_b),
                        "b's annotation in e's papad": lambda: e.notes(rid_b).get(
                            "Ferry times") == ("origin:dev-b", "river")}, t0,
                       "what the mesh had before e joined")
        for name, s in got.items():
            figures(f"{name} after joining", s)
        doc = e.record()
        rid = doc["recording_id"]
        t0 = e.published(doc)
        got = arrivals({f"on {m.id}": (lambda m=m: m.holds(doc) and m.registered(rid))
                        for m in mesh.members}, t0, "e's recording on a, b and c")
        for name, s in got.items():
            figures(f"e's recording (files and papad) {name}, after publishing", s)
        e.tag(rid, "Sung at the south well", ("song",))
        t0 = time.monotonic()
        wait_until(lambda: a.notes(rid).get("Sung at the south well") == ("origin:dev-e",
                                                                          "song"),
                   DEADLINE, 0.2, "e's annotation in a's papad")
        figures("e's annotation in a's papad", time.monotonic() - t0)
        registered_once_everywhere(members, [before, doc])
    finally:
        removed = remove(e, mesh)
    assert removed.returncode == 0, removed.stderr
    assert a.inst.client.get_device(e.inst.device_id) is None


def test_case_11_interrupted_internet_converges_nothing_lost_or_doubled(mesh, figures):
    """With interrupted internet: devices cut off for a while converge afterwards, nothing lost
    or doubled.

    The link between the sites is cut (``ip link set down`` on the router's south port; every
    process keeps running) until yggdrasil on a has lost c. Meanwhile a (north) and c (south)
    each record, and people annotate each recording in its owner's papad: a's reaches b (same
    site) but not c, c's reaches nobody. Then the link comes back and the mesh converges: every
    device holds both recordings' files, every papad holds each recording exactly once with its
    one annotation, and no conflict copy appears anywhere."""
    a, b, c = mesh.members
    wait_until(mesh.connected, DEADLINE, 0.2, "the mesh connected before the cut")
    mesh.cut()
    t_cut = time.monotonic()
    try:
        with ThreadPoolExecutor(2) as pool:
            docs = list(pool.map(lambda m: m.record(), (a, c)))
        ra, rc = (d["recording_id"] for d in docs)
        for m, rid, text in ((a, ra, "Made in the north while cut off"),
                             (c, rc, "Made in the south while cut off")):
            wait_until(lambda m=m, rid=rid: m.registered(rid), DEADLINE, 0.2,
                       f"{rid} on {m.id}")
            m.tag(rid, text, ("outage",))
        wait_until(lambda: c.node.ygg_key not in a.node.ygg.peer_keys(), DEADLINE, 0.2,
                   "a's yggdrasil losing c")
        figures("cut to yggdrasil on a losing c", time.monotonic() - t_cut)
        wait_until(lambda: b.holds(docs[0]) and "Made in the north while cut off" in b.notes(ra),
                   DEADLINE, 0.2, "a's recording and annotation on b, on the same site")
        assert not c.holds(docs[0]) and not c.media(ra)  # b has it: the cut kept it from c
        assert not a.holds(docs[1]) and not b.holds(docs[1])
    finally:
        mesh.restore()
    t_back = time.monotonic()
    figures("link down for", t_back - t_cut)
    want = {ra: {"Made in the north while cut off": ("outage",)},
            rc: {"Made in the south while cut off": ("outage",)}}

    def expected(m: Member, d: dict) -> dict[str, tuple[str, ...]]:
        origin = d["device_id"]
        return {t: tags if origin == m.id else tuple(sorted((*tags, f"origin:{origin}")))
                for t, tags in want[d["recording_id"]].items()}

    checks: dict[str, Callable[[], Any]] = {}
    for m in mesh.members:
        checks[f"files on {m.id}"] = lambda m=m: all(m.holds(d) for d in docs)
        checks[f"entries in {m.id}'s papad"] = lambda m=m: m.registered(ra, rc)
        checks[f"annotations in {m.id}'s papad"] = lambda m=m: all(
            m.notes(d["recording_id"]) == expected(m, d) for d in docs)
    got = arrivals(checks, t_back, "the mesh converging after the link came back")
    for name, s in got.items():
        figures(f"link back to {name}", s)
    figures("convergence after the link came back", max(got.values()))
    for m in mesh.members:
        for d in docs:
            [media] = m.media(d["recording_id"])
            assert len(m.papad.annotations(media["uuid"])) == 1, (m.id, d["recording_id"])
    for m in mesh.members:  # one copy of each recording's files, no conflict copy anywhere
        for d in docs:
            assert len(m.sidecars(d["device_id"], d["recording_id"])) == 1, (m.id, d)
    assert conflict_copies(mesh.members) == []
    wait_until(mesh.connected, DEADLINE, 0.2, "the mesh connected again")


def _no_route_out(node: Node) -> str:
    """Try to reach an internet address from inside `node`; return why it failed."""
    probe = ("import socket, sys\n"
             "for host in ('1.1.1.1', '2606:4700:4700::1111'):\n"
             "    try:\n"
             "        socket.create_connection((host, 443), 5).close()\n"
             "        sys.exit(f'{host} answered')\n"
             "    except OSError as exc:\n"
             "        print(host, exc.strerror or exc)\n")
    res = node.exec(sys.executable, "-c", probe, check=False, timeout=60)
    assert res.returncode == 0, f"{node.short} reached the internet: {res.stderr}"
    return res.stdout.strip()


def test_case_12_without_internet_mesh_on_yggdrasil_times_stay_right(mesh, figures, tmp_path):
    """Without internet: the mesh works on its own network (yggdrasil), times stay right.

    No namespace has a route to the internet (a connection to public IPv4 and IPv6 addresses
    fails from every device), yet the mesh works: every Syncthing connection runs between
    yggdrasil (200::/7) addresses, and a recording made on c (south) reaches a and b, files and
    papads, with a start time inside the moments the test saw it begin and end. Time: each
    device's chrony, with the appliance's mesh config and its peers' yggdrasil addresses as
    sources (``recorder mesh time-sources --write``), agrees on one clock over yggdrasil: one
    device runs on its local reference (orphan mode), the others are synchronised to a peer
    (chronyd -x: it never touches the clock the machine shares)."""
    a, b, c = mesh.members
    for m in mesh.members:
        why = _no_route_out(m.node)
        figures(f"internet from {m.id}", why.replace("\n", "; "), "")
    wait_until(mesh.connected, DEADLINE, 0.2, "the mesh connected")
    for m in mesh.members:
        for peer in mesh.members:
            if peer is m:
                continue
            conn = m.inst.client.connections()["connections"][peer.inst.device_id]
            host = conn["address"].rsplit(":", 1)[0].strip("[]")
            assert ipaddress.ip_address(host) in YGG_NET, (m.id, peer.id, conn["address"])
    began = datetime.now(UTC)
    doc = c.record()
    ended = datetime.now(UTC)
    # The start time lies between the moments the test saw the command begin and end (less
    # the pre-roll the recording includes; started_at has millisecond precision).
    started = datetime.fromisoformat(doc["started_at"].replace("Z", "+00:00")).timestamp()
    assert began.timestamp() - doc["preroll"] - 0.001 <= started <= ended.timestamp(), doc
    t0 = c.published(doc)
    got = arrivals({m.id: (lambda m=m: m.holds(doc) and m.registered(doc["recording_id"]))
                    for m in (a, b)}, t0, "c's recording on a and b over yggdrasil")
    for name, s in got.items():
        figures(f"c's recording (files and papad) on {name}, after publishing", s)

    peers = {m: {p.node.ygg_address for p in mesh.members if p is not m} for m in mesh.members}
    chronys = {}
    try:
        for m, expected in peers.items():
            sources = tmp_path / f"sources-{m.id}"
            sources.mkdir()
            target = sources / "recorderpi-mesh.sources"
            res = m.cli("mesh", "time-sources", "--write", str(target))
            assert res.returncode == 0, res.stderr
            servers = {line.split()[1] for line in target.read_text().splitlines()
                       if line.startswith("server ")}
            assert servers == expected, (m.id, servers)
            chronys[start_chronyd(m.node, sources)] = expected
        t0 = time.monotonic()
        wait_until(lambda: one_clock(chronys), DEADLINE, 0.5,
                   "one chrony root on its local reference, the others synced to a peer")
        figures("chrony agreeing on one clock", time.monotonic() - t0)
        for chrony, expected in chronys.items():
            source = chrony.synced_to(expected)
            tracking = chrony.tracking()
            if source is None:
                figures(f"chrony on dev-{chrony.node.short}", "the mesh's reference (orphan)",
                        "")
                continue
            owner = next(m.id for m in mesh.members if m.node.ygg_address == source)
            offset = float(tracking["Last offset"].split()[0])
            figures(f"chrony on dev-{chrony.node.short}: last offset to {owner}",
                    abs(offset) * 1e6, "µs")
    finally:
        for chrony in chronys:
            chrony.stop()
    registered_once_everywhere(mesh.members, [doc])


def test_figures_fixture_records_junit_properties(figures, request):
    """The figures land as JUnit properties of the test that measured them."""
    assert figures("a figure", 1.234) == 1.234
    figures("a count", 3, "recordings")
    props = dict(request.node.user_properties)
    assert props == {"a figure": "1.23 s", "a count": "3 recordings"}

