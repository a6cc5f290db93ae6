"""The service registers what it records with the real papad: `recorder run` as a process (file
source, mock GPIO), driven through `recorder ctl`; the recording reaches papad once, its bookmark
as a `t=start,end` annotation; papad goes down (the real server stopped), a recording made
meanwhile waits in the outbox, the service restarts, papad returns: delivered exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.control import send_command
from recorder.errors import ServiceError
from tests.clips import RATE, tone
from tests.conftest import run_cli, terminate, wait_until


class Service:
    """`recorder run` in a subprocess, logging to a file."""

    def __init__(self, cfg_path: str, log: Path, data: Path) -> None:
        self.cfg_path = cfg_path
        self.log = log
        self.socket = data / "state" / "control.sock"
        self._fh = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorder", "--config", cfg_path, "run"],
            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
            stdout=self._fh, stderr=subprocess.STDOUT)
        wait_until(lambda: self.status().get("state") == "idle", 60, 0.1, "service armed")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        proc = run_cli("--config", self.cfg_path, "ctl", *args, timeout=30)
        assert proc.returncode == 0, (args, proc.stderr, self.log.read_text()[-2000:])
        return proc

    def status(self) -> dict:
        """The service's status over its control socket (what `recorder ctl status` asks)."""
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return send_command(self.socket, "status", timeout=15)
        except ServiceError:
            return {}

    def record(self, seconds: float, mark_after: float | None = None) -> None:
        self.ctl("start")
        if mark_after is not None:
            time.sleep(mark_after)
            self.ctl("mark")
            time.sleep(seconds - mark_after)
        else:
            time.sleep(seconds)
        self.ctl("stop")

    def stop(self) -> None:
        terminate(self.proc)
        self._fh.close()


def published(data: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(data.rglob("recordings/**/*.json"))]


def test_service_registers_once_with_bookmarks_across_papad_outage_and_restart(
        papad_fresh, config_file, tmp_path):
    papad = papad_fresh("upstream")  # stopped and started by this test: its own server
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.tile(tone(1.0, 440), 120), RATE, subtype="PCM_16")
    cfg_path, data = config_file(
        audio={"source": f"file:{clip}", "preroll": 0.5},
        papad=papad.papad_section(tmp_path, timeout=3.0, annotation_span=1.0))
    svc = Service(cfg_path, tmp_path / "service.log", data)
    try:
        svc.record(2.0, mark_after=1.0)
        wait_until(lambda: len(published(data)) == 1, 30, 0.1, "published")
        (doc,) = published(data)
        rid = doc["recording_id"]
        media = wait_until(lambda: papad.media(rid), 60, 0.2, "registered in papad")
        assert len(media) == 1
        notes = wait_until(lambda: papad.annotations(media[0]["uuid"]), 30, 0.2, "annotation")
        ogg = next(data.rglob(f"recordings/**/*{rid[-8:]}.ogg"))
        assert papad.download(media[0]["upload"]) == ogg.read_bytes()
        (note,) = notes
        (mark,) = doc["bookmarks"]
        start, end = (float(x) for x in note["media_target"].removeprefix("t=").split(","))
        # t=start,end: the mark's place in the recording (pre-roll included), 1 s long
        assert doc["preroll"] + 0.9 < mark["at"] < doc["duration"]
        assert start == round(mark["at"], 3)
        assert end == round(min(doc["duration"], mark["at"] + 1.0), 3)
        assert note["annotation_text"] == mark["label"]  # "socket": marked through ctl
        assert [t["name"] for t in note["tags"]] == ["bookmark"]
        # papad goes down (its server stopped); a recording made meanwhile waits.
        papad.stop()
        svc.record(1.0)
        wait_until(lambda: len(published(data)) == 2, 30, 0.1, "second published")
        wait_until(lambda: svc.status()["workers"]["papad"]["pending"] >= 1, 30, 0.2, "queued")
    finally:
        svc.stop()
    rid2 = next(d["recording_id"] for d in published(data) if d["recording_id"] != rid)
    listing = json.loads(run_cli("--config", cfg_path, "outbox", "list", "--json").stdout)
    waiting = next(e for e in listing["entries"] if e["recording_id"] == rid2)
    assert waiting["state"] == "pending" and "cannot connect" in waiting["last_error"]
    # papad returns, the service restarts: the queued recording is delivered, exactly once.
    papad.start()
    svc = Service(cfg_path, tmp_path / "service.log", data)
    try:
        wait_until(lambda: svc.status()["workers"]["papad"]["delivered"] == 2, 120, 0.3,
                   "second recording delivered")
    finally:
        svc.stop()
    assert len(papad.media(rid)) == 1 and len(papad.media(rid2)) == 1
    assert len(papad.all_media()) == 2
