"""The outbox queue itself: durability, reconcile, ordering, backoff, concurrency."""

from __future__ import annotations

import sqlite3
import time

import pytest

from recorder.errors import RecorderError
from recorder.papad.outbox import OutboxWorker
from recorder.sidecar import SidecarError
from tests.fake_papad import FakePapad
from tests.papad_recordings import make_recording
from tests.papad_setup import TOKEN, client_and_outbox, current_config, drain, fast_worker


@pytest.fixture
def papad():
    server = FakePapad(page_size=50)
    server.add_user("rec", token=TOKEN, groups=(1,))
    with server:
        yield server


@pytest.fixture
def setup(papad, cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    with client_and_outbox(cfg) as (client, outbox):
        yield cfg, client, outbox


def test_queue_is_wal_and_enqueue_is_idempotent(setup):
    cfg, _, outbox = setup
    doc, ogg = make_recording(cfg.device_folder, bookmarks=[{"at": 0.1}])
    first = outbox.enqueue(doc, ogg)
    assert outbox.enqueue(doc, ogg, origin="peer") == first
    [entry] = outbox.entries()
    assert entry.origin == "own" and entry.annotations == 1 and entry.state == "pending"
    conn = sqlite3.connect(cfg.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert outbox.depth() == 1 and outbox.oldest_age() is not None
    assert outbox.remote_id(doc["recording_id"]) is None


def test_enqueue_refuses_an_invalid_sidecar(setup):
    cfg, _, outbox = setup
    doc, ogg = make_recording(cfg.device_folder)
    doc = {**doc, "sha256": "nope"}
    with pytest.raises(SidecarError):
        outbox.enqueue(doc, ogg)


def test_reconcile_queues_published_sidecars_once(setup):
    cfg, _, outbox = setup
    folder = cfg.device_folder
    docs = [make_recording(folder, index=i)[0] for i in range(3)]
    outbox.enqueue(docs[0], folder / docs[0]["path"])
    json_path = (folder / docs[1]["path"]).with_suffix(".json")
    conflict = json_path.with_name(json_path.stem + ".sync-conflict-20261128-170102-ABCDEFG.json")
    conflict.write_bytes(json_path.read_bytes())
    (json_path.parent / ".x.json.partial.json").write_text("{")
    (json_path.parent / "garbage.json").write_text("{not json")
    _orphan, orphan_ogg = make_recording(folder, index=5)
    orphan_ogg.unlink()  # a sidecar without its recording is not registered
    assert outbox.reconcile(folder) == 2
    assert outbox.reconcile(folder) == 0
    assert [e.recording_id for e in outbox.entries()] == [d["recording_id"] for d in docs]
    assert outbox.reconcile(folder / "missing") == 0


def test_retry_unknown_id_is_an_error(setup):
    _, _, outbox = setup
    with pytest.raises(RecorderError, match="does not exist"):
        outbox.retry(42)


def test_one_failing_entry_does_not_block_the_rest(setup, papad):
    cfg, client, outbox = setup
    for i in range(3):
        outbox.enqueue(*make_recording(cfg.device_folder, index=i))
    papad.force_error(500, {"detail": "boom"})  # only the first create fails
    worker = fast_worker(outbox, client)
    assert worker.run_once() == 2
    first = outbox.entries()[0]
    assert first.state == "pending" and "HTTP 500" in first.last_error
    drain(worker, outbox, delivered=3)
    assert len(papad.media) == 3


def test_unavailable_holds_everyone_in_order(setup, papad):
    cfg, client, outbox = setup
    for i in range(3):
        outbox.enqueue(*make_recording(cfg.device_folder, index=i))
    papad.fail_next(1000, mode="503")
    worker = OutboxWorker(outbox, client, 1, base_delay=30.0)
    assert worker.run_once() == 0
    assert papad.count("GET", "/api/v1/archive/") == 1  # one request, then it stopped
    entries = outbox.entries()
    assert [e.attempts for e in entries] == [1, 0, 0]
    now = time.time()
    assert all(e.next_attempt_at >= entries[0].next_attempt_at > now + 10 for e in entries)
    assert outbox.next_due_in() > 10
    assert worker.run_once() == 0 and len(papad.requests) == 1  # nothing is due yet
    worker.stop()


def test_backoff_grows_exponentially_with_jitter(setup):
    _, client, outbox = setup
    worker = OutboxWorker(outbox, client, base_delay=2.0, max_delay=60.0)
    for attempts, (lo, hi) in {1: (1, 2), 2: (2, 4), 3: (4, 8), 10: (30, 60)}.items():
        samples = [worker.backoff(attempts) for _ in range(50)]
        assert all(lo <= s <= hi for s in samples)
        assert len(set(samples)) > 1
    worker.stop()


def test_concurrency_limit_holds(setup, papad):
    cfg, client, outbox = setup
    for i in range(12):
        outbox.enqueue(*make_recording(cfg.device_folder, index=i))
    papad.delay = 0.02
    worker = fast_worker(outbox, client, concurrency=2)
    try:
        drain(worker, outbox, delivered=12)
    finally:
        worker.stop()
    assert papad.max_in_flight == 2
    assert len(papad.media) == 12
