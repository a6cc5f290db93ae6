"""Mesh benchmark (not a test): ``python3 tests/bench/bench_mesh.py [--runs 10]``.

1. Latency from "stop" on device a to "registered in b's papad": two real Syncthing 1.19
   instances on 127.0.0.1, each device with its own in-process papad, outbox worker and bridge
   (as `recorder run` has them); a records a short clip through the real pipeline (file
   source); the clock starts when a's recording is stopped and ends when b's papad holds the
   media. Median and p95, with the publisher's scan hand-off, and with the watcher alone
   (hand-off removed, Syncthing's default watcher delay of 10 s).
2. Bridge CPU while idle with 1,000 peer recordings present: sidecars and small OGGs are
   synthesised in a peer folder, imported once, then the bridge runs its periodic full scan and
   the process CPU time is measured over a wall-clock window.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder import app
from recorder.config import SourceSpec, parse_config
from recorder.mesh import provision
from tests.clips import speech
from tests.mesh_devices import Device
from tests.papad_recordings import make_recording, ogg_bytes
from tests.syncthing_harness import SyncthingCluster

WATCHER_DELAY = 10  # Syncthing's default fsWatcherDelayS


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def latency(base: Path, runs: int, watcher_runs: int) -> None:
    base.mkdir(parents=True, exist_ok=True)
    wav = base / "clip.wav"
    speech(wav, "Bring the goats in before dark; the new fence is not finished yet. ")
    with SyncthingCluster(2, base / "st") as cluster:
        a, b = cluster
        for me in cluster:
            for peer in cluster:
                if peer is not me:
                    cfg = me.config(watcher_delay=WATCHER_DELAY)
                    provision.add_peer(cfg, me.client, peer.device_id, peer.name, peer.address,
                                       peer_recorder_id=peer.recorder_id)
        cluster.wait_connected()
        da, db_ = Device(a, export_interval=300), Device(b, export_interval=300)
        try:
            da.start()
            db_.start()
            for mode, n in (("scan hand-off", runs), ("watcher alone", watcher_runs)):
                if mode == "watcher alone":
                    pub = da.assembly.publisher
                    pub.listeners = [h for h in pub.listeners
                                     if not isinstance(h, app.ScanHandOff)]
                times = []
                for _ in range(n):
                    times.append(_one(da, db_, wav))
                print(f"{mode:14s}: n={n} median {statistics.median(times):6.2f} s  "
                      f"p95 {_p95(times):6.2f} s  min {min(times):.2f}  max {max(times):.2f}",
                      flush=True)
        finally:
            da.stop()
            db_.stop()


def _one(da: Device, db_: Device, wav: Path) -> float:
    assert da.assembly is not None
    pump = app.build_pump(da.assembly, da.cfg.audio, source=SourceSpec.parse(f"file:{wav}"),
                          realtime=True)
    try:
        handle = pump.start_recording("bench")
        pump.start()
        time.sleep(1.0)
        stopped = time.monotonic()
        pump.stop_recording()
        rid = handle.done.result(timeout=60).sidecar["recording_id"]
    finally:
        pump.close()
    deadline = stopped + 120
    while db_.media_id(rid) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{rid} not registered on b within 120 s")
        time.sleep(0.01)
    return time.monotonic() - stopped


def idle_cpu(base: Path, count: int, window: float, rescan: float) -> None:
    cfg = parse_config({
        "device": {"id": "benchdev"},
        "storage": {"data_dir": str(base / "data"), "reserve_mb": 0},
        "mesh": {"rescan_interval": rescan},
    })
    peer = cfg.storage.sync_root / "dev-peer"
    data = ogg_bytes(0.2, 440)
    t0 = time.monotonic()
    for i in range(count):
        make_recording(peer, index=i, data=data)
    print(f"synthesised {count} peer recordings in {time.monotonic() - t0:.1f} s")
    bridge = app.assemble(cfg, service=True, radio=False, bridge=True).bridge
    assert bridge is not None
    t0, c0 = time.monotonic(), time.process_time()
    report = bridge.run_once()
    print(f"first import: {report.imported} imported in {time.monotonic() - t0:.2f} s "
          f"({time.process_time() - c0:.2f} s CPU)")
    t0, c0 = time.monotonic(), time.process_time()
    report = bridge.run_once()
    print(f"one full rescan of {report.unchanged} unchanged files: "
          f"{(time.monotonic() - t0) * 1000:.1f} ms wall, "
          f"{(time.process_time() - c0) * 1000:.1f} ms CPU")
    bridge.start()
    time.sleep(1.0)  # let the start-up scan pass
    t0, c0 = time.monotonic(), time.process_time()
    time.sleep(window)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    bridge.close()
    print(f"idle, rescan every {rescan:g} s, {count} peer recordings: "
          f"{100 * cpu / wall:.3f}% of a core over {wall:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="recordings with the hand-off")
    parser.add_argument("--watcher-runs", type=int, default=5, help="recordings, watcher only")
    parser.add_argument("--count", type=int, default=1000, help="peer recordings for idle CPU")
    parser.add_argument("--window", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        base = Path(tmp)
        if not args.skip_latency:
            latency(base / "latency", args.runs, args.watcher_runs)
        for rescan in (60.0, 5.0):
            idle_cpu(base / f"idle-{rescan:g}", args.count, args.window, rescan)


if __name__ == "__main__":
    main()
