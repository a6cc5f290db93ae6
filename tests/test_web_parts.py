"""The web page's parts on their own: waveform peaks, the listing kept by SQLite triggers,
sessions and the login rate limit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recorder.audioid.catalogue import Catalogue
from recorder.db import Database
from recorder.sinks.peaks import BUCKETS, Peaks
from recorder.web.auth import FAILS_PER_CLIENT, FAILS_TOTAL, SESSION_SECONDS, Auth, LoginRefused
from recorder.web.listing import Listing

RATE = 48000


@pytest.mark.parametrize(("seconds", "block", "rate", "channels"), [
    (0.5, 1, RATE, 2), (3.3, 7, RATE, 1), (19.9, 1024, RATE, 2), (61.3, 1024, RATE, 1),
    (61.3, 333, RATE, 2), (3 * 3600.0, 8000, 8000, 1)])
def test_peaks_are_the_loudest_sample_of_each_bucket_at_any_length(seconds, block, rate,
                                                                   channels):
    rng = np.random.default_rng(7)
    frames = int(seconds * rate)
    audio = rng.integers(-3000, 3000, (frames, channels), dtype=np.int16)
    audio[: frames // 2] //= 4  # a quieter first half
    audio[frames // 3, channels - 1] = -32768  # |-32768| does not fit an int16
    peaks = Peaks(rate)
    for at in range(0, frames, block):
        peaks.add(audio[at:at + block])
    result = peaks.result()
    n = len(result.peaks)
    assert n <= 2 * BUCKETS and (n >= BUCKETS or result.bucket_seconds == 0.01)
    hop = round(result.bucket_seconds * rate)
    assert n == -(-frames // hop)
    mags = np.abs(audio.astype(np.int32)).max(axis=1)
    padded = np.zeros(n * hop, dtype=np.int64)
    padded[:frames] = mags
    expected = -(-padded.reshape(n, hop).max(axis=1) * 255 // 32768)
    assert list(result.peaks) == expected.tolist()
    assert max(result.peaks) == 255  # the -32768 sample


def _sidecar(i: int, **extra) -> dict:
    rid = f"01m8t{i:021d}"[:26]
    return {
        "schema": "recorderpi.sidecar/1", "recording_id": rid, "device_id": "dev-x",
        "path": f"recordings/2026/01/02/20260102T{i:06d}Z_dev-x_{rid[-8:]}.ogg",
        "media_type": "audio/ogg", "codec": "vorbis", "samplerate": 48000, "channels": 1,
        "frames": 48000, "duration": 1.0, "bytes": 9000, "sha256": f"{i:064x}",
        "started_at": f"2026-01-02T00:00:{i:02d}.000Z" if i < 60 else
        f"2026-01-02T00:{i // 60:02d}:{i % 60:02d}.000Z",
        "clock_synced": True, "boot_id": "b", "monotonic_start": 0.0, "trigger": "cli",
        "preroll": 0.0, "stop_reason": "stopped", "levels": {}, "title": f"take {i}",
        "tags": ["even" if i % 2 == 0 else "odd"], "bookmarks": [], "recovered": False,
        **extra,
    }


def test_listing_follows_the_catalogue_pages_and_searches(tmp_path):
    db = Database(tmp_path / "recorder.db")
    catalogue = Catalogue(db)
    catalogue.add_many([_sidecar(i) for i in range(45)])  # before the listing existed
    listing = Listing(db)
    first = listing.page(1)
    assert (first.total, first.pages, len(first.items)) == (45, 3, 20)
    assert [i.title for i in first.items[:2]] == ["take 44", "take 43"]
    assert [i.title for i in listing.page(3).items] == [f"take {i}" for i in range(4, -1, -1)]
    assert listing.page(99).page == 3  # past the end: the last page
    assert listing.page(1, tag="even").total == 23
    assert [i.title for i in listing.page(1, query="TAKE 1").items][:2] == ["take 19", "take 18"]
    assert listing.page(1, query="take_1").total == 0  # _ is not a wildcard
    # Writes through the catalogue (after the listing exists) show at once: triggers.
    catalogue.add(_sidecar(45, title="Lemon rice", tags=["cooking"]))
    assert listing.page(1, query="lemon").items[0].tags == ["cooking"]
    catalogue.add({**_sidecar(45), "title": "Lemon rice, retitled"})
    assert listing.page(1, query="retitled").total == 1
    assert listing.page(1, query="lemon").total == 1
    copy = _sidecar(46, sha256=_sidecar(45)["sha256"])  # same bytes: a duplicate
    assert catalogue.add(copy) == _sidecar(45)["recording_id"]
    assert listing.get(_sidecar(45)["recording_id"]).duplicates == [copy["recording_id"]]
    catalogue.remove(copy["recording_id"])
    assert listing.get(copy["recording_id"]) is None
    assert listing.get(_sidecar(45)["recording_id"]).duplicates == []
    assert listing.page(1).total == 46
    row = db.conn.execute("SELECT card FROM web_listing LIMIT 1").fetchone()
    assert json.loads(row[0])["clock_synced"] is True
    db.close()


def test_sessions_csrf_and_expiry():
    now = [1000.0]
    auth = Auth("pw", clock=lambda: now[0])
    session = auth.login("pw", "10.0.0.1")
    assert auth.session(session.token) is session
    assert auth.csrf_ok(session, session.csrf) and not auth.csrf_ok(session, "")
    assert not auth.csrf_ok(session, session.csrf[:-1] + "x")
    now[0] += SESSION_SECONDS - 1
    assert auth.session(session.token) is session  # used: the idle time starts again
    now[0] += SESSION_SECONDS + 1
    assert auth.session(session.token) is None
    with pytest.raises(LoginRefused, match="no password"):
        Auth(None).login("", "10.0.0.1")


def test_login_rate_limit_per_client_and_in_total():
    now = [0.0]
    auth = Auth("pw", clock=lambda: now[0])
    for _ in range(FAILS_PER_CLIENT):
        with pytest.raises(LoginRefused, match="wrong"):
            auth.login("guess", "a")
    with pytest.raises(LoginRefused) as locked:
        auth.login("pw", "a")  # even the right password, for now
    assert 0 < locked.value.retry_after <= 60
    assert auth.login("pw", "b")  # others are not locked out
    now[0] += 61
    assert auth.login("pw", "a")  # the window passed
    for i in range(FAILS_TOTAL):  # many addresses, a few guesses each
        with pytest.raises(LoginRefused):
            auth.login("guess", f"c{i}")
    with pytest.raises(LoginRefused, match="too many"):
        auth.login("pw", "d")
    now[0] += 61
    assert auth.login("pw", "d")
