"""Costs of issue 12's safeguards, as ratios against standard tools run side by side.

    python3 -m tests.bench.bench_robust

- resampling a file source (60 s of 44.1 kHz stereo speech to 48 kHz mono, libsoxr HQ, as
  `FileSource` streams it) against ``sox in.wav -r 48000 -c 1 out.wav``;
- the bridge's check of a peer recording (sha256, decode to the end, fingerprint, compare with
  the claimed Audio ID) on a 60 s Vorbis q4 OGG, against ``oggdec`` decoding the same file and
  against hashing it alone (what the bridge did before);
- rebuilding a 60 s recording from its journal (`recorder recover`) against ``oggenc -q4``.

CPU seconds (user + system, children included for the tools), median of 3, interleaved.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.cli.record import demo_clip

SECONDS = 60


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(fn: Callable[[], object]) -> float:
    before = _cpu()
    fn()
    return _cpu() - before


def _speech(rate: int, channels: int) -> np.ndarray:
    audio, clip_rate = sf.read(demo_clip(), dtype="int16")
    audio = np.resize(audio, clip_rate * SECONDS)
    if rate != clip_rate:
        import soxr

        audio = soxr.resample(audio, clip_rate, rate).astype(np.int16)
    return np.repeat(audio[:, None], channels, axis=1)


def _drain_file_source(path: Path) -> int:
    from recorder.audioformat import AudioFormat
    from recorder.sources.file import FileSource

    src = FileSource(path, AudioFormat(48000, 1), realtime=False)
    frames = 0
    with sf.SoundFile(str(path)) as f:
        for block in src._converted(f):
            frames += len(block)
    return frames


def main() -> None:
    tools = {t: shutil.which(t) for t in ("sox", "oggdec", "oggenc")}
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)} (apt-get install sox vorbis-tools)")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-robust-") as tmp:
        root = Path(tmp)
        wide = root / "in44.wav"
        sf.write(wide, _speech(44100, 2), 44100, subtype="PCM_16")
        mono = _speech(48000, 1)
        wav48 = root / "in48.wav"
        sf.write(wav48, mono, 48000, subtype="PCM_16")
        ogg = root / "rec.ogg"
        subprocess.run([tools["oggenc"], "-Q", "-q4", "-o", str(ogg), str(wav48)], check=True)

        # 1. resampling a file source
        ours, sox = [], []
        for _ in range(3):
            ours.append(_measure(lambda: _drain_file_source(wide)))
            sox.append(_measure(lambda: subprocess.run(
                [tools["sox"], str(wide), "-r", "48000", "-c", "1", str(root / "o.wav")],
                check=True)))
        out["resample_cpu_s_per_audio_s"] = round(statistics.median(ours) / SECONDS, 5)
        out["sox_resample_cpu_s_per_audio_s"] = round(statistics.median(sox) / SECONDS, 5)
        out["resample_ratio_to_sox"] = round(statistics.median(ours) / statistics.median(sox), 2)

        # 2. the bridge's check of a peer recording
        from recorder.audioid.chroma import fingerprint_file
        from recorder.mesh.exchange.bridge import _verify_audio

        data = ogg.read_bytes()
        info = sf.info(str(ogg))
        doc = {"sha256": hashlib.sha256(data).hexdigest(), "samplerate": info.samplerate,
               "channels": info.channels, "duration": info.frames / info.samplerate,
               "audio_id": fingerprint_file(ogg).audio_id()}
        check, dec, sha = [], [], []
        for _ in range(3):
            check.append(_measure(lambda: _verify_audio(ogg, doc, None, 0.15)))
            dec.append(_measure(lambda: subprocess.run(
                [tools["oggdec"], "-Q", "-o", str(root / "d.wav"), str(ogg)], check=True)))
            sha.append(_measure(lambda: hashlib.sha256(ogg.read_bytes()).hexdigest()))
        out["peer_check_ms_per_minute"] = round(statistics.median(check) * 1000, 1)
        out["oggdec_ms_per_minute"] = round(statistics.median(dec) * 1000, 1)
        out["sha256_only_ms_per_minute"] = round(statistics.median(sha) * 1000, 2)
        out["peer_check_ratio_to_oggdec"] = round(statistics.median(check) /
                                                  statistics.median(dec), 2)

        # 3. rebuilding from the journal
        from recorder import app
        from recorder.config import parse_config
        from recorder.recover import recover
        from recorder.sidecar import SCHEMA, new_recording_id

        rebuild, enc = [], []
        for i in range(3):
            data_dir = root / f"data{i}"
            staging = data_dir / "staging"
            staging.mkdir(parents=True)
            rid = new_recording_id()
            meta = {"schema": SCHEMA, "recording_id": rid, "device_id": "bench",
                    "path": f"recordings/2026/01/01/20260101T000000Z_bench_{rid[-8:]}.ogg",
                    "media_type": "audio/ogg", "codec": "vorbis", "samplerate": 48000,
                    "channels": 1, "started_at": "2026-01-01T00:00:00.000Z",
                    "clock_synced": True, "boot_id": "b", "monotonic_start": 0.0,
                    "trigger": "cli", "preroll": 0.0, "title": "", "tags": [],
                    "bookmarks": []}
            (staging / f"{rid}.meta.json").write_text(json.dumps(meta))
            (staging / f"{rid}.pcm").write_bytes(mono.astype("<i2").tobytes())
            cfg = parse_config({"device": {"id": "bench"},
                                "storage": {"data_dir": str(data_dir), "reserve_mb": 0}})
            parts = app.assemble(cfg)
            rebuild.append(_measure(lambda parts=parts: recover(
                parts.recovery, parts.publisher, parts.sink_factories)))
            parts.close()
            enc.append(_measure(lambda: subprocess.run(
                [tools["oggenc"], "-Q", "-q4", "-o", str(root / "e.ogg"), str(wav48)],
                check=True)))
        out["rebuild_cpu_s_per_audio_s"] = round(statistics.median(rebuild) / SECONDS, 5)
        out["oggenc_cpu_s_per_audio_s"] = round(statistics.median(enc) / SECONDS, 5)
        out["rebuild_ratio_to_oggenc"] = round(statistics.median(rebuild) /
                                               statistics.median(enc), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
