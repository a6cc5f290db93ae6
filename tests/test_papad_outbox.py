"""The outbox queue itself: durability, reconcile, ordering, backoff, concurrency, retries that
end. Delivery runs against the real papad (upstream, or both flavours where they differ);
faults papad does not make on its own come from the proxy in front of it."""

from __future__ import annotations

import sqlite3
import time

import pytest

from recorder.db import Database
from recorder.errors import RecorderError
from recorder.papad.outbox import Outbox, OutboxWorker
from recorder.sidecar import SidecarError
from tests.papad_proxy import FaultProxy
from tests.papad_recordings import make_recording
from tests.papad_setup import client_and_outbox, current_config, drain, fast_worker, real_config


@pytest.fixture
def queue(cfg_factory, tmp_path):
    """An outbox with no papad behind it (the queue alone)."""
    cfg = current_config(cfg_factory, tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(Database(cfg.db_path))
    yield cfg, outbox
    outbox.database.close()


@pytest.fixture
def proxy(papad_upstream):
    with FaultProxy(papad_upstream.url) as p:
        yield p


@pytest.fixture
def setup(papad_upstream, proxy, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_upstream, url=proxy.url)
    with client_and_outbox(cfg) as (client, outbox):
        yield cfg, client, outbox, papad_upstream, proxy


# -- the queue ---------------------------------------------------------------------------------


def test_queue_is_wal_and_enqueue_is_idempotent(queue):
    cfg, outbox = queue
    doc, ogg = make_recording(cfg.layout.device_folder, bookmarks=[{"at": 0.1}])
    first = outbox.enqueue(doc, ogg)
    assert outbox.enqueue(doc, ogg, origin="peer") == first
    [entry] = outbox.entries()
    assert entry.origin == "own" and entry.annotations == 1 and entry.state == "pending"
    conn = sqlite3.connect(cfg.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert outbox.depth() == 1 and outbox.oldest_age() is not None
    assert outbox.remote_id(doc["recording_id"]) is None


def test_enqueue_refuses_an_invalid_sidecar(queue):
    cfg, outbox = queue
    doc, ogg = make_recording(cfg.layout.device_folder)
    doc = {**doc, "sha256": "nope"}
    with pytest.raises(SidecarError):
        outbox.enqueue(doc, ogg)


def test_reconcile_queues_published_sidecars_once(queue):
    cfg, outbox = queue
    folder = cfg.layout.device_folder
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


def test_retry_unknown_id_is_an_error(queue):
    _, outbox = queue
    with pytest.raises(RecorderError, match="does not exist"):
        outbox.retry(42)


def test_database_from_before_the_server_error_count_is_upgraded(cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, "http://127.0.0.1:9")
    doc, ogg = make_recording(cfg.layout.device_folder)
    cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(cfg.db_path)
    conn.executescript("""
        CREATE TABLE papad_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,
            recording_id TEXT NOT NULL UNIQUE, origin TEXT NOT NULL DEFAULT 'own',
            sidecar TEXT NOT NULL, ogg_path TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'delivered', 'parked')),
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
            enqueued_at REAL NOT NULL, delivered_at REAL, last_error TEXT, remote_id TEXT);
        INSERT INTO papad_outbox (recording_id, sidecar, ogg_path, state, next_attempt_at,
            enqueued_at, last_error) VALUES ('01m8hhpkrgvkxk0ftbzy56rh02', '{}', '/x.ogg',
            'parked', 0, 0, 'HTTP 400: old');
    """)
    conn.close()
    outbox = Outbox(Database(cfg.db_path))
    try:
        [old] = outbox.entries()
        assert old.state == "parked" and old.last_error == "HTTP 400: old"
        assert old.server_errors == 0
        assert outbox.enqueue(doc, ogg) == 2
    finally:
        outbox.database.close()


# -- delivery order, backoff, concurrency ------------------------------------------------------


def test_one_failing_entry_does_not_block_the_rest(setup):
    cfg, client, outbox, papad, proxy = setup
    recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(3)]
    for doc, ogg in recs:
        outbox.enqueue(doc, ogg)
    first = recs[0][0]["recording_id"].encode()
    # the first entry's create fails, its quick retries too; the others go through
    proxy.answer(500, {"detail": "boom"}, n=3, method="POST", path="/api/v1/archive/",
                 contains=first)
    worker = fast_worker(outbox, client)
    assert worker.run_once() == 2
    entry = outbox.entries()[0]
    assert entry.state == "pending" and "HTTP 500: boom" in entry.last_error
    assert proxy.count("POST", "/api/v1/archive/", "answered") == 3
    drain(worker, outbox, delivered=3)
    worker.stop()
    for doc, _ in recs:
        papad.one_media(doc["recording_id"])


def test_unavailable_holds_everyone_in_order(setup):
    cfg, client, outbox, _papad, proxy = setup
    for i in range(3):
        outbox.enqueue(*make_recording(cfg.layout.device_folder, index=i))
    proxy.answer(503, b"<h1>503 Service Unavailable</h1>", n=1000)
    worker = OutboxWorker(outbox, client, 1, base_delay=30.0)
    assert worker.run_once() == 0
    assert len(proxy.seen) == 1  # one request, then it stopped
    entries = outbox.entries()
    assert [e.attempts for e in entries] == [1, 0, 0]
    now = time.time()
    assert all(e.next_attempt_at >= entries[0].next_attempt_at > now + 10 for e in entries)
    assert outbox.next_due_in() > 10
    assert worker.run_once() == 0 and len(proxy.seen) == 1  # nothing is due yet
    worker.stop()


def test_429_retry_after_is_honoured_for_the_whole_queue(setup):
    cfg, client, outbox, _papad, proxy = setup
    for i in range(2):
        outbox.enqueue(*make_recording(cfg.layout.device_folder, index=i))
    proxy.answer(429, {"detail": "Request was throttled. Expected available in 1800 seconds."},
                 n=1, headers={"Retry-After": "1800"})
    worker = fast_worker(outbox, client)  # its own backoff would be milliseconds
    assert worker.run_once() == 0
    first = outbox.entries()[0]
    assert "HTTP 429" in first.last_error and "retry after 1800 s" in first.last_error
    assert all(e.next_attempt_at > time.time() + 1700 for e in outbox.entries())
    assert first.state == "pending"
    worker.stop()


def test_backoff_grows_exponentially_with_jitter(queue):
    _, outbox = queue
    worker = OutboxWorker(outbox, None, base_delay=2.0, max_delay=60.0)
    for attempts, (lo, hi) in {1: (1, 2), 2: (2, 4), 3: (4, 8), 10: (30, 60)}.items():
        samples = [worker.backoff(attempts) for _ in range(50)]
        assert all(lo <= s <= hi for s in samples)
        assert len(set(samples)) > 1
    worker.stop()


def test_concurrency_limit_holds(setup):
    cfg, client, outbox, _papad, proxy = setup
    for i in range(12):
        outbox.enqueue(*make_recording(cfg.layout.device_folder, index=i))
    proxy.delay = 0.05
    worker = fast_worker(outbox, client, concurrency=2)
    try:
        drain(worker, outbox, delivered=12)
    finally:
        worker.stop()
    assert proxy.max_in_flight == 2


# -- retries that end --------------------------------------------------------------------------


def test_repeated_500_is_parked_with_papads_answer_then_retry_delivers_once(setup, capsys):
    cfg, client, outbox, papad, proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    proxy.answer(500, {"detail": "An error occurred: value too long for type character varying"},
                 n=1000, method="POST", path="/api/v1/archive/")
    worker = fast_worker(outbox, client, max_server_errors=3, server_error_period=0.3)
    deadline = time.monotonic() + 60
    while outbox.entries()[0].state == "pending":
        assert time.monotonic() < deadline, outbox.entries()[0]
        worker.run_once()
        time.sleep(0.05)
    worker.stop()
    [entry] = outbox.entries()
    assert entry.state == "parked"
    assert "HTTP 500" in entry.last_error and "POST /api/v1/archive/" in entry.last_error
    assert "value too long" in entry.last_error  # papad's own answer
    assert f"recorder outbox retry {entry.id}" in entry.last_error
    tries = proxy.count("POST", "/api/v1/archive/", "answered")
    assert tries >= 9 and tries % 3 == 0  # whole attempts of three quick tries each
    assert entry.server_errors >= 3
    # bounded: parked entries are not tried again
    before = len(proxy.seen)
    fast_worker(outbox, client).run_once()
    assert len(proxy.seen) == before
    # the cause is fixed; the operator retries; exactly one media
    proxy.clear()
    assert outbox.retry(entry.id).server_errors == 0
    worker = fast_worker(outbox, client, max_server_errors=3, server_error_period=0.3)
    drain(worker, outbox, delivered=1)
    worker.stop()
    papad.one_media(doc["recording_id"])


def test_500_that_passes_on_a_later_attempt_is_delivered(setup):
    cfg, client, outbox, papad, proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    # two whole attempts fail (3 tries each), the third passes: never parked with a bound of 3
    proxy.answer(500, {"detail": "boom"}, n=6, method="POST", path="/api/v1/archive/")
    worker = fast_worker(outbox, client, max_server_errors=3, server_error_period=0.0)
    drain(worker, outbox, delivered=1)
    worker.stop()
    papad.one_media(doc["recording_id"])


def test_papadams_flaky_upload_500s_are_all_delivered_exactly_once(papad_papadam, cfg_factory,
                                                                    tmp_path):
    # papadam answers "Event loop is closed" to about every other upload (rolled back, its own
    # bug): with the default bound nothing is parked and nothing is duplicated.
    papad = papad_papadam
    errors_before = papad.access_count("POST", "/api/v1/archive/ HTTP/1.1\" 500")
    cfg = real_config(cfg_factory, tmp_path, papad)
    with client_and_outbox(cfg) as (client, outbox):
        recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(8)]
        for doc, ogg in recs:
            outbox.enqueue(doc, ogg)
        worker = fast_worker(outbox, client, concurrency=2)
        drain(worker, outbox, delivered=8)
        worker.stop()
        assert outbox.counts()["parked"] == 0
    assert papad.access_count("POST", "/api/v1/archive/ HTTP/1.1\" 500") > errors_before
    for doc, _ in recs:
        papad.one_media(doc["recording_id"])


def test_parked_500_shows_in_outbox_list_and_doctor(setup):
    from tests.conftest import run_cli, toml_config

    cfg, client, outbox, _papad, proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    proxy.answer(500, {"detail": "An error occurred: 'tags'"}, n=1000, method="POST",
                 path="/api/v1/archive/")
    worker = fast_worker(outbox, client, max_server_errors=2, server_error_period=0.0)
    while outbox.entries()[0].state == "pending":
        worker.run_once()
    worker.stop()
    path = toml_config(cfg.storage.data_dir.parent / "cli.toml", {
        "device": {"id": "testdev01"},
        "storage": {"data_dir": str(cfg.storage.data_dir), "reserve_mb": 0},
        "papad": {"api": "papad", "url": proxy.url, "auth": "token",
                  "token_file": str(cfg.papad.token_file)},
    })
    listing = run_cli("--config", path, "outbox", "list", timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "parked" in listing.stdout and "An error occurred: 'tags'" in listing.stdout
    doctor = run_cli("--config", path, "doctor", timeout=60)
    line = next(x for x in doctor.stdout.splitlines() if "papad outbox depth" in x)
    assert "1 parked" in line and "An error occurred: 'tags'" in line, doctor.stdout
    retry = run_cli("--config", path, "outbox", "retry", "--all", timeout=60)
    assert retry.returncode == 0 and "1 entry due now" in retry.stdout
    assert outbox.entries()[0].state == "pending"
