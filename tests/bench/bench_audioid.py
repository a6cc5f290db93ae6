"""Audio ID benchmark (not a test): run ``python3 tests/bench/bench_audioid.py [--recordings N]``.

Prints, in one run:
1. fingerprinting speed in x realtime: our streaming path (PCM already in memory, what the
   recording sink does), our file path (decode + fingerprint), and `fpcalc` on the same files
   (Debian's fpcalc exits 3 on good files: it is timed anyway and its output parsed), plus the
   cost of fingerprinting relative to the pipeline's Vorbis encode of the same PCM;
2. identify latency (median, p95) for 10 s excerpts against catalogues of 1,000, 3,000 and
   N (default 10,000) recordings of 60 s: synthetic fingerprints with the bit statistics of
   real ones (per-bit bias and item-to-item persistence measured on the corpus) plus the real
   corpus recordings;
3. index size on disk;
4. recall on re-encodes and >= 10 s excerpts, and false matches on unrelated audio (other
   texts, the same texts in other voices, music, noise), against the full catalogue.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder import sidecar as sidecar_mod
from recorder.audioid import chroma
from recorder.audioid.catalogue import Catalogue
from recorder.audioid.compare import compare
from recorder.db import connect
from tests.corpus import RATE, Corpus, sidecar_for

ITEMS_60S = int(60 / chroma.ITEM_SECONDS)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


# --- 1. speed ----------------------------------------------------------------------------------


def bench_speed(c: Corpus) -> None:
    print("== fingerprinting speed (x realtime, median of 3, one process) ==")
    files = [c.speech(10 + i, v, 12) for i, v in enumerate(("en-us", "en-gb-scotland"))]
    files.append(c.music(7, 60.0))
    long = c.root / "long_speech.wav"
    if not long.exists():
        data = np.concatenate([sf.read(str(f), dtype="int16")[0] for f in files * 3])
        sf.write(str(long), data, RATE)
    files.append(long)
    fpcalc = shutil.which("fpcalc")
    for path in files:
        pcm, rate = sf.read(str(path), dtype="int16", always_2d=True)
        seconds = pcm.shape[0] / rate
        stream_t, file_t, fpcalc_t, enc_t = [], [], [], []
        for _ in range(3):
            t = time.perf_counter()
            s = chroma.StreamingFingerprinter(rate, 1)
            for i in range(0, pcm.shape[0], 1024):
                s.feed(pcm[i : i + 1024])
            ours = s.finish()
            stream_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            chroma.fingerprint_file(path)
            file_t.append(time.perf_counter() - t)
            out = Path(tempfile.mkstemp(suffix=".ogg")[1])
            t = time.perf_counter()
            with sf.SoundFile(str(out), "w", rate, 1, format="OGG", subtype="VORBIS",
                              compression_level=0.6) as snd:
                for i in range(0, pcm.shape[0], 1024):
                    snd.write(pcm[i : i + 1024])
            enc_t.append(time.perf_counter() - t)
            out.unlink()
            if fpcalc:
                t = time.perf_counter()
                proc = subprocess.run([fpcalc, "-raw", "-length", "0", str(path)],
                                      capture_output=True, text=True)
                fpcalc_t.append(time.perf_counter() - t)
        line = (f"{path.name[:38]:38s} {seconds:6.1f} s  stream {seconds / _median(stream_t):6.0f}x"
                f"  file {seconds / _median(file_t):6.0f}x")
        if fpcalc:
            raw = [ln for ln in proc.stdout.splitlines() if ln.startswith("FINGERPRINT=")]
            theirs = np.array([int(v) for v in raw[0].split("=", 1)[1].split(",")],
                              dtype=np.uint32) if raw else np.array([], dtype=np.uint32)
            ber = compare(ours.items, theirs).ber if theirs.size else float("nan")
            line += (f"  fpcalc {seconds / _median(fpcalc_t):6.0f}x (exit {proc.returncode}, "
                     f"BER vs ours {ber:.4f})")
        line += (f"  vorbis-q4 encode {seconds / _median(enc_t):5.0f}x"
                 f"  -> fingerprint = {100 * _median(stream_t) / _median(enc_t):4.1f}% of encode")
        print(line)


# --- 2. synthetic catalogue ------------------------------------------------------------------


def bit_statistics(prints: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-bit P(1) and P(bit changes from one item to the next) of real prints."""
    bits = [((p[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int8) for p in prints]
    ones = np.concatenate(bits).mean(axis=0)
    flips = np.concatenate([np.abs(np.diff(b, axis=0)) for b in bits]).mean(axis=0)
    return ones, flips


def synthetic_prints(n: int, ones: np.ndarray, flips: np.ndarray, seed: int) -> np.ndarray:
    """`n` 60 s prints from a per-bit two-state Markov chain with the measured statistics."""
    rng = np.random.default_rng(seed)
    p1 = np.clip(ones, 0.02, 0.98)
    f = np.minimum(flips, 2 * np.minimum(p1, 1 - p1) * 0.99)
    up, down = f / (2 * (1 - p1)), f / (2 * p1)  # P(0->1), P(1->0): stationary at p1
    state = rng.random((n, 32)) < p1
    out = np.zeros((n, ITEMS_60S), dtype=np.uint32)
    weights = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for i in range(ITEMS_60S):
        r = rng.random((n, 32))
        state = np.where(state, r >= down, r < up)
        out[:, i] = (state.astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32)
    return out


def synthetic_sidecar(k: int, items: np.ndarray) -> dict:
    started = 1_700_000_000.0 + 97 * k
    rid = sidecar_mod.new_recording_id(started)
    when = datetime.fromtimestamp(started, UTC)
    device = f"synth{k % 7}"
    return {
        "recording_id": rid,
        "device_id": device,
        "path": sidecar_mod.relative_path(when, sidecar_mod.recording_name(when, device, rid)),
        "sha256": hashlib.sha256(items.tobytes()).hexdigest(),
        "duration": 60.0,
        "started_at": sidecar_mod.utc_iso(started),
        "audio_id": {"algorithm": "chromaprint", "version": chroma.ALGORITHM,
                     "fingerprint": chroma.encode(items), "duration": 60.0},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recordings", type=int, default=10_000)
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "recorderpi-bench")
    args = ap.parse_args()
    c = Corpus(args.corpus / "corpus")
    bench_speed(c)

    # Real recordings: 6 speech texts (several voices) and 3 melodies.
    speech = [(t, v) for t, v in zip(range(6), ("en-us", "en-gb-scotland", "en+f3", "en-gb-x-rp",
                                                  "en-us", "en+f3"), strict=True)]
    real = {f"speech{t}": c.speech(t, v, 12) for t, v in speech}
    real |= {f"music{s}": c.music(s, 50.0) for s in (1, 2, 3)}
    real_items = {name: chroma.fingerprint_file(p).items for name, p in real.items()}
    ones, flips = bit_statistics(list(real_items.values()))

    db_dir = Path(tempfile.mkdtemp(prefix="bench-audioid-"))
    db = db_dir / "recorder.db"
    cat = Catalogue(connect(db))
    ids = {}
    for k, (name, path) in enumerate(real.items()):
        doc = sidecar_for(path, started=1_600_000_000.0 + k)
        cat.add(doc)
        ids[name] = doc["recording_id"]

    # Queries: 10 s excerpts of the real recordings, re-encoded.
    queries = []
    for name, path in real.items():
        for start, kw in ((3.3, {"codec": "opus", "quality": 24, "snr_db": 20}),
                          (17.71, {"codec": "vorbis", "quality": 2}),
                          (29.05, {"codec": "opus", "quality": 48, "gain_db": -9})):
            q = c.variant(path, start=start, length=10.0, **kw)
            queries.append((name, start, chroma.fingerprint_file(q).items))

    print(f"\n== identify latency, 10 s excerpts ({len(queries)} queries x 3 rounds) ==")
    sizes = sorted({s for s in (1000, 3000, args.recordings) if s <= args.recordings})
    made = 0
    for size in sizes:
        t = time.perf_counter()
        while made < size:
            batch = min(500, size - made)
            prints = synthetic_prints(batch, ones, flips, seed=made)
            cat.add_many([synthetic_sidecar(made + i, prints[i]) for i in range(batch)])
            made += batch
        build = time.perf_counter() - t
        lat = []
        for _ in range(3):
            for _, _, q in queries:
                t = time.perf_counter()
                cat.identify(q)
                lat.append(1000 * (time.perf_counter() - t))
        rows = cat.conn.execute("SELECT COUNT(*) FROM audioid_index").fetchone()[0]
        print(f"{cat.count():6d} recordings ({rows:,} index rows, built +{build:5.1f} s): "
              f"median {_median(lat):5.1f} ms, p95 {_p95(lat):5.1f} ms")

    cat.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_db = sum(f.stat().st_size for f in db_dir.iterdir())
    pages = {r[0]: r[1] for r in cat.conn.execute(
        "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")} if _has_dbstat(cat) else {}
    print("\n== index size on disk ==")
    print(f"database {size_db / 1e6:.1f} MB for {cat.count()} recordings "
          f"({size_db / cat.count() / 1024:.1f} KiB per recording)")
    for name, size in sorted(pages.items(), key=lambda x: -x[1])[:4]:
        print(f"  {name}: {size / 1e6:.1f} MB")

    print(f"\n== recall and false matches against {cat.count()} recordings ==")
    hits, total, failures = 0, 0, []
    variants = []
    for name, path in real.items():
        for kw in ({"codec": "vorbis", "quality": 1}, {"codec": "vorbis", "quality": 6},
                   {"codec": "opus", "quality": 24}, {"codec": "opus", "quality": 64},
                   {"codec": "opus", "quality": 32, "gain_db": -12, "snr_db": 20}):
            variants.append((name, 0.0, c.variant(path, **kw)))
        for start, length, kw in ((5.55, 10, {"codec": "opus", "quality": 24, "snr_db": 15}),
                                  (21.3, 15, {"codec": "vorbis", "quality": 1, "gain_db": 6}),
                                  (11.0, 10, {"codec": "opus", "quality": 32, "snr_db": 10})):
            variants.append((name, start, c.variant(path, start=start, length=length, **kw)))
    for name, start, path in variants:
        total += 1
        res = cat.identify(chroma.fingerprint_file(path).items, limit=1)
        if res and res[0].recording_id == ids[name] and abs(res[0].offset_seconds - start) <= 0.2:
            hits += 1
        else:
            failures.append(path.name)
    print(f"recall {hits}/{total} = {hits / total:.3f} (re-encodes and excerpts >= 10 s, "
          f"right source and offset within 0.2 s)")
    for f in failures:
        print(f"  missed: {f}")
    unrelated = [c.speech(t, v, 12) for t, v in ((20, "en-us"), (21, "en+f3"), (22, "en-gb-x-rp"),
                                                (23, "en-gb-scotland"))]
    unrelated += [c.speech(t, v, 12) for t, v in ((0, "en+f3"), (1, "en-us"), (2, "en-gb-x-rp"),
                                                 (3, "en-gb-scotland"))]  # same text, other voice
    unrelated += [c.music(s, 30.0) for s in (11, 12)]
    unrelated += [c.noise(s, 30.0, col) for s, col in ((5, "pink"), (6, "white"))]
    unrelated += [c.variant(u, start=8, length=10) for u in unrelated[:4]]
    false = 0
    worst = 0.5
    for path in unrelated:
        items = chroma.fingerprint_file(path).items
        if cat.identify(items):
            false += 1
            print(f"  false match: {path.name}")
        for ref in real_items.values():
            worst = min(worst, compare(items, ref).ber)
    print(f"false matches {false}/{len(unrelated)} = {false / len(unrelated):.3f} "
          f"(closest unrelated BER to any real recording: {worst:.3f})")
    worst_true = max(compare(chroma.fingerprint_file(p).items, real_items[n]).ber
                     for n, _, p in variants)
    print(f"worst genuine BER {worst_true:.3f}; threshold {cat.threshold}")
    cat.conn.close()
    shutil.rmtree(db_dir)
    return 0


def _has_dbstat(cat: Catalogue) -> bool:
    try:
        cat.conn.execute("SELECT 1 FROM dbstat LIMIT 1")
        return True
    except Exception:
        return False


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
