"""The recording pipeline end to end with a file source: encode, publish, limits, bad input."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder import app, sidecar
from recorder.config import SourceSpec
from recorder.errors import DiskReserveError
from recorder.pump import Pump
from recorder.storage import Reserve
from tests.clips import RATE, best_lag, tone, write_wav
from tests.conftest import run_cli, wait_until


def published(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "sync").rglob("*.ogg"))


def make_pump(cfg, wav, *, realtime: bool = True, free=None) -> Pump:
    """The pump `recorder record` builds, on the file `wav` (optionally a fake free space)."""
    parts = app.assemble(cfg)
    if free is not None:
        parts.reserve = Reserve(cfg.storage.sync_root, cfg.storage.reserve_mb, free=free)
    return app.build_pump(parts, cfg.audio, source=SourceSpec.parse(f"file:{wav}"),
                          realtime=realtime)


def test_record_file_publishes_identical_audio_with_sidecar(config_file, speech_wav):
    cfg_path, data = config_file(audio={"preroll": 0.0})
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{speech_wav}", "--fast",
                   "--title", "Lemon rice", "--tag", "Recipe", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ogg = Path(out["path"])
    assert ogg.parent.relative_to(data / "sync" / "testdev01" / "recordings")
    original, _ = sf.read(speech_wav, dtype="int16")
    decoded, rate = sf.read(ogg, dtype="int16")
    assert rate == RATE and len(decoded) == len(original)
    lag, corr = best_lag(decoded, original)
    assert lag == 0 and corr > 0.98
    doc = sidecar.loads(ogg.with_suffix(".json").read_bytes())
    assert doc["frames"] == len(original)
    assert doc["title"] == "Lemon rice" and doc["tags"] == ["Recipe"]
    assert doc["path"] == str(ogg.relative_to(data / "sync" / "testdev01"))
    assert doc["stop_reason"] == "end_of_input" and doc["recovered"] is False
    assert doc["levels"]["silent"] is False
    assert doc["overflows"] == {"input": 0, "ring_frames": 0}
    import hashlib

    assert doc["sha256"] == hashlib.sha256(ogg.read_bytes()).hexdigest()
    assert doc["bytes"] == ogg.stat().st_size
    with sf.SoundFile(ogg) as f:  # Vorbis comments
        assert f.title == "Lemon rice"
        assert f.comment == f"recording_id={doc['recording_id']}"
        assert f.date == doc["started_at"]
    # Name: <UTC>_<device>_<short id>.ogg, sortable.
    assert ogg.name.split("_")[1] == "testdev01" and ogg.stem.endswith(doc["recording_id"][-8:])
    assert not list((data / "staging").iterdir())


def test_opus_codec(config_file, speech_wav):
    cfg_path, _data = config_file(encoder={"codec": "opus", "opus_bitrate": 24})
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{speech_wav}", "--fast")
    assert proc.returncode == 0, proc.stderr
    ogg = Path(proc.stdout.strip())
    with sf.SoundFile(ogg) as f:
        assert f.subtype == "OPUS"
    assert json.loads(ogg.with_suffix(".json").read_text())["codec"] == "opus"


def test_watcher_never_sees_partial_files(cfg_factory, speech_wav):
    """Poll the device folder during a real-time recording: a file is only ever seen whole,
    and a sidecar never before its OGG."""
    cfg = cfg_factory(audio={"preroll": 0.0})
    folder = cfg.layout.device_folder
    seen: list[tuple[str, int]] = []
    passes: list[set[str]] = []  # the names one scan of the folder found
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if folder.exists():
                names = set()
                for p in folder.rglob("*"):
                    if p.is_file():
                        try:
                            seen.append((p.name, p.stat().st_size))
                        except FileNotFoundError:
                            seen.append((p.name, -1))
                        names.add(p.name)
                passes.append(names)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    pump = make_pump(cfg, speech_wav)
    handle = pump.start_recording("test", max_seconds=4.0)
    pump.start()
    result = handle.done.result(timeout=30)
    time.sleep(0.05)
    stop.set()
    watcher.join()
    pump.close()
    final = {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert set(final) == {result.ogg_path.name, result.sidecar_path.name}
    for name, size in seen:
        assert name in final, f"a temporary name was visible: {name}"
        assert size == final[name], f"{name} seen at {size} bytes, final {final[name]}"
    # A scan that found the sidecar found its OGG too (the OGG is renamed into place first).
    for names in passes:
        if result.sidecar_path.name in names:
            assert result.ogg_path.name in names
    assert result.sidecar["stop_reason"] == "max_length"
    assert result.sidecar["duration"] == pytest.approx(4.0, abs=0.001)


def test_preroll_includes_audio_before_the_trigger(cfg_factory, tmp_path):
    """A marker tone played 2 s before the trigger is inside the recording (3 s pre-roll)."""
    clip = np.zeros(RATE * 8, dtype=np.int16)
    clip[RATE * 1 : RATE * 1 + RATE // 2] = tone(0.5, 1000)
    path = write_wav(tmp_path / "marker.wav", clip)
    cfg = cfg_factory(audio={"preroll": 3.0})
    pump = make_pump(cfg, path)
    pump.start()
    # Trigger 3 s in: the marker was 1.5-2 s ago.
    wait_until(lambda: pump.ring.write_pos >= RATE * 3, 30, 0.01, "3 s of audio")
    handle = pump.start_recording("test", max_seconds=4.0)
    result = handle.done.result(timeout=30)
    pump.close()
    audio, _ = sf.read(result.ogg_path, dtype="int16")
    assert result.sidecar["preroll"] == pytest.approx(3.0, abs=0.1)
    level = np.abs(audio[: int(RATE * 2.5)].astype(np.float64))
    onset = int(np.argmax(level > 3000)) / RATE
    trigger_at = result.sidecar["preroll"]
    # The marker started 1 s into the file; the recording starts about 0 s into it.
    assert level.max() > 3000, "marker before the trigger missing from the recording"
    assert trigger_at - onset >= 1.8


def test_disk_reserve_refuses_to_start(config_file, speech_wav):
    cfg_path, data = config_file(storage={"reserve_mb": 10**7})  # 10 TB reserve
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{speech_wav}", "--fast")
    assert proc.returncode == 4
    assert "reserve" in proc.stderr and proc.stderr.count("\n") == 1
    assert published(data) == []


def test_reaching_reserve_mid_recording_finishes_cleanly(cfg_factory, long_speech_wav):
    cfg = cfg_factory(storage={"reserve_mb": 100})
    calls = {"n": 0}

    def free(_path):
        calls["n"] += 1
        return 10**12 if calls["n"] < 3 else 10 * 1024 * 1024  # then 10 MB: below reserve

    pump = make_pump(cfg, long_speech_wav, free=free)
    handle = pump.start_recording("test")
    pump.start()
    result = handle.done.result(timeout=30)
    pump.close()
    assert result.sidecar["stop_reason"] == "disk_reserve"
    assert 0.5 < result.sidecar["duration"] < 5
    assert sf.info(result.ogg_path).frames == result.sidecar["frames"]
    with pytest.raises(DiskReserveError):
        pump.start_recording("again")


def test_unreadable_and_missing_sources_are_clear_errors(config_file, tmp_path):
    cfg_path, data = config_file()
    missing = run_cli("--config", cfg_path, "record", "--source", f"file:{tmp_path}/nope.wav")
    assert missing.returncode == 5 and "no such file" in missing.stderr
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    bad = run_cli("--config", cfg_path, "record", "--source", f"file:{junk}")
    assert bad.returncode == 5 and "cannot decode" in bad.stderr
    assert bad.stderr.count("\n") == 1
    device = run_cli("--config", cfg_path, "record", "--source", "no-such-microphone-xyz")
    assert device.returncode == 3, device.stderr
    assert "no input device matches 'no-such-microphone-xyz'" in device.stderr
    assert published(data) == []


def test_demo_runs_without_a_sound_card(tmp_path):
    proc = run_cli("demo", "--data-dir", str(tmp_path / "demo"), "--json",
                   env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PULSE_SERVER": "none",
                        "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    # The appliance demo: a press, a long press (bookmark), a press; with 3 s of pre-roll.
    assert out["duration"] > 10 and Path(out["path"]).is_file()
    assert len(out["bookmarks"]) == 1 and out["stop_reason"] == "stopped"
