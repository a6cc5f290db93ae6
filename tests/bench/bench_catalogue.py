"""Benchmark of a big catalogue (issue 16): what 10,000 recordings cost the service.

    python3 -m tests.bench.bench_catalogue [--recordings 10000]

Builds a catalogue of `--recordings` one-minute recordings (random sub-fingerprints, every
recording's audio file present, empty) in a fresh database, then prints:
- the RSS a playlist update adds to a fresh process: the station playlist from the catalogue
  as the service rebuilds it after each publish (`radio.playlist.catalogue_records`, newest
  `playlist_length` only), beside reading every catalogued sidecar as it did before;
- identify latency of a 10 s excerpt, median and p95 of 50 queries;
- the cost of cataloguing a new recording while publishing (`Catalogue.add` with
  `defer_index`, before the files are visible) and of its index postings afterwards
  (`index_pending`), for 1, 10 and 60 minutes of audio: the first must not grow with length.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from recorder import sidecar as sidecar_mod
from recorder.audioid import chroma
from recorder.audioid.catalogue import Catalogue
from recorder.db import Database

ITEMS_PER_MINUTE = int(60 / chroma.ITEM_SECONDS)

# Run in a fresh interpreter: VmHWM before and after one playlist update, the old way or new.
_PROBE = """
import json, sys
from pathlib import Path
from recorder.audioid.catalogue import Catalogue
from recorder.config import parse_config
from recorder.db import Database
from recorder.radio import playlist
from recorder.app import radio_settings

def hwm():
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

root, mode = Path(sys.argv[1]), sys.argv[2]
cfg = parse_config({"device": {"id": "synth0"},
                    "storage": {"data_dir": str(root), "reserve_mb": 0}})
catalogue = Catalogue(Database(cfg.db_path))
catalogue.count()
before = hwm()
if mode == "all-sidecars":  # what the service did before: every row's whole sidecar
    records = [r for r in catalogue.records()
               if (cfg.storage.sync_root / r["device_id"] / r["path"]).is_file()]
else:
    records = playlist.catalogue_records(catalogue, cfg.storage.sync_root,
                                         cfg.radio.playlist_length)
playlist.write_playlist(radio_settings(cfg), records)
print(json.dumps({"rss_added_mb": round(hwm() - before, 1), "peak_rss_mb": round(hwm(), 1)}))
"""


def sidecar(k: int, items: np.ndarray, minutes: float = 1.0) -> dict:
    started = 1_700_000_000.0 + 97 * k
    rid = sidecar_mod.new_recording_id(started)
    when = datetime.fromtimestamp(started, UTC)
    device = f"synth{k % 7}"
    return {
        "recording_id": rid, "device_id": device, "title": f"recording {k}",
        "path": sidecar_mod.relative_path(when, sidecar_mod.recording_name(when, device, rid)),
        "sha256": hashlib.sha256(items.tobytes()).hexdigest(),
        "duration": 60.0 * minutes, "started_at": sidecar_mod.utc_iso(started),
        "audio_id": {"algorithm": "chromaprint", "version": chroma.ALGORITHM,
                     "fingerprint": chroma.encode(items), "duration": 60.0 * minutes},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        root = Path(tmp)
        sync = root / "sync"
        catalogue = Catalogue(Database(root / "state" / "recorder.db"))
        stored: list[np.ndarray] = []
        t0 = time.perf_counter()
        for start in range(0, args.recordings, 500):
            batch = []
            for k in range(start, min(args.recordings, start + 500)):
                items = rng.integers(0, 2**32, ITEMS_PER_MINUTE, dtype=np.uint32)
                if k % 200 == 0:
                    stored.append(items)
                doc = sidecar(k, items)
                batch.append(doc)
                audio = sync / doc["device_id"] / doc["path"]
                audio.parent.mkdir(parents=True, exist_ok=True)
                audio.touch()
            catalogue.add_many(batch)
        build = time.perf_counter() - t0
        memory = {}
        for mode in ("all-sidecars", "newest"):
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(root), mode],
                                  capture_output=True, text=True, timeout=600, check=True)
            memory[mode] = json.loads(proc.stdout)
        latencies = []
        for q in range(50):
            items = stored[q % len(stored)]
            at = int(rng.integers(0, items.size - 81))
            t = time.perf_counter()
            found = catalogue.identify(items[at : at + 81])
            latencies.append(time.perf_counter() - t)
            assert found, "an exact excerpt must be found"
        publish = {}
        for minutes in (1, 10, 60):
            adds, postings = [], []
            for rep in range(3):
                items = rng.integers(0, 2**32, ITEMS_PER_MINUTE * minutes, dtype=np.uint32)
                doc = sidecar(args.recordings + 10 * minutes + rep, items, minutes)
                t = time.perf_counter()
                catalogue.add(doc, defer_index=True)
                adds.append(time.perf_counter() - t)
                t = time.perf_counter()
                catalogue.index_pending()
                postings.append(time.perf_counter() - t)
            publish[f"{minutes}min"] = {
                "add_before_visible_ms": round(statistics.median(adds) * 1000, 1),
                "index_postings_after_ms": round(statistics.median(postings) * 1000, 1)}
    latencies.sort()
    print(json.dumps({
        "recordings": args.recordings,
        "build_s": round(build, 1),
        "playlist_update_rss": memory,
        "identify_10s_ms": {"median": round(statistics.median(latencies) * 1000, 1),
                            "p95": round(latencies[int(0.95 * len(latencies))] * 1000, 1)},
        "catalogue_add_while_publishing": publish,
    }, indent=2))


if __name__ == "__main__":
    main()
