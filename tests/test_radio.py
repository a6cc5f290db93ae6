"""Cow Radio against a real icecast2 on 127.0.0.1: live stream, reconnects, refusals, stalls,
and the station playlist (checked with ffprobe/ffmpeg and a parser round trip)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder import sidecar
from recorder.app import radio_settings
from recorder.audioid.chroma import StreamingFingerprinter
from recorder.audioid.compare import compare
from recorder.radio import playlist
from recorder.radio.icecast import IcecastError, IcecastSource
from recorder.radio.oggstream import HalfRate, OggStreamEncoder
from recorder.sinks.radio import RadioSink
from tests.conftest import need, wait_until
from tests.corpus import corpus, sidecar_for  # noqa: F401 - fixture
from tests.icecast import IcecastServer, Listener, icecast  # noqa: F401 - fixture

RATE = 48000
STREAM_RATE = RATE // 2
BLOCK = 1024
# A blocked write() would take seconds (a send timeout); GIL hand-overs on a loaded 2-core
# machine can take a few ms. The typical write must stay far below a block's 21 ms.
WRITE_BLOCKED = 0.05
WRITE_TYPICAL = 0.005


class Feeder:
    """Plays audio into a sink from its own thread, like the pump: fixed blocks, paced.

    `speed` 1.0 is real time. Loops the audio when `loop`. Records every write() duration.
    """

    def __init__(self, sink: RadioSink, audio: np.ndarray, *, speed: float = 1.0,
                 loop: bool = False) -> None:
        self.sink, self.audio, self.speed, self.loop = sink, audio, speed, loop
        self.durations: list[float] = []
        self.frames = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        pos = 0
        while not self._stop.is_set():
            if pos >= len(self.audio):
                if not self.loop:
                    return
                pos = 0
            block = self.audio[pos : pos + BLOCK]
            t0 = time.perf_counter()
            self.sink.write(block)
            self.durations.append(time.perf_counter() - t0)
            pos += len(block)
            self.frames += len(block)
            delay = start + self.frames / RATE / self.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def wait(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def assert_never_blocked(self) -> None:
        d = np.array(self.durations)
        assert d.size > 0
        assert d.max() < WRITE_BLOCKED, f"write() took {d.max() * 1000:.1f} ms"
        assert np.percentile(d, 99) < WRITE_TYPICAL, f"p99 {np.percentile(d, 99) * 1000:.2f} ms"


def read_int16(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == RATE
    return data


def decode_ogg(data: bytes, rate: int = RATE) -> np.ndarray:
    """Decode received Ogg bytes (possibly cut mid-page at the end) to int16 frames."""
    out, got = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert got == rate
    return out


def fingerprint(audio: np.ndarray, rate: int = RATE) -> np.ndarray:
    fp = StreamingFingerprinter(rate, 1)
    for i in range(0, len(audio), 4096):
        fp.feed(audio[i : i + 4096])
    return fp.finish().items


def make_sink(server: IcecastServer, **radio: object) -> RadioSink:
    cfg = server.recorder_config(live=True, **radio)
    sink = RadioSink(cfg.radio, RATE, 1, backoff_initial=0.2, backoff_max=1.0)
    sink.start()
    return sink


def state_is(sink: RadioSink, state: str):
    """A predicate returning the status (one consistent read) once the sink is in `state`:
    a retrying sink leaves "error" again, so read the error from this same snapshot."""

    def check():
        status = sink.status()
        return status if status["state"] == state else None

    return check


# --- the stream ------------------------------------------------------------------------------


def test_encoder_starts_with_headers_and_decodes(corpus) -> None:  # noqa: F811
    audio = read_int16(corpus.speech(21, sentences=5))[: 5 * RATE]
    for codec in ("vorbis", "opus"):
        enc = OggStreamEncoder(RATE, 1, codec)
        first = enc.encode(audio[:BLOCK])
        assert first.startswith(b"OggS"), codec  # headers come with the first write
        rest = b"".join(enc.encode(audio[i : i + 8000]) for i in range(BLOCK, len(audio), 8000))
        data = first + rest + enc.close()
        assert len(decode_ogg(data)) == len(audio), codec


def test_flac_stream_for_the_station_frames_often_and_decodes(corpus) -> None:  # noqa: F811
    """The live hop to the station: a FLAC frame every 4096 samples, decodable as it comes."""
    audio = read_int16(corpus.speech(21, sentences=5))[: 5 * RATE]
    enc = OggStreamEncoder(RATE, 1, "flac", half_rate=True, title="Live: dev1")
    assert enc.content_type == "audio/flac"
    chunks = [enc.encode(audio[i : i + 2048]) for i in range(0, len(audio), 2048)]
    assert chunks[0].startswith(b"fLaC")
    # Something new at least every 4096 stream samples (2 blocks of 2048 at 48 kHz = 85 ms).
    assert all(any(chunks[i : i + 4]) for i in range(0, len(chunks) - 4))
    assert enc.close() == b""  # libFLAC's closing header rewrite is not for a stream
    data = b"".join(chunks)
    # A stream (no length in its header): ffmpeg decodes it, as a player or Liquidsoap would.
    ffmpeg = need("ffmpeg")
    probe = subprocess.run([ffmpeg, "-v", "error", "-f", "flac", "-i", "pipe:", "-f", "ffmetadata",
                            "-"], input=data, capture_output=True, timeout=60)
    assert b"title=live: dev1" in probe.stdout.lower(), probe.stdout
    pcm = subprocess.run([ffmpeg, "-v", "error", "-f", "flac", "-i", "pipe:", "-f", "s16le",
                          "-ar", str(STREAM_RATE), "-"], input=data, capture_output=True,
                         timeout=60)
    assert pcm.returncode == 0, pcm.stderr
    heard = np.frombuffer(pcm.stdout, np.int16)[:, None]
    assert len(heard) > 4.5 * STREAM_RATE
    match = compare(fingerprint(heard, STREAM_RATE), fingerprint(audio))
    assert match.ber < 0.05, match


def test_half_rate_filter_is_block_size_independent_and_stops_aliases() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 3000, (RATE, 1)).astype(np.int16)
    whole = HalfRate(1).process(noise)
    halver = HalfRate(1)
    pieces = np.concatenate([halver.process(noise[i : i + 777]) for i in range(0, RATE, 777)])
    assert whole.shape == (RATE // 2, 1) and np.array_equal(whole, pieces)
    t = np.arange(RATE) / RATE
    for freq, low, high in ((1000, -0.5, 0.5), (8000, -0.5, 0.5), (14000, -200, -40)):
        tone = (np.sin(2 * np.pi * freq * t) * 10000).astype(np.int16)[:, None]
        out = HalfRate(1).process(tone)[100:].astype(float)
        gain = 20 * np.log10(np.sqrt(np.mean(out**2)) / (10000 / np.sqrt(2)))
        assert low < gain < high, (freq, gain)


def test_live_stream_matches_clip(icecast, corpus) -> None:  # noqa: F811
    clip = read_int16(corpus.speech(21, sentences=5))  # about 27 s of speech
    sink = make_sink(icecast)
    stalled = None
    try:
        wait_until(state_is(sink, "live"), 20, what="radio live")
        listener = Listener(icecast.mount_url)
        # A listener that never reads: Icecast's problem, never the source's.
        stalled = socket.create_connection(("127.0.0.1", icecast.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET {icecast.mount} HTTP/1.0\r\n\r\n".encode())
        feeder = Feeder(sink, clip)
        feeder.wait(120)
        sink.set_live(False)  # ends the Ogg stream: the last pages go out
        wait_until(lambda: listener.closed_by_server, 20, what="end of stream at listener")
        received = listener.close()
        status = sink.status()
    finally:
        sink.close()
        if stalled is not None:
            stalled.close()
    assert status["blocks_dropped"] == 0 and status["reconnects"] == 0
    feeder.assert_never_blocked()
    # From 48 kHz capture the stream runs at 24 kHz (half the encoder's work).
    heard = decode_ogg(received, STREAM_RATE)
    assert len(heard) / STREAM_RATE > len(clip) / RATE - 1.0  # listener joined at the start
    match = compare(fingerprint(heard, STREAM_RATE), fingerprint(clip))
    assert match.ber < 0.15, match
    assert match.overlap_seconds > len(clip) / RATE - 4, match


def test_reconnects_after_icecast_restart(icecast, corpus) -> None:  # noqa: F811
    audio = read_int16(corpus.speech(22, sentences=5))
    sink = make_sink(icecast)
    feeder = Feeder(sink, audio, loop=True)
    try:
        wait_until(state_is(sink, "live"), 20, what="radio live")
        wait_until(lambda: sink.status()["bytes_sent"] > 20000, 20, what="audio sent")
        icecast.stop()
        error = wait_until(state_is(sink, "error"), 30, what="the sink to notice")["error"]
        assert "Icecast" in error and "\n" not in error
        time.sleep(1.5)  # a few refused reconnects with Icecast down
        icecast.start()
        wait_until(
            lambda: sink.status()["state"] == "live" and sink.status()["reconnects"] >= 1,
            30, what="reconnect",
        )
        # A listener of the new connection gets a fresh stream: headers first, decodable.
        listener = Listener(icecast.mount_url)
        wait_until(lambda: len(listener.data) > 30000, 30, what="audio at the new listener")
        heard = decode_ogg(listener.close(), STREAM_RATE)
        assert len(heard) > STREAM_RATE
        status = sink.status()
    finally:
        feeder.stop()
        sink.close()
    assert status["error"] is None and status["connected_since"]
    feeder.assert_never_blocked()


def test_wrong_password_is_reported(icecast) -> None:  # noqa: F811
    wrong = icecast.write_secret("wrong-password", "not-the-password")
    sink = make_sink(icecast, password_file=str(wrong))
    feeder = Feeder(sink, np.zeros((RATE * 2, 1), np.int16), loop=True)
    try:
        status = wait_until(state_is(sink, "error"), 20, what="error state")
    finally:
        feeder.stop()
        sink.close()
    assert "refused the password" in status["error"] and "401" in status["error"]
    assert "\n" not in status["error"] and "not-the-password" not in status["error"]
    assert status["bytes_sent"] == 0 and status["connects"] == 0
    feeder.assert_never_blocked()


def test_loose_password_file_is_reported(icecast) -> None:  # noqa: F811
    icecast.password_file.chmod(0o644)
    sink = make_sink(icecast)
    try:
        error = wait_until(state_is(sink, "error"), 20, what="error state")["error"]
    finally:
        sink.close()
    assert "radio.password_file" in error and "chmod 600" in error


def test_mount_in_use_then_freed(icecast) -> None:  # noqa: F811
    other = IcecastSource(icecast.url, icecast.mount, "source", icecast.source_password)
    other.connect()
    sink = make_sink(icecast)
    feeder = Feeder(sink, np.zeros((RATE * 2, 1), np.int16), loop=True)
    try:
        error = wait_until(state_is(sink, "error"), 20, what="error state")["error"]
        assert "mount /cowradio.ogg is in use" in error and "\n" not in error
        other.close()  # the mount is free again: the sink takes it on its next try
        wait_until(state_is(sink, "live"), 20, what="live after the mount was freed")
    finally:
        feeder.stop()
        sink.close()
        other.close()
    feeder.assert_never_blocked()


def test_source_client_errors_are_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    source = IcecastSource(f"http://127.0.0.1:{port}", "/x.ogg", "source", "pw")
    with pytest.raises(IcecastError, match=r"cannot reach Icecast at 127.0.0.1:\d+"):
        source.connect()


class StalledServer:
    """Accepts a source PUT, says 100 Continue, then never reads: a link that stops moving."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        # A tiny receive window: the sender's buffers fill after a few kilobytes.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(1)
                if not chunk:
                    break
                head += chunk
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def test_stalled_link_drops_blocks_and_never_blocks(cfg_factory, tmp_path, corpus) -> None:  # noqa: F811
    audio = read_int16(corpus.speech(22, sentences=5))
    server = StalledServer()
    secret = tmp_path / "pw"
    secret.write_text("pw")
    secret.chmod(0o600)
    cfg = cfg_factory(radio={"live": True, "url": f"http://127.0.0.1:{server.port}",
                             "password_file": str(secret), "queue_seconds": 1.0})
    sink = RadioSink(
        cfg.radio, RATE, 1, backoff_initial=0.2, backoff_max=1.0,
        source_factory=lambda: IcecastSource.from_config(
            cfg.radio, send_timeout=3.0, send_buffer=4096
        ),
    )
    sink.start()
    try:
        wait_until(state_is(sink, "live"), 20, what="live on the stalled server")
        feeder = Feeder(sink, audio, speed=4.0, loop=True)
        wait_until(lambda: sink.status()["blocks_dropped"] > 10, 30, what="dropped blocks")
        wait_until(lambda: "stalled" in (sink.status()["last_error"] or ""), 30,
                   what="stall error")
        wait_until(lambda: sink.status()["reconnects"] >= 1, 30, what="a new connection")
        feeder.stop()
        status = sink.status()
    finally:
        sink.close()
        server.close()
    assert status["seconds_dropped"] > 0
    assert status["queued_seconds"] <= cfg.radio.queue_seconds
    assert "Icecast link stalled: nothing sent for 3 s" in status["last_error"]
    feeder.assert_never_blocked()


def test_set_live_off_hangs_up_and_on_again(icecast) -> None:  # noqa: F811
    sink = make_sink(icecast)
    feeder = Feeder(sink, np.zeros((RATE, 1), np.int16), loop=True)
    try:
        wait_until(state_is(sink, "live"), 20, what="live")
        sink.set_live(False)
        wait_until(state_is(sink, "off"), 20, what="off")
        wait_until(lambda: not icecast.source_connected(), 20, what="mount released")
        assert sink.status()["queued_seconds"] == 0
        sink.set_live(True)
        wait_until(state_is(sink, "live"), 20, what="live again")
        assert sink.status()["reconnects"] == 1
    finally:
        feeder.stop()
        sink.close()
    assert sink.status()["state"] == "off"


# --- the playlist ----------------------------------------------------------------------------


def add_recording(sync_root: Path, device: str, started: datetime, title: str,
                  seconds: float = 1.0, **extra: object) -> dict:
    """A real Vorbis file and a valid sidecar for it, where the publisher leaves them."""
    staged = sync_root / f".{device}-{started.timestamp()}.ogg"
    staged.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    with sf.SoundFile(str(staged), "w", RATE, 1, format="OGG", subtype="VORBIS") as f:
        f.write((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16))
    # A tone this short has no Audio ID: give sidecar_for a stand-in instead of fingerprinting.
    doc = sidecar_for(staged, device_id=device, started=started.timestamp(),
                      fingerprint={"algorithm": "none"})
    doc.update(title=title, duration=seconds, **extra)
    media = sync_root / device / doc["path"]
    media.parent.mkdir(parents=True, exist_ok=True)
    staged.replace(media)
    media.with_suffix(".json").write_text(sidecar.dumps(doc))
    return doc


def test_playlist_newest_first_skips_duplicates_and_is_valid(cfg_factory) -> None:
    ffmpeg, ffprobe = need("ffmpeg"), need("ffprobe", "ffmpeg")
    cfg = cfg_factory(radio={"playlist_length": 3, "playlist_max_age_days": 7})
    root = cfg.storage.sync_root
    now = datetime.now(UTC)
    own, peer = cfg.device.id, "peerdev02"
    a = add_recording(root, own, now - timedelta(hours=3), "Morning news", 1.0)
    b = add_recording(root, peer, now - timedelta(hours=2), "Harvest talk\nsecond line", 1.5)
    add_recording(root, own, now - timedelta(hours=1), "Same story again", 1.0,
                  duplicate_of=b["recording_id"])
    add_recording(root, peer, now - timedelta(days=9), "Too old")
    # Things the scan must ignore: a conflict copy, garbage, a peer speaking for another device.
    conflict = root / own / Path(a["path"]).with_suffix(".sync-conflict-20261128-AAAAAAA.json")
    conflict.write_text(sidecar.dumps({**a, "title": "conflict"}))
    (root / own / "recordings" / "junk.json").write_text("{not json")
    liar = add_recording(root, peer, now - timedelta(minutes=5), "Impostor")
    (root / peer / liar["path"]).with_suffix(".json").write_text(
        sidecar.dumps({**liar, "device_id": "otherdev"})
    )

    assert playlist.write_playlist(radio_settings(cfg)) is True
    folder = root / own / "radio"
    m3u = (folder / "playlist.m3u").read_text()
    parsed = playlist.parse_m3u(m3u)
    assert m3u.startswith("#EXTM3U\n")
    assert [t for _, t, _ in parsed] == ["Harvest talk second line", "Morning news"]
    assert [s for s, _, _ in parsed] == [2, 1]
    assert parsed[0][2] == f"../../{peer}/{b['path']}"
    doc = json.loads((folder / "playlist.json").read_text())
    assert [e["recording_id"] for e in doc["entries"]] == [b["recording_id"], a["recording_id"]]
    assert [e["location"] for e in doc["entries"]] == [loc for _, _, loc in parsed]

    # ffmpeg reads it as a playlist (HLS demuxer, local entries) and plays every entry.
    probe = subprocess.run([ffprobe, "-v", "error", "-f", "hls", "-show_streams", "-of", "json",
                            str(folder / "playlist.m3u")], capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["streams"][0]["codec_name"] == "vorbis"
    out = folder.parent / "all.wav"
    play = subprocess.run([ffmpeg, "-v", "error", "-f", "hls", "-i", str(folder / "playlist.m3u"),
                           "-y", str(out)], capture_output=True, text=True, timeout=60)
    assert play.returncode == 0, play.stderr
    assert sf.info(str(out)).duration == pytest.approx(2.5, abs=0.1)

    # Unchanged input: no rewrite. A new recording: it comes first.
    mtime = (folder / "playlist.m3u").stat().st_mtime_ns
    assert playlist.write_playlist(radio_settings(cfg)) is False
    assert (folder / "playlist.m3u").stat().st_mtime_ns == mtime
    c = add_recording(root, own, now - timedelta(minutes=1), "Just now")
    assert playlist.write_playlist(radio_settings(cfg)) is True
    parsed = playlist.parse_m3u((folder / "playlist.m3u").read_text())
    assert [t for _, t, _ in parsed] == ["Just now", "Harvest talk second line", "Morning news"]
    assert parsed[0][2] == f"../recordings/{c['path'].split('recordings/', 1)[1]}"


def test_playlist_length_and_urls() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    records = [
        {"recording_id": f"r{i}", "device_id": "dev1", "title": f"t{i}", "duration": 10.4,
         "path": f"recordings/2026/11/28/n{i}.ogg",
         "started_at": sidecar.utc_iso((now - timedelta(hours=i)).timestamp())}
        for i in range(5)
    ]
    chosen = playlist.select(records, length=2, max_age_days=30, now=now)
    assert [r.recording_id for r in chosen] == ["r0", "r1"]
    items = playlist.entries(chosen, "dev1", base_url="http://radio.local/")
    assert items[0].location == "http://radio.local/dev1/recordings/2026/11/28/n0.ogg"
    local = playlist.entries(chosen, "dev2")
    assert local[0].location == "../../dev1/recordings/2026/11/28/n0.ogg"
    assert playlist.parse_m3u(playlist.render_m3u(items)) == [
        (10, "t0", items[0].location), (10, "t1", items[1].location)
    ]


def test_dither_touches_only_near_silent_blocks() -> None:
    from recorder.radio.oggstream import Dither

    dither = Dither()
    silent = np.zeros((4096, 1), np.int16)
    out = dither.process(silent)
    assert 0 < np.abs(out).max() <= 3 and abs(float(out.std()) - 2.0) < 0.2
    loud = np.full((4096, 1), 5000, np.int16)
    assert dither.process(loud) is loud
    assert dither.process(np.zeros((100_000, 1), np.int16)).shape == (100_000, 1)


def test_silent_input_still_reaches_listeners_within_two_seconds() -> None:
    """Vorbis pages keep coming for digital silence (dithered): without it, 8-9 s late."""
    enc = OggStreamEncoder(RATE, 1, "vorbis", vorbis_quality=2.0, half_rate=True)
    block = np.zeros((RATE // 10, 1), np.int16)
    pages_at = [i / 10 for i in range(100) if enc.encode(block)]
    enc.close()
    gaps = np.diff([0.0, *pages_at])
    assert len(pages_at) >= 5 and gaps.max() < 2.0, pages_at
