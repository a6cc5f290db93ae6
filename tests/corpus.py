"""The Audio ID test corpus: speech, music-like signals and noise, plus their degraded copies.

Sources are generated, never committed: espeak-ng speech (several voices, texts that share no
sentence), synthetic melodies with harmonics and percussion, and noise, all 48 kHz mono WAV.
Variants are made from them the way audio really travels between devices: re-encoded with the
codecs and bitrates the appliance uses (soundfile Vorbis q1-q6, Opus 24-64 kbps), trimmed to
excerpts, gain-changed and with added noise. Every file is cached by name in the corpus
directory, so a session builds each one once.

Use the session fixture ``corpus`` in tests (``from tests.corpus import corpus``), or
``Corpus(directory)`` elsewhere (the benchmark).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

RATE = 48000
WRITE_BLOCK = 4096  # libvorbis crashes on huge single writes (shared/audio-stack.md, trap 1)

VOICES = ("en-us", "en-gb-scotland", "en+f3", "en-gb-x-rp")

_SUBJECTS = (
    "the farmer", "my grandmother", "the teacher", "a fisherman", "the weaver", "our neighbour",
    "the potter", "a young girl", "the old boatman", "the shopkeeper", "a street singer",
    "the midwife", "the carpenter", "a cowherd", "the baker", "the radio host",
)
_VERBS = (
    "remembers", "carries", "paints", "sells", "repairs", "sings about", "cooks", "plants",
    "counts", "describes", "follows", "waits for", "builds", "mends", "finds", "teaches",
)
_OBJECTS = (
    "the red clay pots", "a basket of mangoes", "the morning rain", "an old bicycle",
    "the temple bells", "seven brown goats", "the village well", "a bright yellow kite",
    "the monsoon clouds", "a bowl of rice", "the river stones", "the evening market",
    "a pair of sandals", "the wooden bridge", "the coconut trees", "a box of letters",
)
_TAILS = (
    "before sunrise", "near the bus stand", "every single week", "after the long festival",
    "with great care", "during the harvest", "behind the school", "while it is still dark",
    "on the hill road", "for the whole family", "in the quiet afternoon", "beside the lake",
)


def text(index: int, sentences: int = 12) -> str:
    """Text number `index`: sentences no other index uses, so texts never share speech."""
    rng = random.Random(1000 + index)
    out = []
    for k in range(sentences):
        parts = (rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS))
        # The sentence number and text number make every sentence unique across texts.
        out.append(f"On day {index * 40 + k + 3}, {' '.join(parts)} {rng.choice(_TAILS)}.")
    return " ".join(out)


@dataclass(frozen=True)
class Clip:
    """A corpus file and what it is: `source` names the original, `offset` where it starts."""

    path: Path
    source: str
    offset: float = 0.0


class Corpus:
    """Generates and caches corpus files in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- sources -------------------------------------------------------------------------------

    def speech(self, text_index: int, voice: str = "en-us", sentences: int = 12) -> Path:
        """espeak-ng reading text `text_index` in `voice`, as 48 kHz mono WAV (20-60 s)."""
        out = self.root / f"speech_t{text_index}_{voice.replace('+', '_')}_{sentences}.wav"
        if out.exists():
            return out
        espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
        if not espeak or not sox:
            raise RuntimeError("espeak-ng and sox are needed to build the corpus")
        raw = out.with_suffix(".22k.wav")
        subprocess.run(
            [espeak, "-v", voice, "-s", "165", "-w", str(raw), text(text_index, sentences)],
            check=True, capture_output=True, timeout=120,
        )
        subprocess.run(
            [sox, str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)],
            check=True, capture_output=True, timeout=120,
        )
        raw.unlink()
        return out

    def music(self, seed: int, seconds: float = 40.0) -> Path:
        """A synthetic melody with harmonics, a bass line and percussion."""
        out = self.root / f"music_{seed}_{seconds:g}.wav"
        if out.exists():
            return out
        rng = np.random.default_rng(seed)
        n = int(seconds * RATE)
        signal = np.zeros(n)
        t_note = 60.0 / rng.uniform(80, 140) / 2  # eighth notes
        scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
        base = rng.uniform(180, 320)
        pos = 0
        while pos < n:
            length = min(int(t_note * RATE * rng.choice([1, 1, 2, 3])), n - pos)
            t = np.arange(length) / RATE
            f = base * 2 ** (rng.choice(scale) / 12)
            env = np.exp(-t * rng.uniform(2, 6)) * np.minimum(1, t * 200)
            note = sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 6))
            bass = 0.6 * np.sin(2 * np.pi * (f / 4) * t)
            signal[pos : pos + length] += env * (note + bass)
            if rng.random() < 0.5:  # a drum hit: a short noise burst
                hit = min(length, int(0.05 * RATE))
                signal[pos : pos + hit] += rng.normal(0, 0.6, hit) * np.exp(
                    -np.arange(hit) / (0.01 * RATE)
                )
            pos += length
        self._write_wav(out, signal / np.max(np.abs(signal)) * 0.7)
        return out

    def noise(self, seed: int, seconds: float = 30.0, colour: str = "pink") -> Path:
        """White or pink noise."""
        out = self.root / f"noise_{colour}_{seed}_{seconds:g}.wav"
        if out.exists():
            return out
        rng = np.random.default_rng(seed)
        white = rng.normal(0, 1, int(seconds * RATE))
        if colour == "pink":
            spec = np.fft.rfft(white)
            spec[1:] /= np.sqrt(np.arange(1, spec.size))
            white = np.fft.irfft(spec, n=white.size)
        self._write_wav(out, white / np.max(np.abs(white)) * 0.5)
        return out

    def silence(self, seconds: float) -> Path:
        out = self.root / f"silence_{seconds:g}.wav"
        if not out.exists():
            self._write_wav(out, np.zeros(int(seconds * RATE)))
        return out

    # --- variants ------------------------------------------------------------------------------

    def variant(
        self,
        source: Path,
        *,
        codec: str = "wav",
        quality: float | None = None,
        start: float = 0.0,
        length: float | None = None,
        gain_db: float = 0.0,
        snr_db: float | None = None,
    ) -> Path:
        """`source` trimmed to [start, start+length), gain-changed, with noise at `snr_db`, then
        written as `codec`: "wav", "vorbis" (quality = oggenc q, 1..6) or "opus" (quality =
        kbit/s). Cached by its parameters."""
        tag = f"{codec}{quality if quality is not None else ''}_s{start:g}_l{length}_g{gain_db:g}"
        tag += f"_n{snr_db}" if snr_db is not None else ""
        ext = "wav" if codec == "wav" else "ogg"
        out = self.root / f"{source.stem}__{tag}.{ext}"
        if out.exists():
            return out
        data, rate = sf.read(str(source), dtype="float64")
        first = int(start * rate)
        last = data.size if length is None else min(data.size, first + int(length * rate))
        data = data[first:last] * 10 ** (gain_db / 20)
        if snr_db is not None:
            rng = np.random.default_rng(zlib.crc32(out.name.encode()))
            power = np.mean(data**2) or 1e-12
            data = data + rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), data.size)
        data = np.clip(data, -1.0, 1.0)
        if codec == "wav":
            self._write_wav(out, data, rate)
        elif codec == "vorbis":
            q = 4.0 if quality is None else quality
            self._write(out, data, rate, "OGG", "VORBIS", 1.0 - q / 10.0)
        elif codec == "opus":
            kbps = 32.0 if quality is None else quality
            # libsndfile: bitrate = ((1 - level) * 250000 + 6000) * channels
            self._write(out, data, rate, "OGG", "OPUS", 1.0 - (kbps * 1000 - 6000) / 250000)
        else:
            raise ValueError(codec)
        return out

    # --- writing -------------------------------------------------------------------------------

    def _write_wav(self, out: Path, data: np.ndarray, rate: int = RATE) -> None:
        self._write(out, data, rate, "WAV", "PCM_16", None)

    @staticmethod
    def _write(
        out: Path, data: np.ndarray, rate: int, fmt: str, subtype: str, level: float | None
    ) -> None:
        tmp = out.with_name(out.name + ".part")
        kwargs = {} if level is None else {"compression_level": min(1.0, max(0.0, level))}
        with sf.SoundFile(
            str(tmp), "w", samplerate=rate, channels=1, format=fmt, subtype=subtype, **kwargs
        ) as snd:
            for i in range(0, data.size, WRITE_BLOCK):
                snd.write(data[i : i + WRITE_BLOCK])
        tmp.replace(out)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """One corpus per test session (files are built lazily and cached)."""
    from tests.conftest import need

    need("espeak-ng")
    need("sox")
    return Corpus(tmp_path_factory.mktemp("audioid-corpus"))


def sidecar_for(
    audio: Path,
    *,
    device_id: str = "testdev01",
    started: float = 1_780_000_000.0,
    fingerprint: dict[str, object] | None = None,
) -> dict[str, object]:
    """A schema-valid sidecar describing `audio` as a recording of `device_id` started at
    `started` (UNIX time), with its Audio ID (computed from the file unless given)."""
    import hashlib
    from datetime import UTC, datetime

    from recorder import sidecar
    from recorder.audioid.chroma import fingerprint_file

    info = sf.info(str(audio))
    rid = sidecar.new_recording_id(started)
    when = datetime.fromtimestamp(started, UTC)
    doc: dict[str, object] = {
        "schema": sidecar.SCHEMA,
        "recording_id": rid,
        "device_id": device_id,
        # README's layout, spelled out here rather than taken from the product's helpers:
        # recordings/YYYY/MM/DD/<UTC>_<device-id>_<last 8 of the id>.ogg
        "path": f"recordings/{when:%Y/%m/%d}/{when:%Y%m%dT%H%M%SZ}_{device_id}_{rid[-8:]}.ogg",
        "media_type": "audio/ogg",
        "codec": "vorbis",
        "samplerate": info.samplerate,
        "channels": info.channels,
        "frames": info.frames,
        "duration": info.frames / info.samplerate,
        "bytes": audio.stat().st_size,
        "sha256": hashlib.sha256(audio.read_bytes()).hexdigest(),
        "started_at": sidecar.utc_iso(started),
        "clock_synced": True,
        "boot_id": "test",
        "monotonic_start": 0.0,
        "trigger": "test",
        "preroll": 0.0,
        "stop_reason": "button",
        "levels": {},
        "title": audio.stem,
        "tags": [],
        "bookmarks": [],
        "recovered": False,
        "audio_id": fingerprint or fingerprint_file(audio).audio_id(),
    }
    return sidecar.validate(doc)
