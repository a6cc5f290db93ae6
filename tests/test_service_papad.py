"""The service registers what it records with papad: once, with bookmarks, across outages."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import soundfile as sf

from recorder.config import SourceSpec
from recorder.daemon import Service
from tests.clips import RATE, tone
from tests.conftest import wait_until
from tests.fake_papad import FakePapad
from tests.papad_setup import PASSWORD, TOKEN, current_config


def run_service(cfg):
    from gpiozero.pins.mock import MockFactory

    svc = Service(cfg, pin_factory=MockFactory())
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    wait_until(lambda: svc.state == "idle", what="service armed")
    return svc, thread


def record(svc, seconds: float, mark_after: float | None = None):
    svc.start("test")
    if mark_after is not None:
        time.sleep(mark_after)
        assert svc.mark("test")
        time.sleep(seconds - mark_after)
    else:
        time.sleep(seconds)
    svc.stop("test")


def test_recordings_reach_papad_once_with_bookmarks_across_outage_and_restart(
        cfg_factory, tmp_path):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.tile(tone(1.0, 440), 30), RATE, subtype="PCM_16")
    server = FakePapad()
    server.add_user("rec", token=TOKEN, password=PASSWORD, groups=(1,))
    server.start()
    cfg = current_config(cfg_factory, tmp_path, server.url, timeout=2.0)
    cfg = dataclasses.replace(cfg, audio=dataclasses.replace(
        cfg.audio, source=SourceSpec.parse(f"file:{clip}"), preroll=0.5))
    svc, thread = run_service(cfg)
    try:
        record(svc, 2.0, mark_after=1.0)
        wait_until(lambda: len(server.media) == 1 and server.annotations, what="media + annotation")
        media = server.media[0]
        published = next(cfg.device_folder.rglob("*.ogg"))
        assert server.files[media["uuid"]]["data"] == published.read_bytes()
        assert media["media_type"] == "audio"
        (note,) = server.annotations
        start, end = (float(x) for x in note["media_target"].removeprefix("t=").split(","))
        import json

        preroll = json.loads(published.with_suffix(".json").read_text())["preroll"]
        assert abs(start - (preroll + 1.0)) < 0.3  # the mark came 1 s after the start
        assert end > start
        # papad goes down; a recording made meanwhile waits in the outbox.
        server.stop()
        record(svc, 1.0)
        wait_until(lambda: svc.status()["workers"]["papad"]["depth"] >= 1, what="queued")
    finally:
        svc.request_stop()
        thread.join(30)
    # papad returns, the service restarts: the queued recording is delivered, exactly once.
    server2 = FakePapad(port=server.port)
    server2.add_user("rec", token=TOKEN, password=PASSWORD, groups=(1,))
    server2.media = server.media
    server2.files = server.files
    server2.annotations = server.annotations
    server2.start()
    svc, thread = run_service(cfg)
    try:
        wait_until(lambda: len(server2.media) == 2, what="second media delivered")
        time.sleep(1.0)
        assert len(server2.media) == 2
        names = [m["uuid"] for m in server2.media]
        assert len(set(names)) == 2
    finally:
        svc.request_stop()
        thread.join(30)
        server2.stop()
