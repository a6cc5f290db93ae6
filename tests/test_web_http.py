"""The web page's HTTP side against the real `recorder run` (tests/web_site.py): the JSON API,
range requests, waveforms, the controls' password, CSRF and rate limit, path traversal and
symlinks, /metrics; and, in-process, `web.open_read = false` and a port already taken."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import ipaddress
import json
import os
import socket
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from recorder.config import SourceSpec, WebConfig
from recorder.errors import ConfigError
from tests.conftest import free_port, wait_until
from tests.papad_setup import write_secret
from tests.web_site import PARK_REASON


def items_by_title(site, query: str = "") -> dict[str, dict]:
    return {i["title"]: i for i in site.json("/api/recordings" + query)["items"]}


def raw_get(site, path: str, source: str = "127.0.0.1", **headers) -> tuple[int, bytes]:
    """A request whose path goes out exactly as written (no client-side normalising)."""
    port = int(site.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def raw_post(site, path: str, body: dict, source: str) -> http.client.HTTPResponse:
    port = int(site.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    conn.request("POST", path, body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    res.read()
    conn.close()
    return res


def test_status_says_what_the_now_page_shows(web_site):
    s = web_site.status()
    assert s["state"] == "idle" and s["headline"].startswith("Armed")
    assert s["device_id"] == "dev-b" and s["led"] == "idle"
    assert s["free_mb"] > 0 and s["hours_left"] > 0
    # Hours left come from this device's own recordings' bytes per second.
    own = web_site.published()
    rate = sum(d["bytes"] for d in own) / sum(d["duration"] for d in own)
    assert s["byte_rate"] == pytest.approx(rate, rel=0.05)
    assert s["hours_left"] == pytest.approx(s["free_mb"] * 2**20 / rate / 3600, rel=0.05)
    assert isinstance(s["clock_synced"], bool)
    assert s["radio"] is None  # no [radio] password_file
    assert s["papad"]["parked"] >= 0 and s["source"].startswith("file:")
    assert s["overflows"] == {"input": 0, "ring_frames": 0}
    newest = max(own, key=lambda d: d["started_at"])
    assert s["latest"]["recording_id"] == newest["recording_id"] and s["latest"]["papad"]


def test_recordings_newest_first_searched_by_title_and_tag(web_site):
    data = web_site.json("/api/recordings")
    starts = [i["started_at"] for i in data["items"]]
    assert starts == sorted(starts, reverse=True)
    assert data["total"] >= 4 and data["page"] == 1
    assert set(items_by_title(web_site, "?q=LEMON")) == {"Lemon rice"}
    assert set(items_by_title(web_site, "?q=song")) == {"Harvest song"}
    assert set(items_by_title(web_site, "?tag=cooking")) == {"Lemon rice",
                                                              "Chutney from the hills"}
    assert items_by_title(web_site, "?tag=cook") == {}  # tags match whole
    assert set(items_by_title(web_site, "?origin=peers")) == {"Chutney from the hills"}
    assert "Chutney from the hills" not in items_by_title(web_site, "?origin=own")
    assert items_by_title(web_site, "?q=%25") == {}  # LIKE wildcards are literal
    res = web_site.get("/api/recordings?page=x")
    assert res.status_code == 400


def test_a_recording_with_duplicates_bookmarks_and_papad_states(web_site):
    recs = web_site.recordings
    lemon = web_site.json(f"/api/recordings/{recs['lemon']['recording_id']}")
    chutney = web_site.json(f"/api/recordings/{recs['chutney']['recording_id']}")
    # The peer's recording is the same audio as Lemon rice, recorded later: a duplicate.
    assert chutney["origin"] == "peer:dev-a" and chutney["device_id"] == "dev-a"
    assert chutney["duplicate_of"] == lemon["recording_id"]
    assert lemon["duplicates"] == [chutney["recording_id"]]
    assert chutney["papad"]["state"] == "registered"
    marked = web_site.json(f"/api/recordings/{recs['marked']['recording_id']}")
    assert [b["at"] for b in marked["bookmarks"]] == [b["at"] for b in recs["marked"]["bookmarks"]]
    assert web_site.get("/api/recordings/0000000000000000000000000z").status_code == 404
    assert web_site.get("/api/recordings/nonsense").status_code == 404


def test_parked_registration_shows_papads_reason_and_retries_from_the_page(web_site):
    rid = web_site.recordings["lemon"]["recording_id"]
    lemon = web_site.json(f"/api/recordings/{rid}")
    if lemon["papad"]["state"] == "parked":  # (a test run before may have retried it)
        assert PARK_REASON in lemon["papad"]["reason"]
        with requests.Session() as s:
            refused = s.post(web_site.url + "/api/outbox/retry", json={"id": lemon["papad"]["id"]},
                             timeout=30)
            assert refused.status_code == 401
            csrf = web_site.login(s)
            res = s.post(web_site.url + "/api/outbox/retry", json={"id": lemon["papad"]["id"]},
                         headers={"X-CSRF-Token": csrf}, timeout=30)
            assert res.status_code == 200, res.text
    wait_until(lambda: web_site.json(f"/api/recordings/{rid}")["papad"]["state"] == "registered",
               30, 0.1, "the retried registration delivered")
    assert web_site.json(f"/api/recordings/{rid}")["papad"]["reason"] is None


def test_player_gets_the_ogg_with_range_requests(web_site):
    for name in ("harvest", "chutney"):  # own, and a peer's
        doc = web_site.recordings[name]
        url = f"/media/{doc['recording_id']}.ogg"
        full = web_site.get(url)
        assert full.status_code == 200 and full.headers["Content-Type"] == "audio/ogg"
        assert full.headers["Accept-Ranges"] == "bytes"
        body = full.content
        assert len(body) == doc["bytes"] and hashlib.sha256(body).hexdigest() == doc["sha256"]
        part = web_site.get(url, headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == body[100:1100]
        assert part.headers["Content-Range"] == f"bytes 100-1099/{len(body)}"
        tail = web_site.get(url, headers={"Range": "bytes=-500"})
        assert tail.status_code == 206 and tail.content == body[-500:]
        rest = web_site.get(url, headers={"Range": f"bytes={len(body) - 10}-"})
        assert rest.content == body[-10:]
        beyond = web_site.get(url, headers={"Range": f"bytes={len(body) + 5}-"})
        assert beyond.status_code == 416
        assert beyond.headers["Content-Range"] == f"bytes */{len(body)}"
        head = requests.head(web_site.url + url, timeout=30)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(body)
        assert head.content == b""


def _expected_peaks(path: Path, bucket_seconds: float) -> np.ndarray:
    audio, rate = sf.read(path, dtype="int16", always_2d=True)
    hop = round(bucket_seconds * rate)
    n = -(-len(audio) // hop)
    padded = np.zeros((n * hop, audio.shape[1]), dtype=np.int32)
    padded[:len(audio)] = np.abs(audio.astype(np.int32))
    return padded.reshape(n, -1).max(axis=1) * 255 / 32768


def test_waveforms_made_at_publish_and_decoded_once_for_peers(web_site):
    def made(rid: str) -> str | None:
        with sqlite3.connect(web_site.db) as conn:
            row = conn.execute("SELECT made FROM waveforms WHERE recording_id = ?",
                               (rid,)).fetchone()
        return row[0] if row else None

    own = web_site.recordings["lemon"]
    assert made(own["recording_id"]) == "recorded"  # stored before it was published
    wave = web_site.json(f"/api/recordings/{own['recording_id']}/waveform")
    assert wave["duration"] == own["duration"]
    peaks = np.array(wave["peaks"], dtype=float)
    assert 100 <= len(peaks) <= 2000 and peaks.max() > 100
    assert len(peaks) * wave["bucket_seconds"] == pytest.approx(own["duration"], abs=0.02)
    ogg = web_site.sync_root / "dev-b" / own["path"]
    expected = _expected_peaks(ogg, wave["bucket_seconds"])
    n = min(len(expected), len(peaks))
    assert np.corrcoef(expected[:n], peaks[:n])[0, 1] > 0.95
    # The peer's recording came without peaks: decoded once at the first request, then kept.
    peer = web_site.recordings["chutney"]
    first = web_site.json(f"/api/recordings/{peer['recording_id']}/waveform")
    assert made(peer["recording_id"]) == "decoded"
    assert web_site.json(f"/api/recordings/{peer['recording_id']}/waveform") == first
    # Same audio as Lemon rice: the same picture.
    m = min(len(first["peaks"]), len(peaks))
    assert np.corrcoef(np.array(first["peaks"][:m]), peaks[:m])[0, 1] > 0.9
    marked = web_site.recordings["marked"]
    assert web_site.json(f"/api/recordings/{marked['recording_id']}/waveform")["bookmarks"] \
        == marked["bookmarks"]
    # A peer's file that is no audio was quarantined by the bridge: never listed or served.
    broken = web_site.recordings["broken"]["recording_id"]
    assert web_site.get(f"/api/recordings/{broken}/waveform").status_code == 404
    assert web_site.get(f"/media/{broken}.ogg").status_code == 404
    assert made(broken) is None


def test_nothing_outside_the_recordings_is_served(web_site):
    secret = web_site.password.encode()
    rid = web_site.recordings["harvest"]["recording_id"]
    for path in ("/static/../b.toml", "/static/%2e%2e/b.toml", "/static/..%2fb.toml",
                 "/media/..%2f..%2f..%2fetc%2fpasswd", "/media/%2e%2e%2fstate%2frecorder.db",
                 f"/media/{rid}.ogg/../../../web-password", "/../../../etc/passwd",
                 "//etc/passwd", "/static//etc/passwd", "/api/recordings/..%2f..%2fetc/waveform",
                 "/media/../../web-password.ogg", "/static/common.js%00.toml"):
        status, body = raw_get(web_site, path)
        assert status in (400, 404), (path, status)
        assert secret not in body and b"root:" not in body and b"SQLite" not in body, path
    # A recording file swapped for a symlink (a hostile peer, a confused admin) is refused.
    ogg = web_site.sync_root / "dev-b" / web_site.recordings["harvest"]["path"]
    aside = ogg.with_suffix(".aside")
    os.replace(ogg, aside)
    try:
        ogg.symlink_to(web_site.config.parent / "web-password")
        status, body = raw_get(web_site, f"/media/{rid}.ogg")
        assert status == 404 and secret not in body
    finally:
        ogg.unlink()
        os.replace(aside, ogg)
    assert web_site.get(f"/media/{rid}.ogg").status_code == 200


def test_controls_need_the_password_session_and_csrf_token(web_site):
    url = web_site.url
    assert requests.post(url + "/api/control/mark", timeout=30).status_code == 401
    with requests.Session() as s:
        wrong = s.post(url + "/api/login", json={"password": "guess"}, timeout=30)
        assert wrong.status_code == 401 and "wrong password" in wrong.json()["error"]
        assert "recorder_session" not in s.cookies
        form = s.post(url + "/api/login", data={"password": web_site.password}, timeout=30)
        assert form.status_code == 400  # a cross-site form cannot post JSON
        csrf = web_site.login(s)
        cookie = next(c for c in s.cookies if c.name == "recorder_session")
        assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/"
        assert s.get(url + "/api/session", timeout=30).json()["csrf"] == csrf
        no_token = s.post(url + "/api/control/mark", timeout=30)
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["error"]
        bad_token = s.post(url + "/api/control/mark", headers={"X-CSRF-Token": "x" * 43},
                           timeout=30)
        assert bad_token.status_code == 403
        other_site = s.post(url + "/api/control/mark", timeout=30, headers={
            "X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert other_site.status_code == 403
        # Through every gate: the service itself answers (nothing to bookmark while idle).
        ok = s.post(url + "/api/control/mark", headers={"X-CSRF-Token": csrf}, timeout=30)
        assert ok.status_code == 400 and "not recording" in ok.json()["error"]
        stop = s.post(url + "/api/control/stop", headers={"X-CSRF-Token": csrf}, timeout=30)
        assert stop.status_code == 409 and "not recording" in stop.json()["error"]
        s.post(url + "/api/logout", headers={"X-CSRF-Token": csrf}, timeout=30)
        assert s.post(url + "/api/control/mark", headers={"X-CSRF-Token": csrf},
                      timeout=30).status_code == 401


def test_login_is_rate_limited_per_address(web_site):
    guesser = "127.0.0.2"  # another loopback address: another client
    codes = [raw_post(web_site, "/api/login", {"password": f"guess{i}"}, guesser).status
             for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    locked = raw_post(web_site, "/api/login", {"password": web_site.password}, guesser)
    assert locked.status == 429 and int(locked.getheader("Retry-After")) > 0
    # Another address still logs in.
    with requests.Session() as s:
        assert web_site.login(s)


def test_live_meter_streams_server_sent_events(web_site):
    with requests.get(web_site.url + "/api/levels/stream", stream=True, timeout=30) as res:
        assert res.headers["Content-Type"].startswith("text/event-stream")
        events = []
        for line in res.iter_lines():
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
            if len(events) >= 6:
                break
    assert all(e["state"] in ("idle", "recording") for e in events)
    frames = [e["frames"] for e in events]
    assert frames == sorted(frames) and frames[-1] > frames[0]  # audio keeps flowing
    assert all(-120 <= e["rms_dbfs"] <= 0 for e in events)


def test_metrics_for_prometheus(web_site):
    res = web_site.get("/metrics")
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in res.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['recorder_recordings{device="dev-b",origin="own"}'] >= 3
    assert samples['recorder_recordings{device="dev-a",origin="peer"}'] == 1
    assert samples["recorder_peers_connected"] == 1 and samples["recorder_peers"] == 1
    assert samples["recorder_bridge_quarantined"] == 2
    assert samples["recorder_disk_free_bytes"] > 0
    assert samples["recorder_input_overflows_total"] == 0
    assert samples["recorder_ring_overrun_frames_total"] == 0
    assert samples["recorder_outbox_depth"] >= 0
    assert sum(v for k, v in samples.items() if k.startswith("recorder_outbox_entries")) >= 4
    assert samples['recorder_state{state="idle"}'] == 1


def test_mesh_api_peers_yggdrasil_and_quarantine(web_site):
    def settled() -> dict | None:
        # Other tests of the module record on this device: the peer may be catching up.
        got = web_site.json("/api/mesh")
        return got if [p["completion"] for p in got["peers"]] == [100] else None

    mesh = wait_until(settled, 90, 0.5, "the peer at 100 % of our folder")
    (peer,) = mesh["peers"]
    assert peer["peer_id"] == "dev-a" and peer["connected"]
    assert peer["last_seen"]
    assert mesh["yggdrasil"]["address"] == web_site.ygg_address
    assert ipaddress.ip_address(mesh["yggdrasil"]["address"]) in ipaddress.ip_network("200::/7")
    bad = {q["path"].rsplit("_", 1)[-1]: q for q in mesh["bridge"]["quarantined"]}
    assert set(bad) == {"badbadba.json", "badc0ded.json"}
    assert all(q["peer"] == "dev-a" for q in bad.values())
    assert "missing" in bad["badbadba.json"]["reason"]
    assert "does not decode" in bad["badc0ded.json"]["reason"]
    assert mesh["recordings"] == {"own": mesh["recordings"]["own"], "peer:dev-a": 1}


# --- in-process services: read access behind the password, a port already taken -------------


def _service(cfg_factory, clip: Path, **web):
    return _run_service(cfg_factory(audio={"source": f"file:{clip}", "preroll": 0.0}, web=web))


def _run_service(cfg):
    from gpiozero.pins.mock import MockFactory

    from recorder.app import service_wiring
    from recorder.daemon import Service

    svc = Service(service_wiring(cfg), pin_factory=MockFactory())
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    wait_until(lambda: svc.state == "idle", what="service armed")
    return svc, thread


def test_open_read_false_puts_every_page_behind_the_password(cfg_factory, tmp_path, speech_wav):
    password = write_secret(tmp_path / "pw", "s3cret-enough")
    port = free_port()
    svc, thread = _service(cfg_factory, speech_wav, listen="127.0.0.1", port=port,
                           password_file=str(password), open_read=False)
    url = f"http://127.0.0.1:{port}"
    try:
        for path in ("/api/status", "/api/recordings", "/api/mesh", "/metrics",
                     "/api/levels", "/media/0000000000000000000000000z.ogg"):
            assert requests.get(url + path, timeout=30).status_code == 401, path
        assert requests.get(url + "/", timeout=30).status_code == 200  # the shell, no data
        assert requests.get(url + "/static/style.css", timeout=30).status_code == 200
        with requests.Session() as s:
            s.post(url + "/api/login", json={"password": "s3cret-enough"}, timeout=30)
            assert s.get(url + "/api/status", timeout=30).json()["state"] == "idle"
            assert s.get(url + "/metrics", timeout=30).status_code == 200
    finally:
        svc.request_stop()
        thread.join(30)
    with pytest.raises(ConfigError, match=r"web\.password_file"):
        cfg_factory(web={"open_read": False})


def test_a_taken_port_leaves_the_recorder_running(cfg_factory, tmp_path, speech_wav):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    svc, thread = _service(cfg_factory, speech_wav, listen="127.0.0.1",
                           port=blocker.getsockname()[1])
    try:
        web = svc.request({"command": "status"})["workers"]["web"]
        assert web["state"] == "failed" and "cannot listen" in web["error"]
        assert svc.request({"command": "start"})["recording_id"]
        svc.request({"command": "stop"})
        wait_until(lambda: svc.published_count == 1, what="published without the web page")
    finally:
        svc.request_stop()
        thread.join(30)
        blocker.close()


def test_live_radio_switched_from_the_page(icecast, speech_wav, tmp_path):
    cfg = icecast.recorder_config(live=False)
    port = free_port()
    cfg = dataclasses.replace(
        cfg, audio=dataclasses.replace(cfg.audio, source=SourceSpec.parse(f"file:{speech_wav}"),
                                       preroll=0.0),
        web=WebConfig(listen="127.0.0.1", port=port,
                      password_file=write_secret(tmp_path / "pw", "radio-pass")))
    svc, thread = _run_service(cfg)
    url = f"http://127.0.0.1:{port}"

    def on_air() -> bool:
        return requests.get(url + "/api/status", timeout=30).json()["radio"]["on_air"]

    try:
        assert not on_air()
        with requests.Session() as s:
            csrf = s.post(url + "/api/login", json={"password": "radio-pass"},
                          timeout=30).json()["csrf"]
            res = s.post(url + "/api/control/live", json={"on": True},
                         headers={"X-CSRF-Token": csrf}, timeout=30)
            assert res.status_code == 200 and res.json() == {"live": True}
            wait_until(on_air, 30, 0.1, "on air")
            assert "recorder_radio_on_air 1" in requests.get(url + "/metrics", timeout=30).text
            s.post(url + "/api/control/live", json={"on": False},
                   headers={"X-CSRF-Token": csrf}, timeout=30)
            wait_until(lambda: not on_air(), 30, 0.1, "off the air")
    finally:
        svc.request_stop()
        thread.join(30)


@pytest.mark.parametrize(("web", "key"), [
    ({"port": 80}, "web.port"),
    ({"port": "8080"}, "web.port"),
    ({"listen": "my-pi.local"}, "web.listen"),
    ({"open_read": "yes"}, "web.open_read"),
    ({"passwordfile": "x"}, "web.passwordfile"),
])
def test_web_config_errors_name_the_key(cfg_factory, web, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg_factory(web=web)


def test_loose_password_file_stops_start_up(cfg_factory, tmp_path):
    from recorder.app import service_wiring
    from recorder.daemon import Service

    loose = write_secret(tmp_path / "pw", "s3cret", mode=0o644)
    with pytest.raises(ConfigError, match=r"web\.password_file.*readable or writable by others"):
        Service(service_wiring(cfg_factory(web={"password_file": str(loose)})))
