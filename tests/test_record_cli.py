"""README promises of the recording commands, through the command line: Ctrl-C publishes, exit
130, `demo --quick`, `devices`, `storage.max_seconds`, levels in dBFS, the `write_error` stop
reason, publishing without Syncthing, and the memory target."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.clips import RATE, tone, write_wav
from tests.conftest import free_port, run_cli, wait_until

REPO = Path(__file__).resolve().parent.parent
JOURNAL_BYTES_PER_SECOND = RATE * 2  # the crash journal is raw s16 mono


def recorder(cfg_path: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg_path, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def journal_seconds(data: Path) -> float:
    """Seconds of audio in the crash journal of the recording in progress (0 before it)."""
    journals = list((data / "staging").glob("*.pcm"))
    return journals[0].stat().st_size / JOURNAL_BYTES_PER_SECOND if journals else 0.0


def sidecar_of(summary_json: str) -> dict:
    return json.loads(Path(json.loads(summary_json)["sidecar"]).read_text())


def test_ctrl_c_stops_and_publishes(config_file, long_speech_wav):
    cfg_path, data = config_file(audio={"preroll": 0.0})
    proc = recorder(cfg_path, "record", "--source", f"file:{long_speech_wav}", "--json")
    try:
        wait_until(lambda: journal_seconds(data) >= 1.5 or proc.poll() is not None, 30,
                   what="1.5 s recorded")
        assert proc.poll() is None, finish(proc)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    doc = sidecar_of(out)
    assert doc["stop_reason"] == "stopped" and doc["trigger"] == "cli"
    assert doc["duration"] >= 1.5
    total = sf.info(long_speech_wav).duration
    assert doc["duration"] < total - 5  # it stopped at the Ctrl-C, not at the end of the file
    assert Path(json.loads(out)["path"]).is_file()
    assert not any((data / "staging").iterdir())


def test_interrupted_demo_exits_130_and_keeps_the_recording(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PULSE_SERVER": "none",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "demo", "--data-dir",
                             str(tmp_path / "demo")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # The service logs the start of the recording (the first simulated press): interrupt
        # while it records.
        while "started (button)" not in (line := proc.stderr.readline()):
            assert line, finish(proc)
        proc.send_signal(signal.SIGINT)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    # The service shut down cleanly: what was recorded is published, staging is empty.
    docs = [json.loads(p.read_text()) for p in (tmp_path / "demo" / "sync").rglob("*.json")
            if "recordings" in p.parts]
    assert [d["stop_reason"] for d in docs] == ["shutdown"]
    assert not any((tmp_path / "demo" / "staging").iterdir())


def test_demo_quick_records_the_bundled_clip(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PULSE_SERVER": "none",
           "PYTHONPATH": str(REPO)}
    proc = run_cli("demo", "--quick", "--data-dir", str(tmp_path / "demo"), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ogg = Path(out["path"])
    assert ogg.is_relative_to(tmp_path / "demo" / "sync" / "demo-device" / "recordings")
    clip = sf.info(str(REPO / "recorder" / "data" / "demo-speech.ogg"))
    doc = json.loads(Path(out["sidecar"]).read_text())
    # The whole bundled clip, no pre-roll, through the whole pipeline.
    assert doc["frames"] == clip.frames and doc["stop_reason"] == "end_of_input"
    assert doc["trigger"] == "demo" and doc["preroll"] == 0
    assert doc["title"] == "Lemon rice (demo)" and doc["tags"] == ["demo", "recipe"]
    assert doc["audio_id"]["fingerprint"] and sf.info(str(ogg)).frames == clip.frames
    text = run_cli("demo", "--quick", "--data-dir", str(tmp_path / "demo"), env=env)
    assert text.returncode == 0, text.stderr
    assert "published " in text.stdout and "audio id chromaprint" in text.stdout
    # The second take is the same audio: kept, and marked as a duplicate of the first.
    assert f"same audio as recording {doc['recording_id']}" in text.stdout


def test_devices_lists_the_portaudio_inputs(pulse):
    import sounddevice as sd

    proc = run_cli("devices", "--json", env={**os.environ, **pulse.env()})
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    expected = {d["name"] for d in sd.query_devices() if d["max_input_channels"] > 0}
    assert {d["name"] for d in listed} == expected and {"pulse", "default"} <= expected
    for d in listed:
        assert d["channels"] > 0 and d["default_samplerate"] > 0 and d["hostapi"] == "ALSA"
        assert sd.query_devices(d["index"])["name"] == d["name"]
    text = run_cli("devices", env={**os.environ, **pulse.env()})
    assert text.returncode == 0
    pulse_line = next(line for line in text.stdout.splitlines() if "] pulse (" in line)
    assert pulse_line.startswith("[") and "ALSA" in pulse_line and " Hz)" in pulse_line


def test_max_seconds_finishes_and_publishes(config_file, speech_wav):
    # Real time, as a microphone delivers. (With --fast the stop reason comes out as
    # end_of_input when the pump's start-up catch-up already filled the recording: reported.)
    cfg_path, _ = config_file(audio={"preroll": 0.0}, storage={"max_seconds": 2})
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{speech_wav}", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = sidecar_of(proc.stdout)
    assert doc["stop_reason"] == "max_length" and doc["frames"] == 2 * RATE


def test_service_max_seconds_then_a_new_recording_may_start(file_service):
    svc = file_service(storage={"max_seconds": 2})
    assert svc.ctl("start").returncode == 0
    (first,) = svc.wait_published(1)
    assert first["stop_reason"] == "max_length" and first["frames"] == 2 * RATE
    svc.wait_state("idle")
    assert svc.ctl("start").returncode == 0
    assert svc.ctl("stop").returncode == 0
    docs = svc.wait_published(2)
    assert [d["stop_reason"] for d in docs] == ["max_length", "stopped"]


def dbfs(x: float) -> float:
    return 20 * math.log10(x) if x > 1e-6 else -120.0


@pytest.mark.parametrize("kind", ["sine", "clipped", "silence"])
def test_levels_in_dbfs(config_file, tmp_path, kind):
    """README: peak and RMS in dBFS (full scale = 32768), the fraction of samples at the rails,
    and `silent`; computed here from the samples written."""
    if kind == "sine":
        audio = tone(2.0, 440, 0.1)  # -20 dBFS peak, -23 dBFS RMS
    elif kind == "clipped":  # a 440 Hz sine driven 1.5x past full scale, after a quiet second
        t = np.arange(RATE) / RATE
        loud = np.clip(np.sin(2 * np.pi * 440 * t) * 1.5 * 32767, -32767, 32767)
        audio = np.concatenate([tone(1.0, 440, 0.25), loud.astype(np.int16)])
    else:
        audio = np.zeros(2 * RATE, np.int16)
    wav = write_wav(tmp_path / f"{kind}.wav", audio)
    cfg_path, _ = config_file(audio={"preroll": 0.0}, audioid={"enabled": False})
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{wav}", "--fast", "--json")
    assert proc.returncode == 0, proc.stderr
    levels = sidecar_of(proc.stdout)["levels"]
    x = audio.astype(np.float64)
    peak = np.abs(x).max() / 32768
    rms = math.sqrt(float(np.mean(x * x))) / 32768
    clipped = np.count_nonzero(np.abs(x) >= 32767) / len(x)
    assert levels["peak_dbfs"] == pytest.approx(dbfs(peak), abs=0.01)
    assert levels["rms_dbfs"] == pytest.approx(dbfs(rms), abs=0.01)
    assert levels["clipped_fraction"] == pytest.approx(clipped, abs=1e-6)
    assert levels["silent"] is (kind == "silence")
    if kind == "sine":
        assert levels["peak_dbfs"] == pytest.approx(-20.0, abs=0.01)
        assert levels["rms_dbfs"] == pytest.approx(-23.01, abs=0.01)
        assert levels["clipped_fraction"] == 0
    if kind == "clipped":
        assert 0.2 < levels["clipped_fraction"] < 0.5 and levels["peak_dbfs"] > -0.01


def test_write_error_finishes_with_what_was_recorded(config_file, long_speech_wav):
    """A write that fails mid-recording (here: the file size limit, as a full disk would) ends
    the recording with stop reason write_error; what was recorded is published."""
    cfg_path, data = config_file(audio={"preroll": 0.0})
    limit = 3 * JOURNAL_BYTES_PER_SECOND  # the journal may grow to 3 s

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    # Real time: with --fast the failing write can be the pump's start-up catch-up, which
    # has no error handling (the pump thread dies and record hangs: reported).
    proc = recorder(cfg_path, "record", "--source", f"file:{long_speech_wav}", "--json",
                    preexec_fn=limit_file_size)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    doc = sidecar_of(out)
    assert doc["stop_reason"] == "write_error"
    assert 1.0 < doc["duration"] <= 3.0 + 0.1
    assert sf.info(json.loads(out)["path"]).frames == doc["frames"]
    assert not any((data / "staging").iterdir())


def test_publishing_never_depends_on_syncthing(config_file, speech_wav, tmp_path):
    key = tmp_path / "syncthing.key"
    key.write_text("not-a-real-key\n")
    key.chmod(0o600)
    cfg_path, _ = config_file(audio={"preroll": 0.0}, syncthing={
        "url": f"http://127.0.0.1:{free_port()}", "api_key_file": str(key)})
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{speech_wav}", "--fast",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    doc = sidecar_of(proc.stdout)
    assert doc["stop_reason"] == "end_of_input"
    assert Path(json.loads(proc.stdout)["path"]).is_file()


# Forks `recorder` from this small process and reports the child's peak RSS as the kernel
# counts it (wait4). Forked straight from pytest, ru_maxrss would start at pytest's own size:
# a forked process inherits its parent's high-water mark, and exec keeps it.
_PEAK_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "recorder", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_peak_memory_of_a_long_recording(config_file, tmp_path):
    """README: `recorder record` stays under 96 MB resident, and flat, however long it runs
    (80 MB before the landmark Audio ID: its index is written when an hour's recording is
    published, about 14 MB more for a moment; while recording it stays flat at ~66 MB).
    An hour of audio (16 kHz to keep CI short) replayed as fast as possible; the peak is the
    kernel's high-water mark of that process, RSS is sampled for growth."""
    rate = 16000
    path = tmp_path / "hour.wav"
    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        minute = (tone(60, 300, 0.2)[: rate * 60] // 2
                  + rng.integers(-800, 800, rate * 60).astype(np.int16))
        for _ in range(60):
            f.write(minute)
    cfg_path, _data = config_file(audio={"preroll": 0.0, "samplerate": rate})
    out_file, err_file, peak_file = (tmp_path / n for n in ("out.json", "err.log", "peak"))
    with open(out_file, "w") as out, open(err_file, "w") as err:  # never a full pipe
        launcher = subprocess.Popen(
            [sys.executable, "-c", _PEAK_RSS_LAUNCHER, str(peak_file), "--config", cfg_path,
             "record", "--source", f"file:{path}", "--fast", "--json"], stdout=out, stderr=err)
    samples: list[int] = []
    try:
        child = wait_until(lambda: _only_child(launcher.pid) or launcher.poll() is not None, 30,
                           0.01, what="the recorder process")
        while launcher.poll() is None:
            try:
                status_text = Path(f"/proc/{child}/status").read_text()
                samples.append(int(status_text.split("VmRSS:")[1].split()[0]) // 1024)
            except (OSError, IndexError, TypeError):
                pass
            time.sleep(0.25)
        launcher.wait(600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(30)
    assert launcher.returncode == 0, err_file.read_text()[-3000:]
    doc = json.loads(out_file.read_text())
    # The whole hour went through. (--fast may lose a few seconds at the very start to the
    # pump's start-up race, counted in overflows.ring_frames: reported, not this test's point.)
    assert doc["stop_reason"] == "end_of_input" and doc["duration"] > 3590
    peak_mb = int(peak_file.read_text()) / 1024  # KiB on Linux
    print(f"\npeak RSS {peak_mb:.1f} MB over an hour of audio (sampled max {max(samples)} MB)")
    assert peak_mb < 96, f"peak RSS {peak_mb:.1f} MB"
    steady = samples[len(samples) // 10 :]
    assert len(steady) > 10
    assert max(steady) - min(steady) < 16, f"RSS grew: {min(steady)} -> {max(steady)} MB"


def _only_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None
