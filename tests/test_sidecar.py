"""The published layout and the sidecar, checked against README's own description.

Names and paths are spelled out here from README (recordings/YYYY/MM/DD/<UTC>_<device-id>_<short
id>.ogg, a 26-character ULID-style id sortable by time), never built with the product's helpers.
"""

from __future__ import annotations

import copy
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recorder import sidecar
from tests.conftest import run_cli

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # ULID's alphabet, lowercase
PATH_RE = re.compile(r"^recordings/(\d{4})/(\d{2})/(\d{2})/(\d{8}T\d{6}Z)_([a-z0-9._-]+)_"
                     r"([0-9a-z]{8})\.ogg$")
README_FIELDS = {
    "schema", "recording_id", "device_id", "path", "media_type", "codec", "encoder",
    "samplerate", "channels", "frames", "duration", "bytes", "sha256", "started_at",
    "clock_synced", "boot_id", "monotonic_start", "trigger", "preroll", "stop_reason", "levels",
    "title", "tags", "bookmarks", "recovered", "overflows", "audio_id", "software",
}


def id_time_ms(recording_id: str) -> int:
    """The creation time a ULID-style id carries in its first 10 characters (48 bits of ms)."""
    value = 0
    for ch in recording_id[:10]:
        value = value * 32 + CROCKFORD.index(ch)
    return value


def record(cfg_path: str, clip: Path) -> tuple[dict, Path, float, float]:
    before = time.time()
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{clip}", "--fast",
                   "--title", "Lemon rice", "--json")
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return json.loads(Path(out["sidecar"]).read_text()), Path(out["path"]), before, after


@pytest.fixture(scope="module")
def two_recordings(tmp_path_factory, speech_wav):
    root = tmp_path_factory.mktemp("sidecar")
    cfg = root / "recorder.toml"
    cfg.write_text(f'[device]\nid = "dca632a1b2c3"\n[storage]\ndata_dir = "{root / "data"}"\n'
                   'reserve_mb = 0\n[audio]\npreroll = 0.0\n')
    first = record(str(cfg), speech_wav)
    second = record(str(cfg), speech_wav)
    return root / "data" / "sync" / "dca632a1b2c3", first, second


def test_published_layout(two_recordings):
    folder, *recordings = two_recordings
    for doc, ogg, before, after in recordings:
        m = PATH_RE.match(doc["path"])
        assert m, doc["path"]
        year, month, day, stamp, device, short = m.groups()
        started = datetime.fromisoformat(doc["started_at"].replace("Z", "+00:00"))
        assert started.tzinfo == UTC
        assert (year, month, day) == (f"{started:%Y}", f"{started:%m}", f"{started:%d}")
        assert stamp == f"{started:%Y%m%dT%H%M%SZ}"
        assert device == doc["device_id"] == "dca632a1b2c3"
        assert short == doc["recording_id"][-8:]
        assert ogg == folder / doc["path"] and ogg.is_file()
        assert ogg.with_suffix(".json").is_file()
        assert before - 0.001 <= started.timestamp() <= after
    # Only the two recordings and their sidecars, nothing else in the day folders.
    names = sorted(p.name for p in (folder / "recordings").rglob("*") if p.is_file())
    assert len(names) == 4 and all(n.endswith((".ogg", ".json")) for n in names)


def test_recording_ids_are_26_chars_and_sort_by_time(two_recordings):
    _, (first, _, b1, a1), (second, _, b2, a2) = two_recordings
    for doc, before, after in ((first, b1, a1), (second, b2, a2)):
        rid = doc["recording_id"]
        assert len(rid) == 26 and set(rid) <= set(CROCKFORD)
        assert int(before * 1000) - 1 <= id_time_ms(rid) <= int(after * 1000) + 1
    assert first["recording_id"] < second["recording_id"]
    # The file names sort by start second (the UTC stamp leads; within one second the short
    # id is the random part of the id).
    assert Path(first["path"]).name[:16] <= Path(second["path"]).name[:16]


def test_sidecar_has_every_field_readme_lists(two_recordings):
    _, (doc, ogg, _, _), _ = two_recordings
    assert set(doc) >= README_FIELDS, README_FIELDS - set(doc)
    assert doc["schema"] == "recorderpi.sidecar/1" and doc["media_type"] == "audio/ogg"
    assert set(doc["levels"]) == {"peak_dbfs", "rms_dbfs", "clipped_fraction", "silent"}
    assert set(doc["overflows"]) == {"input", "ring_frames"}
    assert {"algorithm", "version", "fingerprint", "duration", "sha256"} <= set(doc["audio_id"])
    assert doc["audio_id"]["algorithm"] == "chromaprint"
    assert doc["software"].startswith("recorderpi ")
    assert doc["bytes"] == ogg.stat().st_size and doc["title"] == "Lemon rice"
    assert sidecar.validate(doc) is doc


def test_second_take_of_the_same_audio_is_marked_duplicate(two_recordings):
    _, (first, *_), (second, *_) = two_recordings
    assert "duplicate_of" not in first
    assert second["duplicate_of"] == first["recording_id"]


BAD = [
    ("schema", "recorderpi.sidecar/2", "schema"),
    ("recording_id", "01M8T", "recording_id"),
    ("recording_id", "01m8tbdet9r3k57weqjsd5hyki", "recording_id"),  # 'i' is not Crockford
    ("device_id", "../etc", "device_id"),
    ("path", "/recordings/2026/11/28/20261128T170102Z_dca632a1b2c3_42kfzvr9.ogg", "path"),
    ("path", "recordings/2026/11/../../../x/20261128T170102Z_dca632a1b2c3_42kfzvr9.ogg",
     "path"),
    ("path", "recordings/2026/11/20261128T170102Z_dca632a1b2c3_42kfzvr9.ogg", "path"),
    ("path", "recordings/2026/11/28/notes.ogg", "path"),
    ("path", "other/2026/11/28/20261128T170102Z_dca632a1b2c3_42kfzvr9.ogg", "path"),
    ("sha256", "abc", "sha256"),
    ("channels", 3, "audio format"),
    ("samplerate", 0, "audio format"),
    ("frames", -1, "audio format"),
    ("samplerate", True, "samplerate"),  # a bool is not a number here
    ("duration", "12.5", "duration"),
    ("tags", ["ok", 7], "tags"),
    ("bookmarks", [{"label": "no time"}], "bookmarks"),
    ("levels", [], "levels"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD)
def test_validate_rejects_each_bad_field_naming_it(two_recordings, field, value, named):
    _, (doc, *_), _ = two_recordings
    bad = copy.deepcopy(doc)
    bad[field] = value
    with pytest.raises(sidecar.SidecarError) as err:
        sidecar.validate(bad)
    msg = str(err.value)
    assert named in msg and "\n" not in msg
    assert err.value.exit_code == 5  # README: a malformed sidecar is an input-file error


@pytest.mark.parametrize("field", sorted(README_FIELDS - {
    "encoder", "overflows", "audio_id", "software"}))
def test_validate_requires_the_core_fields(two_recordings, field):
    _, (doc, *_), _ = two_recordings
    bad = {k: v for k, v in doc.items() if k != field}
    with pytest.raises(sidecar.SidecarError, match=field):
        sidecar.validate(bad)


def test_validate_is_the_gate_for_peers(two_recordings):
    _, (doc, *_), _ = two_recordings
    assert sidecar.validate(doc, expect_device="dca632a1b2c3") is doc
    with pytest.raises(sidecar.SidecarError, match="lies in 'dev-b'"):
        sidecar.validate(doc, expect_device="dev-b")
    for junk in (b"{not json", b"[1, 2]", json.dumps({"schema": "x"}).encode(),
                 b" " * (sidecar.MAX_SIDECAR_BYTES + 1)):
        with pytest.raises(sidecar.SidecarError):
            sidecar.loads(junk)
    assert sidecar.loads(json.dumps(doc).encode()) == doc
