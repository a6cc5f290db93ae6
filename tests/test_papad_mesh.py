"""Two devices, each with its own real papad: a on upstream papad (Token), b on papadam (JWT).

Two real Syncthing instances on 127.0.0.1 (`tests.syncthing_harness`), the devices of
`tests.mesh_devices` (outbox worker and bridge, as `recorder run` has them). A recording made on
a through the real pipeline is registered in a's papad by a's outbox and in b's papad by b's
bridge, exactly once each; annotations made by people in either papad reach the other, tagged
with their origin; edits (PATCH) and deletions (soft delete) follow the owner. Tests run in file
order and share the mesh.
"""

from __future__ import annotations

import pytest

from tests.clips import speech
from tests.conftest import wait_until
from tests.mesh_devices import Device
from tests.syncthing_harness import SyncthingCluster


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "one.wav"
    speech(path, "Grind the coconut with green chillies and a little cumin for the chutney. ")
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, papad_servers):
    with SyncthingCluster(2, tmp_path_factory.mktemp("papad-mesh")) as cluster:
        a, b = cluster
        cluster.pair_all()
        devices = [Device(a, papad=papad_servers["upstream"]),
                   Device(b, papad=papad_servers["papadam"])]
        try:
            for d in devices:
                d.start()
            yield devices
        finally:
            for d in devices:
                d.stop()


def texts(dev: Device, rid: str) -> dict[str, tuple[str, ...]]:
    """Annotation text → sorted tags, on `dev`'s papad."""
    return {text: tags for _, text, tags in dev.annotations(rid)}


def once(dev: Device, rid: str) -> str:
    found = dev.real.media(rid)
    assert len(found) == 1, f"{len(found)} media for {rid} on {dev.id}"
    return found[0]["uuid"]


def barrier(src: Device, dst: Device, rid: str, text: str) -> None:
    """A new annotation on `src` that has reached `dst`: everything `src` exported before it
    has been imported on `dst` too (a causal barrier instead of a fixed sleep)."""
    src.real.add_annotation(src.media_id(rid), text, "t=0,0.5", ("barrier",))
    wait_until(lambda: text in texts(dst, rid), 60, 0.2, f"barrier {text!r} on {dst.id}")


def registered_on_both(mesh, clip, marks: tuple[str, ...] = ()) -> str:
    """A recording made on a, registered in both papads; its recording id."""
    a, b = mesh
    rid = a.record(clip, marks=marks).sidecar["recording_id"]
    for dev in (a, b):
        wait_until(lambda dev=dev: dev.registration.outbox.remote_id(rid) and dev.media_id(rid),
                   90, 0.2, f"{rid} registered on {dev.id}")
    return rid


def test_recording_reaches_both_papads_once_and_annotations_travel(mesh, clip):
    a, b = mesh
    rid = registered_on_both(mesh, clip, marks=("chutney",))
    # b's papad got a's recording (bytes, marker), its bookmark as an annotation.
    media_b = b.real.one_media(rid)
    assert media_b["file_extension"] == "audio/ogg"
    assert b.real.download(media_b["upload"]) == a.real.download(a.real.one_media(rid)["upload"])
    wait_until(lambda: "chutney" in texts(b, rid), 60, 0.2, "bookmark on b")
    # Someone annotates on a's papad: it reaches b, tagged with its origin.
    a.real.add_annotation(a.media_id(rid), "Needs more salt", "t=1,2.5", ("Food", " taste "))
    wait_until(lambda: texts(b, rid).get("Needs more salt") == ("food", "origin:dev-a",
                                                                "taste"),
               60, 0.2, f"a's annotation on b: {texts(b, rid)}")
    # Someone annotates a's recording on b's papad: it reaches a.
    b.real.add_annotation(b.media_id(rid), "Sung by the river group", "t=0,1", ("song",))
    wait_until(lambda: texts(a, rid).get("Sung by the river group") == ("origin:dev-b", "song"),
               60, 0.2, f"b's annotation on a: {texts(a, rid)}")
    # Nothing echoes back, nothing twice: full exchange cycles both ways happened since.
    barrier(a, b, rid, "barrier from a")
    barrier(b, a, rid, "barrier from b")
    expected = {"chutney", "Needs more salt", "Sung by the river group", "barrier from a",
                "barrier from b"}
    assert set(texts(a, rid)) == expected
    assert set(texts(b, rid)) == expected
    for dev in (a, b):
        once(dev, rid)
        assert len(dev.real.annotations(dev.media_id(rid))) == len(expected)
        assert dev.bridge.status()["annotations"]["failing"] == []


def test_edits_and_deletions_follow_the_owner(mesh, clip):
    a, b = mesh
    rid = registered_on_both(mesh, clip)
    a.real.add_annotation(a.media_id(rid), "Needs more salt", "t=1,2.5", ("food",))
    wait_until(lambda: "Needs more salt" in texts(b, rid), 60, 0.2, "a's annotation on b")
    mine = next(x for x in a.real.annotations(a.media_id(rid))
                if x["annotation_text"] == "Needs more salt")
    a.real.edit_annotation(mine["uuid"], annotation_text="Needs more salt and lime",
                           tags="food")
    wait_until(lambda: texts(b, rid).get("Needs more salt and lime") == ("food", "origin:dev-a"),
               60, 0.2, f"a's edit on b: {texts(b, rid)}")
    before = {x["annotation_text"]: x["uuid"] for x in b.real.annotations(b.media_id(rid))}
    # b edits its copy of a's annotation: stays local (a owns it).
    b.real.edit_annotation(before["Needs more salt and lime"], annotation_text="b: too salty")
    barrier(b, a, rid, "barrier from b")
    assert "b: too salty" not in texts(a, rid)
    # a deletes it: deleted on b too (papad's soft delete: gone from the lists).
    a.real.delete_annotation(mine["uuid"])
    wait_until(lambda: not any("salt" in t for t in texts(b, rid)), 60, 0.2,
               f"deletion on b: {texts(b, rid)}")
    assert set(texts(a, rid)) == set(texts(b, rid)) == {"barrier from b"}
