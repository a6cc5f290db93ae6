"""Benchmark of the web page (issue 17): what it costs the service, and how fast it answers.

    python3 -m tests.bench.bench_web [--seconds 20] [--recordings 10000]

Two real `recorder run` processes side by side on the same looping file source (real time,
mock GPIO pins), one with ``[web] enabled = true`` and one without, so machine noise hits both:
- RSS and CPU of each while nobody is connected, and the wake-ups a second of each (voluntary
  context switches of all their threads): the web page's idle cost is the difference;
- the same while one client watches the live meter (Server-Sent Events, 8 updates a second);
- time to first byte of the recordings page (its HTML carries the first page of the list),
  of the list API (first page, a deep page, a search, a tag) with `--recordings` recordings
  in the catalogue (sidecars of realistic size), against a static file from the same server
  as the floor; and how long the service took to index them at its first start.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder.control import send_command
from tests.bench.appliance import cpu_seconds, rss_mb
from tests.bench.appliance import wakeups as thread_wakeups
from tests.conftest import free_port, toml_config

RATE = 48000


def wakeups(pid: int) -> int:
    """Voluntary context switches of the whole process so far."""
    return sum(thread_wakeups(pid).values())


class Service:
    def __init__(self, root: Path, name: str, clip: Path, web: dict[str, Any],
                 state: Path | None = None) -> None:
        self.root = root / name
        self.root.mkdir()
        storage = {"data_dir": str(self.root / "data"), "reserve_mb": 0}
        if state is not None:
            storage["state_dir"] = str(state)
        cfg = toml_config(self.root / "recorder.toml", {
            "device": {"id": "bench"}, "storage": storage,
            "audio": {"source": f"file:{clip}", "preroll": 3.0}, "web": web})
        self.socket = (state or self.root / "data" / "state") / "control.sock"
        env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "run"],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "log", "w"))  # noqa: SIM115

    def wait_armed(self) -> float:
        deadline = time.monotonic() + 300
        while True:
            try:
                if send_command(self.socket, "status", timeout=5)["state"] == "idle":
                    return time.monotonic() - self.started
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def measure(services: list[Service], seconds: float) -> list[dict[str, float]]:
    """CPU (% of one core), wake-ups a second and RSS of each, over the same window."""
    pids = [s.proc.pid for s in services]
    c0 = [cpu_seconds(p) for p in pids]
    w0 = [wakeups(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return [{"cpu_percent": round((cpu_seconds(p) - c) / dt * 100, 2),
             "wakeups_per_s": round((wakeups(p) - w) / dt, 1), "rss_mb": round(rss_mb(p), 1)}
            for p, c, w in zip(pids, c0, w0, strict=True)]


def watch_meter(port: int, stop: threading.Event, counted: list[int]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /api/levels/stream HTTP/1.1\r\nHost: bench\r\n\r\n")
        while not stop.is_set():
            data = sock.recv(65536)
            if not data:
                return
            counted[0] += data.count(b"data: ")


def ttfb(port: int, path: str, n: int) -> dict[str, float]:
    """Time to first byte (the status line and headers read), ms: median and p95 of `n`."""
    times = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path)
        res = conn.getresponse()
        times.append((time.perf_counter() - t0) * 1000)
        body = res.read()
        assert res.status == 200, (path, res.status, body[:200])
    conn.close()
    times.sort()
    return {"median_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}


def fill_catalogue(state: Path, count: int) -> None:
    """`count` catalogued recordings whose sidecars weigh what real one-minute ones do
    (a real sidecar with its Audio ID print is about 4 KB)."""
    from recorder.audioid.catalogue import Catalogue
    from recorder.db import Database

    rng = np.random.default_rng(17)
    words = ["lemon", "rice", "harvest", "song", "river", "ferry", "goat", "fence", "rain",
             "seed", "chutney", "story", "school", "market", "radio"]
    db = Database(state / "recorder.db")
    catalogue = Catalogue(db)
    docs = []
    for i in range(count):
        t = 1_700_000_000 + i * 3600
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
        rid = "01h" + f"{i:023d}"
        docs.append({
            "schema": "recorderpi.sidecar/1", "recording_id": rid, "device_id": "bench",
            "path": f"recordings/{time.strftime('%Y/%m/%d', time.gmtime(t))}/"
                    f"{stamp}_bench_{rid[-8:]}.ogg",
            "media_type": "audio/ogg", "codec": "vorbis", "samplerate": 48000, "channels": 1,
            "frames": 2880000, "duration": 60.0, "bytes": 560000, "sha256": f"{i:064x}",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t)),
            "clock_synced": True, "boot_id": "b", "monotonic_start": 0.0, "trigger": "button",
            "preroll": 3.0, "stop_reason": "stopped",
            "levels": {"peak_dbfs": -3.0, "rms_dbfs": -20.0, "clipped_fraction": 0.0,
                       "silent": False},
            "title": " ".join(rng.choice(words, 3)), "tags": list(rng.choice(words, 2)),
            "bookmarks": [{"at": 12.5, "label": "button"}], "recovered": False,
            "software": "recorderpi bench", "padding": "x" * 3600,  # the Audio ID print's size
        })
    for start in range(0, count, 1000):
        catalogue.add_many(docs[start:start + 1000])
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--recordings", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = root / "clip.wav"
        rng = np.random.default_rng(3)
        sf.write(clip, (rng.normal(0, 2000, RATE * 30)).astype(np.int16), RATE)
        port = free_port()
        template = root / "template"
        template.mkdir()
        fill_catalogue(template, args.recordings)
        states = {}
        for name in ("on", "off"):  # the same catalogue for both
            states[name] = root / f"state-{name}"
            shutil.copytree(template, states[name])
        on = Service(root, "on", clip, {"enabled": True, "listen": "127.0.0.1", "port": port},
                     state=states["on"])
        off = Service(root, "off", clip, {"enabled": False}, state=states["off"])
        try:
            report["start_to_armed_s"] = {"web_on": round(on.wait_armed(), 1),
                                          "web_off": round(off.wait_armed(), 1)}
            # One visit, as a volunteer would, so the page's code is loaded, then nobody.
            ttfb(port, "/recordings", 1)
            time.sleep(5)
            idle_on, idle_off = measure([on, off], args.seconds)
            report["idle_nobody_connected"] = {
                "web_on": idle_on, "web_off": idle_off,
                "extra_rss_mb": round(idle_on["rss_mb"] - idle_off["rss_mb"], 1),
                "extra_cpu_percent": round(idle_on["cpu_percent"] - idle_off["cpu_percent"], 2),
                "extra_wakeups_per_s": round(idle_on["wakeups_per_s"]
                                             - idle_off["wakeups_per_s"], 1)}
            stop, counted = threading.Event(), [0]
            watcher = threading.Thread(target=watch_meter, args=(port, stop, counted))
            watcher.start()
            time.sleep(2)
            before = counted[0]
            w_on, w_off = measure([on, off], args.seconds)
            updates = (counted[0] - before) / args.seconds
            stop.set()
            watcher.join(10)
            report["one_client_watching_the_meter"] = {
                "web_on": w_on, "web_off": w_off, "meter_updates_per_s": round(updates, 1),
                "extra_rss_mb": round(w_on["rss_mb"] - w_off["rss_mb"], 1),
                "extra_cpu_percent": round(w_on["cpu_percent"] - w_off["cpu_percent"], 2)}
            n = args.requests
            report[f"ttfb_with_{args.recordings}_recordings"] = {
                "static_file_floor": ttfb(port, "/static/style.css", n),
                "recordings_page": ttfb(port, "/recordings", n),
                "api_first_page": ttfb(port, "/api/recordings", n),
                "api_page_250": ttfb(port, "/api/recordings?page=250", n),
                "api_search": ttfb(port, "/api/recordings?q=lemon%20rice", n),
                "api_tag": ttfb(port, "/api/recordings?tag=radio", n),
                "api_status": ttfb(port, "/api/status", n),
            }
        finally:
            on.stop()
            off.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
