"""Registering recordings with current papad (papad-backend / papadam) through the outbox."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest
import requests

from recorder.db import Database
from recorder.papad.client import CurrentPapadClient, make_client
from recorder.papad.outbox import Outbox
from tests.fake_papad import FakePapad
from tests.papad_recordings import make_recording
from tests.papad_setup import (
    PASSWORD,
    TOKEN,
    client_and_outbox,
    current_config,
    drain,
    fast_worker,
    write_secret,
)


@pytest.fixture
def papad():
    server = FakePapad(page_size=3)
    server.add_user("rec", token=TOKEN, password=PASSWORD, groups=(1,))
    server.add_user("other", token="other-token", groups=(2,))
    with server:
        yield server


@pytest.fixture
def setup(papad, cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    with client_and_outbox(cfg) as (client, outbox):
        yield cfg, client, outbox


def tag_names(media):
    return [t["name"] for t in media["tags"]]


# -- the fake enforces papad's rules (so passing against it means something) -----------------


def test_fake_enforces_papad_rules(papad, tmp_path):
    url = papad.url + "/api/v1/archive/"
    auth = {"Authorization": f"Token {TOKEN}"}
    ogg = ("a.ogg", b"OggS....", "audio/ogg")
    full = {"group": "1", "name": "n", "description": "d", "tags": ""}
    r = requests.post(url, data=full, files={"upload": ogg}, timeout=5)
    assert r.status_code == 401
    r = requests.post(url, data=full, files={"upload": ogg}, timeout=5,
                      headers={"Authorization": "Token wrong"})
    assert r.status_code == 401
    r = requests.post(url, data={k: v for k, v in full.items() if k != "group"},
                      files={"upload": ogg}, headers=auth, timeout=5)
    assert r.status_code == 403 and r.json()["detail"] == "Missing required field: group"
    r = requests.post(url, data={**full, "group": "2"}, files={"upload": ogg}, headers=auth,
                      timeout=5)
    assert r.status_code == 403  # not a member of group 2
    r = requests.post(url, data={k: v for k, v in full.items() if k != "description"},
                      files={"upload": ogg}, headers=auth, timeout=5)
    assert r.status_code == 500
    r = requests.post(url, data=full, files={"upload": ("a.ogg", b"x", "application/octet-stream")},
                      headers=auth, timeout=5)
    assert r.status_code == 200 and r.json()["media_type"] == "unknown"
    r = requests.post(url, data=full, files={"upload": ogg}, headers=auth, timeout=5)
    assert r.status_code == 200 and r.json()["media_type"] == "audio" and r.json()["uuid"]
    assert len(papad.media) == 2  # no deduplication


# -- registration ------------------------------------------------------------------------------


def test_registration_creates_one_media_with_fields_and_bytes(setup, papad, tmp_path):
    cfg, client, outbox = setup
    doc, ogg = make_recording(cfg.device_folder, title="  Village   meeting ",
                              tags=["Water", " water ", "", "Panchayat"])
    outbox.enqueue(doc, ogg)
    outbox.enqueue(doc, ogg)  # idempotent
    worker = fast_worker(outbox, client)
    try:
        assert worker.run_once() == 1
    finally:
        worker.stop()
    assert len(papad.media) == 1
    media = papad.media[0]
    assert media["name"] == "Village meeting"
    assert media["group"] == 1
    assert media["media_type"] == "audio" and media["file_type"] == "audio/ogg"
    assert tag_names(media) == ["water", "panchayat", f"recorderpi-{doc['recording_id']}"]
    assert doc["recording_id"] in media["description"]
    assert doc["sha256"] in media["description"]
    assert "testdev01" in media["description"] and "2026-11-28 17:01:02 UTC" in media["description"]
    stored = requests.get(media["upload"], timeout=5).content
    assert stored == ogg.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == doc["sha256"]
    assert outbox.remote_id(doc["recording_id"]) == media["uuid"]
    [entry] = outbox.entries()
    assert entry.state == "delivered" and entry.attempts == 1


def test_default_name_when_untitled(setup, papad):
    cfg, client, outbox = setup
    doc, ogg = make_recording(cfg.device_folder)
    outbox.enqueue(doc, ogg)
    fast_worker(outbox, client).run_once()
    assert papad.media[0]["name"] == "Recording 2026-11-28 17:01 UTC (testdev01)"


def test_down_then_up_delivers_once_in_order_across_restart(papad, cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg)
    recs = [make_recording(cfg.device_folder, index=i) for i in range(4)]
    for doc, ogg in recs:
        outbox.enqueue(doc, ogg)
    papad.fail_next(3, mode="reset")
    worker = fast_worker(outbox, client)
    assert worker.run_once() == 0  # papad down: stops at the first entry
    assert papad.count("POST", "/api/v1/archive/") <= 1
    worker.stop()
    outbox.database.close()
    client.close()
    papad.stop()  # now connections are refused outright

    # "restart": new objects on the same database
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg)
    worker = fast_worker(outbox, client)
    time.sleep(0.3)
    assert worker.run_once() == 0
    entries = outbox.entries()
    assert entries[0].attempts >= 2 and "cannot connect" in entries[0].last_error
    papad.start()  # same port
    try:
        drain(worker, outbox, delivered=4)
    finally:
        worker.stop()
    names = [m["description"] for m in papad.media]
    assert len(papad.media) == 4
    for (doc, _), description in zip(recs, names, strict=True):
        assert doc["recording_id"] in description  # created in queue order
    assert [outbox.remote_id(d["recording_id"]) for d, _ in recs] == [
        m["uuid"] for m in papad.media]
    outbox.database.close()
    client.close()


def test_503_outage_with_concurrency_two_delivers_exactly_once(setup, papad):
    cfg, client, outbox = setup
    for i in range(6):
        outbox.enqueue(*make_recording(cfg.device_folder, index=i))
    papad.fail_next(5, mode="503")
    worker = fast_worker(outbox, client, concurrency=2)
    try:
        drain(worker, outbox, delivered=6)
    finally:
        worker.stop()
    assert len(papad.media) == 6
    assert len({m["description"] for m in papad.media}) == 6
    assert papad.max_in_flight <= 2


def test_lost_response_after_commit_still_one_media(setup, papad):
    cfg, client, outbox = setup
    doc, ogg = make_recording(cfg.device_folder)
    outbox.enqueue(doc, ogg)
    papad.drop_after_commit(1)
    worker = fast_worker(outbox, client)
    try:
        assert worker.run_once() == 0
        assert len(papad.media) == 1  # committed, but we never heard
        drain(worker, outbox, delivered=1)
    finally:
        worker.stop()
    assert len(papad.media) == 1
    assert outbox.remote_id(doc["recording_id"]) == papad.media[0]["uuid"]


def test_lost_response_found_on_a_later_page(setup, papad):
    cfg, client, outbox = setup
    for i in range(4):  # page_size is 3: the lost media ends up behind newer ones
        outbox.enqueue(*make_recording(cfg.device_folder, index=i))
    papad.drop_after_commit(1)
    worker = fast_worker(outbox, client)
    try:
        drain(worker, outbox, delivered=4)
    finally:
        worker.stop()
    assert len(papad.media) == 4


def test_rebuilt_database_does_not_register_twice(papad, cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    client = make_client(cfg)
    outbox = Outbox(Database(cfg.db_path))
    for i in range(5):
        make_recording(cfg.device_folder, index=i)
    assert outbox.reconcile(cfg.device_folder) == 5
    fast_worker(outbox, client).run_once()
    outbox.database.close()
    cfg.db_path.unlink()  # SD card swapped, database gone
    outbox = Outbox(Database(cfg.db_path))
    assert outbox.reconcile(cfg.device_folder) == 5
    assert fast_worker(outbox, client).run_once() == 5
    assert len(papad.media) == 5
    outbox.database.close()
    client.close()


def test_forbidden_is_parked_with_reason_and_retry_after_fix_delivers(
    papad, cfg_factory, tmp_path
):
    cfg = current_config(cfg_factory, tmp_path, papad.url, group=2)  # not a member
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg)
    doc, ogg = make_recording(cfg.device_folder)
    outbox.enqueue(doc, ogg)
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked"
    assert "HTTP 403" in entry.last_error and "not a member of this group" in entry.last_error
    before = len(papad.requests)
    fast_worker(outbox, client).run_once()
    assert len(papad.requests) == before  # parked entries wait for a human
    # the operator fixes the group in the config and retries
    fixed = current_config(cfg_factory, tmp_path, papad.url, group=1)
    client2 = make_client(fixed)
    assert outbox.retry(entry.id).state == "pending"
    assert fast_worker(outbox, client2).run_once() == 1
    assert len(papad.media) == 1 and papad.media[0]["group"] == 1
    outbox.database.close()
    client.close()
    client2.close()


def test_400_is_parked_with_server_reason(setup, papad):
    cfg, client, outbox = setup
    doc, ogg = make_recording(cfg.device_folder)
    outbox.enqueue(doc, ogg)
    papad.force_error(400, {"upload": ["Upload a valid audio file.\nThe file is broken."]})
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked"
    assert "HTTP 400" in entry.last_error and "Upload a valid audio file" in entry.last_error
    assert "\n" not in entry.last_error
    assert outbox.retry_all() == 1
    assert fast_worker(outbox, client).run_once() == 1
    assert len(papad.media) == 1


def test_missing_file_is_parked(setup, papad):
    cfg, client, outbox = setup
    doc, ogg = make_recording(cfg.device_folder)
    outbox.enqueue(doc, ogg)
    ogg.unlink()
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked" and "recording file missing" in entry.last_error
    assert papad.media == []


def test_wrong_token_waits_instead_of_parking(papad, cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, papad.url)
    write_secret(cfg.papad.token_file, "not-the-token")
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg)
    outbox.enqueue(*make_recording(cfg.device_folder))
    worker = fast_worker(outbox, client)
    worker.run_once()
    [entry] = outbox.entries()
    assert entry.state == "pending" and "HTTP 401" in entry.last_error
    # the token file is fixed: the next 401 re-reads it, no restart needed
    write_secret(cfg.papad.token_file, TOKEN)
    drain(worker, outbox, delivered=1)
    assert len(papad.media) == 1
    outbox.database.close()
    client.close()


def test_bookmarks_become_annotations_with_t_ranges(papad, cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, papad.url, annotation_span=0.5)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg)
    doc, ogg = make_recording(
        cfg.device_folder, seconds=2.0,
        bookmarks=[{"at": 0.25, "label": "the well"}, {"at": 1.8}, {"at": 1.0, "tags": ["Rain"]}],
    )
    outbox.enqueue(doc, ogg)
    papad.drop_after_commit(1, path="/api/v1/annotate/")  # lose one annotation's answer
    worker = fast_worker(outbox, client)
    try:
        drain(worker, outbox, delivered=1)
    finally:
        worker.stop()
    media_uuid = papad.media[0]["uuid"]
    got = requests.get(f"{papad.url}/api/v1/annotate/search/{media_uuid}/",
                       headers={"Authorization": f"Token {TOKEN}"}, timeout=5).json()
    assert sorted((a["media_target"], a["annotation_text"]) for a in got) == [
        ("t=0.25,0.75", "the well"),
        ("t=1,1.5", "Bookmark at 0:01.0"),
        ("t=1.8,2", "Bookmark at 0:01.8"),
    ]
    rain = next(a for a in got if a["media_target"] == "t=1,1.5")
    assert [t["name"] for t in rain["tags"]] == ["bookmark", "rain"]
    [entry] = outbox.entries()
    assert entry.annotations == entry.annotations_delivered == 3
    assert len(papad.media) == 1
    outbox.database.close()
    client.close()


# -- JWT (papadam) -----------------------------------------------------------------------------


def jwt_config(cfg_factory, tmp_path, url):
    pw = write_secret(tmp_path / "papad.password", PASSWORD)
    return cfg_factory(papad={"api": "papad", "url": url, "auth": "jwt", "username": "rec",
                              "password_file": str(pw), "group": 1, "timeout": 5.0})


def test_jwt_access_expiry_mid_run_refreshes(cfg_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = FakePapad(access_lifetime=1.0)
    server.add_user("rec", password=PASSWORD, groups=(1,))
    with server:
        cfg = jwt_config(cfg_factory, tmp_path, server.url)
        outbox = Outbox(Database(cfg.db_path))
        client = make_client(cfg)
        worker = fast_worker(outbox, client)
        outbox.enqueue(*make_recording(cfg.device_folder, index=0))
        assert worker.run_once() == 1
        time.sleep(1.3)  # the access token has expired
        outbox.enqueue(*make_recording(cfg.device_folder, index=1))
        assert worker.run_once() == 1
        server.revoke_access_tokens()  # the server forgets it early: a 401 mid-run
        outbox.enqueue(*make_recording(cfg.device_folder, index=2))
        assert worker.run_once() == 1
        server.revoke_access_tokens()
        server.refresh_tokens.clear()  # refresh refused too: log in again
        outbox.enqueue(*make_recording(cfg.device_folder, index=3))
        assert worker.run_once() == 1
        assert len(server.media) == 4
        assert server.jwt_refreshes >= 2 and server.jwt_logins == 2
        assert all(e.state == "delivered" and e.attempts == 1 for e in outbox.entries())
        secrets_seen = [PASSWORD, *server.access_tokens, *server.refresh_tokens]
        for secret in secrets_seen:
            assert secret not in caplog.text
        assert PASSWORD not in repr(client.transport.auth)
        outbox.database.close()
        client.close()


def test_jwt_wrong_password_waits(cfg_factory, tmp_path):
    server = FakePapad()
    server.add_user("rec", password="something-else", groups=(1,))
    with server:
        cfg = jwt_config(cfg_factory, tmp_path, server.url)
        outbox = Outbox(Database(cfg.db_path))
        client = make_client(cfg)
        outbox.enqueue(*make_recording(cfg.device_folder))
        fast_worker(outbox, client).run_once()
        [entry] = outbox.entries()
        assert entry.state == "pending" and "login refused" in entry.last_error
        assert PASSWORD not in entry.last_error
        outbox.database.close()
        client.close()


# -- background worker -------------------------------------------------------------------------


def test_background_worker_delivers_after_wake(setup, papad):
    cfg, client, outbox = setup
    worker = fast_worker(outbox, client, idle_poll=30.0)
    delivered = []
    worker.on_delivered = lambda rid, remote: delivered.append((rid, remote))
    worker.start()
    try:
        time.sleep(0.2)  # the worker is now asleep with nothing to do
        doc, ogg = make_recording(cfg.device_folder)
        outbox.enqueue(doc, ogg)
        worker.wake()
        deadline = time.monotonic() + 20
        while not delivered and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    assert delivered == [(doc["recording_id"], papad.media[0]["uuid"])]


def test_client_is_none_when_disabled(cfg_factory):
    assert make_client(cfg_factory(papad={"api": "none"})) is None


def test_make_client_builds_current_client(setup):
    _, client, _ = setup
    assert isinstance(client, CurrentPapadClient)
    assert TOKEN not in repr(client) and TOKEN not in repr(client.transport.auth)
