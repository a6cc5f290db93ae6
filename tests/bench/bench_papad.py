"""papad registration benchmark (not a test): ``python3 tests/bench/bench_papad.py``.

Against the in-process fake of current papad (token auth, real HTTP on 127.0.0.1):
1. registration latency: enqueue (what the publisher does) → the worker's delivery callback,
   which runs after papad's HTTP 200 and the outbox commit; a background worker, woken by the
   publisher as in the service; median, p95 and max over N recordings;
2. drain of a backlog (default 1,000 entries) queued while papad was down: papad comes back,
   the sleeping worker notices when its backoff ends; entries/s from papad's return to the last
   delivery, and the most requests the server ever saw at once (must not exceed the configured
   concurrency of 2).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder import sidecar as sc
from recorder.atomic import atomic_write_bytes, atomic_write_text
from recorder.config import parse_config
from recorder.papad.client import make_client
from recorder.papad.outbox import Outbox, OutboxWorker
from tests.fake_papad import FakePapad
from tests.papad_recordings import make_sidecar, ogg_bytes
from tests.papad_setup import TOKEN, write_secret


def config(root: Path, url: str, concurrency: int):
    token = write_secret(root / "token", TOKEN)
    return parse_config({
        "device": {"id": "benchdev"},
        "storage": {"data_dir": str(root / "data"), "reserve_mb": 0},
        "papad": {"api": "papad", "url": url, "token_file": str(token), "group": 1,
                  "concurrency": concurrency, "timeout": 10.0},
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


def bench_latency(root: Path, data: bytes, seconds: float, n: int) -> list[float]:
    server = FakePapad(page_size=100)
    server.add_user("rec", token=TOKEN, groups=(1,))
    server.start()
    cfg = config(root / "latency", server.url, 2)
    outbox, client = Outbox(cfg.db_path), make_client(cfg)
    done = threading.Event()
    worker = OutboxWorker(outbox, client, cfg.papad.concurrency,
                          on_delivered=lambda rid, remote: done.set())
    worker.start()
    latencies = []
    try:
        for i in range(n):
            doc, ogg = publish(cfg.device_folder, data, i, seconds, 0)
            done.clear()
            t0 = time.perf_counter()
            outbox.enqueue(doc, ogg)
            worker.wake()
            if not done.wait(30):
                raise SystemExit("registration did not complete within 30 s")
            latencies.append(time.perf_counter() - t0)
    finally:
        worker.stop()
        outbox.database.close()
        client.close()
        server.stop()
    assert len(server.media) == n
    return latencies


def bench_drain(root: Path, data: bytes, seconds: float, n: int, concurrency: int,
                bookmarks: int) -> dict:
    server = FakePapad(page_size=100)
    server.add_user("rec", token=TOKEN, groups=(1,))
    server.start()
    port = server.port
    server.stop()  # papad is down while the backlog builds
    cfg = config(root / f"drain{bookmarks}", f"http://127.0.0.1:{port}", concurrency)
    outbox, client = Outbox(cfg.db_path), make_client(cfg)
    t0 = time.perf_counter()
    for i in range(n):
        outbox.enqueue(*publish(cfg.device_folder, data, i, seconds, bookmarks))
    enqueue_rate = n / (time.perf_counter() - t0)
    delivered = []
    worker = OutboxWorker(outbox, client, concurrency, base_delay=0.5,
                          on_delivered=lambda rid, remote: delivered.append(time.perf_counter()))
    worker.start()
    time.sleep(1.0)  # the worker fails against the dead server and backs off
    server.start()  # papad returns on the same port
    t_up = time.perf_counter()
    deadline = t_up + 600
    while len(delivered) < n and time.perf_counter() < deadline:
        time.sleep(0.05)
    worker.stop()
    counts = outbox.counts()
    outbox.database.close()
    client.close()
    server.stop()
    assert counts["delivered"] == n, counts
    assert len(server.media) == n, len(server.media)
    assert len(server.annotations) == n * bookmarks
    first, last = delivered[0], max(delivered)
    return {
        "entries": n,
        "enqueue_rate": enqueue_rate,
        "first_after_up": first - t_up,
        "total": last - t_up,
        "rate_from_up": n / (last - t_up),
        "rate_steady": (n - 1) / (last - first) if n > 1 else float("nan"),
        "max_in_flight": server.max_in_flight,
        "requests": len(server.requests),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="recording length")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-papad-"))
    try:
        data = ogg_bytes(args.seconds, rate=48000)
        print(f"recording: {args.seconds:g} s OGG/Vorbis 48 kHz mono, {len(data) / 1024:.0f} KiB")
        lat = sorted(bench_latency(root, data, args.seconds, args.latency_runs))
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        print(f"registration latency (enqueue -> papad 200 -> committed), {len(lat)} runs: "
              f"median {statistics.median(lat) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
              f"max {lat[-1] * 1000:.1f} ms  [target < 1000 ms]")
        for marks in (0, 1):
            r = bench_drain(root, data, args.seconds, args.backlog, args.concurrency, marks)
            print(
                f"backlog drain, {r['entries']} entries, {marks} bookmark(s) each, "
                f"concurrency {args.concurrency}: {r['rate_from_up']:.1f} entries/s from papad's "
                f"return ({r['total']:.1f} s; first delivery {r['first_after_up']:.2f} s after "
                f"return), {r['rate_steady']:.1f} entries/s steady; max concurrent requests "
                f"{r['max_in_flight']}; {r['requests']} requests; enqueue "
                f"{r['enqueue_rate']:.0f} entries/s  [target >= 20 entries/s, <= "
                f"{args.concurrency} concurrent]"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
