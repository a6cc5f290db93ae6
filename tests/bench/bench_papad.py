"""papad registration benchmark (not a test): ``python3 tests/bench/bench_papad.py``.

The same measurements, in one run, against the real upstream papad (the papad kit's server:
Django + DRF on SQLite, 2 gunicorn workers, at ``$RECORDER_PAPAD_KIT``) and against the
in-process fake (`tests.fake_papad.FakePapad`, upstream flavour), side by side:

1. registration latency: enqueue (what the publisher does) → the worker's delivery callback,
   which runs after papad's answer and the outbox commit; a background worker, woken by the
   publisher as in the service; median, p95 and max over N recordings;
2. drain of a backlog (default 1,000 entries) queued while papad was down: papad comes back,
   the sleeping worker notices when its backoff ends; entries/s from papad's return to the last
   delivery (0 and 1 bookmark annotation per entry);
3. the existing-media lookup each delivery makes first (`find_media`: papad's server-side search
   for the recording id in the description), with the thousands of media the drains left on the
   server, beside one page (200 media) of the full listing the outbox no longer makes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder import sidecar as sc
from recorder.atomic import atomic_write_bytes, atomic_write_text
from recorder.config import parse_config
from recorder.db import Database
from recorder.papad.client import make_client
from recorder.papad.outbox import Outbox, OutboxWorker
from tests.fake_papad import FakePapad
from tests.papad_recordings import make_sidecar, ogg_bytes
from tests.papad_setup import TOKEN, write_secret


class FakeTarget:
    name = "fake"

    def __init__(self, root: Path) -> None:
        self.server = FakePapad(flavour="upstream", page_size=100)
        self.server.add_user("rec", token=TOKEN, groups=(1,))
        self.token = TOKEN

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def media_count(self) -> int:
        return len(self.server.media)


class RealTarget:
    name = "real upstream papad"

    def __init__(self, root: Path) -> None:
        from tests.papad_kit import PapadServer, kit_path

        kit = kit_path()
        if kit is None:
            raise SystemExit("the papad kit is needed: set RECORDER_PAPAD_KIT")
        self.server = PapadServer(kit, "upstream", root / "papad-upstream")
        self.started = False

    def start(self) -> None:
        self.server.start()
        self.started = True

    def stop(self) -> None:
        self.server.stop()

    @property
    def token(self) -> str:
        return self.server.token

    @property
    def url(self) -> str:
        return self.server.url

    def media_count(self) -> int:
        return self.server.get_json("/api/v1/archive/", searchFrom="my_collections",
                                    page_size=1)["count"]


def config(root: Path, target: Any, url: str, concurrency: int):
    token = write_secret(root / "token", target.token)
    return parse_config({
        "device": {"id": "benchdev"},
        "storage": {"data_dir": str(root / "data"), "reserve_mb": 0},
        "papad": {"api": "papad", "url": url, "token_file": str(token), "group": 1,
                  "concurrency": concurrency, "timeout": 30.0},
    })


def publish(folder: Path, data: bytes, index: int, seconds: float, bookmarks: int):
    from datetime import UTC, datetime, timedelta

    started = datetime(2026, 11, 28, 17, 0, tzinfo=UTC) + timedelta(seconds=index)
    doc = make_sidecar(data, device_id=folder.name, started=started, seconds=seconds,
                       bookmarks=[{"at": 1.0 + i} for i in range(bookmarks)])
    ogg = folder / doc["path"]
    atomic_write_bytes(ogg, data)
    atomic_write_text(ogg.with_suffix(".json"), sc.dumps(doc))
    return doc, ogg


def bench_latency(root: Path, target: Any, data: bytes, seconds: float, n: int) -> list[float]:
    cfg = config(root, target, target.url, 2)
    outbox, client = Outbox(Database(cfg.db_path)), make_client(cfg.papad)
    done = threading.Event()
    worker = OutboxWorker(outbox, client, cfg.papad.concurrency,
                          on_delivered=lambda rid, remote: done.set())
    worker.start()
    latencies = []
    try:
        for i in range(n):
            doc, ogg = publish(cfg.layout.device_folder, data, i, seconds, 0)
            done.clear()
            t0 = time.perf_counter()
            outbox.enqueue(doc, ogg)
            worker.wake()
            if not done.wait(60):
                raise SystemExit("registration did not complete within 60 s")
            latencies.append(time.perf_counter() - t0)
    finally:
        worker.stop()
        outbox.database.close()
        client.close()
    return latencies


def bench_drain(root: Path, target: Any, data: bytes, seconds: float, n: int,
                concurrency: int, bookmarks: int, registered: dict[str, str]) -> dict:
    before = target.media_count()
    target.stop()  # papad is down while the backlog builds
    cfg = config(root, target, target.url, concurrency)
    outbox, client = Outbox(Database(cfg.db_path)), make_client(cfg.papad)
    t0 = time.perf_counter()
    folder = cfg.layout.device_folder
    for i in range(n):
        outbox.enqueue(*publish(folder, data, 100000 * (bookmarks + 1) + i, seconds, bookmarks))
    enqueue_rate = n / (time.perf_counter() - t0)
    delivered: list[float] = []
    def done(rid: str, remote: str) -> None:
        delivered.append(time.perf_counter())
        registered[rid] = remote

    worker = OutboxWorker(outbox, client, concurrency, base_delay=0.5, max_delay=2.0,
                          on_delivered=done)
    worker.start()
    time.sleep(1.0)  # the worker fails against the dead server and backs off
    target.start()  # papad returns on the same port
    t_up = time.perf_counter()
    deadline = t_up + 1800
    while len(delivered) < n and time.perf_counter() < deadline:
        time.sleep(0.05)
    worker.stop()
    counts = outbox.counts()
    outbox.database.close()
    client.close()
    assert counts["delivered"] == n, counts
    assert target.media_count() == before + n
    first, last = delivered[0], max(delivered)
    return {"entries": n, "bookmarks": bookmarks, "enqueue_rate": round(enqueue_rate),
            "first_after_up_s": round(first - t_up, 2), "total_s": round(last - t_up, 1),
            "rate_from_up": round(n / (last - t_up), 1),
            "rate_steady": round((n - 1) / (last - first), 1) if n > 1 else None}


def bench_lookup(root: Path, target: Any, runs: int, registered: dict[str, str]) -> dict:
    """find_media for recordings the drains registered, and one listing page of 200."""
    import requests

    cfg = config(root, target, target.url, 1)
    client = make_client(cfg.papad)
    try:
        rids = random.Random(1).sample(sorted(registered), min(runs, len(registered)))
        times = []
        for rid in rids:
            t0 = time.perf_counter()
            found = client.find_media({"recording_id": rid})
            times.append(time.perf_counter() - t0)
            assert found == registered[rid], (rid, found)
    finally:
        client.close()
    t0 = time.perf_counter()
    page = requests.get(f"{target.url}/api/v1/archive/", timeout=600,
                        params={"searchFrom": "my_collections", "page_size": 200},
                        headers={"Authorization": f"Token {target.token}"})
    page_s = time.perf_counter() - t0
    assert page.status_code == 200
    return {"media": target.media_count(),
            "find_median_ms": round(statistics.median(times) * 1000, 1),
            "find_p95_ms": round(p95(times) * 1000, 1), "listing_page_s": round(page_s, 2),
            "listing_page_mb": round(len(page.content) / 1e6, 2)}


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="recording length")
    parser.add_argument("--lookups", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-papad-"))
    results: dict[str, Any] = {}
    targets = [RealTarget(root), FakeTarget(root)]
    try:
        data = ogg_bytes(args.seconds, rate=48000)
        print(f"recording: {args.seconds:g} s OGG/Vorbis 48 kHz mono, {len(data) / 1024:.0f} KiB")
        for target in targets:
            target.start()
            out: dict[str, Any] = results.setdefault(target.name, {})
            lat = bench_latency(root / target.name / "latency", target, data, args.seconds,
                                args.latency_runs)
            out["latency_ms"] = {"median": round(statistics.median(lat) * 1000, 1),
                                 "p95": round(p95(lat) * 1000, 1),
                                 "max": round(max(lat) * 1000, 1), "runs": len(lat)}
            print(f"[{target.name}] registration latency (enqueue -> papad -> committed), "
                  f"{len(lat)} runs: median {out['latency_ms']['median']} ms, "
                  f"p95 {out['latency_ms']['p95']} ms, max {out['latency_ms']['max']} ms")
            registered: dict[str, str] = {}
            for marks in (0, 1):
                r = bench_drain(root / target.name / f"drain{marks}", target, data,
                                args.seconds, args.backlog, args.concurrency, marks, registered)
                out[f"drain_{marks}_bookmark"] = r
                print(f"[{target.name}] backlog drain, {r['entries']} entries, {marks} "
                      f"bookmark(s) each, concurrency {args.concurrency}: {r['rate_from_up']} "
                      f"entries/s from papad's return ({r['total_s']} s; first delivery "
                      f"{r['first_after_up_s']} s after return), {r['rate_steady']} entries/s "
                      f"steady")
            out["lookup"] = look = bench_lookup(root / target.name / "lookup", target,
                                                args.lookups, registered)
            print(f"[{target.name}] with {look['media']} media: the lookup before each "
                  f"delivery (find_media) median {look['find_median_ms']} ms, p95 "
                  f"{look['find_p95_ms']} ms; one listing page of 200: {look['listing_page_s']} s,"
                  f" {look['listing_page_mb']} MB")
            target.stop()
        print(json.dumps(results, indent=2))
    finally:
        for target in targets:
            with contextlib.suppress(Exception):
                target.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
