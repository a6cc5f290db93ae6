"""Audio ID through the air (issue 26): recall per degradation, false matches, identify time at
10,000 and 100,000 recordings, catalogue size per hour, CPU added to a recording.

    python3 -m tests.bench.bench_airid [--real 800] [--pad 10000] [--pad 100000]

1. A catalogue of `--real` generated recordings, 30 s each: espeak-ng speech of pseudo-word
   texts (random syllables: no two texts share a word) in eight voices, melodies
   (`tests.corpus.Corpus.music`) and noise; each catalogued with its Chromaprint Audio ID and
   its landmarks, as a published recording is.
2. Genuine queries: 10 s excerpts of catalogued recordings at two offsets, degraded with sox
   the way the air degrades them (see DEGRADATIONS). A query is found when the first answer is
   its recording at its offset within 0.5 s. Recall is given for Chromaprint alone and for
   `recorder identify` (Chromaprint, then landmarks).
3. Unrelated queries: the same degradations (and none) of audio never catalogued (other
   pseudo-word texts, other melodies, other noise): every answer is a false match. The best
   landmark alignment of each (whether or not it passed) gives the margin to the threshold.
4. The catalogue is then padded to each `--pad` size with one-minute recordings whose landmarks
   are drawn at random from the real ones' keys (same key frequencies, so the same lookups and
   chance hits per key as real audio, without the hours of synthesis), the unrelated queries
   are run again (false matches at that size) and identify is timed (median, p95).

Everything generated is cached in ~/.cache/recorderpi-bench/airid (a few hundred MB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder.audioid import landmark_index as lx
from recorder.audioid import landmarks as lm
from recorder.audioid.catalogue import Catalogue
from recorder.audioid.chroma import fingerprint_file
from recorder.audioid.identify import identify_file
from recorder.db import Database, transaction
from tests.corpus import Corpus, sidecar_for

CACHE = Path(os.environ.get("AIRID_CACHE", Path.home() / ".cache/recorderpi-bench/airid"))
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en+f3", "en+m3", "en-029",
          "en-gb-x-gbclan")
SECONDS = 30
EXCERPT = 10.0

# name -> sox effects (None: built in code). Noise is pink, at the SNR named.
DEGRADATIONS: dict[str, list[str] | None] = {
    "band 200-3500 + reverb + noise 15 dB": ["sinc", "200-3500", "reverb", "50", "50", "60"],
    "reverb, small room": ["reverb", "40", "50", "30", "100", "5"],
    "reverb, hall": ["reverb", "90", "50", "100", "100", "20"],
    "noise 10 dB": [],
    "noise 5 dB": [],
    "noise 0 dB": [],
    "speed 0.97": ["speed", "0.97"],
    "speed 0.98": ["speed", "0.98"],
    "speed 1.02": ["speed", "1.02"],
    "speed 1.03": ["speed", "1.03"],
    "phone 8 kHz 300-3400 + Opus 12 kbit/s": None,
}
SNR = {"band 200-3500 + reverb + noise 15 dB": 15.0, "noise 10 dB": 10.0, "noise 5 dB": 5.0,
       "noise 0 dB": 0.0}

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def pseudo_text(index: int, words: int = 90) -> str:
    """Text `index`: pseudo-words of 1-3 random syllables (no two texts share speech)."""
    rng = random.Random(7919 * index + 1)
    out = []
    for w in range(words):
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        out.append(word + ("." if w % 9 == 8 else ""))
    return " ".join(out)


def speech(index: int, voice: str) -> Path:
    out = CACHE / "src" / f"speech_{index}_{voice.replace('+', '_')}.wav"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        raw = out.with_suffix(".raw.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(raw),
                        pseudo_text(index)], check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(out),
                        "trim", "0", str(SECONDS)], check=True, capture_output=True)
        raw.unlink()
    return out


def source(kind: str, index: int, corpus: Corpus) -> Path:
    if kind == "speech":
        return speech(index, VOICES[index % len(VOICES)])
    if kind == "music":
        return corpus.music(index, SECONDS)
    return corpus.noise(index, SECONDS, "pink" if index % 2 else "white")


def degrade(src: Path, start: float, name: str, work: Path) -> Path:
    """A 10 s excerpt of `src` from `start`, degraded as `name` (cached)."""
    safe = "".join(c if c.isalnum() else "_" for c in name)
    out = CACHE / "q" / f"{src.stem}_{start:g}_{safe}.wav"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    data, rate = sf.read(str(src), dtype="float64")
    cut = data[int(start * rate) : int((start + EXCERPT) * rate)]
    tmp_in, tmp_out = work / "in.wav", work / "out.wav"
    sf.write(str(tmp_in), cut * 0.5, rate, subtype="PCM_16")
    effects = DEGRADATIONS[name]
    if effects is None:
        narrow, opus = work / "n.wav", work / "p.opus"
        subprocess.run(["sox", str(tmp_in), "-r", "8000", str(narrow), "sinc", "300-3400"],
                       check=True, capture_output=True)
        subprocess.run(["opusenc", "--quiet", "--bitrate", "12", str(narrow), str(opus)],
                       check=True, capture_output=True)
        subprocess.run(["opusdec", "--quiet", "--rate", "8000", str(opus), str(tmp_out)],
                       check=True, capture_output=True)
    elif effects:
        subprocess.run(["sox", str(tmp_in), str(tmp_out), *effects], check=True,
                       capture_output=True)
    else:
        shutil.copy(tmp_in, tmp_out)
    result, rate = sf.read(str(tmp_out), dtype="float64")
    if name in SNR:
        rng = np.random.default_rng(zlib.crc32(out.name.encode()))
        white = rng.normal(0, 1, result.size)
        spec = np.fft.rfft(white)
        spec[1:] /= np.sqrt(np.arange(1, spec.size))
        pink = np.fft.irfft(spec, n=white.size)
        power = np.mean(result**2) or 1e-12
        pink *= np.sqrt(power / 10 ** (SNR[name] / 10) / np.mean(pink**2))
        result = result + pink
    peak = np.max(np.abs(result)) or 1.0
    sf.write(str(out), result / peak * 0.7, rate, subtype="PCM_16")
    return out


def landmarks_of(path: Path, fan: int = lm.FAN) -> tuple[Any, lm.Landmarks]:
    finder = lm.PeakFinder()
    fp = fingerprint_file(path, tap=finder.feed)
    return fp, lm.triplets(finder.finish(), fan=fan)


def build_real(catalogue: Catalogue, sources: list[Path], root: Path) -> list[dict[str, Any]]:
    docs = []
    for i, src in enumerate(sources):
        fp, marks = landmarks_of(src)
        doc = sidecar_for(src, device_id="benchdev", started=1_780_000_000.0 + 60 * i,
                          fingerprint=fp.audio_id())
        catalogue.add(doc, landmarks=marks)
        docs.append(doc)
    return docs


def pad(catalogue: Catalogue, total: int, pool: np.ndarray, seconds: float = 60.0) -> None:
    """Add synthetic `seconds`-long recordings until the catalogue holds `total`: their
    postings' keys drawn from `pool` (the real recordings' keys, so each key is as common as in
    real audio), their recordings and times uniform. Written key range by key range, in key
    order (appending to the index's B-tree: 100,000 recordings in minutes, not hours); the
    padded recordings have postings only (enough to search; not to remove them)."""
    conn = catalogue.conn
    have = catalogue.count()
    count = total - have
    if count <= 0:
        return
    rng = np.random.default_rng(total)
    per = round(len(pool) / max(1.0, POOL_SECONDS[0]) * seconds)
    frames = int(seconds / lm.FRAME_SECONDS)
    with transaction(conn):
        base = conn.execute("SELECT COALESCE(MAX(num), 0) FROM recordings").fetchone()[0]
        conn.executemany(
            "INSERT INTO recordings (recording_id, num, device_id, path, sha256, duration, "
            "started_at, origin, sidecar) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((f"pad{num:08d}", num, "paddev", f"recordings/pad/pad{num:08d}.ogg", "0" * 64,
              seconds, "2020-01-01T00:00:00.000Z", "own", '{"title": ""}')
             for num in range(base + 1, base + count + 1)))
    ordered = np.sort(pool)
    parts = 64
    edges = np.linspace(0, ordered.size, parts + 1).astype(np.int64)
    for p in range(parts):
        part = ordered[edges[p] : edges[p + 1]]
        n = round(count * per * part.size / ordered.size)
        keys = rng.choice(part, n)
        if PAD_MODEL[0] == "recombined":
            # Other audio, other peak combinations: the key's frequency part (first peak,
            # second peak's difference) from one real key, the rest from another.
            low = (1 << lm.KEY_REST_BITS) - 1
            keys = (keys & ~low) | (rng.choice(pool, n) & low)
        marks = lm.Landmarks(keys, rng.integers(0, frames, n))
        nums = rng.integers(base + 1, base + count + 1, n)
        # The index's own writer, one padded "recording" per part whose postings carry the
        # drawn recording numbers (post() writes one num; the blobs are built here instead).
        order = np.lexsort((marks.t, nums, marks.keys))
        keys, ts, nums = marks.keys[order], marks.t[order], nums[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        bounds = np.append(starts, keys.size).tolist()
        postings = np.empty(keys.size, lx.POSTING)
        postings["num"], postings["t"] = nums, ts
        with transaction(conn):
            conn.executemany(
                "INSERT INTO landmark_postings (key, n, data) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET n = n + excluded.n, "
                f"data = CASE WHEN n + excluded.n <= {lx.MAX_POSTINGS} "
                "THEN CAST(data || excluded.data AS BLOB) ELSE x'' END",
                ((int(keys[a]), b - a,
                  postings[a:b].tobytes() if b - a <= lx.MAX_POSTINGS else b"")
                 for a, b in itertools.pairwise(bounds)))
        if (p + 1) % 16 == 0:
            print(f"  padding to {total}: key range {p + 1}/{parts}", file=sys.stderr,
                  flush=True)


POOL_SECONDS = [0.0]
PAD_MODEL = ["pool"]


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _kids() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def cpu_against_oggenc(work: Path) -> dict[str, float]:
    """The peak finder's CPU on 60 s of 48 kHz speech fed as the pump feeds it (through the
    Chromaprint sink's 11025 Hz tap), against oggenc -q4 on the same audio; interleaved,
    median of 7. The sink with and without landmarks, so the difference is what they add."""
    from recorder.cli.record import demo_clip
    from recorder.sinks.fingerprint import FingerprintSink

    audio, rate = sf.read(demo_clip(), dtype="int16")
    import soxr

    audio = np.resize(soxr.resample(audio, rate, 48000).astype(np.int16), 48000 * 60)[:, None]
    wav = work / "cpu.wav"
    sf.write(str(wav), audio, 48000, subtype="PCM_16")

    def sink(rid: str | None) -> float:
        s = FingerprintSink(48000, 1, rid)
        before = _cpu()
        for i in range(0, audio.shape[0], 1024):
            s.write(audio[i : i + 1024])
        s.finish()
        lm.HANDOFF.take("bench")
        return _cpu() - before

    def unbatched() -> float:  # the sink before this work: Chromaprint fed every block
        from recorder.audioid.chroma import StreamingFingerprinter

        fp = StreamingFingerprinter(48000, 1)
        before = _cpu()
        for i in range(0, audio.shape[0], 1024):
            fp.feed(audio[i : i + 1024])
        fp.finish()
        return _cpu() - before

    def oggenc() -> float:
        before = _kids()
        subprocess.run(["oggenc", "-Q", "-q4", "-o", str(work / "o.ogg"), str(wav)], check=True)
        return _kids() - before

    plain, both, enc, old = [], [], [], []
    for _ in range(7):
        old.append(unbatched())
        plain.append(sink(None))
        both.append(sink("bench"))
        enc.append(oggenc())
    p, b, o = statistics.median(plain), statistics.median(both), statistics.median(enc)
    u = statistics.median(old)
    return {"oggenc_ms_per_audio_s": round(o / 60 * 1000, 3),
            "sink_before_ms_per_audio_s": round(u / 60 * 1000, 3),
            "chromaprint_sink_ms_per_audio_s": round(p / 60 * 1000, 3),
            "with_landmarks_ms_per_audio_s": round(b / 60 * 1000, 3),
            "landmarks_added_ratio_to_oggenc": round((b - p) / o, 4),
            "recording_ratio_change": round((b - u) / o, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=int, default=800)
    ap.add_argument("--genuine", type=int, default=80, help="catalogued sources queried")
    ap.add_argument("--unrelated", type=int, default=110, help="unrelated sources queried")
    ap.add_argument("--pad", type=int, action="append", default=[])
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--pad-model", choices=("pool", "recombined"), default="pool",
                    help="padded keys: drawn from the real recordings' keys (pool), or each "
                         "made of two real keys' halves (recombined: spreads over more keys)")
    ap.add_argument("--max-postings", type=int, default=lx.MAX_POSTINGS,
                    help="the index's stop-word cap, to try others")
    ap.add_argument("--skip-recall", action="store_true",
                    help="only the padded sizes' identify time (with --unrelated 0: no false "
                         "match runs either)")
    ap.add_argument("--raw", type=Path, default=CACHE / "raw",
                    help="where every alignment is written (for choosing thresholds)")
    args = ap.parse_args()
    PAD_MODEL[0] = args.pad_model
    lx.MAX_POSTINGS = args.max_postings
    args.raw.mkdir(parents=True, exist_ok=True)
    for tool in ("espeak-ng", "sox", "opusenc", "opusdec", "oggenc"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool} (apt-get install espeak-ng sox opus-tools vorbis-tools)")
    corpus = Corpus(CACHE / "corpus")
    kinds = ["speech"] * 7 + ["music"] * 2 + ["noise"]
    real = [source(kinds[i % 10], i, corpus) for i in range(args.real)]
    # Unrelated: indexes never catalogued.
    unrelated = [source(kinds[i % 10], 100000 + i, corpus) for i in range(args.unrelated)]
    report: dict[str, Any] = {"real_recordings": args.real, "seconds_each": SECONDS}
    with tempfile.TemporaryDirectory(prefix="bench-airid-") as tmp:
        work = Path(tmp)
        if not args.skip_cpu:
            report["cpu"] = cpu_against_oggenc(work)
            print(json.dumps(report["cpu"]), file=sys.stderr, flush=True)
            if args.cpu_only:
                print(json.dumps(report, indent=2))
                return
        database = Database(work / "cat.db")
        catalogue = Catalogue(database)
        t0 = time.monotonic()
        docs = build_real(catalogue, real, work)
        report["build_real_s"] = round(time.monotonic() - t0, 1)
        conn = catalogue.conn
        pool = np.concatenate([
            np.full(len(data) // lx.POSTING.itemsize, key, np.int64)
            for key, data in conn.execute("SELECT key, data FROM landmark_postings")])
        POOL_SECONDS[0] = args.real * SECONDS
        size = sum(r[0] for r in conn.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('landmark_postings', "
            "'landmark_recordings', 'landmark_unindexed')"))
        hours = args.real * SECONDS / 3600
        report["landmarks_per_audio_second"] = round(len(pool) / (args.real * SECONDS), 1)
        report["landmark_mb_per_hour"] = round(size / hours / 1e6, 2)

        # Genuine queries: the first `--genuine` catalogued speech and music recordings.
        genuine = [i for i in range(args.real) if kinds[i % 10] != "noise"][: args.genuine]
        recall: dict[str, dict[str, int]] = {}
        scores: dict[str, list[int]] = {}
        times: list[float] = []
        raw: dict[str, list[Any]] = {}  # every genuine query's best alignments: threshold tuning
        for name in ([] if args.skip_recall else DEGRADATIONS):
            found_c = found_b = total = 0
            for i in genuine:
                for start in (2.0, 17.0):
                    q = degrade(real[i], start, name, work)
                    total += 1
                    rid = docs[i]["recording_id"]
                    fp, marks = landmarks_of(q, fan=lm.QUERY_FAN)
                    chroma = catalogue.identify(fp.items, limit=1)
                    ok_c = bool(chroma) and chroma[0].recording_id == rid and abs(
                        chroma[0].offset_seconds - start) <= 0.5
                    found_c += ok_c
                    if ok_c:
                        found_b += 1
                        continue
                    if chroma:
                        continue  # Chromaprint answered (wrongly): identify stops there
                    t = time.perf_counter()
                    air = catalogue.identify_air(marks, limit=1)
                    times.append(time.perf_counter() - t)
                    every = lx.search(conn, marks, accept=lambda a: True)
                    rec = [(m.num == i + 1 and abs(m.alignment.offset_seconds - start) <= 0.5,
                            m.score, m.alignment.span_seconds) for m in every[:3]]
                    raw.setdefault(name, []).append(rec)
                    if air and air[0].recording_id == rid and abs(
                            air[0].offset_seconds - start) <= 0.5:
                        found_b += 1
                        scores.setdefault(name, []).append(air[0].score)
            recall[name] = {"queries": total, "chromaprint": found_c, "both": found_b}
            print(name, recall[name], file=sys.stderr, flush=True)
        report["recall"] = recall
        (args.raw / "genuine_alignments.json").write_text(json.dumps(raw))
        report["genuine_landmark_score_min"] = {k: min(v) for k, v in scores.items()}
        all_c = sum(r["chromaprint"] for r in recall.values())
        all_b = sum(r["both"] for r in recall.values())
        all_q = sum(r["queries"] for r in recall.values())
        if all_q:
            report["recall_all"] = {"chromaprint": round(all_c / all_q, 3),
                                    "both": round(all_b / all_q, 3), "queries": all_q}

        def unrelated_run(label: str) -> None:
            false = 0
            queries = 0
            near: list[tuple[int, float]] = []
            for src in unrelated:
                for start in (2.0, 17.0):
                    for name in ["none", *DEGRADATIONS]:
                        q = (_excerpt_only(src, start, work) if name == "none" else
                             degrade(src, start, name, work))
                        queries += 1
                        false += bool(identify_file(catalogue, q))
                        _, marks = landmarks_of(q, fan=lm.QUERY_FAN)
                        best = lx.search(conn, marks, accept=lambda a: True)
                        if best:
                            near.append((best[0].score, best[0].alignment.span_seconds))
            (args.raw / f"unrelated_alignments_{label}.json").write_text(json.dumps(near))
            near.sort(key=lambda s: (s[1], s[0]))
            report[f"unrelated_{label}"] = {
                "queries": queries, "false_matches": false,
                "best_alignments_highest_cover": near[-5:],
                "best_alignments_highest_score": sorted(near)[-5:],
            }
            print(label, report[f"unrelated_{label}"], file=sys.stderr, flush=True)

        unrelated_run(f"at_{args.real}")
        for total in sorted(args.pad):
            pad(catalogue, total, pool)
            lat, found = [], 0
            for i in genuine[:40]:
                q = degrade(real[i], 2.0, "speed 1.02", work)
                _, marks = landmarks_of(q, fan=lm.QUERY_FAN)
                t = time.perf_counter()
                air = catalogue.identify_air(marks, limit=1)
                lat.append(time.perf_counter() - t)
                found += bool(air) and air[0].recording_id == docs[i]["recording_id"]
            lat.sort()
            report[f"identify_air_ms_at_{total}"] = {
                "speed_1.02_found": f"{found}/{len(lat)}",
                "median": round(statistics.median(lat) * 1000, 1),
                "p95": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1)}
            print(total, report[f"identify_air_ms_at_{total}"], file=sys.stderr, flush=True)
            unrelated_run(f"at_{total}")
        times.sort()
        if times:
            report[f"identify_air_ms_at_{args.real}"] = {
                "median": round(statistics.median(times) * 1000, 1),
                "p95": round(times[int(0.95 * (len(times) - 1))] * 1000, 1)}
        database.close()
    print(json.dumps(report, indent=2))


def _excerpt_only(src: Path, start: float, work: Path) -> Path:
    out = CACHE / "q" / f"{src.stem}_{start:g}_none.wav"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        data, rate = sf.read(str(src), dtype="float64")
        sf.write(str(out), data[int(start * rate) : int((start + EXCERPT) * rate)], rate,
                 subtype="PCM_16")
    return out


if __name__ == "__main__":
    main()
