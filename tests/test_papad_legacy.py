"""Registering recordings with the legacy papad-api (stations, URLs, fragments)."""

from __future__ import annotations

import pytest
import requests

from recorder.db import Database
from recorder.papad.client import LegacyPapadClient, make_client
from recorder.papad.outbox import Outbox
from tests.fake_papad import FakeLegacyPapad
from tests.papad_recordings import make_recording
from tests.papad_setup import client_and_outbox, drain, fast_worker, legacy_config


@pytest.fixture
def legacy():
    with FakeLegacyPapad() as server:
        yield server


@pytest.fixture
def setup(legacy, cfg_factory):
    cfg = legacy_config(cfg_factory, legacy.url)
    with client_and_outbox(cfg) as (client, outbox):
        yield cfg, client, outbox


def test_fake_enforces_papad_api_rules(legacy):
    base = legacy.url
    assert requests.get(base + "/recordings", timeout=5).status_code == 404  # slash matters
    r = requests.post(base + "/recordings/", json={"audio_url": "x"}, timeout=5)
    assert r.status_code == 500  # missing station_name key
    r = requests.post(base + "/recordings/", json={"station_name": "nope", "audio_url": "x"},
                      timeout=5)
    assert r.status_code == 400 and r.json() == {"message": "Station does not exist"}
    assert requests.post(base + "/channels/", json={"station_name": "s"}, timeout=5).status_code \
        == 200
    assert requests.post(base + "/channels/", json={"station_name": "s"}, timeout=5).status_code \
        >= 400  # duplicate
    r = requests.post(base + "/recordings/", json={"station_name": "s", "audio_url": "x"},
                      timeout=5)
    assert r.status_code == 200 and r.content == b""  # empty 200, no id
    [rec] = requests.get(base + "/recordings/", params={"audio_url": "x"}, timeout=5).json()
    assert set(rec["_id"]) == {"$oid"} and rec["station_id"]


def test_registration_posts_url_and_learns_oid(setup, legacy):
    cfg, client, outbox = setup
    assert isinstance(client, LegacyPapadClient)
    doc, ogg = make_recording(cfg.layout.device_folder, tags=["Songs", "songs", " "])
    outbox.enqueue(doc, ogg)
    assert fast_worker(outbox, client).run_once() == 1
    assert [c["station_name"] for c in legacy.channels] == ["testdev01"]
    [rec] = legacy.recordings
    assert rec["audio_url"] == f"http://papad.local/testdev01/{doc['path']}"
    assert rec["tags"] == f"songs,recorderpi-{doc['recording_id']}"
    assert rec["upload_date"] == "2026.11.28"
    assert rec["station_name"] == "testdev01" and rec["img_tags"] == ""
    assert outbox.remote_id(doc["recording_id"]) == rec["_id"]["$oid"]


def test_existing_station_is_reused(legacy, cfg_factory):
    requests.post(legacy.url + "/channels/", json={"station_name": "girish-radio"}, timeout=5)
    cfg = legacy_config(cfg_factory, legacy.url, station="girish-radio")
    client = make_client(cfg.papad)
    outbox = Outbox(Database(cfg.db_path))
    for i in range(2):
        outbox.enqueue(*make_recording(cfg.layout.device_folder, index=i))
    assert fast_worker(outbox, client).run_once() == 2
    assert len(legacy.channels) == 1
    assert {r["station_name"] for r in legacy.recordings} == {"girish-radio"}
    outbox.database.close()
    client.close()


def test_station_created_concurrently_elsewhere_counts_as_there(setup, legacy):
    cfg, client, outbox = setup
    # Our existence check says "missing", then the POST fails as a duplicate.
    orig = client._station_exists
    calls = []

    def racing(name):
        calls.append(name)
        if len(calls) == 1:
            requests.post(legacy.url + "/channels/", json={"station_name": name}, timeout=5)
            return False
        return orig(name)

    client._station_exists = racing
    outbox.enqueue(*make_recording(cfg.layout.device_folder))
    assert fast_worker(outbox, client).run_once() == 1
    assert len(legacy.channels) == 1 and len(legacy.recordings) == 1


def test_down_lost_response_and_restart_still_one_record(legacy, cfg_factory):
    cfg = legacy_config(cfg_factory, legacy.url)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    recs = [make_recording(cfg.layout.device_folder, index=i) for i in range(3)]
    for doc, ogg in recs:
        outbox.enqueue(doc, ogg)
    legacy.fail_next(2, mode="503")
    worker = fast_worker(outbox, client)
    worker.run_once()
    outbox.database.close()
    client.close()
    outbox = Outbox(Database(cfg.db_path))  # restart
    client = make_client(cfg.papad)
    legacy.drop_after_commit(1)
    drain(fast_worker(outbox, client), outbox, delivered=3)
    urls = [r["audio_url"] for r in legacy.recordings]
    assert urls == [f"http://papad.local/testdev01/{d['path']}" for d, _ in recs]
    outbox.database.close()
    client.close()


def test_host_change_still_finds_record_by_machine_tag(legacy, cfg_factory):
    cfg = legacy_config(cfg_factory, legacy.url)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    legacy.drop_after_commit(1)
    fast_worker(outbox, client).run_once()
    assert len(legacy.recordings) == 1
    other = make_client(legacy_config(cfg_factory, legacy.url, host="other.local").papad)
    drain(fast_worker(outbox, other), outbox, delivered=1)
    assert len(legacy.recordings) == 1
    outbox.database.close()
    client.close()
    other.close()


def test_bookmarks_become_fragments(legacy, cfg_factory):
    cfg = legacy_config(cfg_factory, legacy.url, annotation_span=10.0)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    doc, ogg = make_recording(cfg.layout.device_folder, seconds=30.0, data=b"OggS-not-needed",
                              bookmarks=[{"at": 3.1234, "label": "chorus"}, {"at": 25.5}])
    outbox.enqueue(doc, ogg)
    legacy.drop_after_commit(1, path="/fragments/")
    drain(fast_worker(outbox, client), outbox, delivered=1)
    audio_url = f"http://papad.local/testdev01/{doc['path']}"
    got = sorted(
        (f["target"]["selector"]["value"], f["body"]["value"]) for f in legacy.fragments
    )
    assert got == [("t=25.5,30", "Bookmark at 0:25.5"), ("t=3.123,13.123", "chorus")]
    for frag in legacy.fragments:
        assert frag["target"]["source"] == audio_url
        assert frag["target"]["recording_id"] == legacy.recordings[0]["_id"]["$oid"]
        assert frag["target"]["selector"]["type"] == "FragmentSelector"
    outbox.database.close()
    client.close()


def test_rejection_is_parked_with_message(setup, legacy):
    cfg, client, outbox = setup
    outbox.enqueue(*make_recording(cfg.layout.device_folder))
    legacy.force_error(400, {"message": "audio_url must be http"})
    fast_worker(outbox, client).run_once()
    [entry] = outbox.entries()
    assert entry.state == "parked" and "audio_url must be http" in entry.last_error
    outbox.retry(entry.id)
    assert fast_worker(outbox, client).run_once() == 1
    assert len(legacy.recordings) == 1
