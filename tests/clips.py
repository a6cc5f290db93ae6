"""Known audio for tests: espeak-ng speech at 48 kHz mono, and synthetic signals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import need

RATE = 48000
TEXT = (
    "The cook heats the oil, adds mustard seeds and curry leaves, then the rice. "
    "Squeeze a lemon over it, add salt, and serve it warm to your neighbours. "
)


def speech(path: Path, text: str = TEXT, voice: str = "en-us", repeat: int = 1) -> np.ndarray:
    """Synthesize `text` with espeak-ng, resample to 48 kHz mono int16, write WAV to `path`."""
    espeak = need("espeak-ng")
    sox = need("sox")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run([espeak, "-v", voice, "-s", "160", "-w", str(raw), text * repeat], check=True,
                   timeout=120)
    subprocess.run([sox, str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path)], check=True,
                   timeout=120)
    raw.unlink()
    data, rate = sf.read(path, dtype="int16")
    assert rate == RATE
    return data


def tone(seconds: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def write_wav(path: Path, data: np.ndarray, rate: int = RATE) -> Path:
    sf.write(path, data, rate, subtype="PCM_16")
    return path


def best_lag(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Lag of `needle` inside `haystack` by FFT cross-correlation, with normalised peak value."""
    a = haystack.astype(np.float64).ravel()
    b = needle.astype(np.float64).ravel()
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)[: len(a)]
    lag = int(np.argmax(corr))
    seg = a[lag : lag + len(b)]
    denom = np.linalg.norm(seg) * np.linalg.norm(b[: len(seg)]) or 1.0
    return lag, float(np.dot(seg, b[: len(seg)]) / denom)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 10 s of speech, 48 kHz mono WAV."""
    path = tmp_path_factory.mktemp("clips") / "speech.wav"
    speech(path)
    return path


@pytest.fixture(scope="session")
def long_speech_wav(tmp_path_factory) -> Path:
    """About 30 s of speech."""
    path = tmp_path_factory.mktemp("clips") / "speech30.wav"
    speech(path, repeat=3)
    return path
