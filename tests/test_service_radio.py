"""Cow Radio inside the running service: the live stream never costs the recording anything."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import soundfile as sf

from recorder.app import service_wiring
from recorder.config import SourceSpec
from recorder.daemon import Service
from tests.clips import RATE
from tests.conftest import wait_until
from tests.icecast import Listener
from tests.test_radio import STREAM_RATE, decode_ogg, fingerprint


def radio_state(svc) -> str:
    return svc.status()["workers"]["radio"]["state"]


def radio_in(svc, state: str):
    """The radio status once in `state` (one snapshot: a retrying stream leaves "error")."""
    radio = svc.status()["workers"]["radio"]
    return radio if radio["state"] == state else None


def service_for(icecast, clip, **radio):
    from gpiozero.pins.mock import MockFactory

    cfg = icecast.recorder_config(**{"live": False, **radio})
    cfg = dataclasses.replace(cfg, audio=dataclasses.replace(
        cfg.audio, source=SourceSpec.parse(f"file:{clip}"), preroll=0.0))
    svc = Service(service_wiring(cfg), pin_factory=MockFactory())
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    wait_until(lambda: svc.state == "idle", what="service armed")
    return svc, thread


def test_live_stream_and_recording_side_by_side(icecast, speech_wav):
    clip, _ = sf.read(speech_wav, dtype="int16", always_2d=True)
    svc, thread = service_for(icecast, speech_wav)
    try:
        assert svc.handle_command({"command": "live", "on": True}) == {"live": True}
        wait_until(lambda: radio_state(svc) == "live", what="radio live")
        listener = Listener(icecast.mount_url)
        svc.start("test")
        time.sleep(len(clip) / RATE + 0.5)
        svc.stop("test")
        wait_until(lambda: svc.published_count == 1, what="published")
        svc.handle_command({"command": "live", "on": False})
        wait_until(lambda: listener.closed_by_server, 20, what="end of stream")
        heard = decode_ogg(listener.close(), STREAM_RATE)
        radio = svc.status()["workers"]["radio"]
        audio = svc.status()["audio"]
    finally:
        svc.request_stop()
        thread.join(30)
    recording = next(svc.parts.layout.device_folder.rglob("*.ogg"))
    recorded, _ = sf.read(recording, dtype="int16")
    assert len(recorded) / RATE >= len(clip) / RATE  # complete: the clip and a bit more
    assert audio["ring_overruns"] == 0 and audio["input_overflows"] == 0
    assert radio["blocks_dropped"] == 0
    from recorder.audioid.compare import compare

    match = compare(fingerprint(heard, STREAM_RATE), fingerprint(clip))
    assert match.ber < 0.15, match


def test_icecast_restart_mid_stream_loses_nothing_in_the_recording(icecast, tmp_path):
    rng = np.random.default_rng(5)
    clip = tmp_path / "noise.wav"
    sf.write(clip, (rng.normal(0, 3000, RATE * 40)).astype(np.int16), RATE, subtype="PCM_16")
    svc, thread = service_for(icecast, clip, live=True)
    try:
        wait_until(lambda: radio_state(svc) == "live", what="radio live")
        svc.start("test")
        time.sleep(1.5)
        icecast.stop()
        radio = wait_until(lambda: radio_in(svc, "error"), what="error noticed")
        assert "Icecast" in radio["error"]
        time.sleep(1.0)
        icecast.start()
        wait_until(lambda: svc.status()["workers"]["radio"]["reconnects"] >= 1
             and svc.status()["workers"]["radio"]["state"] == "live", what="reconnected")
        svc.stop("test")
        wait_until(lambda: svc.published_count == 1, what="published")
        audio = svc.status()["audio"]
    finally:
        svc.request_stop()
        thread.join(30)
    doc = next(svc.parts.layout.device_folder.rglob("*.json")).read_text()
    assert '"ring_frames": 0' in doc and '"input": 0' in doc
    assert audio["ring_overruns"] == 0


def test_wrong_password_is_reported_and_recording_unaffected(icecast, speech_wav):
    bad = icecast.write_secret("wrong.pw", "not-the-password")
    svc, thread = service_for(icecast, speech_wav, live=True, password_file=str(bad))
    try:
        error = wait_until(lambda: radio_in(svc, "error"), what="refused")["error"]
        assert "401" in error and "not-the-password" not in error and "\n" not in error
        svc.start("test")
        time.sleep(2.0)
        svc.stop("test")
        wait_until(lambda: svc.published_count == 1, what="published")
    finally:
        svc.request_stop()
        thread.join(30)
    assert next(svc.parts.layout.device_folder.rglob("*.ogg")).stat().st_size > 0
    playlist = svc.parts.layout.device_folder / "radio" / "playlist.m3u"
    assert playlist.is_file() and "recordings/" in playlist.read_text()


def test_playlist_skips_a_peer_copy_only_the_catalogue_knows_is_a_duplicate(
        cfg_factory, speech_wav, tmp_path):
    from recorder import app
    from recorder.audioid.catalogue import Catalogue
    from recorder.cli.record import record_once
    from recorder.db import Database

    own_cfg = cfg_factory(audio={"preroll": 0.0, "source": f"file:{speech_wav}"})
    own = record_once(own_cfg, seconds=None, realtime=False)
    # The same audio recorded later on a peer: its sidecar knows nothing of ours.
    peer_cfg = cfg_factory(device={"id": "peer1"}, storage={"state_dir": str(tmp_path / "peer")},
                           audio={"preroll": 0.0, "source": f"file:{speech_wav}"})
    peer = record_once(peer_cfg, seconds=None, realtime=False)
    assert "duplicate_of" not in peer.sidecar
    with Database(own_cfg.db_path) as database:
        catalogue = Catalogue.from_config(database, own_cfg.audioid)
        dup = catalogue.add(peer.sidecar, origin="peer:peer1")
        assert dup == own.sidecar["recording_id"]
        app.radio_worker(own_cfg, catalogue).update_playlist()
    listed = (own_cfg.layout.device_folder / "radio" / "playlist.json").read_text()
    assert own.sidecar["recording_id"] in listed
    assert peer.sidecar["recording_id"] not in listed
