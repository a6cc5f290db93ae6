"""Sidecar → papad field mapping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from recorder.papad import mapping
from recorder.recording import Recording
from tests.papad_recordings import make_sidecar


def sidecar(**kw):
    return make_sidecar(b"OggS", **kw)


def rec(doc):
    """The mapping reads the typed recording."""
    return Recording.from_doc(doc)


def test_tags_normalised_with_machine_tag():
    doc = sidecar(tags=[" Water", "WATER", "", "  ", "rain,  Monsoon ", "two  words"])
    assert mapping.media_tags(rec(doc)) == [
        "water", "rain", "monsoon", "two words", f"recorderpi-{doc['recording_id']}"]
    assert mapping.recording_id_from_tags(mapping.media_tags(rec(doc))) == doc["recording_id"]


def test_name_title_or_readable_default():
    assert mapping.media_name(rec(sidecar(title="  Song\n of the  well "))) == "Song of the well"
    assert mapping.media_name(rec(sidecar())) == "Recording 2026-11-28 17:01 UTC (testdev01)"


def test_description_carries_device_time_duration_ids():
    doc = sidecar(seconds=83.44)
    text = mapping.media_description(rec(doc))
    assert "testdev01" in text and "2026-11-28 17:01:02 UTC" in text
    assert "1:23.4" in text and "83.4 s" in text
    assert f"Recording id: {doc['recording_id']}" in text and doc["sha256"] in text
    doc["clock_synced"] = False
    assert "not synchronised" in mapping.media_description(rec(doc))


def test_fragment_ranges_and_format():
    assert mapping.fragment_range(5, 60, 10) == (5, 15)
    assert mapping.fragment_range(55, 60, 10) == (55, 60)
    assert mapping.fragment_range(-2, 60, 10) == (0, 8)
    assert mapping.fragment_range(70, 60, 10) == (60, 60)
    assert mapping.media_fragment(12.0, 22.5) == "t=12,22.5"
    assert mapping.media_fragment(0.1234, 10.1239) == "t=0.123,10.124"
    assert mapping.format_seconds(0.0) == "0"


@given(at=st.floats(-100, 1e5), duration=st.floats(0, 1e5), span=st.floats(0.5, 3600))
def test_fragment_range_is_always_inside_the_recording(at, duration, span):
    start, end = mapping.fragment_range(at, duration, span)
    assert 0 <= start <= end <= round(duration, 3) + 1e-9
    assert end - start <= span + 1e-3


def test_bookmark_annotations_text_and_tags():
    doc = sidecar(seconds=30.0, bookmarks=[
        {"at": 1.0, "label": "  hello  world "}, {"at": 2.0, "tags": ["Rain", 3, ""]},
        {"at": 65.0},
    ])
    anns = mapping.bookmark_annotations(rec(doc), 10.0)
    assert [a.media_target for a in anns] == ["t=1,11", "t=2,12", "t=30,30"]
    assert anns[0].text == "hello world" and anns[0].tags == ("bookmark",)
    assert anns[1].text == "Bookmark at 0:02.0" and anns[1].tags == ("bookmark", "rain")
