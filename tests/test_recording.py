"""The typed recording reads and writes sidecars exactly as 0.1.0 wrote them.

tests/fixtures/sidecar-0.1.0/ holds sidecars made by 0.1.0's own code (see its README): peers
still running it publish these, and read what this version publishes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recorder import recording
from recorder.recording import Recording, SidecarError

FIXTURES = Path(__file__).parent / "fixtures" / "sidecar-0.1.0"
SIDECARS = sorted(FIXTURES.glob("*.json"))


def test_fixtures_are_there():
    assert len(SIDECARS) >= 7, SIDECARS


@pytest.mark.parametrize("path", SIDECARS, ids=lambda p: p.stem)
def test_round_trip_byte_for_byte(path):
    data = path.read_bytes()
    rec = Recording.from_doc(json.loads(data))
    assert rec.to_doc() == json.loads(data)
    assert recording.dumps(rec.to_doc()).encode() == data


@pytest.mark.parametrize("path", SIDECARS, ids=lambda p: p.stem)
def test_typed_fields_match_the_document(path):
    doc = json.loads(path.read_bytes())
    rec = Recording.from_doc(doc)
    assert rec.recording_id == doc["recording_id"] and rec.device_id == doc["device_id"]
    assert rec.duration == doc["duration"] and rec.sha256 == doc["sha256"]
    assert rec.audio.frames == doc["frames"] and rec.stop_reason == doc["stop_reason"]
    assert [b.at for b in rec.start.bookmarks] == [b["at"] for b in doc["bookmarks"]]
    assert rec.started.timestamp() == pytest.approx(
        recording.parse_utc(doc["started_at"]).timestamp())
    assert rec.start.path == doc["path"] and rec.start.name == Path(doc["path"]).stem


def test_unknown_keys_survive():
    doc = json.loads((FIXTURES / "peer-extra-keys.json").read_bytes())
    rec = Recording.from_doc(doc)
    assert rec.extra["x_future_field"] == {"nested": [1, 2, 3]}
    assert rec.start.bookmarks[0].label is None
    assert rec.start.bookmarks[0].extra == {"note": "a peer's note", "tags": ["Market", "x"]}
    assert rec.start.bookmarks[1].label == "ಅನ್ನ"


def test_extra_fields_are_added_not_lost():
    doc = json.loads((FIXTURES / "record.json").read_bytes())
    rec = Recording.from_doc(doc).with_extra({"duplicate_of": "0" * 26})
    assert rec.to_doc() == {**doc, "duplicate_of": "0" * 26}


def test_invalid_document_is_refused_naming_the_field():
    doc = json.loads((FIXTURES / "record.json").read_bytes())
    del doc["sha256"]
    with pytest.raises(SidecarError, match="'sha256' is missing"):
        Recording.from_doc(doc)


def test_the_id_carries_its_creation_time():
    rid = recording.new_recording_id(1764349262.123)
    assert recording.is_recording_id(rid)
    assert recording.recording_id_time(rid) == pytest.approx(1764349262.123)


def test_new_start_names_the_recording_from_its_start():
    start = recording.new_start(
        recording_id="01kb5pspk06avfpb26wj7994q1", device_id="dca632a1b2c3", codec="vorbis",
        samplerate=48000, channels=1, started_utc=1764349500.0, monotonic_start=12.3456789,
        clock_synced=True, boot_id="b", trigger="vad", preroll=2.0004)
    assert start.path == "recordings/2025/11/28/20251128T170500Z_dca632a1b2c3_wj7994q1.ogg"
    assert start.started_at == "2025-11-28T17:05:00.000Z"
    assert start.monotonic_start == 12.345679 and start.preroll == 2.0
