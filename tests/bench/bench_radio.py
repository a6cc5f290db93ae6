"""Cow Radio benchmark (not a test): ``python3 tests/bench/bench_radio.py``.

Against a real icecast2 on 127.0.0.1 (started here, as in the tests), prints:

1. glass-to-listener latency: a loud click is written into the radio sink (the moment a block
   leaves the ring for the sinks) and a listener connected to the mount records the arrival time
   of every byte; the latency is the time until the received bytes first decode to audio that
   contains the click (playback buffering not counted). Measured over three backgrounds: speech,
   a quiet room (-60 dBFS noise) and digital silence, the codec's best and worst cases.
   Not included: capture (one PortAudio block, 21 ms at 1024 frames) and the pump's wake-up
   (at most 50 ms), both ahead of the sink;
2. CPU per audio second of the stream sink (write() copies, its own encoder, sending) against
   the recorder's own encoder (soundfile Vorbis q4 into a file, 4096-frame writes) on the same
   speech.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder.sinks.radio import RadioSink
from tests.corpus import RATE, Corpus
from tests.icecast import IcecastServer, Listener

BLOCK = 1024
CLICKS = 5
CLICK_GAP = 3.0  # seconds between clicks


def latency_run(server: IcecastServer, background: np.ndarray, codec: str) -> list[float]:
    cfg = server.recorder_config(live=True, codec=codec)
    sink = RadioSink(cfg.radio, RATE, 1)
    sink.start()
    deadline = time.monotonic() + 20
    while sink.status()["state"] != "live":
        if time.monotonic() > deadline:
            raise SystemExit(f"radio never went live: {sink.status()}")
        time.sleep(0.02)
    listener = Listener(server.mount_url)
    click = np.zeros((BLOCK, 1), np.int16)
    click[: int(0.02 * RATE)] = 30000  # 20 ms at near full scale: louder than any background
    total = int((2.0 + CLICKS * CLICK_GAP) * RATE)
    marks = []
    start = time.monotonic()
    for n, pos in enumerate(range(0, total, BLOCK)):
        block = background[pos % (len(background) - BLOCK) :][:BLOCK]
        if pos >= 2 * RATE and (pos - 2 * RATE) % int(CLICK_GAP * RATE) < BLOCK:
            block = click
            marks.append(time.monotonic())
        sink.write(block)
        delay = start + (n + 1) * BLOCK / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(3.0)
    sink.close()
    listener.close()
    data = bytes(listener.data)
    # After each click, the first arrival whose bytes decode to audio containing that click.
    latencies = []
    arrivals = listener.arrivals
    for k, t0 in enumerate(marks):
        clicks_needed = k + 1
        for t1, size in arrivals:
            if t1 < t0:
                continue
            audio, _ = sf.read(io.BytesIO(data[:size]), dtype="int16")
            loud = np.abs(audio.astype(np.int32)) >= 25000
            # count click onsets (rising edges separated by more than a second)
            edges = np.flatnonzero(loud[1:] & ~loud[:-1]) if audio.size else np.array([])
            onsets = 0
            last = -RATE * 10
            for e in edges.tolist():
                if e - last > RATE:
                    onsets += 1
                last = e
            if onsets >= clicks_needed:
                latencies.append(t1 - t0)
                break
    return latencies


def cpu_per_audio_second_sink(server: IcecastServer, speech: np.ndarray, seconds: float) -> float:
    cfg = server.recorder_config(live=True, queue_seconds=30.0)
    sink = RadioSink(cfg.radio, RATE, 1)
    sink.start()
    while sink.status()["state"] != "live":
        time.sleep(0.02)
    frames = int(seconds * RATE)
    cpu0 = time.process_time()
    pos = 0
    while pos < frames:
        if sink.status()["queued_seconds"] > 20:
            time.sleep(0.005)
            continue
        block = speech[pos % (len(speech) - BLOCK) :][:BLOCK]
        sink.write(block)
        pos += BLOCK
    while sink.status()["queued_seconds"] > 0:
        time.sleep(0.005)
    cpu = time.process_time() - cpu0
    status = sink.status()
    sink.close()
    if status["blocks_dropped"]:
        raise SystemExit(f"benchmark dropped blocks: {status}")
    return cpu / seconds


def cpu_per_audio_second_recorder(speech: np.ndarray, seconds: float, out: Path) -> float:
    frames = int(seconds * RATE)
    cpu0 = time.process_time()
    with sf.SoundFile(str(out), "w", RATE, 1, format="OGG", subtype="VORBIS",
                      compression_level=0.6) as snd:
        pos = 0
        while pos < frames:
            snd.write(speech[pos % (len(speech) - 4096) :][:4096])
            pos += 4096
    return (time.process_time() - cpu0) / seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "corpus")
        speech, _ = sf.read(str(corpus.speech(21, sentences=12)), dtype="int16", always_2d=True)
        rng = np.random.default_rng(1)
        room = (rng.normal(0, 32768 * 10 ** (-60 / 20), (RATE * 10, 1))).astype(np.int16)
        quiet_speech = (speech // 4).astype(np.int16)  # -12 dB: clicks stay the loudest thing
        silence = np.zeros((RATE * 10, 1), np.int16)
        server = IcecastServer(Path(tmp) / "icecast")
        server.start()
        try:
            print(f"glass-to-listener latency ({CLICKS} clicks each, seconds; target < 2 s):")
            for codec in ("vorbis", "opus"):
                for label, background in (
                    ("speech", quiet_speech), ("quiet room -60 dBFS", room), ("silence", silence)
                ):
                    lat = latency_run(server, background, codec)
                    if lat:
                        print(f"  {codec:6s} {label:20s} median {statistics.median(lat):.2f}"
                              f"  max {max(lat):.2f}  (n={len(lat)})")
                    else:
                        print(f"  {codec:6s} {label:20s} no click arrived")
            seconds = 60.0
            print(f"\nCPU per audio second ({seconds:g} s of speech, 48 kHz mono, best of 3):")
            rec = min(
                cpu_per_audio_second_recorder(speech, seconds, Path(tmp) / "rec.ogg")
                for _ in range(3)
            )
            print(f"  recorder encoder (soundfile Vorbis q4, file):   {rec * 1000:.2f} ms"
                  f"  ({1 / rec:.0f}x realtime)")
            for codec, quality in (("vorbis", 2.0), ("vorbis", 4.0), ("opus", None)):
                extra = {"codec": codec}
                if quality is not None:
                    extra["vorbis_quality"] = quality
                label = f"{codec} q{quality:g}" if quality is not None else f"{codec} 32 kbps"
                cost = min(
                    cpu_per_audio_second_sink_cfg(server, speech, seconds, extra)
                    for _ in range(3)
                )
                print(f"  radio sink ({label:14s}, write+encode+send): {cost * 1000:.2f} ms"
                      f"  ({cost / rec:.2f}x the recorder encoder)")
        finally:
            server.stop()
    print(f"\n(cpus: {os.cpu_count()}, python {sys.version.split()[0]})")


def cpu_per_audio_second_sink_cfg(
    server: IcecastServer, speech: np.ndarray, seconds: float, radio: dict
) -> float:
    original = server.recorder_config

    def config(**kw: object):
        return original(**{**kw, **radio})

    server.recorder_config = config  # type: ignore[method-assign]
    try:
        return cpu_per_audio_second_sink(server, speech, seconds)
    finally:
        server.recorder_config = original  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
