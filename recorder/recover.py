"""Salvage recordings left in staging by a crash or power loss.

For each staged recording (its ``<id>.meta.json``):

- already published (its sidecar is in place): only the leftovers are removed;
- otherwise the audio is rebuilt from whichever holds more of it, the PCM journal (exact samples,
  fsynced every flush interval) or the partial OGG (decoded as far as it goes), encoded into a
  valid OGG and published with a sidecar marked ``recovered``;
- nothing salvageable: the files are moved to ``<data_dir>/lost+found/<id>/`` with a reason.

Staged files with no metadata are moved aside the same way. Audio is never deleted silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder.audioformat import AudioFormat
from recorder.config import Config
from recorder.publish import Published, Publisher
from recorder.session import StagedRecording, staged_paths
from recorder.sinks.encoder import OggEncoderSink
from recorder.sinks.levels import LevelMeter

log = logging.getLogger(__name__)

BLOCK = 4096


@dataclass(frozen=True)
class Outcome:
    recording_id: str
    action: str  # "published" | "cleaned" | "moved_aside"
    detail: str
    path: str = ""


def recover(cfg: Config, publisher: Publisher) -> list[Outcome]:
    """Salvage everything in the staging directory; returns what was done to each recording."""
    staging = cfg.storage.staging_dir
    if not staging.is_dir():
        return []
    outcomes = []
    for meta_path in sorted(staging.glob("*.meta.json")):
        rid = meta_path.name.removesuffix(".meta.json")
        try:
            outcomes.append(_recover_one(cfg, publisher, rid))
        except Exception as exc:  # one bad recording must not stop the others
            log.exception("recovering %s failed", rid)
            outcomes.append(_move_aside(cfg, rid, f"recovery failed: {exc}"))
    for stray in sorted(staging.iterdir()):
        if stray.is_file() and stray.suffix in (".ogg", ".pcm") and not (
            staging / f"{stray.stem}.meta.json"
        ).exists():
            outcomes.append(_move_aside(cfg, stray.stem, "staged audio without metadata"))
    return outcomes


def _recover_one(cfg: Config, publisher: Publisher, rid: str) -> Outcome:
    paths = staged_paths(cfg.storage.staging_dir, rid)
    try:
        meta = json.loads(paths["meta"].read_text())
    except (OSError, ValueError) as exc:
        return _move_aside(cfg, rid, f"unreadable metadata: {exc}")
    target = cfg.storage.sync_root / meta.get("device_id", "") / meta.get("path", "")
    if target.with_suffix(".json").is_file():
        for p in paths.values():
            p.unlink(missing_ok=True)
        return Outcome(rid, "cleaned", "already published", str(target))
    rate, channels = int(meta["samplerate"]), int(meta["channels"])
    journal_frames = _journal_frames(paths["journal"], channels)
    ogg_frames = _decodable_frames(paths["ogg"])
    if max(journal_frames, ogg_frames) == 0:
        return _move_aside(cfg, rid, "no audio could be read from the journal or the OGG")
    rebuilt = cfg.storage.staging_dir / f"{rid}.recovered.ogg"
    encoder = OggEncoderSink(
        rebuilt, AudioFormat(rate, channels),
        dataclasses.replace(cfg.encoder, codec=meta.get("codec", "vorbis")),
        comments={"title": meta.get("title") or Path(meta["path"]).stem,
                  "date": meta["started_at"], "comment": f"recording_id={rid}"},
    )
    levels = LevelMeter(rate, cfg.service.silence_dbfs)
    source = "journal" if journal_frames >= ogg_frames else "partial OGG"
    blocks = (_journal_blocks(paths["journal"], channels) if source == "journal"
              else _ogg_blocks(paths["ogg"], channels))
    for block in blocks:
        encoder.write(block)
        levels.write(block)
    meta.update(encoder.finish())
    meta.update(levels.finish())
    meta.update(stop_reason="recovered", recovered=True)
    meta.setdefault("bookmarks", [])
    staged = StagedRecording(meta=meta, ogg=rebuilt,
                             staged_files=[paths["journal"], paths["ogg"], paths["meta"]])
    result: Published = publisher.publish(staged)
    return Outcome(rid, "published",
                   f"{meta['duration']:.1f} s rebuilt from the {source}", str(result.ogg_path))


def _journal_frames(path: Path, channels: int) -> int:
    try:
        return path.stat().st_size // (2 * channels)
    except OSError:
        return 0


def _journal_blocks(path: Path, channels: int) -> Any:
    frame_bytes = 2 * channels
    with open(path, "rb") as fh:
        while data := fh.read(BLOCK * frame_bytes):
            usable = len(data) - len(data) % frame_bytes
            if usable:
                yield np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels)


def _decodable_frames(path: Path) -> int:
    return sum(len(b) for b in _ogg_blocks(path, None))


def _ogg_blocks(path: Path, channels: int | None) -> Any:
    """Decode a possibly truncated OGG block by block, stopping quietly where it breaks."""
    try:
        f = sf.SoundFile(str(path))
    except Exception:
        return
    with f:
        while True:
            try:
                block = f.read(BLOCK, dtype="int16", always_2d=True)
            except Exception:
                return
            if len(block) == 0:
                return
            yield block if channels is None else block[:, :channels]


def _move_aside(cfg: Config, rid: str, reason: str) -> Outcome:
    dest = cfg.storage.data_dir / "lost+found" / rid
    dest.mkdir(parents=True, exist_ok=True)
    for p in cfg.storage.staging_dir.glob(f"{rid}.*"):
        shutil.move(str(p), dest / p.name)
    (dest / "REASON.txt").write_text(reason + "\n")
    os.sync()
    log.warning("moved staged recording %s aside to %s: %s", rid, dest, reason)
    return Outcome(rid, "moved_aside", reason, str(dest))


def pending(cfg: Config) -> list[str]:
    """Ids of recordings waiting in staging."""
    staging = cfg.storage.staging_dir
    if not staging.is_dir():
        return []
    return [p.name.removesuffix(".meta.json") for p in sorted(staging.glob("*.meta.json"))]

