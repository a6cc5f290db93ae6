"""Cow Radio benchmark (not a test): ``python3 tests/bench/bench_radio.py [--sink] [--station]``
(both by default).

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

``--station``: the station (a real Liquidsoap on a script from ``recorder radio script``, the
real ``recorder run`` with a file source, a real icecast2). The playlist holds recordings of noise
band-limited to 200-1500 Hz, the live input (the service's file source) is noise in 4-8 kHz, both
at -20 dBFS: as costly to encode as speech (so Ogg pages come as often), continuous (so any
silence is a gap), and every 20 ms of what a listener receives says who is on the air (or that
nothing is: below -45 dBFS). A pure tone would not do: Vorbis codes it in so few bits that the
live stream's pages, and so the takeover, come seconds late. Measured on one listener
connection, from the moment ``live on``/``off`` reaches the control socket:

3. takeover and give-back latency: until the listener receives audio where the other side
   dominates (median, max over ``--cycles``);
4. the gap at each switch: the longest run of silence between the two sides;
5. station CPU per hour of air time: Liquidsoap's own (playlist only, and live), plus the
   recorder's stream sink while live (item 2), against ffmpeg doing Liquidsoap's playlist work
   (decode, resample to 24 kHz mono, Vorbis encode) on the same audio, side by side;
6. Icecast restarts: from Icecast answering again to the station's source back on the mount.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder.app import radio_settings
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
    deadline = time.monotonic() + 20
    while sink.status()["state"] != "live":
        if time.monotonic() > deadline:
            sink.close()
            raise SystemExit(f"the stream sink never went live: {sink.status()}")
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


# --- the station -------------------------------------------------------------------------------

SWITCH_WINDOW = 0.02  # seconds per classified window
SILENT_DBFS = -45.0


def _band_noise(low: float, high: float, seconds: float, seed: int,
                dbfs: float = -20.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.normal(0, 1, int(seconds * RATE)))
    freqs = np.fft.rfftfreq(int(seconds * RATE), 1 / RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    x = np.fft.irfft(spectrum, int(seconds * RATE))
    x *= 32767 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))
    return np.clip(x, -32767, 32767).astype(np.int16)


def _timeline(data: bytes, arrivals: list[tuple[float, int]]):
    """(audio, rate, arrival time per window) of everything a listener received, in order."""
    from tests.station_harness import heard, ogg_pages

    pages = ogg_pages(data)
    chunks, times = [], []
    rate = 0
    for part in heard(data):
        rate = part.rate or rate
        own = [p for p in pages if part.start <= p.offset < part.end and p.granule >= 0]
        if not own or not len(part.audio):
            continue
        # Granules count samples from the stream's start; align the last page to the end.
        shift = own[-1].granule - len(part.audio)
        ends = np.array([p.granule - shift for p in own])
        arrive = []
        for p in own:
            end = p.offset + p.size
            arrive.append(next(t for t, n in arrivals if n >= end))
        window = int(SWITCH_WINDOW * rate)
        for w in range(0, len(part.audio) - window + 1, window):
            k = min(int(np.searchsorted(ends, w + window)), len(own) - 1)
            chunks.append(part.audio[w : w + window])
            times.append(arrive[k])
    return chunks, rate, times


def _classify(chunk: np.ndarray, rate: int) -> str:
    x = chunk.astype(np.float64)
    rms = np.sqrt(np.mean(x**2)) or 1e-9
    if 20 * np.log10(rms / 32768) < SILENT_DBFS:
        return "silence"
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    live = spectrum[(freqs > 4000) & (freqs < 8000)].sum()
    playlist = spectrum[(freqs > 200) & (freqs < 1500)].sum()
    if live > 3 * playlist:
        return "live"
    if playlist > 3 * live:
        return "playlist"
    return "mixed"


def station_run(cycles: int, cpu_seconds_each: float) -> dict:
    from recorder.config import load_config
    from recorder.control import send_command
    from recorder.radio import station as station_mod
    from tests.bench.bench_service import cpu_seconds
    from tests.conftest import free_port, toml_config
    from tests.corpus import sidecar_for
    from tests.station_harness import Liquidsoap, RecorderService

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-station-") as tmp:
        base = Path(tmp)
        server = IcecastServer(base / "icecast")
        server.start()
        data = base / "data"
        now = time.time()
        for i in range(3):  # three 20 s recordings of the playlist's noise band
            ogg = base / f"r{i}.ogg"
            sf.write(str(ogg), _band_noise(200, 1500, 20.0, seed=i), RATE, format="OGG",
                     subtype="VORBIS")
            doc = sidecar_for(ogg, device_id="benchdev", started=now - 3600 * (i + 1),
                              fingerprint={"algorithm": "none"})
            target = data / "sync/benchdev" / doc["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            ogg.replace(target)
            target.with_suffix(".json").write_text(json.dumps(doc))
        live = base / "live.wav"
        sf.write(str(live), _band_noise(4000, 8000, 30.0, seed=9), RATE, subtype="PCM_16")
        config = toml_config(base / "recorder.toml", {
            "device": {"id": "benchdev"},
            "storage": {"data_dir": str(data), "reserve_mb": 0},
            "audio": {"source": f"file:{live}", "preroll": 0.0},
            "audioid": {"enabled": False},
            "radio": {"station": True, "url": server.url, "mount": server.mount,
                      "password_file": str(server.password_file),
                      "harbor_url": f"http://127.0.0.1:{free_port()}", "crossfade": 0.5},
        })
        cfg = load_config(config)
        service = RecorderService(config, cfg.service.control_socket, base / "recorder.log")
        liquidsoap = None
        try:
            script, _ = station_mod.write_script(radio_settings(cfg), base / "station.liq")
            liquidsoap = Liquidsoap(script, base / "liquidsoap.log")
            liquidsoap.start()
            deadline = time.monotonic() + 60
            while not server.source_connected():
                if time.monotonic() > deadline:
                    raise SystemExit(f"station never went on the air: {liquidsoap.output()}")
                time.sleep(0.1)
            listener = Listener(server.mount_url)
            pid = liquidsoap.proc.pid
            # CPU with the playlist only, then live only (the service streams to the harbor).
            time.sleep(3)
            c0 = cpu_seconds(pid)
            time.sleep(cpu_seconds_each)
            out["liquidsoap_cpu_s_per_hour_playlist"] = round(
                (cpu_seconds(pid) - c0) / cpu_seconds_each * 3600, 1)
            switches = []
            for _ in range(cycles):
                t_on = time.monotonic()
                send_command(cfg.service.control_socket, "live", on=True, timeout=15)
                time.sleep(10)
                t_off = time.monotonic()
                send_command(cfg.service.control_socket, "live", on=False, timeout=15)
                time.sleep(10)
                switches.append((t_on, t_off))
            send_command(cfg.service.control_socket, "live", on=True, timeout=15)
            time.sleep(4)
            c0 = cpu_seconds(pid)
            time.sleep(cpu_seconds_each)
            out["liquidsoap_cpu_s_per_hour_live"] = round(
                (cpu_seconds(pid) - c0) / cpu_seconds_each * 3600, 1)
            send_command(cfg.service.control_socket, "live", on=False, timeout=15)
            time.sleep(4)
            received = listener.close()
            chunks, rate, times = _timeline(received, listener.arrivals)
            kinds = [_classify(c, rate) for c in chunks]
            takeover, giveback, gaps_on, gaps_off = [], [], [], []
            for t_on, t_off in switches:
                for t0, t1, want, lat, gaps in ((t_on, t_off, "live", takeover, gaps_on),
                                                (t_off, t_off + 10, "playlist", giveback,
                                                 gaps_off)):
                    idx = [i for i, t in enumerate(times) if t0 <= t < t1 + 3]
                    first = next((i for i in idx if kinds[i] == want and i + 5 < len(kinds)
                                  and all(k == want for k in kinds[i : i + 5])), None)
                    if first is None:
                        continue
                    lat.append(times[first] - t0)
                    # The longest silence between the switch command and the new side.
                    run = best = 0
                    for i in idx:
                        if i >= first:
                            break
                        run = run + 1 if kinds[i] == "silence" else 0
                        best = max(best, run)
                    gaps.append(best * SWITCH_WINDOW)
            out["takeover_s"] = _stats(takeover)
            out["giveback_s"] = _stats(giveback)
            out["gap_at_takeover_s"] = _stats(gaps_on)
            out["gap_at_giveback_s"] = _stats(gaps_off)
            out["listener_reconnected"] = listener.closed_by_server
            # Liquidsoap put live on the air once per "live on", never flapping back and forth.
            out["live_switches_per_live_on"] = round(
                liquidsoap.output().count("on the air (live)") / (cycles + 1), 2)
            # The sink on a mount of its own (the station holds the listener mount): FLAC as it
            # sends to the station's harbor (Icecast takes any content type), and Vorbis q2 as
            # it sends straight to Icecast without a station.
            noise = _band_noise(4000, 8000, 10.0, seed=9)[:, None]
            out["sink_cpu_s_per_hour_live_flac_to_station"] = round(cpu_per_audio_second_sink_cfg(
                server, noise, 30.0, {"mount": "/sink.flac", "station": True,
                                      "harbor_url": server.url}) * 3600, 1)
            out["sink_cpu_s_per_hour_live_vorbis_to_icecast"] = round(
                cpu_per_audio_second_sink_cfg(server, noise, 30.0, {"mount": "/sink.ogg"})
                * 3600, 1)
            out["ffmpeg_same_work_cpu_s_per_hour"] = round(_ffmpeg_cpu(data) * 3600, 1)
            out["liquidsoap_rss_mb"] = round(int(next(
                line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:"))) / 1024, 1)
            back = []
            for _ in range(3):
                server.stop()
                server.start()
                t0 = time.monotonic()
                while not server.source_connected():
                    time.sleep(0.05)
                back.append(time.monotonic() - t0)
            out["icecast_restart_to_on_air_s"] = _stats(back)
        finally:
            if liquidsoap is not None:
                liquidsoap.stop()
            service.stop()
            server.stop()
    return out


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2),
            "n": len(values)}


def _ffmpeg_cpu(data: Path) -> float:
    """CPU seconds per audio second for ffmpeg doing the station's playlist work."""
    import resource
    import subprocess

    files = sorted(data.glob("sync/*/recordings/**/*.ogg"))
    audio = sum(sf.info(str(f)).duration for f in files)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for f in files:
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(f), "-ar", "24000", "-ac", "1",
                        "-c:a", "libvorbis", "-q:a", "2", "-f", "ogg", "-y", "/dev/null"],
                       check=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / audio


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sink", action="store_true", help="the live stream sink only")
    parser.add_argument("--station", action="store_true", help="the station only")
    parser.add_argument("--cycles", type=int, default=5, help="live on/off cycles")
    parser.add_argument("--cpu-seconds", type=float, default=60.0,
                        help="seconds of air time per CPU measurement")
    args = parser.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started, even then
    if args.sink or not args.station:
        main()
    if args.station or not args.sink:
        print(json.dumps(station_run(args.cycles, args.cpu_seconds), indent=2))
