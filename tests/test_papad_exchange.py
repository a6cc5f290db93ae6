"""The annotation exchange's import against the real papad (both flavours), without Syncthing:
a peer's export is written into its folder as Syncthing would leave it, and the exchange merges
it into the local papad. Failures stay with their entry; edits are PATCHes; deletions follow
papad's soft delete."""

from __future__ import annotations

import json
import logging

import pytest

from recorder.atomic import atomic_write_text
from recorder.layout import Layout
from recorder.mesh.exchange.annotations import (
    ENTRY_RETRY,
    EXPORT_PATH,
    PENDING_RETRY,
    SCHEMA_ID,
    AnnotationExchange,
    EntryBackoff,
)
from recorder.mesh.exchange.store import BridgeStore
from recorder.papad.client import make_client
from tests.papad_proxy import FaultProxy
from tests.papad_recordings import make_recording
from tests.papad_setup import client_and_outbox, drain, fast_worker, real_config

PEER = "dev-p"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def local(papad_real, cfg_factory, tmp_path):
    """This device with a real papad (behind a proxy), a peer's recording registered in it,
    and an exchange on a test clock. Yields a namespace of the parts."""
    with FaultProxy(papad_real.url) as proxy:
        cfg = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url)
        with client_and_outbox(cfg) as (client, outbox):
            peer_folder = cfg.storage.sync_root / PEER
            doc, ogg = make_recording(peer_folder, seconds=3.0)
            outbox.enqueue(doc, ogg, origin="peer")
            worker = fast_worker(outbox, client)
            drain(worker, outbox, delivered=1)
            worker.stop()
            clock = Clock()
            exchange = AnnotationExchange(Layout.of(cfg.device.id, cfg.storage), outbox,
                                          make_client(cfg.papad), BridgeStore(outbox.database),
                                          clock=clock)
            exchange.export_now()  # the next export is 5 min (of the test clock) away

            class Parts:
                pass

            parts = Parts()
            parts.__dict__.update(cfg=cfg, outbox=outbox, proxy=proxy, papad=papad_real,
                                  clock=clock, exchange=exchange, rid=doc["recording_id"],
                                  media=outbox.remote_id(doc["recording_id"]),
                                  folder=peer_folder)
            yield parts
            exchange.client.close()


def export(parts, entries: dict[str, tuple[str, str, list[str]]]) -> None:
    """Write the peer's export: short id → (media_target, text, tags)."""
    doc = {"schema": SCHEMA_ID, "device_id": PEER, "annotations": [
        {"id": f"{parts.rid}:{short}", "recording_id": parts.rid, "origin": PEER,
         "media_target": target, "text": text, "tags": tags}
        for short, (target, text, tags) in sorted(entries.items())]}
    atomic_write_text(parts.folder / EXPORT_PATH, json.dumps(doc))


def texts(parts) -> dict[str, tuple[str, ...]]:
    return {text: tags for _, text, tags in parts.papad.annotation_set(parts.media)}


def test_a_failing_entry_backs_off_alone_and_never_holds_up_the_others(local, caplog):
    caplog.set_level(logging.WARNING, logger="recorder.mesh.exchange.annotations")
    parts = local
    export(parts, {"a1": ("t=0,1", "first note", ["x"]),
                   "a2": ("t=1,2", "second note", ["y"]),
                   "a3": ("t=2,3", "third note", ["z"])})
    parts.proxy.answer(500, {"detail": "An error occurred: boom"}, n=1000, method="POST",
                       path="/api/v1/annotate/", contains=b"second note")
    assert parts.exchange.import_peer(PEER) == "pending"
    assert texts(parts) == {"first note": ("origin:dev-p", "x"),
                            "third note": ("origin:dev-p", "z")}
    [failing] = parts.exchange.status()["failing"]
    assert failing["id"] == f"{parts.rid}:a2" and failing["attempts"] == 1
    assert "HTTP 500" in failing["error"] and failing["retry_in_s"] == ENTRY_RETRY
    tries = parts.proxy.count("POST", "/api/v1/annotate/", "answered")
    # Not due yet: the bridge's loop asks again and again, nothing is sent.
    for _ in range(5):
        parts.clock.now += 0.3
        assert parts.exchange.next_due_in() > 0
        parts.exchange.run_due()
    assert parts.proxy.count("POST", "/api/v1/annotate/", "answered") == tries
    # Due: tried once more, and the next wait doubles.
    parts.clock.now += ENTRY_RETRY
    parts.exchange.run_due()
    assert parts.proxy.count("POST", "/api/v1/annotate/", "answered") == tries + 1
    [failing] = parts.exchange.status()["failing"]
    assert failing["attempts"] == 2 and failing["retry_in_s"] == 2 * ENTRY_RETRY
    # A new annotation from the peer meanwhile is not held up by the failing one.
    export(parts, {"a1": ("t=0,1", "first note", ["x"]),
                   "a2": ("t=1,2", "second note", ["y"]),
                   "a3": ("t=2,3", "third note", ["z"]),
                   "a4": ("t=0,3", "fourth note", ["w"])})
    parts.exchange.import_peer(PEER)
    assert "fourth note" in texts(parts)
    assert parts.proxy.count("POST", "/api/v1/annotate/", "answered") == tries + 1
    # papad's fault is fixed: the next due try succeeds.
    parts.proxy.clear()
    parts.clock.now += 2 * ENTRY_RETRY
    parts.exchange.run_due()
    assert set(texts(parts)) == {"first note", "second note", "third note", "fourth note"}
    status = parts.exchange.status()
    assert status["failing"] == [] and status["pending_peers"] == []
    # One log line per failed try, never one per loop pass.
    lines = [r for r in caplog.records if "second note" in r.getMessage()
             or "a2" in r.getMessage()]
    assert len(lines) == 2


def test_edits_are_patches_and_deletions_follow_the_owner(local):
    parts = local
    export(parts, {"a1": ("t=0,1", "first note", ["x"]),
                   "a2": ("t=1,2", "second note", ["y"])})
    assert parts.exchange.import_peer(PEER) == "imported"
    before = {a["annotation_text"]: a["uuid"] for a in parts.papad.annotations(parts.media)}
    # The owner edits a1: the same annotation here changes (a PATCH, not a new one).
    export(parts, {"a1": ("t=0,1.5", "first note, corrected", ["x", "fix"]),
                   "a2": ("t=1,2", "second note", ["y"])})
    parts.exchange.import_peer(PEER)
    after = {a["annotation_text"]: a for a in parts.papad.annotations(parts.media)}
    assert after["first note, corrected"]["uuid"] == before["first note"]
    assert after["first note, corrected"]["media_target"] == "t=0,1.5"
    assert {t["name"] for t in after["first note, corrected"]["tags"]} == {
        "x", "fix", "origin:dev-p"}
    assert parts.proxy.count("PATCH", "/api/v1/annotate/") == 1
    # Someone here deletes the imported a2 (papad soft-deletes it); then the owner edits it:
    # the deletion is respected, nothing is re-created.
    parts.papad.delete_annotation(before["second note"])
    export(parts, {"a1": ("t=0,1.5", "first note, corrected", ["x", "fix"]),
                   "a2": ("t=1,2", "second note, edited", ["y"])})
    assert parts.exchange.import_peer(PEER) == "imported"
    assert set(texts(parts)) == {"first note, corrected"}
    # The owner deletes a1: deleted here too.
    export(parts, {"a2": ("t=1,2", "second note, edited", ["y"])})
    assert parts.exchange.import_peer(PEER) == "imported"
    assert texts(parts) == {}
    assert parts.exchange.status()["failing"] == []


def test_a_delete_papad_did_but_answered_500_is_retried_until_papad_says_gone(local):
    # papadam answers some DELETEs 500 "Event loop is closed" after doing them. The exchange
    # tries once more at once; here that answer is a 500 too, so the entry backs off.
    parts = local
    export(parts, {"a1": ("t=0,1", "first note", ["x"]), "a2": ("t=1,2", "second note", [])})
    assert parts.exchange.import_peer(PEER) == "imported"
    parts.proxy.answer_after(500, {"detail": "An error occurred: Event loop is closed"}, n=2,
                             method="DELETE", path="/api/v1/annotate/")
    export(parts, {"a2": ("t=1,2", "second note", [])})  # the owner deleted a1
    assert parts.exchange.import_peer(PEER) == "pending"
    assert set(texts(parts)) == {"second note"}  # papad did delete it
    assert parts.exchange.status()["failing"][0]["id"] == f"{parts.rid}:a1"
    parts.clock.now += ENTRY_RETRY
    parts.exchange.run_due()  # DELETE again: 404, which is "deleted"
    assert parts.exchange.status()["failing"] == []
    assert parts.exchange.status()["pending_peers"] == []
    assert parts.proxy.count("DELETE", "/api/v1/annotate/") == 3


def test_entries_waiting_for_their_recording_are_reread_with_backoff(local):
    parts = local
    unknown = "01m8hhpkrgvkxk0ftbzy56rh02"
    doc = {"schema": SCHEMA_ID, "device_id": PEER, "annotations": [
        {"id": f"{unknown}:w1", "recording_id": unknown, "origin": PEER,
         "media_target": "t=0,1", "text": "on a recording not here yet", "tags": []}]}
    atomic_write_text(parts.folder / EXPORT_PATH, json.dumps(doc))
    assert parts.exchange.import_peer(PEER) == "pending"
    waits = []
    for _ in range(7):
        due = parts.exchange.next_due_in()
        waits.append(due)
        parts.clock.now += due
        parts.exchange.run_due()
    assert waits[:3] == [2.0, 4.0, 8.0] and waits[-1] == 60.0


def test_reads_brought_forward_by_events_do_not_lengthen_the_wait():
    """A burst of Syncthing events re-reads a peer's export many times within a second; only
    a re-read at or after the wait it set counts as a step of the backoff (else one burst
    pushed the next try a minute out, long after the recording was registered)."""
    backoff = EntryBackoff()
    for _ in range(5):  # the first read, then reads brought forward by events
        backoff.schedule(PEER, 1000.0, waiting=1, progressed=False)
    assert backoff.peer_next[PEER] == 1000.0 + PENDING_RETRY
    backoff.schedule(PEER, 1000.0 + PENDING_RETRY, waiting=1, progressed=False)  # when due
    assert backoff.peer_next[PEER] == 1000.0 + 3 * PENDING_RETRY
    for _ in range(3):  # papad unavailable, read again and again by events: no steps either
        backoff.postponed("dev-q", 2000.0)
    assert backoff.peer_next["dev-q"] == 2000.0 + PENDING_RETRY


def test_the_export_lists_tags_sorted_whatever_order_papad_lists_them(local):
    # papad lists a media's tags in the order the tags were first made on the server, so the
    # same annotation reads differently from one papad to the next. Two tags no other test
    # makes: the one that sorts last is made first.
    parts = local
    first, late = f"aa{parts.rid[-6:]}", f"zz{parts.rid[-6:]}"
    parts.papad.add_annotation(parts.media, "makes the tag", "t=0,1", (late,))
    parts.papad.add_annotation(parts.media, "two tags", "t=1,2", (first, late))
    listed = next(a for a in parts.papad.annotations(parts.media)
                  if a["annotation_text"] == "two tags")
    assert [t["name"] for t in listed["tags"]] != sorted(t["name"] for t in listed["tags"]), \
        "papad listed the tags sorted: this test would prove nothing"
    assert parts.exchange.export_now()
    doc = json.loads((parts.cfg.storage.sync_root / parts.cfg.device.id / EXPORT_PATH)
                     .read_text())
    entry = next(e for e in doc["annotations"] if e["text"] == "two tags")
    assert entry["tags"] == [first, late]
