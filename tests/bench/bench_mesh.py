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
3. Pairing: a 5-device mesh formed with ``recorder mesh invite`` / ``join`` (real CLI
   processes; each device runs the service's mesh keeper): commands typed and time from the
   first command to the full mesh (every device connected to every other, folder types and
   sharing right), for one 4-use invite on A and for a chain (each new device invited by the
   one before).
4. An annotation made in B's papad to A's papad (median, p95), with B's export interval at
   5 s (papad has no events, so B looks every `export_interval` s), and with B exporting at
   once (what a delivery or bookmark triggers): the transport and event-driven import alone.
5. A silently cut link (``ip link set lan0 down`` in a network namespace, tests/netns.py; needs
   root) seen as down: by Syncthing alone, and by the service's probe (``[mesh]
   probe_interval``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from typing import Any

from recorder import app
from recorder.config import SourceSpec, parse_config
from recorder.mesh.exchange.handoff import ScanHandOff
from recorder.mesh.membership import provision
from recorder.mesh.membership.keeper import MeshKeeper
from tests.clips import speech
from tests.mesh_devices import Device
from tests.papad_recordings import make_recording, ogg_bytes
from tests.syncthing_harness import Instance, SyncthingCluster

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
                    provision.Provisioner(cfg.layout, me.client, cfg.syncthing).add_peer(
                        peer.device_id, peer.name, peer.address,
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
                                     if not isinstance(h, ScanHandOff)]
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
    bridge = app.assemble(cfg, app.Role.BRIDGE).bridge
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
    bridge.stop()
    print(f"idle, rescan every {rescan:g} s, {count} peer recordings: "
          f"{100 * cpu / wall:.3f}% of a core over {wall:.0f} s")


def _keeper(inst: Instance) -> MeshKeeper:
    from tests.test_mesh_pairing import _keeper as start_keeper

    return start_keeper(inst)


def pairing(base: Path, n: int = 5) -> None:
    from tests.test_mesh_pairing import _full_mesh, _invite, _join

    for mode in ("one invite", "chain"):
        with SyncthingCluster(n, base / mode.replace(" ", "-")) as cluster:
            devices = list(cluster)
            keepers = [_keeper(i) for i in devices]
            try:
                commands = 0
                t0 = time.monotonic()
                if mode == "one invite":
                    code = _invite(devices[0], "--uses", str(n - 1))
                    commands += 1
                    for joiner in devices[1:]:
                        assert _join(joiner, code).returncode == 0
                        commands += 1
                else:
                    for inviter, joiner in itertools.pairwise(devices):
                        code = _invite(inviter)
                        assert _join(joiner, code).returncode == 0
                        commands += 2
                joined = time.monotonic() - t0
                while not _full_mesh(devices):
                    if time.monotonic() - t0 > 300:
                        raise RuntimeError("no full mesh within 300 s")
                    time.sleep(0.1)
                full = time.monotonic() - t0
                print(f"pairing {n} devices, {mode:10s}: {commands} commands, last join "
                      f"accepted after {joined:5.1f} s, full mesh after {full:5.1f} s",
                      flush=True)
            finally:
                for k in keepers:
                    k.stop()


def annotations(base: Path, runs: int, export_interval: float = 5.0) -> None:
    base.mkdir(parents=True, exist_ok=True)
    wav = base / "clip.wav"
    speech(wav, "The water tank on the hill is full again. ")
    with SyncthingCluster(2, base / "st") as cluster:
        cluster.pair_all()
        a, b = (Device(i, export_interval=export_interval, rescan_interval=3600)
                for i in cluster)
        try:
            a.start()
            b.start()
            rid = _record(a, wav)
            deadline = time.monotonic() + 120
            while b.media_id(rid) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("a's recording never reached b's papad")
                time.sleep(0.05)
            for mode in (f"B exports every {export_interval:g} s", "B exports at once"):
                times = []
                for i in range(runs):
                    text = f"note {mode} {i}"
                    time.sleep(0.37 * (i % 7))  # spread over B's export interval
                    t0 = time.monotonic()
                    b.papad.add_annotation(b.media_id(rid), text, "t=0,1", ("bench",))
                    if mode == "B exports at once":
                        assert b.bridge is not None
                        b.bridge.export_soon()
                    while not any(x == text for _, x, _ in a.annotations(rid)):
                        if time.monotonic() - t0 > 120:
                            raise RuntimeError("annotation never reached a")
                        time.sleep(0.01)
                    times.append(time.monotonic() - t0)
                print(f"annotation on B -> A's papad, {mode:22s}: n={runs} median "
                      f"{statistics.median(times):5.2f} s  p95 {_p95(times):5.2f} s  max "
                      f"{max(times):5.2f}", flush=True)
        finally:
            a.stop()
            b.stop()


def _record(dev: Device, wav: Path) -> str:
    return dev.record(wav, seconds=1.5).sidecar["recording_id"]


def cut_link(base: Path, runs: int, syncthing_cap: float) -> None:
    import os

    from recorder.config import parse_config
    from tests.netns import NetLab
    from tests.test_mesh_pairing import make_keeper

    if os.geteuid() != 0:
        print("cut link: skipped (network namespaces need root)")
        return
    with NetLab(base) as lab:
        lan = lab.lan("lan")
        a, b = lab.node("a", lan), lab.node("b", lan)
        for node in (a, b):
            node.start_yggdrasil()
            node.start_syncthing()
            node.exec("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647")
        for me, other in ((a, b), (b, a)):
            st = me.syncthing
            provision.Provisioner(st.cfg.layout, st.client, st.cfg.syncthing).add_peer(
                other.syncthing.device_id, other.short, other.sync_address,
                peer_recorder_id=other.syncthing.recorder_id)

        def connected() -> bool:
            return a.syncthing.connected_to(b.syncthing)

        def seen_down(probe: float | None, cap: float) -> float | None:
            while not connected():
                time.sleep(0.1)
            time.sleep(2.0)
            keeper = None
            if probe is not None:
                inst = a.syncthing
                cfg = parse_config({**_sections(inst), "mesh": {"probe_interval": probe,
                                                                "degraded_after": 0}})
                # The probe must leave from a's namespace: run it there.
                keeper = make_keeper(cfg, inst.client,
                                     ping=lambda host, t: _ping_in(a, host, t))
                keeper.start()
                time.sleep(1.0)
            b.cut()
            t0 = time.monotonic()
            try:
                while connected() or (keeper is not None and not keeper.degraded):
                    if time.monotonic() - t0 > cap:
                        return None
                    time.sleep(0.05)
                return time.monotonic() - t0
            finally:
                b.restore()
                if keeper is not None:
                    keeper.stop()

        if syncthing_cap > 0:
            took = seen_down(None, syncthing_cap)
            shown = f"> {syncthing_cap:.0f} s" if took is None else f"{took:.1f} s"
            print(f"cut link seen down by Syncthing alone: {shown}", flush=True)
        for probe in (10.0, 2.0):
            got = [seen_down(probe, 120) for _ in range(runs)]
            times = [t for t in got if t is not None]
            print(f"cut link seen down with the service's probe every {probe:g} s: n={runs} "
                  f"median {statistics.median(times):5.1f} s  max {max(times):5.1f} s; "
                  f"not seen within 120 s: {runs - len(times)}  "
                  f"({', '.join('-' if t is None else f'{t:.1f}' for t in got)})", flush=True)


def _sections(inst: Instance) -> dict:
    from tests.test_mesh_pairing import _sections as sections

    return sections(inst)


def _ping_in(node: Any, host: str, timeout: float) -> bool:
    """The service's ICMP probe, run inside `node`'s namespace (the bench runs outside it)."""
    code = ("import sys; from recorder.mesh.membership.health import icmp_ping; "
            f"sys.exit(0 if icmp_ping({host!r}, {timeout!r}) else 1)")
    res = node.exec(sys.executable, "-c", code, timeout=timeout + 20, check=False)
    return res.returncode == 0


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # the keepers' warnings are not the figures
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="recordings with the hand-off")
    parser.add_argument("--watcher-runs", type=int, default=5, help="recordings, watcher only")
    parser.add_argument("--count", type=int, default=1000, help="peer recordings for idle CPU")
    parser.add_argument("--window", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--only", choices=("latency", "idle", "pairing", "annotations", "cut"),
                        action="append", help="run only these parts (repeatable)")
    parser.add_argument("--annotation-runs", type=int, default=10)
    parser.add_argument("--cut-runs", type=int, default=3)
    parser.add_argument("--syncthing-cap", type=float, default=330.0,
                        help="seconds to wait for Syncthing alone to see a cut link (0: skip)")
    args = parser.parse_args()
    only = set(args.only or ("latency", "idle", "pairing", "annotations", "cut"))
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        base = Path(tmp)
        if "latency" in only and not args.skip_latency:
            latency(base / "latency", args.runs, args.watcher_runs)
        if "idle" in only:
            for rescan in (60.0, 5.0):
                idle_cpu(base / f"idle-{rescan:g}", args.count, args.window, rescan)
        if "pairing" in only:
            pairing(base / "pairing")
        if "annotations" in only:
            annotations(base / "annotations", args.annotation_runs)
        if "cut" in only:
            cut_link(base / "cut", args.cut_runs, args.syncthing_cap)


if __name__ == "__main__":
    main()
