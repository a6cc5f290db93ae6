"""Cow Radio on the air all day: a real Liquidsoap (script from `recorder radio script`) plays
the station playlist written by the real `recorder run`, to a real icecast2, and a listener
hears it; live takes over on the same connection and gives the air back.

One station is shared by the module (starting Liquidsoap costs seconds); every test waits for
its own condition on its own listener, so each runs alone or in any order. The recordings are
real OGG Vorbis files with real sidecars, laid out as the publisher and the bridge leave them:

- own "Morning news" (3 h old), peer "Harvest ..." (2 h; a title with quotes, a backslash,
  ``#{`` and non-ASCII), own "Evening story" (1 h), and own "Broken tape" (newest, so first:
  its OGG is garbage, as after disk damage) that the station must skip;
- the live input is `recorder run`'s file source looping another speech clip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder import sidecar
from recorder.app import radio_settings
from recorder.config import load_config, parse_config
from recorder.radio import nowplaying, playlist, station
from tests.conftest import free_port, need, run_cli, toml_config, wait_until
from tests.corpus import sidecar_for
from tests.icecast import IcecastServer, Listener
from tests.station_harness import Liquidsoap, RecorderService, file_print, heard

OWN = "stationdev"
PEER = "peerdev02"
TRICKY = 'Harvest "song" \\ #{x}, a:b ñ'
LIVE_TITLE = f"Live: {OWN}"
DEADLINE = 60.0  # generous: a loaded 2-core machine; tests wait on conditions, never sleep


class Station:
    """Everything the module's tests share (see the module docstring)."""

    def __init__(self, base: Path, corpus) -> None:
        self.base = base
        self.icecast = IcecastServer(base / "icecast")
        self.icecast.start()
        self.data = base / "data"
        self.sync = self.data / "sync"
        now = datetime.now(UTC)
        self.recordings: dict[str, dict] = {}
        self.prints: dict[str, np.ndarray] = {}
        for key, device, text, age, title in (
            ("morning", OWN, 41, timedelta(hours=3), "Morning news"),
            ("harvest", PEER, 42, timedelta(hours=2), TRICKY),
            ("evening", OWN, 43, timedelta(hours=1), "Evening story"),
        ):
            self.add(key, device, corpus.speech(text, sentences=1), now - age, title)
        self.broken = self.add("broken", OWN, corpus.speech(47, sentences=1),
                               now - timedelta(minutes=30), "Broken tape", garbage=True)
        self.live_clip = corpus.speech(44, sentences=2)
        self.live_print = file_print(self.live_clip)
        self.harbor_port = free_port()
        self.config = toml_config(base / "recorder.toml", {
            "device": {"id": OWN},
            "storage": {"data_dir": str(self.data), "reserve_mb": 0},
            "audio": {"source": f"file:{self.live_clip}", "preroll": 0.0},
            "radio": {"station": True, "url": self.icecast.url, "mount": self.icecast.mount,
                      "password_file": str(self.icecast.password_file),
                      "harbor_url": f"http://127.0.0.1:{self.harbor_port}", "crossfade": 0.3},
        })
        self.cfg = load_config(self.config)
        index = run_cli("--config", self.config, "index", "rebuild", timeout=120)
        assert index.returncode == 0, index.stderr
        self.service = RecorderService(self.config, self.cfg.service.control_socket,
                                       base / "recorder.log")
        script = run_cli("--config", self.config, "radio", "script", "--output",
                         str(base / "station.liq"))
        assert script.returncode == 0, script.stderr
        self.liquidsoap = Liquidsoap(base / "station.liq", base / "liquidsoap.log")
        self.liquidsoap.start()
        wait_until(self.on_air, DEADLINE, 0.2, "the station on the air")

    def add(self, key: str, device: str, wav: Path, started: datetime, title: str, *,
            garbage: bool = False) -> dict:
        """An OGG and its sidecar in `device`'s folder, audio first (as Syncthing delivers)."""
        staged = self.base / f"{key}.ogg"
        audio, rate = sf.read(str(wav), dtype="int16")
        sf.write(str(staged), audio, rate, format="OGG", subtype="VORBIS")
        doc = sidecar_for(staged, device_id=device, started=started.timestamp())
        if garbage:  # what a damaged card leaves: the right size and hash, no Ogg inside
            staged.write_bytes(os.urandom(staged.stat().st_size))
            doc["sha256"] = hashlib.sha256(staged.read_bytes()).hexdigest()
        doc["title"] = title
        media = self.sync / device / doc["path"]
        media.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, media)
        media.with_suffix(".json").write_text(sidecar.dumps(sidecar.validate(doc)))
        self.recordings[key] = doc
        self.prints[key] = file_print(wav)
        return doc

    def on_air(self) -> bool:
        try:
            station.on_air(self.cfg.radio)
        except Exception:
            return False
        return True

    def listen(self) -> Listener:
        return Listener(self.icecast.mount_url)

    def ctl(self, *args: str) -> None:
        res = run_cli("--config", self.config, "ctl", *args, timeout=60)
        assert res.returncode == 0, res.stderr

    def played(self) -> list[dict]:
        return playlist.read_played(radio_settings(self.cfg))

    def close(self) -> None:
        self.liquidsoap.stop()
        self.service.stop()
        self.icecast.stop()


@pytest.fixture(scope="module")
def radio_station(tmp_path_factory, corpus):
    need("liquidsoap")
    s = Station(tmp_path_factory.mktemp("station"), corpus)
    try:
        yield s
    finally:
        s.close()


def first_heard(listener: Listener, wanted, *, after: int = 0, cache=None):
    """Wait until the listener's bytes (from offset `after`) hold a part for which
    `wanted(part)` is true; return that part. The failure lists what was heard."""
    cache = {} if cache is None else cache
    deadline = time.monotonic() + DEADLINE
    while True:
        parts = heard(bytes(listener.data), cache)
        found = next((p for p in parts if p.start >= after and wanted(p)), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            got = [(p.title, round(p.seconds, 1), p.start) for p in parts]
            pytest.fail(f"timed out after {DEADLINE:g}s; the listener heard (title, seconds, "
                        f"offset; wanted from {after}): {got}, {len(listener.data)} bytes, "
                        f"closed: {listener.closed_by_server}")
        time.sleep(0.5)


def recording_heard(s: Station, keys: tuple[str, ...] | None = None):
    """A predicate: a part whose audio is one of the recordings and whose title is its title."""
    keys = keys or tuple(k for k in s.prints if k != "broken")

    def wanted(part) -> bool:
        return any(part.title == s.recordings[k]["title"] and part.matches(s.prints[k])
                   for k in keys)

    return wanted


# --- on the air -------------------------------------------------------------------------------


def test_listener_hears_playlist_recordings_with_their_titles(radio_station):
    s = radio_station
    listener = s.listen()
    try:
        part = first_heard(listener, recording_heard(s))
        key = next(k for k in s.prints if s.recordings[k]["title"] == part.title)
        doc = s.recordings[key]
        assert part.artist == doc["device_id"]
        # The play log in playlist.json says what went on the air, with the sidecar's ids.
        logged = wait_until(lambda: [p for p in s.played()
                                     if p.get("recording_id") == doc["recording_id"]],
                            DEADLINE, 0.5, "the play in playlist.json")
        assert logged[0]["source"] == "playlist" and logged[0]["device_id"] == doc["device_id"]
        assert logged[0]["title"] == doc["title"] and logged[0]["at"].endswith("Z")
        # Icecast's status page carries the titles too (what directories and players show).
        titles = {d["title"] for k, d in s.recordings.items() if k != "broken"}
        wait_until(lambda: station.on_air(s.cfg.radio).get("title") in titles, DEADLINE, 0.5,
                   "a sidecar title in Icecast's status")
        assert not listener.closed_by_server
    finally:
        listener.close()


def test_tricky_title_reaches_the_listener_intact(radio_station):
    s = radio_station
    listener = s.listen()
    try:
        part = first_heard(listener, recording_heard(s, ("harvest",)))
    finally:
        listener.close()
    assert part.title == TRICKY and part.artist == PEER


def test_live_takes_over_and_gives_back_on_one_connection(radio_station):
    s = radio_station
    listener = s.listen()
    try:
        titles = {d["title"] for d in s.recordings.values()}
        first_heard(listener, lambda p: p.title in titles)  # the playlist is on the air
        mark = len(listener.data)
        s.ctl("live", "on")
        live = first_heard(listener, lambda p: p.title == LIVE_TITLE
                           and p.matches(s.live_print), after=mark)
        assert live.artist == OWN
        mark = len(listener.data)
        s.ctl("live", "off")
        first_heard(listener, recording_heard(s), after=mark)
        # One connection throughout: nothing was cut, nobody reconnected.
        assert not listener.closed_by_server
        assert listener.arrivals[-1][1] == len(listener.data)
        plays = wait_until(lambda: [p for p in s.played() if p["source"] == "live"],
                           DEADLINE, 0.5, "the live play in the log")
        assert plays[0]["title"] == LIVE_TITLE and plays[0]["device_id"] == OWN
    finally:
        if s.service.status().get("workers", {}).get("radio", {}).get("live_requested"):
            s.ctl("live", "off")
        listener.close()


def test_new_peer_recording_is_played_on_its_turn(radio_station, corpus):
    s = radio_station
    doc = s.add("newpeer", PEER, corpus.speech(45, sentences=1), datetime.now(UTC),
                "Fresh from the peer")
    # What the service does when Syncthing delivers a peer's files: the bridge imports them
    # (here its one-shot form), then the playlist is rebuilt (here the command that does it).
    bridge = run_cli("--config", s.config, "mesh", "bridge", "--once", "--json", timeout=120)
    assert bridge.returncode == 0 and json.loads(bridge.stdout)["scan"]["imported"] >= 1, \
        bridge.stdout + bridge.stderr
    rebuilt = run_cli("--config", s.config, "radio", "playlist", "--json", timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    station_m3u = playlist.station_playlist_path(radio_settings(s.cfg)).read_text()
    assert station_m3u.splitlines()[1].endswith(doc["path"])  # newest first
    listener = s.listen()
    try:
        part = first_heard(listener, recording_heard(s, ("newpeer",)))
    finally:
        listener.close()
    assert part.title == "Fresh from the peer" and part.artist == PEER


def test_undecodable_recording_is_skipped_and_logged(radio_station):
    s = radio_station
    path = str(s.sync / OWN / s.broken["path"])
    on_list = playlist.station_playlist_path(radio_settings(s.cfg)).read_text()
    assert path in on_list  # it is on the list
    wait_until(lambda: any("skipped, cannot be played: " in line and path in line
                           for line in s.liquidsoap.output().splitlines()),
               DEADLINE, 0.5, "the skip in the log")
    listener = s.listen()
    try:
        first_heard(listener, recording_heard(s))  # and the station plays on
    finally:
        listener.close()
    assert s.liquidsoap.running()
    assert all(p.get("recording_id") != s.broken["recording_id"] for p in s.played())


def test_icecast_restart_station_comes_back(radio_station):
    s = radio_station
    s.icecast.restart()
    wait_until(s.on_air, DEADLINE, 0.2, "the station back on the air")
    listener = s.listen()
    try:
        first_heard(listener, recording_heard(s))
    finally:
        listener.close()
    assert s.liquidsoap.running()


def test_doctor_says_whether_the_station_is_on_air(radio_station, tmp_path):
    s = radio_station
    res = run_cli("--config", s.config, "doctor", "--json", timeout=120)
    check = next(c for c in json.loads(res.stdout)["checks"] if c["name"] == "station")
    assert check["ok"], check
    assert s.icecast.mount in check["detail"]
    other = tmp_path / "other.toml"
    other.write_text(Path(s.config).read_text().replace(s.icecast.mount, "/nobody.ogg"))
    res = run_cli("--config", str(other), "doctor", "--json", timeout=120)
    check = next(c for c in json.loads(res.stdout)["checks"] if c["name"] == "station")
    assert not check["ok"] and check["severity"] == "warning"
    assert check["detail"] == (f"the station is off the air: Icecast at {s.icecast.url} has no "
                               "source on /nobody.ogg")
    status = run_cli("--config", str(other), "radio", "status", timeout=60)
    assert status.returncode == 7 and status.stderr.count("\n") == 1, status.stderr


# --- an empty playlist ------------------------------------------------------------------------


def test_empty_playlist_plays_the_jingle_and_keeps_the_mount(radio_station, corpus, tmp_path):
    """Nothing to play: the idle jingle, silence between, the mount never drops."""
    s = radio_station
    jingle = tmp_path / "jingle.ogg"
    audio, rate = sf.read(str(corpus.speech(46, sentences=1)), dtype="int16")
    sf.write(str(jingle), audio[: int(4.5 * rate)], rate, format="OGG", subtype="VORBIS")
    mount = "/empty.ogg"
    cfg = parse_config({
        "device": {"id": "emptydev"},
        "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 0},
        "radio": {"station": True, "url": s.icecast.url, "mount": mount,
                  "password_file": str(s.icecast.password_file),
                  "harbor_url": f"http://127.0.0.1:{free_port()}", "jingle": str(jingle),
                  "idle_jingle_minutes": 0.02, "name": "Cow Radio ID"},
    })
    script, _ = station.write_script(radio_settings(cfg), tmp_path / "empty.liq")
    liquidsoap = Liquidsoap(script, tmp_path / "liquidsoap.log")
    liquidsoap.start()
    try:
        wait_until(lambda: _mount_up(s.icecast, mount), DEADLINE, 0.2, "the empty station")
        listener = Listener(s.icecast.url + mount)
        try:
            reference = file_print(jingle)

            def jingle_heard(part) -> bool:
                return part.title == "Cow Radio ID" and part.matches(reference)

            first = first_heard(listener, jingle_heard)
            # Silence in between (not a dropped mount): the jingle comes round again on the
            # same connection.
            first_heard(listener, jingle_heard, after=first.end)
            assert not listener.closed_by_server
        finally:
            listener.close()
    finally:
        liquidsoap.stop()


def _mount_up(server: IcecastServer, mount: str) -> bool:
    try:
        with urllib.request.urlopen(server.url + "/status-json.xsl", timeout=2) as resp:
            return f"{server.url}{mount}".encode() in resp.read()
    except OSError:
        return False


# --- the script, the play log, the configuration -----------------------------------------------


@pytest.mark.parametrize("radio", [
    {"codec": "vorbis", "crossfade": 0.5, "jingle_every": 3, "playlist_hours": "06:00-22:30"},
    {"codec": "opus", "crossfade": 0.0, "idle_jingle_minutes": 0, "playlist_hours": "22:00-06:00",
     "name": 'Cow "#{Radio}" \\ ñ', "description": "a\tb"},
], ids=["vorbis-jingle-hours", "opus-no-crossfade-hostile-names"])
def test_generated_script_passes_liquidsoaps_own_check(radio, tmp_path):
    binary = need("liquidsoap")
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    jingle = tmp_path / "id.wav"
    sf.write(str(jingle), np.zeros(24000, np.int16), 24000)
    cfg = parse_config({"device": {"id": "checkdev"},
                        "storage": {"data_dir": str(tmp_path / "d"), "reserve_mb": 0},
                        "radio": {"station": True, "password_file": str(secret),
                                  "jingle": str(jingle), **radio}})
    path, changed = station.write_script(radio_settings(cfg), tmp_path / "s.liq")
    # Unchanged: no write.
    assert changed and station.write_script(radio_settings(cfg), path) == (path, False)
    first = ["settings.init.allow_root.set(true)"] if os.geteuid() == 0 else []
    res = _run([binary, "--check", *first, str(path)])
    assert res.returncode == 0 and "Error" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_script_command_refuses_what_cannot_run(config_file, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    path, _ = config_file(radio={"password_file": str(secret)})
    res = run_cli("--config", path, "radio", "script")
    assert res.returncode == 2 and res.stderr.strip().startswith(
        "recorder: error: radio.station: false"), res.stderr
    secret.chmod(0o644)
    path, _ = config_file(radio={"password_file": str(secret), "station": True})
    res = run_cli("--config", path, "radio", "script")
    assert res.returncode == 2 and "radio.password_file" in res.stderr and "chmod 600" in res.stderr
    secret.chmod(0o600)
    bad = tmp_path / "jingle.ogg"
    bad.write_bytes(b"OggS not really")
    path, _ = config_file(radio={"password_file": str(secret), "station": True,
                                 "jingle": str(bad)})
    res = run_cli("--config", path, "radio", "script")
    assert res.returncode == 5 and "radio.jingle: cannot decode" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    for key, value in (("playlist_hours", "6-22"), ("harbor_bind", "localhost"),
                       ("crossfade", 11), ("harbor_url", "ftp://x")):
        path, _ = config_file(radio={key: value})
        res = run_cli("--config", path, "radio", "script")
        assert res.returncode == 2 and res.stderr.startswith(
            f"recorder: error: radio.{key}: "), res.stderr
        assert res.stderr.count("\n") == 1
    assert not list(tmp_path.rglob("station.liq"))  # nothing half-made was left


def test_play_log_is_bounded_newest_first_and_kept_across_rebuilds(cfg_factory):
    cfg = cfg_factory(radio={"play_log_length": 3})
    rs = radio_settings(cfg)
    assert playlist.add_plays(rs, [{"at": "2026-01-01T00:00:00.000Z"}]) == 0  # no file yet
    playlist.write_playlist(rs, [])
    raw = [{"at": 1_790_000_000 + i, "source": "playlist", "title": f"t{i}",
            "device_id": "d", "recording_id": f"r{i}"} for i in range(5)]
    entries = [nowplaying.to_log_entry(p) for p in raw]
    assert playlist.add_plays(rs, entries[:2]) == 2
    assert playlist.add_plays(rs, entries[:2]) == 0  # the station reports the same plays again
    assert playlist.add_plays(rs, entries[2:]) == 3
    played = playlist.read_played(rs)
    assert [p["title"] for p in played] == ["t4", "t3", "t2"]
    assert played[0]["at"] == sidecar.utc_iso(1_790_000_004)
    playlist.write_playlist(rs, [])  # the playlist is rebuilt: the log stays
    doc = json.loads((playlist.playlist_dir(rs) / "playlist.json").read_text())
    assert [p["title"] for p in doc["played"]] == ["t4", "t3", "t2"]
    assert not list(playlist.playlist_dir(rs).glob(".*partial"))
    assert nowplaying.to_log_entry({"at": "x", "source": "playlist"}) is None
    assert nowplaying.to_log_entry({"at": 1.0, "source": "other"}) is None


def test_play_log_worker_reports_a_station_that_is_down(cfg_factory):
    cfg = cfg_factory(radio={"station": True, "harbor_url": f"http://127.0.0.1:{free_port()}"})
    worker = nowplaying.PlayLog(radio_settings(cfg))
    assert worker.poll_once() == 0
    status = worker.status()
    assert not status["reachable"] and "station not answering at" in status["error"]
    assert "\n" not in status["error"]


def _run(cmd: list[str]):
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_station_m3u_carries_sidecar_metadata(cfg_factory):
    cfg = cfg_factory()
    record = {"recording_id": "01J0000000000000000000000X", "device_id": "peer1",
              "path": "recordings/2026/01/01/a b.ogg", "title": 'Say "hi" \\ #{now}',
              "duration": 5.0, "started_at": sidecar.utc_iso(time.time())}
    text = playlist.render_station([record], cfg.storage.sync_root)
    line = text.splitlines()[1]
    title = base64.b64encode(record["title"].encode()).decode()
    assert line == (f'annotate:recorderpi_title="{title}",artist="peer1",recording_id='
                    f'"{record["recording_id"]}",recorderpi_source="playlist":'
                    f'{cfg.storage.sync_root}/peer1/recordings/2026/01/01/a b.ogg')


def test_example_config_documents_every_radio_key():
    import dataclasses
    import tomllib

    from recorder.config import RadioConfig

    example = Path(__file__).parent.parent / "services" / "recorder.example.toml"
    radio = tomllib.loads(example.read_text())["radio"]
    assert set(radio) == {f.name for f in dataclasses.fields(RadioConfig)}
    text = example.read_text().split("[radio]", 1)[1].split("\n[", 1)[0]
    for key in radio:  # each key with a comment above it (or above its group)
        before = text.split(f"\n{key} =", 1)[0].rstrip().splitlines()
        assert before and (before[-1].startswith("#") or "=" in before[-1]), key
