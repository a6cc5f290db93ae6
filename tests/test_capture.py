"""Capture through real PortAudio: a PulseAudio pipe source fed with a known clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from recorder import sidecar
from tests.clips import best_lag
from tests.pulse import PIPE_SOURCE


def test_portaudio_capture_publishes_the_fed_clip(pulse, config_file, speech_wav):
    clip, rate = sf.read(speech_wav, dtype="int16")
    cfg_path, data = config_file(audio={"preroll": 0.0, "source": "pulse"})
    env = {**os.environ, **pulse.env(source=PIPE_SOURCE)}
    silence = pulse.feed_silence_forever()  # the pipe source only clocks while written
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", "--config", cfg_path, "record", "--seconds",
         str(len(clip) / rate + 3), "--json"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not list((data / "staging").glob("*.meta.json")):
            assert proc.poll() is None, proc.communicate(timeout=30)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        silence.stop()
        silence.join(5)
        feed = pulse.feed(clip)
        feed.join(len(clip) / rate + 10)
        silence = pulse.feed_silence_forever()
        out, err = proc.communicate(timeout=60)
    finally:
        silence.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    result = json.loads(out)
    audio, got_rate = sf.read(result["path"], dtype="int16")
    assert got_rate == 48000
    _lag, corr = best_lag(audio, clip)
    assert corr > 0.98, corr  # Vorbis q4 of the exact samples
    doc = sidecar.loads(Path(result["sidecar"]).read_bytes())
    assert doc["duration"] >= len(clip) / rate
    assert doc["trigger"] == "cli"
    assert doc["overflows"]["input"] == 0 and doc["overflows"]["ring_frames"] == 0
