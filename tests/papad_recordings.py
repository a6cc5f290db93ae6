"""Test recordings for the papad tests: a small real OGG/Vorbis file and a valid sidecar.

`make_recording()` publishes both into a device folder the way the publisher does (OGG at
``recordings/YYYY/MM/DD/NAME.ogg``, then ``NAME.json``) and returns (sidecar, ogg path).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder import sidecar as sc
from recorder.atomic import atomic_write_bytes, atomic_write_text

RATE = 16000


def ogg_bytes(seconds: float = 0.5, freq: float = 440.0, rate: int = RATE) -> bytes:
    """A real mono OGG/Vorbis file of a sine tone, written in small blocks."""
    frames = int(seconds * rate)
    t = np.arange(frames) / rate
    tone = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16).reshape(-1, 1)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="OGG",
                      subtype="VORBIS") as fh:
        for start in range(0, frames, 1024):
            fh.write(tone[start:start + 1024])
    return buf.getvalue()


def make_sidecar(
    data: bytes,
    *,
    device_id: str = "testdev01",
    started: datetime | None = None,
    seconds: float = 0.5,
    title: str = "",
    tags: Sequence[str] = (),
    bookmarks: Sequence[dict[str, Any]] = (),
    recording_id: str | None = None,
) -> dict[str, Any]:
    """A sidecar that passes `recorder.sidecar.validate()` for the OGG bytes `data`."""
    started = started or datetime(2026, 11, 28, 17, 1, 2, tzinfo=UTC)
    rid = recording_id or sc.new_recording_id(started.timestamp())
    name = sc.recording_name(started, device_id, rid)
    doc = {
        "schema": sc.SCHEMA,
        "recording_id": rid,
        "device_id": device_id,
        "path": sc.relative_path(started, name),
        "media_type": "audio/ogg",
        "codec": "vorbis",
        "samplerate": RATE,
        "channels": 1,
        "frames": int(seconds * RATE),
        "duration": seconds,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "started_at": sc.utc_iso(started.timestamp()),
        "clock_synced": True,
        "boot_id": "0" * 32,
        "monotonic_start": 12.5,
        "trigger": "button",
        "preroll": 0.0,
        "stop_reason": "button",
        "levels": {"peak_dbfs": -10.5, "rms_dbfs": -20.0},
        "title": title,
        "tags": list(tags),
        "bookmarks": [dict(b) for b in bookmarks],
        "recovered": False,
    }
    return sc.validate(doc)


def make_recording(
    device_folder: Path,
    *,
    index: int = 0,
    data: bytes | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], Path]:
    """Publish an OGG and its sidecar into `device_folder`; return (sidecar, ogg path).

    `index` spaces start times a minute apart so file names and ids sort in creation order.
    """
    data = data if data is not None else ogg_bytes(kwargs.get("seconds", 0.5), 300 + 7 * index)
    kwargs.setdefault("device_id", device_folder.name)
    kwargs.setdefault("started", datetime(2026, 11, 28, 17, 1, 2, tzinfo=UTC)
                      + timedelta(minutes=index))
    doc = make_sidecar(data, **kwargs)
    ogg = device_folder / doc["path"]
    atomic_write_bytes(ogg, data)
    atomic_write_text(ogg.with_suffix(".json"), sc.dumps(doc))
    return doc, ogg
