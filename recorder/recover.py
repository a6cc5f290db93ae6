"""Salvage recordings left in staging by a crash, a power loss or a full disk.

For each staged recording (its ``<id>.meta.json``, or a journal or OGG named by a recording
id), under the recording's lock (`recorder.session.lock_recording`: a recording still being
made or published by another thread or process is left alone):

- already published (its sidecar is in place): only the leftovers are removed;
- its OGG is already in the device folder without a sidecar (a kill between the two renames):
  the sidecar is written for that very file (same sha256: peers may have it already);
- its staged OGG is complete (closed cleanly, decodes to the end, holds at least what the
  journal holds: a publish that failed on a full disk): it is published as it is;
- otherwise the audio is rebuilt from whichever holds more of it, the PCM journal (exact
  samples, fsynced every flush interval) or the partial OGG (decoded as far as it goes),
  encoded into a valid OGG and published with a sidecar marked ``recovered``.

Every way carries the Audio ID (the per-recording sinks, the fingerprinter among them, are fed
while decoding or re-encoding), the overflow counts saved in the staged metadata, and goes
through the publisher's enrichers (the catalogue) and listeners (the papad outbox).

When the disk has no room for the rebuild, the recording stays in staging ("waiting", with the
space it needs): the service retries when space returns, and so does the next
``recorder recover``. Only what holds no audio (not one frame) goes to
``<data_dir>/lost+found/<id>/``, with its ``REASON.txt`` written (atomically) before anything
is moved: when even that cannot be written, nothing moves. Audio is never deleted.

Our own temporary files (``.NAME.xxxxxxxx.partial``, left by a kill between a write and its
rename) are removed: a recording's under its lock, others once they are old enough that no
writer can still be using them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder import codec as codecs
from recorder.atomic import atomic_write_text
from recorder.audioformat import AudioFormat
from recorder.config import EncoderConfig
from recorder.layout import Layout
from recorder.publish import Published, Publisher
from recorder.recording import (
    AudioFacts,
    Recording,
    Start,
    StopReason,
    finished,
    is_recording_id,
    new_start,
    recording_id_time,
)
from recorder.session import (
    RecordingContext,
    SinkFactory,
    StagedRecording,
    collect_facts,
    lock_recording,
    staged_paths,
)
from recorder.sinks import Sink
from recorder.sinks.encoder import OggEncoderSink
from recorder.sinks.feed import feed
from recorder.sinks.levels import LevelMeter
from recorder.storage import SPARE_BYTES, free_bytes, is_disk_full

log = logging.getLogger(__name__)

BLOCK = 4096
PUBLISHED, CLEANED, WAITING, BUSY, FAILED, MOVED_ASIDE = (
    "published", "cleaned", "waiting", "busy", "failed", "moved_aside")
# A temporary of ours that old has no writer left (a write and its rename take milliseconds).
STALE_PARTIAL_SECONDS = 120.0
_PARTIAL_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")
# Upper bounds of the encoded size, kbit/s for a mono stream, by oggenc quality (-1..10):
# libvorbis's nominal stereo rates, which mono speech stays well under.
_VORBIS_KBPS = (64, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500)


@dataclass(frozen=True)
class Outcome:
    """What recovery did to one recording.

    `action`: ``published``, ``cleaned`` (leftovers of a published recording removed),
    ``waiting`` (left in staging until the disk has `needed_bytes` free), ``busy`` (being made
    or published right now), ``failed`` (left in staging: `detail` says why) or
    ``moved_aside`` (held no audio: in lost+found with the reason).
    """

    recording_id: str
    action: str
    detail: str
    path: str = ""
    needed_bytes: int = 0


@dataclass(frozen=True)
class RecoverySettings:
    """What recovery needs from the configuration (built in `recorder.app`)."""

    layout: Layout  # staging, this device's folder, the sync root
    data_dir: Path  # lost+found/ lives here
    encoder: EncoderConfig  # re-encoding, and the space a rebuild may take
    samplerate: int  # a recording whose metadata is lost: the configured format
    channels: int
    silence_dbfs: float  # the level meter's silence floor


class _NoRoom(Exception):
    """Not enough free space to do this now; `needed` is what the next attempt needs."""

    def __init__(self, detail: str, needed: int) -> None:
        super().__init__(detail)
        self.needed = needed


def recover(rs: RecoverySettings, publisher: Publisher,
            sinks: Sequence[SinkFactory] = ()) -> list[Outcome]:
    """Salvage everything in the staging directory; returns what was done to each recording.

    `sinks`: the per-recording sink factories beyond journal, encoder and level meter (the
    Audio ID fingerprinter), fed with the recovered audio. Never raises for one recording's
    trouble: each gets its outcome.
    """
    staging = rs.layout.staging_dir
    if not staging.is_dir():
        return []
    outcomes = []
    ids: set[str] = set()
    strays: list[Path] = []
    for entry in sorted(staging.iterdir()):
        name = entry.name
        rid = name.split(".", 1)[0]
        if name.endswith(".meta.json") or name.endswith((".pcm", ".ogg", ".spare")):
            if is_recording_id(rid):
                ids.add(rid)
            elif name.endswith((".pcm", ".ogg")) and entry.is_file():
                strays.append(entry)
    for rid in sorted(ids):
        outcome = _recover_locked(rs, publisher, sinks, rid)
        if outcome is not None:
            outcomes.append(outcome)
    for stray in strays:
        outcomes.append(_move_aside(rs, stray.name.rsplit(".", 1)[0], [stray],
                                    "staged audio without metadata"))
    _clean_stale_partials(staging, rs.layout.device_folder)
    return outcomes


def waiting_need(outcomes: Sequence[Outcome]) -> int | None:
    """The free space the smallest waiting recording needs, or None when none waits."""
    needs = [o.needed_bytes for o in outcomes if o.action == WAITING]
    return min(needs) if needs else None


def _recover_locked(rs: RecoverySettings, publisher: Publisher, sinks: Sequence[SinkFactory],
                    rid: str) -> Outcome | None:
    paths = staged_paths(rs.layout.staging_dir, rid)
    try:
        fd = lock_recording(paths["journal"])
    except FileNotFoundError:
        fd = -1  # no journal: nobody is making it (a recording creates its journal first)
    except OSError as exc:
        return Outcome(rid, FAILED, f"cannot open the journal: {exc.strerror}; left in staging")
    if fd is None:
        return Outcome(rid, BUSY, "being recorded or published right now: left alone")
    rebuilt = rs.layout.staging_dir / f"{rid}.recovered.ogg"
    try:
        return _recover_one(rs, publisher, sinks, rid, paths, rebuilt)
    except _NoRoom as exc:
        rebuilt.unlink(missing_ok=True)
        return Outcome(rid, WAITING, f"{exc}; left in staging, retried when space returns",
                       needed_bytes=exc.needed)
    except Exception as exc:
        rebuilt.unlink(missing_ok=True)
        if is_disk_full(exc):
            need = free_bytes(rs.layout.staging_dir) + 2 * SPARE_BYTES
            return Outcome(rid, WAITING, "disk full while recovering; left in staging, "
                           "retried when space returns", needed_bytes=need)
        if isinstance(exc, OSError):
            return Outcome(rid, FAILED, f"recovery failed ({exc.strerror or exc}); left in "
                           "staging")
        log.exception("recovering %s failed", rid)
        return Outcome(rid, FAILED, f"recovery failed ({_one_line(exc)}); left in staging")
    finally:
        if fd is not None and fd >= 0:
            os.close(fd)


def _recover_one(rs: RecoverySettings, publisher: Publisher, sinks: Sequence[SinkFactory], rid: str,
                 paths: dict[str, Path], rebuilt: Path) -> Outcome | None:
    staging = rs.layout.staging_dir
    # Leftovers of an earlier attempt or of the recording itself: never audio.
    for leftover in (paths["spare"], rebuilt):
        leftover.unlink(missing_ok=True)
    _remove_partials(staging, f".{rid}.meta.json.")
    audio_files = [p for p in (paths["journal"], paths["ogg"]) if p.exists()]
    if not paths["meta"].exists() and all(p.stat().st_size == 0 for p in audio_files):
        for p in audio_files:  # a recording killed while it was being created
            p.unlink(missing_ok=True)
        return Outcome(rid, CLEANED, "empty staged files of a recording that never started")
    start, note = _read_meta(rs, rid, paths)
    if start is None:
        return _move_aside(rs, rid, _staged_files(staging, rid), note)
    name = start.name
    target = rs.layout.folder_of(start.device_id) / start.path
    _remove_partials(staging, f".{name}.json.")
    _remove_partials(target.parent, f".{name}.")
    if target.with_suffix(".json").is_file():
        for p in _staged_files(staging, rid):
            p.unlink(missing_ok=True)
        return Outcome(rid, CLEANED, "already published", str(target))
    rate, channels = start.samplerate, start.channels
    min_frames = 1  # any audio at all is kept (input files are held to MIN_RECORDING_SECONDS)
    journal_frames = _journal_frames(paths["journal"], channels)

    # 1. The OGG is already visible (killed between its rename and the sidecar's).
    if target.is_file() and _closed_cleanly(target):
        described = _describe(rs, sinks, start, target, min_frames)
        if described is not None:
            staged = StagedRecording(recording=described, ogg=target,
                                     staged_files=_staged_files(staging, rid))
            result = _publish(publisher, staged, ogg_in_place=True)
            return Outcome(rid, PUBLISHED, f"{described.duration:.1f} s: sidecar written "
                           "for the OGG already in place" + note, str(result.ogg_path))
    # 2. A complete OGG in staging (its publish failed): published as it is.
    if paths["ogg"].is_file() and _closed_cleanly(paths["ogg"]):
        described = _describe(rs, sinks, start, paths["ogg"], max(min_frames, journal_frames))
        if described is not None:
            staged = StagedRecording(recording=described, ogg=paths["ogg"],
                                     staged_files=[p for p in _staged_files(staging, rid)
                                                   if p != paths["ogg"]])
            result = _publish(publisher, staged)
            return Outcome(rid, PUBLISHED, f"{described.duration:.1f} s: the complete "
                           "staged OGG" + note, str(result.ogg_path))
    # 3. Rebuild from the journal or the partial OGG.
    ogg_frames = _decodable_frames(paths["ogg"])
    best = max(journal_frames, ogg_frames)
    if best < min_frames:
        return _move_aside(rs, rid, _staged_files(staging, rid),
                           "no audio could be read from the journal or the OGG")
    need = _needed_bytes(start, rs, best, paths)
    free = free_bytes(staging)
    if free < need:
        raise _NoRoom(f"disk full: {free // 1024} KiB free, about {need // 1024} KiB needed "
                      "to rebuild it", need)
    codec = start.codec
    if codec not in codecs.CODECS or codecs.unsupported_rate(codec, rate):
        note += f" (re-encoded as Vorbis: {codec} cannot code {rate} Hz)"
        codec = "vorbis"
    fmt = AudioFormat(rate, channels)
    encoder = OggEncoderSink(
        rebuilt, fmt, dataclasses.replace(rs.encoder, codec=codec),
        comments={"title": start.title or name, "date": start.started_at,
                  "comment": f"recording_id={rid}"},
    )
    source = "journal" if journal_frames >= ogg_frames else "partial OGG"
    blocks = (_journal_blocks(paths["journal"], channels) if source == "journal"
              else _ogg_blocks(paths["ogg"], channels))
    every: list[Sink] = [encoder, *_analysis_sinks(rs, sinks, rid, start, fmt)]
    audio, levels, extra = collect_facts(feed(every, blocks))
    assert audio is not None  # the encoder is the first sink
    rec = _recovered(start, audio, levels, extra)
    staged = StagedRecording(recording=rec, ogg=rebuilt,
                             staged_files=_staged_files(staging, rid))
    result = _publish(publisher, staged)
    return Outcome(rid, PUBLISHED, f"{rec.duration:.1f} s rebuilt from the {source}" + note,
                   str(result.ogg_path))


def _recovered(start: Start, audio: AudioFacts, levels: dict[str, Any],
               extra: dict[str, Any]) -> Recording:
    return finished(start, audio, stop_reason=StopReason.RECOVERED, levels=levels,
                    recovered=True, extra=extra)


def _publish(publisher: Publisher, staged: StagedRecording, *,
             ogg_in_place: bool = False) -> Published:
    return publisher.publish(staged, ogg_in_place=ogg_in_place)


# --- what is in staging ---------------------------------------------------------------------


def _staged_files(staging: Path, rid: str) -> list[Path]:
    """Every staged file of `rid` (journal, OGG, metadata, spare, rebuilt OGG)."""
    return [p for p in sorted(staging.glob(f"{rid}.*")) if p.is_file()]


def _read_meta(rs: RecoverySettings, rid: str, paths: dict[str, Path]) -> tuple[Start | None, str]:
    """The staged metadata, or one rebuilt from the recording id (its creation time) and the
    configuration when it is missing or unreadable; (None, reason) when neither works."""
    problem = ""
    try:
        meta = json.loads(paths["meta"].read_text())
        if isinstance(meta, dict) and all(k in meta for k in Start.STAGED_REQUIRED):
            return Start.from_doc({"recording_id": rid, **meta}), ""
        problem = "metadata incomplete"
    except FileNotFoundError:
        problem = "metadata missing"
    except (OSError, ValueError) as exc:
        problem = f"metadata unreadable ({_one_line(exc)})"
    # The id is a ULID: it carries its creation time.
    created = recording_id_time(rid)
    rate, channels = rs.samplerate, rs.channels
    with contextlib.suppress(Exception), sf.SoundFile(str(paths["ogg"])) as f:
        rate, channels = int(f.samplerate), min(2, int(f.channels))
    if not paths["ogg"].exists() and not paths["journal"].exists():
        return None, problem
    start = new_start(
        recording_id=rid, device_id=rs.layout.device_id, codec=rs.encoder.codec, samplerate=rate,
        channels=channels, started_utc=created, monotonic_start=0.0, clock_synced=False,
        boot_id="", trigger="unknown", preroll=0.0)
    return start, f" ({problem}: rebuilt from the recording id and the configuration)"


def _journal_frames(path: Path, channels: int) -> int:
    try:
        return path.stat().st_size // (2 * channels)
    except OSError:
        return 0


def _journal_blocks(path: Path, channels: int) -> Iterator[np.ndarray]:
    frame_bytes = 2 * channels
    with open(path, "rb") as fh:
        while data := fh.read(BLOCK * frame_bytes):
            usable = len(data) - len(data) % frame_bytes
            if usable:
                yield np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels)


def _decodable_frames(path: Path) -> int:
    return sum(len(b) for b in _ogg_blocks(path, None))


def _ogg_blocks(path: Path, channels: int | None) -> Iterator[np.ndarray]:
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


def _closed_cleanly(path: Path) -> bool:
    """True if the last Ogg page of `path` ends its stream (EOS flag): the encoder closed it,
    so it is complete (a killed encoder never writes that page)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except OSError:
        return False
    at = tail.rfind(b"OggS")
    return at >= 0 and len(tail) > at + 5 and bool(tail[at + 5] & 0x04)


def _describe(rs: RecoverySettings, sinks: Sequence[SinkFactory], start: Start, ogg: Path,
              min_frames: int) -> Recording | None:
    """The sidecar fields of a complete OGG, decoding it once (levels, Audio ID, frames) and
    hashing it; None if it does not decode to the end or holds fewer than `min_frames`."""
    try:
        f = sf.SoundFile(str(ogg))
    except Exception:
        return None
    with f:
        rate, channels = int(f.samplerate), int(f.channels)
        codec = "opus" if str(f.subtype).upper() == "OPUS" else "vorbis"
        if channels not in (1, 2):
            return None
        fmt = AudioFormat(rate, channels)
        analysis = _analysis_sinks(rs, sinks, start.recording_id, start, fmt)
        frames = 0
        try:
            while len(block := f.read(BLOCK, dtype="int16", always_2d=True)):
                for sink in analysis:
                    sink.write(block)
                frames += len(block)
        except Exception:
            for sink in analysis:
                sink.abort()
            return None
    if frames < min_frames:
        for sink in analysis:
            sink.abort()
        return None
    _, levels, extra = collect_facts([sink.finish() for sink in analysis])
    digest = hashlib.sha256()
    with open(ogg, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    audio = AudioFacts(
        codec=codec, samplerate=rate, channels=channels, frames=frames,
        duration=round(fmt.seconds(frames), 3), sha256=digest.hexdigest(),
        bytes=ogg.stat().st_size,
        encoder=({"vorbis_quality": rs.encoder.vorbis_quality} if codec == "vorbis"
                 else {"opus_bitrate": rs.encoder.opus_bitrate}))
    return _recovered(start, audio, levels, extra)


def _analysis_sinks(rs: RecoverySettings, sinks: Sequence[SinkFactory], rid: str, start: Start,
                    fmt: AudioFormat) -> list[Sink]:
    """The level meter and the extra per-recording sinks (Audio ID) for recovered audio."""
    ctx = RecordingContext(rid, start.device_id, fmt, rs.layout.staging_dir)
    return [LevelMeter(fmt.samplerate, rs.silence_dbfs),
            *(factory(ctx) for factory in sinks)]


def _needed_bytes(start: Start, rs: RecoverySettings, frames: int, paths: dict[str, Path]) -> int:
    """A safe upper bound of the space a rebuild takes: the new OGG and the sidecar."""
    rate, channels = start.samplerate, start.channels
    seconds = frames / rate
    if start.codec == "opus" and not codecs.unsupported_rate("opus", rate):
        kbps = rs.encoder.opus_bitrate * channels * 1.25
    else:
        q = round(min(10.0, max(-1.0, rs.encoder.vorbis_quality)))
        kbps = _VORBIS_KBPS[q + 1] * (1.0 if channels == 1 else 1.5)
    encoded = int(seconds * kbps * 1000 / 8)
    return min(encoded, frames * 2 * channels) + SPARE_BYTES


# --- lost+found and temporaries -------------------------------------------------------------


def _move_aside(rs: RecoverySettings, rid: str, files: Sequence[Path], reason: str) -> Outcome:
    """Move `files` (which hold no audio) to ``lost+found/<rid>/`` after writing its
    non-empty REASON.txt; when the reason cannot be written, nothing is moved."""
    reason = reason.strip() or "no audio"
    dest = rs.data_dir / "lost+found" / rid
    try:
        atomic_write_text(dest / "REASON.txt", reason + "\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            dest.rmdir()
        return Outcome(rid, WAITING, f"{reason}; cannot write lost+found/{rid}/REASON.txt "
                       f"({exc.strerror}): left in staging", needed_bytes=2 * SPARE_BYTES)
    for p in files:
        shutil.move(str(p), dest / p.name)  # same filesystem: a rename
    with contextlib.suppress(OSError):
        os.sync()
    log.warning("moved staged recording %s aside to %s: %s", rid, dest, reason)
    return Outcome(rid, MOVED_ASIDE, reason, str(dest))


def _remove_partials(folder: Path, prefix: str) -> None:
    """Remove our temporaries ``<prefix>xxxxxxxx.partial`` in `folder` (under the lock of the
    recording they belong to: nobody else writes them)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and _PARTIAL_RE.match(entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    log.info("removed temporary %s left by an interrupted write", entry.path)


def _clean_stale_partials(staging: Path, device_folder: Path) -> None:
    """Remove our temporaries in staging and the device folder that no writer can still be
    using (older than STALE_PARTIAL_SECONDS)."""
    cutoff = time.time() - STALE_PARTIAL_SECONDS
    folders = [staging]
    with contextlib.suppress(OSError):
        folders += [Path(d) for d, _, _ in os.walk(device_folder)]
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if not _PARTIAL_RE.match(entry.name):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and \
                            entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("removed stale temporary %s", entry.path)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def pending(staging: Path) -> list[str]:
    """Ids of recordings waiting in `staging`."""
    if not staging.is_dir():
        return []
    return [p.name.removesuffix(".meta.json") for p in sorted(staging.glob("*.meta.json"))]
