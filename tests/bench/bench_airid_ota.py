"""Audio ID over the air (issue 26, item 4): recordings played through Icecast, heard through
PulseAudio, with a room's reverb, then found by ``recorder identify``.

    python3 -m tests.bench.bench_airid_ota [--real 200] [--genuine 24] [--unrelated 24]

1. A catalogue of `--real` recordings (the sources of `tests.bench.bench_airid`: espeak-ng
   pseudo-word speech in eight voices, melodies, noise; 30 s each) in a recorder's database.
2. A playlist: 10 s excerpts (from 5 s in) of `--genuine` catalogued speech and music
   recordings and of `--unrelated` sources never catalogued, 2 s of silence between them.
3. The playlist is encoded Ogg Vorbis (q 2, as a radio stream) by ffmpeg, sent as a source to a
   real icecast2 (`tests.icecast.IcecastServer`, the configuration the station's tests use) in
   real time; a listener (ffmpeg) decodes the mount and plays it into a private PulseAudio
   daemon's null sink (`tests.pulse.PulseServer`), whose monitor is captured with ``parec``.
4. The capture is aligned to the playlist once (cross-correlation), cut back into its 10 s
   pieces, and each piece gets a room through sox on the captured stream (``reverb`` of two
   sizes, see ROOMS: PulseAudio's own modules have no reverb without LADSPA plugins, which are
   not installed here; the hall also through a phone call: 8 kHz, 300-3400 Hz, Opus at 12
   kbit/s), then ``recorder identify --json``.

A genuine piece is found when the first answer is its recording at 5 s within 0.5 s; any
answer to an unrelated piece is a false match. Recall is reported for Chromaprint alone (the
answer's method) and for the whole answer. Takes about (genuine + unrelated) x 12 s of real time
for the playback, plus the catalogue.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder.audioid.catalogue import Catalogue
from recorder.config import load_config
from recorder.db import Database
from tests.bench.bench_airid import CACHE, build_real, source
from tests.conftest import run_cli, toml_config
from tests.corpus import Corpus
from tests.icecast import IcecastServer
from tests.pulse import PulseServer

RATE = 48000
START = 5.0
PIECE = 10.0
GAP = 2.0
LEAD = 3.0  # silence before the first piece: the listener connects meanwhile
ROOMS: dict[str, list[str]] = {
    "room (sox reverb 40 50 30 100 5)": ["reverb", "40", "50", "30", "100", "5"],
    "hall (sox reverb 90 50 100 100 20)": ["reverb", "90", "50", "100", "100", "20"],
    # The hall, heard by a phone: 8 kHz, 300-3400 Hz, Opus at 12 kbit/s.
    "hall + phone call": ["reverb", "90", "50", "100", "100", "20", "rate", "8000", "sinc",
                          "300-3400"],
}


def playlist(pieces: list[Path], out: Path) -> list[float]:
    """Write the pieces with gaps into `out`; where each starts (s)."""
    parts, starts, at = [np.zeros(int(LEAD * RATE))], [], LEAD
    for src in pieces:
        data, rate = sf.read(str(src), dtype="float64")
        assert rate == RATE and data.ndim == 1, src
        cut = data[int(START * RATE) : int((START + PIECE) * RATE)]
        peak = np.max(np.abs(cut)) or 1.0
        parts += [cut / peak * 0.5, np.zeros(int(GAP * RATE))]
        starts.append(at)
        at += PIECE + GAP
    parts.append(np.zeros(int(LEAD * RATE)))
    sf.write(str(out), np.concatenate(parts), RATE, subtype="PCM_16")
    return starts


def lag_of(capture: np.ndarray, sent: np.ndarray) -> int:
    """Samples by which `capture` is late against `sent` (cross-correlation at 8 kHz)."""
    step = RATE // 8000
    a, b = capture[::step].astype(np.float64), sent[::step].astype(np.float64)
    n = 1 << int(np.ceil(np.log2(a.size + b.size)))
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lag = int(np.argmax(corr[: a.size]))
    return lag * step


def broadcast(play: Path, work: Path) -> np.ndarray:
    """`play` through Icecast and PulseAudio; the captured samples (int16, 48 kHz mono)."""
    ice = IcecastServer(work / "icecast")
    pulse = PulseServer()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ice.start()
        pulse.start()
        env = {**os.environ, **pulse.env()}
        raw = work / "capture.raw"
        with open(raw, "wb") as out:
            procs.append(subprocess.Popen(
                ["parec", "--device=recsink.monitor", "--format=s16le", f"--rate={RATE}",
                 "--channels=1", "--latency-msec=50"], stdout=out, env=env))
        source_url = f"icecast://source:{ice.source_password}@127.0.0.1:{ice.port}{ice.mount}"
        sender = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-re", "-i", str(play), "-c:a", "libvorbis",
             "-q:a", "2", "-content_type", "application/ogg", "-f", "ogg", source_url])
        procs.append(sender)
        deadline = time.monotonic() + 20
        while not ice.source_connected():
            if time.monotonic() > deadline or sender.poll() is not None:
                raise RuntimeError("the source never reached icecast")
            time.sleep(0.1)
        listener = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", ice.mount_url, "-ac", "1", "-ar",
             str(RATE), "-f", "pulse", "-device", "recsink", "ota-bench"], env=env)
        procs.append(listener)
        sender.wait()
        time.sleep(LEAD + 2)  # what Icecast and the sink still hold
        return np.fromfile(raw, dtype="<i2")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        pulse.stop()
        ice.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=int, default=200)
    ap.add_argument("--genuine", type=int, default=24)
    ap.add_argument("--unrelated", type=int, default=24)
    args = ap.parse_args()
    corpus = Corpus(CACHE / "corpus")
    kinds = ["speech"] * 7 + ["music"] * 2 + ["noise"]
    real = [source(kinds[i % 10], i, corpus) for i in range(args.real)]
    genuine = [i for i in range(args.real) if kinds[i % 10] != "noise"][: args.genuine]
    # Unrelated: never catalogued (speech and music only: noise through the air is noise).
    unrelated = [source(kinds[i % 10], 200000 + i, corpus)
                 for i in range(args.unrelated * 2) if kinds[i % 10] != "noise"][: args.unrelated]
    report: dict[str, Any] = {"catalogued": args.real}
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        work = Path(tmp)
        cfg_path = toml_config(work / "recorder.toml", {
            "device": {"id": "benchdev"},
            "storage": {"data_dir": str(work / "data"), "reserve_mb": 0},
            "web": {"enabled": False}})
        cfg = load_config(Path(cfg_path))
        database = Database(cfg.db_path)
        docs = build_real(Catalogue(database), real, work)
        database.close()
        pieces = [real[i] for i in genuine] + unrelated
        play = work / "playlist.wav"
        starts = playlist(pieces, play)
        t0 = time.monotonic()
        heard = broadcast(play, work)
        report["broadcast_s"] = round(time.monotonic() - t0, 1)
        sent, _ = sf.read(str(play), dtype="int16")
        lag = lag_of(heard, sent)
        report["latency_s"] = round(lag / RATE, 3)
        results: dict[str, dict[str, Any]] = {}
        for room, effects in ROOMS.items():
            found_c = found_b = false = 0
            scores = []
            for n, at in enumerate(starts):
                first = int(at * RATE) + lag
                piece = heard[first : first + int(PIECE * RATE)]
                dry, wet = work / "dry.wav", work / f"piece{n}.wav"
                sf.write(str(dry), piece, RATE, subtype="PCM_16")
                subprocess.run(["sox", str(dry), str(wet), *effects, "gain", "-n", "-3"],
                               check=True, capture_output=True)
                if "phone" in room:
                    opus = work / "piece.opus"
                    for cmd in (["opusenc", "--quiet", "--bitrate", "12", str(wet), str(opus)],
                                ["opusdec", "--quiet", "--rate", "8000", str(opus), str(wet)]):
                        subprocess.run(cmd, check=True, capture_output=True)
                done = run_cli("--config", cfg_path, "identify", "--json", str(wet))
                if done.returncode != 0:
                    raise RuntimeError(done.stderr)
                matches = json.loads(done.stdout)["matches"]
                if n >= len(genuine):
                    false += bool(matches)
                    continue
                rid = docs[genuine[n]]["recording_id"]
                ok = bool(matches) and matches[0]["recording_id"] == rid and abs(
                    matches[0]["offset_seconds"] - START) <= 0.5
                found_b += ok
                found_c += ok and matches[0]["method"] == "chromaprint"
                if ok and matches[0]["method"] == "landmarks":
                    scores.append(matches[0]["score"])
            results[room] = {
                "genuine": len(genuine), "chromaprint": found_c, "both": found_b,
                "unrelated": len(unrelated), "false_matches": false,
                "landmark_score_min": min(scores) if scores else None}
            print(room, results[room], file=sys.stderr, flush=True)
        report["results"] = results
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
