"""Registering recordings with the real current papad (upstream and papadam) through the outbox.

Every test runs against both flavours started by the papad kit (`tests.papad_kit`), shared for
the session: each test only looks at the media of its own recordings. Faults papad does not make
on its own (a lost answer, a gateway's 503, a 400) come from `tests.papad_proxy.FaultProxy`
between the recorder and papad.
"""

from __future__ import annotations

import hashlib
import logging
import time

import pytest

from recorder.db import Database
from recorder.papad.client import CurrentPapadClient, make_client
from recorder.papad.mapping import MAX_NAME, MAX_TAG
from recorder.papad.outbox import Outbox
from tests.papad_kit import OTHER_GROUP
from tests.papad_proxy import FaultProxy
from tests.papad_recordings import make_recording
from tests.papad_setup import client_and_outbox, drain, fast_worker, real_config, write_secret


@pytest.fixture
def proxy(papad_real):
    with FaultProxy(papad_real.url) as p:
        yield p


@pytest.fixture
def setup(papad_real, proxy, cfg_factory, tmp_path):
    """(cfg, client, outbox, server, proxy): the recorder talks to papad through the proxy."""
    cfg = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url)
    with client_and_outbox(cfg) as (client, outbox):
        yield cfg, client, outbox, papad_real, proxy


def tag_names(media):
    return {t["name"] for t in media["tags"]}


def deliver(outbox, client, n, **kw):
    worker = fast_worker(outbox, client, **kw)
    try:
        drain(worker, outbox, delivered=n)
    finally:
        worker.stop()


# -- registration ------------------------------------------------------------------------------


def test_registration_creates_one_media_with_fields_and_bytes(setup):
    cfg, client, outbox, papad, _ = setup
    doc, ogg = make_recording(cfg.layout.device_folder, title="  Village   meeting ",
                              tags=["Water", " water ", "", "Panchayat"])
    outbox.enqueue(doc, ogg)
    outbox.enqueue(doc, ogg)  # idempotent
    deliver(outbox, client, 1)
    media = papad.one_media(doc["recording_id"])
    assert media["name"] == "Village meeting"
    assert media["group"]["id"] == 1
    assert media["file_extension"] == "audio/ogg"
    # No per-recording tag: papad nests a group's whole tag list in every media it returns.
    assert tag_names(media) == {"water", "panchayat"}
    assert f"Recording id: {doc['recording_id']}" in media["description"].splitlines()
    assert doc["sha256"] in media["description"]
    assert "testdev01" in media["description"] and "2026-11-28 17:01:02 UTC" in media["description"]
    stored = papad.download(media["upload"])
    assert stored == ogg.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == doc["sha256"]
    assert outbox.remote_id(doc["recording_id"]) == media["uuid"]
    [entry] = outbox.entries()
    assert entry.state == "delivered" and entry.last_error is None


def test_default_name_when_untitled(setup):
    cfg, client, outbox, papad, _ = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    deliver(outbox, client, 1)
    assert papad.one_media(doc["recording_id"])["name"] == (
        "Recording 2026-11-28 17:01 UTC (testdev01)")


def test_long_title_and_tags_are_cut_to_papads_limits_and_no_tag_is_empty(setup):
    # papad's columns: name 300, tag 100 characters (a 500 on PostgreSQL beyond them; the kit's
    # SQLite would store them whole, so a missing cut shows here).
    cfg, client, outbox, papad, _proxy = setup
    long_tag = "t" * 150
    doc, ogg = make_recording(cfg.layout.device_folder, title="word " * 100,
                              tags=[long_tag, "a,,b,", " ", "ok"])
    outbox.enqueue(doc, ogg)
    deliver(outbox, client, 1)
    media = papad.one_media(doc["recording_id"])
    assert len(media["name"]) <= MAX_NAME and media["name"].startswith("word word")
    assert all(0 < len(t) <= MAX_TAG for t in tag_names(media))
    assert tag_names(media) == {"t" * MAX_TAG, "a", "b", "ok"}


def test_a_recording_without_tags_still_sends_a_tag(setup):
    cfg, client, outbox, papad, _proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder, tags=[" ", ""])
    outbox.enqueue(doc, ogg)
    deliver(outbox, client, 1)
    assert tag_names(papad.one_media(doc["recording_id"])) == {"recorderpi"}


def test_lost_response_after_commit_still_one_media(setup):
    cfg, client, outbox, papad, proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    proxy.lose_response(1, "POST", "/api/v1/archive/")  # papad commits, we never hear
    worker = fast_worker(outbox, client)
    try:
        assert worker.run_once() == 0
        assert proxy.count("POST", "/api/v1/archive/", "lost") == 1
        assert len(papad.media(doc["recording_id"])) == 1
        drain(worker, outbox, delivered=1)
    finally:
        worker.stop()
    media = papad.one_media(doc["recording_id"])
    assert outbox.remote_id(doc["recording_id"]) == media["uuid"]
    # Found by papad's search for the recording id, never by listing everything.
    searches = proxy.count("GET", "/api/v1/archive/?searchFrom=my_collections&group=1"
                           "&page_size=200&search=")
    assert searches >= 2 and searches == proxy.count("GET", "/api/v1/archive/")


def test_lost_responses_among_several_entries_each_registered_once(setup):
    cfg, client, outbox, papad, proxy = setup
    recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(4)]
    for doc, ogg in recs:
        outbox.enqueue(doc, ogg)
    proxy.lose_response(2, "POST", "/api/v1/archive/")
    deliver(outbox, client, 4, concurrency=2)
    for doc, _ in recs:
        assert outbox.remote_id(doc["recording_id"]) == papad.one_media(doc["recording_id"])["uuid"]


def test_down_then_up_delivers_once_in_order_across_restart(papad_real, proxy, cfg_factory,
                                                            tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(4)]
    for doc, ogg in recs:
        outbox.enqueue(doc, ogg)
    proxy.down()  # papad unreachable: connections refused
    worker = fast_worker(outbox, client)
    assert worker.run_once() == 0  # stops at the first entry
    worker.stop()
    outbox.database.close()
    client.close()
    # "restart": new objects on the same database
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    worker = fast_worker(outbox, client)
    time.sleep(0.3)
    assert worker.run_once() == 0
    entries = outbox.entries()
    assert entries[0].attempts >= 2 and "cannot connect" in entries[0].last_error
    assert [e.attempts for e in entries[1:]] == [0, 0, 0]
    proxy.up()  # same port
    try:
        drain(worker, outbox, delivered=4)
    finally:
        worker.stop()
    ids = [papad_real.one_media(doc["recording_id"])["id"] for doc, _ in recs]
    assert ids == sorted(ids)  # created in queue order
    outbox.database.close()
    client.close()


def test_gateway_503_outage_with_concurrency_two_delivers_exactly_once(setup):
    cfg, client, outbox, papad, proxy = setup
    recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(6)]
    for doc, ogg in recs:
        outbox.enqueue(doc, ogg)
    proxy.answer(503, b"<h1>503 Service Unavailable</h1>", n=5)
    proxy.delay = 0.02
    deliver(outbox, client, 6, concurrency=2)
    for doc, _ in recs:
        papad.one_media(doc["recording_id"])
    assert proxy.max_in_flight <= 2


def test_rebuilt_database_does_not_register_twice(setup):
    cfg, client, outbox, papad, _ = setup
    recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(5)]
    assert outbox.reconcile(cfg.layout.device_folder) == 5
    deliver(outbox, client, 5)
    outbox.database.close()
    cfg.db_path.unlink()  # SD card swapped, database gone
    fresh = Outbox(Database(cfg.db_path))
    try:
        assert fresh.reconcile(cfg.layout.device_folder) == 5
        deliver(fresh, client, 5)
        assert all(e.attempts == 1 for e in fresh.entries())  # found by the lookup, not re-posted
    finally:
        fresh.database.close()
    for doc, _ in recs:
        papad.one_media(doc["recording_id"])


def test_lost_database_does_not_post_bookmarks_twice(setup):
    """The media are found again after the database is lost (above); their bookmark
    annotations must not be posted a second time either."""
    cfg, client, outbox, papad, _ = setup
    marks = [{"at": 1.0, "label": "start"}, {"at": 2.5, "label": "chorus"}]
    recs = [make_recording(cfg.layout.device_folder, index=i, bookmarks=marks) for i in range(2)]
    assert outbox.reconcile(cfg.layout.device_folder) == 2
    deliver(outbox, client, 2)
    outbox.database.close()
    cfg.db_path.unlink()  # SD card swapped, database gone
    fresh = Outbox(Database(cfg.db_path))
    try:
        assert fresh.reconcile(cfg.layout.device_folder) == 2
        deliver(fresh, client, 2)
    finally:
        fresh.database.close()
    for doc, _ in recs:
        annotations = papad.annotations(papad.one_media(doc["recording_id"])["uuid"])
        assert sorted(a["annotation_text"] for a in annotations) == ["chorus", "start"]


def test_forbidden_group_is_parked_with_reason_and_retry_after_fix_delivers(
        papad_real, proxy, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url, group=OTHER_GROUP)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked"
    assert "HTTP 403" in entry.last_error and "not a member" in entry.last_error
    before = len(proxy.seen)
    fast_worker(outbox, client).run_once()
    assert len(proxy.seen) == before  # parked entries wait for a human
    # the operator fixes the group in the config and retries
    fixed = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url)
    client2 = make_client(fixed.papad)
    assert outbox.retry(entry.id).state == "pending"
    deliver(outbox, client2, 1)
    assert papad_real.one_media(doc["recording_id"])["group"]["id"] == 1
    outbox.database.close()
    client.close()
    client2.close()


def test_400_is_parked_with_server_reason(setup):
    cfg, client, outbox, papad, proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    proxy.answer(400, {"upload": ["Upload a valid audio file.\nThe file is broken."]},
                 method="POST", path="/api/v1/archive/")
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked"
    assert "HTTP 400" in entry.last_error and "Upload a valid audio file" in entry.last_error
    assert "\n" not in entry.last_error
    assert outbox.retry_all() == 1
    deliver(outbox, client, 1)
    papad.one_media(doc["recording_id"])


def test_missing_file_is_parked(setup):
    cfg, client, outbox, papad, proxy = setup
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    ogg.unlink()
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked" and "recording file missing" in entry.last_error
    assert proxy.count("POST", "/api/v1/archive/") == 0
    assert papad.media(doc["recording_id"]) == []


def test_wrong_credentials_wait_instead_of_parking(papad_real, proxy, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url)
    secret = cfg.papad.token_file or cfg.papad.password_file
    write_secret(secret, "not-the-secret")
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    worker = fast_worker(outbox, client)
    worker.run_once()
    [entry] = outbox.entries()
    assert entry.state == "pending"
    assert "HTTP 401" in entry.last_error or "login refused" in entry.last_error
    assert "not-the-secret" not in entry.last_error
    logins = proxy.count("POST", "/auth/jwt/create/")
    outbox.retry_all()
    worker.run_once()  # the same wrong password is not tried again at once (login budget)
    assert proxy.count("POST", "/auth/jwt/create/") == logins
    # the secret file is fixed: the next attempt re-reads it, no restart needed
    write_secret(secret, papad_real.token or papad_real.password)
    outbox.retry_all()
    drain(worker, outbox, delivered=1)
    papad_real.one_media(doc["recording_id"])
    worker.stop()
    outbox.database.close()
    client.close()


def test_bookmarks_become_annotations_with_t_ranges(papad_real, proxy, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_real, url=proxy.url, annotation_span=0.5)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    doc, ogg = make_recording(
        cfg.layout.device_folder, seconds=2.0,
        bookmarks=[{"at": 0.25, "label": "the well"}, {"at": 1.8}, {"at": 1.0, "tags": ["Rain"]}],
    )
    outbox.enqueue(doc, ogg)
    proxy.lose_response(1, "POST", "/api/v1/annotate/")  # lose one annotation's answer
    deliver(outbox, client, 1)
    assert proxy.count("POST", "/api/v1/annotate/", "lost") == 1
    media = papad_real.one_media(doc["recording_id"])
    assert papad_real.annotation_set(media["uuid"]) == {
        ("t=0.25,0.75", "the well", ("bookmark",)),
        ("t=1,1.5", "Bookmark at 0:01.0", ("bookmark", "rain")),
        ("t=1.8,2", "Bookmark at 0:01.8", ("bookmark",)),
    }
    assert len(papad_real.annotations(media["uuid"])) == 3  # none twice
    [entry] = outbox.entries()
    assert entry.annotations == entry.annotations_delivered == 3
    outbox.database.close()
    client.close()


# -- JWT (papadam) -----------------------------------------------------------------------------


def test_jwt_expiry_refresh_and_relogin(papad_papadam, cfg_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    papad = papad_papadam
    with FaultProxy(papad.url) as proxy:
        cfg = real_config(cfg_factory, tmp_path, papad, url=proxy.url)
        outbox = Outbox(Database(cfg.db_path))
        client = make_client(cfg.papad)
        auth = client.transport.auth
        worker = fast_worker(outbox, client)
        docs = []

        def one(i):
            doc, ogg = make_recording(cfg.layout.device_folder, index=i)
            docs.append(doc)
            outbox.enqueue(doc, ogg)
            drain(worker, outbox, delivered=i + 1)

        one(0)
        auth._exp = time.time() - 1  # the access token has expired: refreshed before use
        one(1)
        assert proxy.count("POST", "/auth/jwt/refresh/") == 1
        auth._access = "not-a-jwt"  # papad forgets the access token: a 401 mid-run
        auth._exp = None
        one(2)
        assert proxy.count("POST", "/auth/jwt/refresh/") == 2
        auth._access, auth._refresh = "not-a-jwt", "not-a-refresh-token"  # refresh refused too
        one(3)
        assert proxy.count("POST", "/auth/jwt/create/") == 2  # logged in again, once
        for doc in docs:
            papad.one_media(doc["recording_id"])
        assert papad.password not in caplog.text
        assert papad.password not in repr(auth)
        worker.stop()
        outbox.database.close()
        client.close()


# -- background worker -------------------------------------------------------------------------


def test_background_worker_delivers_after_wake(setup):
    cfg, client, outbox, papad, _ = setup
    worker = fast_worker(outbox, client, idle_poll=30.0)
    delivered = []
    worker.on_delivered = lambda rid, remote: delivered.append((rid, remote))
    worker.start()
    try:
        time.sleep(0.2)  # the worker is now asleep with nothing to do
        doc, ogg = make_recording(cfg.layout.device_folder)
        outbox.enqueue(doc, ogg)
        worker.wake()
        deadline = time.monotonic() + 30
        while not delivered and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    assert delivered == [(doc["recording_id"], papad.one_media(doc["recording_id"])["uuid"])]


def test_client_is_none_when_disabled(cfg_factory):
    assert make_client(cfg_factory(papad={"api": "none"}).papad) is None


def test_make_client_builds_current_client_without_showing_secrets(setup):
    _, client, _, papad, _ = setup
    assert isinstance(client, CurrentPapadClient)
    secret = papad.token or papad.password
    assert secret not in repr(client) and secret not in repr(client.transport.auth)
