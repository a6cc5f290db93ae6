"""Annotations and one-off recordings move on events, not on timers.

- A peer's annotation export is imported when Syncthing's event says it arrived: both devices
  run with an hour-long rescan and export interval, so only events and hand-offs can move it.
  The export itself is triggered by the outbox delivering a recording to papad.
- ``recorder record`` run while the service runs hands its recording to the service, which
  delivers it to papad at once instead of at its outbox's idle poll (60 s).

papad here is tests/fake_papad.py, as in the other mesh tests.
"""

from __future__ import annotations

import json
import threading

from gpiozero.pins.mock import MockFactory

from recorder.app import service_wiring
from recorder.config import load_config
from recorder.daemon import Service
from tests.clips import tone, write_wav
from tests.conftest import run_cli, wait_until
from tests.fake_papad import FakePapad
from tests.mesh_devices import Device
from tests.papad_setup import TOKEN, write_secret
from tests.syncthing_harness import SyncthingCluster

HOUR = 3600.0
DEADLINE = 45.0  # generous, and still far below every interval in play (an hour, 60 s)


def test_peer_annotation_is_exported_on_delivery_and_imported_on_event(tmp_path):
    clips = {name: write_wav(tmp_path / f"{name}.wav", tone(2.0, freq))
             for name, freq in (("one", 440.0), ("two", 660.0))}
    with SyncthingCluster(2, tmp_path / "st") as cluster:
        a_inst, b_inst = cluster
        cluster.pair_all()
        a = Device(a_inst, export_interval=HOUR, rescan_interval=HOUR)
        b = Device(b_inst, export_interval=HOUR, rescan_interval=HOUR)
        try:
            a.start()
            b.start()
            first = a.record(clips["one"], seconds=1.5).sidecar["recording_id"]
            wait_until(lambda: b.media_id(first) is not None, DEADLINE, 0.1,
                       "a's recording registered on b (bridge event)")
            b.papad.add_annotation(b.media_id(first), "The river song", "t=0,1", ("song",))
            # b delivers its own new recording: that delivery triggers b's export.
            b.record(clips["two"], seconds=1.5)

            def on_a() -> list:
                return [x for _, x, tags in a.annotations(first)
                        if x == "The river song" and "origin:dev-b" in tags]

            wait_until(on_a, DEADLINE, 0.1, "b's annotation in a's papad")
            export = json.loads((b.cfg.layout.device_folder / "papad/annotations.json").read_text())
            assert [e["text"] for e in export["annotations"]] == ["The river song"]
        finally:
            a.stop()
            b.stop()


def test_record_hands_its_recording_to_the_running_service(tmp_path):
    server = FakePapad()
    server.add_user("rec", token=TOKEN, groups=(1,))
    server.start()
    clip = write_wav(tmp_path / "clip.wav", tone(1.0))
    token = write_secret(tmp_path / "papad.token", TOKEN)
    path = tmp_path / "recorder.toml"
    path.write_text(
        f'[device]\nid = "handoff"\n[storage]\ndata_dir = "{tmp_path}/data"\nreserve_mb = 0\n'
        f'[audio]\nsource = "file:{clip}"\npreroll = 0.0\n'
        f'[papad]\napi = "papad"\nurl = "{server.url}"\ntoken_file = "{token}"\n'
        'timeout = 5.0\n')
    svc = Service(service_wiring(load_config(path)), pin_factory=MockFactory())
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: svc.state == "idle", 30, 0.05, "service armed")
        res = run_cli("--config", str(path), "record", "--fast", "--seconds", "0.5", "--json",
                      timeout=60)
        assert res.returncode == 0, res.stderr
        rid = json.loads(res.stdout)["recording_id"]
        wait_until(lambda: any(rid in json.dumps(m) for m in server.media), DEADLINE, 0.05,
                   "the one-off recording in papad, delivered by the service")
    finally:
        svc.request_stop()
        thread.join(30)
        server.stop()
