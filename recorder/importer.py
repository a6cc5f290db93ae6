"""Recordings that do not come from the button: phone calls (the Toxbot's files) and any audio
file a community member brings.

`Importer.import_file` turns one file into a recording exactly like one made at the button:
decoded (libsndfile, else ffmpeg for what libsndfile cannot read: M4A/AAC, an MP3 on an old
libsndfile), mixed and resampled to the configured format, encoded OGG with its Audio ID, level
summary and waveform, and handed to the same `Publisher` (catalogue, papad outbox, Syncthing
scan, playlist, web listing). The sidecar says where it came from (``source`` = ``phone`` or
``import``, ``original_name``, ``source_sha256``, for calls ``call_id`` and ``caller``) and where
its time came from (``time_source``: the call's ULID, a tag of the file, or the file's mtime).

Nothing twice: the file's sha256 and a call's ULID are remembered (table ``imports``), checked
against the published sidecar before they are believed; audio the Audio ID catalogue already
holds in full (the same call re-encoded) is not published again. Each answer names the existing
recording. Audio that holds a known recording and more is published with ``contains``.

Crash rules: the OGG is encoded in ``<staging>/import/<id>.ogg`` (outside every synced folder;
`recorder recover` does not look there), and ``<id>.json``, the finished recording, is written
beside it just before publishing. At the next start (`finish_interrupted`) a recording with its
``.json`` is published (or its publish completed); an OGG without one is a half-done encode and
removed: the source file is still where it was, and is imported again. One lock serialises the
service's inbox and `recorder import` commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat as stat_mod
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from recorder import __version__
from recorder.atomic import atomic_write_text
from recorder.audioformat import AudioFormat
from recorder.config import EncoderConfig, ImportConfig
from recorder.db import Database, transaction
from recorder.errors import InputFileError, TooShortError
from recorder.layout import Layout
from recorder.publish import Published, Publisher
from recorder.recording import (
    MIN_RECORDING_SECONDS,
    Recording,
    StopReason,
    dumps,
    finished,
    is_recording_id,
    new_recording_id,
    new_start,
    recording_id_time,
)
from recorder.session import RecordingContext, SinkFactory, StagedRecording, collect_facts
from recorder.sinks import Sink
from recorder.sinks.encoder import OggEncoderSink
from recorder.sinks.feed import feed
from recorder.sinks.levels import LevelMeter
from recorder.sources.file import to_channels
from recorder.storage import DiskFullError, Reserve, is_disk_full, write_error

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS imports (
        key TEXT PRIMARY KEY,
        recording_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        path TEXT NOT NULL
    )""",
)
BLOCK = 16384  # frames per decoded block: big blocks keep per-block overhead small
SOURCE_PHONE = "phone"
SOURCE_IMPORT = "import"


class ImportRejected(InputFileError):
    """The file cannot become a recording (undecodable, empty, too short or long, not a plain
    file); the message is the one-line reason."""


class SourceVanished(InputFileError):
    """The file was gone before it could be read."""


@dataclass(frozen=True)
class Existing:
    """A recording this device already has for the file."""

    recording_id: str
    device_id: str
    path: str  # inside the device folder


@dataclass(frozen=True)
class Outcome:
    """What importing one file did: ``imported`` (a new recording) or ``duplicate`` (the
    recording it already is)."""

    file: str
    action: str
    recording_id: str
    path: str  # the published OGG
    detail: str = ""
    published: Published | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "action": self.action, "recording_id": self.recording_id,
                "path": self.path, "detail": self.detail}


# --- what a file says about itself -----------------------------------------------------------


def ogg_comments(data: bytes) -> dict[str, str]:
    """The Vorbis comments (``KEY`` upper-cased) of the first stream of Ogg bytes (Opus or
    Vorbis), or {} when there are none; never raises for malformed bytes."""
    packets: list[bytes] = []
    current = b""
    pos = 0
    serial: int | None = None
    try:
        while pos + 27 <= len(data) and len(packets) < 2:
            if data[pos:pos + 4] != b"OggS":
                return {}
            nseg = data[pos + 26]
            this_serial = struct.unpack_from("<I", data, pos + 14)[0]
            lacing = data[pos + 27:pos + 27 + nseg]
            body = pos + 27 + nseg
            if serial is None:
                serial = this_serial
            if this_serial == serial:
                for size in lacing:
                    current += data[body:body + size]
                    body += size
                    if size < 255:
                        packets.append(current)
                        current = b""
            pos = pos + 27 + nseg + sum(lacing)
    except (IndexError, struct.error):
        return {}
    if len(packets) < 2:
        return {}
    head = packets[1]
    for magic in (b"OpusTags", b"\x03vorbis"):
        if head.startswith(magic):
            return _comment_list(head[len(magic):])
    return {}


def _comment_list(data: bytes) -> dict[str, str]:
    try:
        (vendor,) = struct.unpack_from("<I", data, 0)
        pos = 4 + vendor
        (count,) = struct.unpack_from("<I", data, pos)
        pos += 4
        out: dict[str, str] = {}
        for _ in range(min(count, 1000)):
            (size,) = struct.unpack_from("<I", data, pos)
            text = data[pos + 4:pos + 4 + size].decode("utf-8", "replace")
            pos += 4 + size
            key, sep, value = text.partition("=")
            if sep:
                out.setdefault(key.upper(), value)
        return out
    except struct.error:
        return {}


def ffprobe_tags(fd: int) -> dict[str, str]:
    """The container's tags (keys upper-cased) as ffprobe reads them; {} without ffprobe."""
    if shutil.which("ffprobe") is None:
        return {}
    try:
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format_tags", "-of", "json",
             f"/proc/self/fd/{fd}"], pass_fds=(fd,), capture_output=True, timeout=60,
            check=False)
        tags = json.loads(out.stdout or b"{}").get("format", {}).get("tags", {})
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {str(k).upper(): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def file_tags(fd: int, head: bytes) -> dict[str, str]:
    """The file's tags, keys upper-cased: Vorbis comments read from an Ogg file's head,
    libsndfile's for WAV, FLAC and AIFF (no process to start for each of a batch of voice
    notes), ffprobe's for the rest (MP3's ID3, M4A's atoms)."""
    if head.startswith(b"OggS"):
        return ogg_comments(head)
    if head[:4] in (b"RIFF", b"RF64", b"fLaC", b"FORM"):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            with sf.SoundFile(os.fdopen(os.dup(fd), "rb")) as f:
                return {k.upper(): str(v) for k, v in f.copy_metadata().items()}
        except (sf.LibsndfileError, RuntimeError, TypeError):
            return {}
    return ffprobe_tags(fd)


@dataclass(frozen=True)
class Origin:
    """Where a file comes from and when it was recorded, from its name, tags and mtime."""

    source: str  # SOURCE_PHONE or SOURCE_IMPORT
    started_utc: float
    time_source: str  # "ulid", "tag" or "file_mtime"
    title: str = ""
    call_id: str | None = None  # the bot's ULID
    caller_name: str | None = None
    caller_key: str | None = None
    call_status: str | None = None


def parse_tag_time(text: str) -> float | None:
    """Epoch seconds of a DATE-like tag: ISO 8601 with a zone, or without one (the bot's
    ``yyyy-MM-dd HH:mm``: its local time, taken as this device's local time); None when it
    is not a time (a bare year, say)."""
    text = text.strip()
    if len(text) < 10:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.astimezone()  # local time of this device
    return value.timestamp()


def origin_of(name: str, tags: dict[str, str], mtime: float) -> Origin:
    """The file's `Origin`: a phone call when it carries the bot's comments (its ULID, the
    caller), with the ULID's time; else the first date tag, else the file's mtime."""
    ulid = tags.get("ULID", "").strip()
    if not ulid and "TOX_FRIEND" in tags:
        ulid = Path(name).stem
    title = tags.get("TITLE", "").strip()
    if ulid and is_recording_id(ulid.lower()) and (
            "TOX_FRIEND" in tags or "TOX_PUBLIC_KEY" in tags):
        return Origin(SOURCE_PHONE, recording_id_time(ulid.lower()), "ulid", title,
                      call_id=ulid.upper(), caller_name=tags.get("TOX_FRIEND") or None,
                      caller_key=tags.get("TOX_PUBLIC_KEY") or None,
                      call_status=tags.get("TOX_STATUS") or None)
    for key in ("DATE", "CREATION_TIME", "DATE_RECORDED", "ICRD"):
        when = parse_tag_time(tags.get(key, ""))
        if when is not None:
            return Origin(SOURCE_IMPORT, when, "tag", title)
    return Origin(SOURCE_IMPORT, mtime, "file_mtime", title)


# --- decoding --------------------------------------------------------------------------------


class _Decoded:
    """A file's audio as int16 blocks in the configured format."""

    def __init__(self, fd: int, fmt: AudioFormat, label: str) -> None:
        self.fd = fd
        self.format = fmt
        self.label = label
        self.frames_hint: int | None = None
        self._sf: sf.SoundFile | None = None
        self._rate = fmt.samplerate
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            self._sf = sf.SoundFile(os.fdopen(os.dup(fd), "rb"))
            self._rate = int(self._sf.samplerate)
            if self._sf.frames > 0:
                self.frames_hint = round(self._sf.frames * fmt.samplerate / self._rate)
        except (sf.LibsndfileError, RuntimeError, TypeError):
            self._sf = None  # ffmpeg then
        if self._sf is None and shutil.which("ffmpeg") is None:
            raise ImportRejected(f"cannot decode {label}: libsndfile cannot read it and "
                                 "ffmpeg is not installed")

    def blocks(self) -> Iterator[np.ndarray]:
        if self._sf is not None:
            yield from self._soundfile()
        else:
            yield from self._ffmpeg()

    def _soundfile(self) -> Iterator[np.ndarray]:
        assert self._sf is not None
        channels, rate = self.format.channels, self.format.samplerate
        resampler = None
        if self._rate != rate:
            import soxr

            resampler = soxr.ResampleStream(self._rate, rate, channels, dtype="int16",
                                            quality="HQ")
        with self._sf as f:
            try:
                for block in f.blocks(blocksize=BLOCK, dtype="int16", always_2d=True):
                    block = to_channels(block, channels)
                    if resampler is not None:
                        block = resampler.resample_chunk(block).reshape(-1, channels)
                    if len(block):
                        yield block
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise ImportRejected(f"cannot decode {self.label}: "
                                     f"{' '.join(str(exc).split())}") from None
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros((0, channels), np.int16), last=True)
            if len(tail):
                yield tail.reshape(-1, channels)

    def _ffmpeg(self) -> Iterator[np.ndarray]:
        channels = self.format.channels
        proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", f"/proc/self/fd/{self.fd}", "-vn",
             "-f", "s16le", "-ac", str(channels), "-ar", str(self.format.samplerate), "-"],
            pass_fds=(self.fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        frame_bytes = 2 * channels
        pending = b""
        try:
            while True:
                data = proc.stdout.read(BLOCK * frame_bytes)
                if not data:
                    break
                data = pending + data
                whole = len(data) - len(data) % frame_bytes
                pending = data[whole:]
                if whole:
                    yield np.frombuffer(data[:whole], "<i2").reshape(-1, channels)
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            if proc.wait() != 0:
                last = err.splitlines()[-1] if err else f"ffmpeg exited {proc.returncode}"
                raise ImportRejected(f"cannot decode {self.label}: not a readable audio file "
                                     f"({' '.join(last.split())})")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()


# --- the importer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSettings:
    """What the importer reads of the configuration (made once, in `recorder.app`)."""

    layout: Layout  # this device's id and folders
    format: AudioFormat  # what imported audio is resampled to: the button's format
    max_seconds: float  # ``[storage] max_seconds``: longer files are refused
    encoder: EncoderConfig
    silence_dbfs: float  # ``[service] silence_dbfs``, for the recording's levels
    duplicate_coverage: float  # ``[audioid] duplicate_coverage``
    imports: ImportConfig


class Importer:
    """Imports files into this device's recordings through `publisher` (see the module)."""

    def __init__(self, settings: ImportSettings, database: Database, publisher: Publisher,
                 reserve: Reserve, sink_factories: Sequence[SinkFactory] = (),
                 catalogue: Any = None) -> None:
        self.settings = settings
        self.database = database
        self.publisher = publisher
        self.reserve = reserve
        self.sink_factories = list(sink_factories)
        self.catalogue = catalogue  # recorder.audioid.catalogue.Catalogue or None
        self.format = settings.format
        self.staging = settings.layout.staging_dir / "import"
        self.device_folder = settings.layout.device_folder
        database.ensure_schema(SCHEMA)

    # --- locking and crash recovery ---

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the import lock (the service's inbox and `recorder import` take turns)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.staging / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def finish_interrupted(self) -> list[str]:
        """Complete what a crash interrupted (call under `locked`): publish each staged
        recording that has its ``.json``, remove half-encoded OGGs. Returns the published
        recording ids. A failure leaves the files for the next call."""
        done: list[str] = []
        if not self.staging.is_dir():
            return done
        for entry in sorted(self.staging.iterdir()):
            rid, _, ext = entry.name.partition(".")
            if entry.name.startswith(".") and entry.name.endswith(".partial"):
                entry.unlink(missing_ok=True)  # an atomic write a kill interrupted
                continue
            if not is_recording_id(rid):
                continue
            marker, ogg = self.staging / f"{rid}.json", self.staging / f"{rid}.ogg"
            if ext == "ogg" and not marker.exists():
                log.info("removing the half-encoded import %s (its source is imported again)",
                         entry)
                entry.unlink(missing_ok=True)
            elif ext == "json":
                try:
                    rec = Recording.from_doc(json.loads(marker.read_bytes()))
                    target = self.device_folder / rec.path
                    if target.with_suffix(".json").exists():
                        pass  # published: only the leftovers go
                    elif target.exists():
                        self.publisher.publish(StagedRecording(rec, target), ogg_in_place=True)
                        done.append(rid)
                    elif ogg.exists():
                        self.publisher.publish(StagedRecording(rec, ogg))
                        done.append(rid)
                    ogg.unlink(missing_ok=True)
                    marker.unlink()
                except Exception as exc:
                    log.error("interrupted import %s not finished: %s", rid, exc)
        return done

    # --- nothing twice ---

    def known(self, keys: Sequence[str]) -> Existing | None:
        """The recording published for one of `keys`, if its sidecar is in place (a row whose
        sidecar is gone, from a crash before the publish, is forgotten)."""
        conn = self.database.conn
        for key in keys:
            row = conn.execute("SELECT recording_id, device_id, path FROM imports WHERE key = ?",
                               (key,)).fetchone()
            if row is None:
                continue
            found = Existing(row[0], row[1], row[2])
            if self._sidecar_of(found).is_file():
                return found
            with transaction(conn):
                conn.execute("DELETE FROM imports WHERE key = ?", (key,))
        return None

    def remember(self, keys: Sequence[str], rec: Existing) -> None:
        with transaction(self.database.conn) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO imports (key, recording_id, device_id, path) "
                "VALUES (?, ?, ?, ?)",
                [(k, rec.recording_id, rec.device_id, rec.path) for k in keys])

    def _sidecar_of(self, rec: Existing) -> Path:
        return (self.settings.layout.folder_of(rec.device_id) / rec.path).with_suffix(".json")

    def _same_audio(self, audio_id: dict[str, Any] | None,
                    rid: str) -> tuple[Existing | None, list[str]]:
        """(a known recording holding the same audio, known recordings this audio holds), by
        `identify`'s answer: Chromaprint, else landmarks (a call that caught a recording from
        the radio holds it). Lengths are the prints' non-silent items, as the catalogue's
        duplicate test counts."""
        if self.catalogue is None or audio_id is None:
            return None, []
        from recorder.audioid import chroma
        from recorder.audioid.compare import non_silent
        from recorder.audioid.identify import identify_prints
        from recorder.audioid.landmarks import HANDOFF

        try:
            items, _ = chroma.decode(audio_id["fingerprint"])
        except (KeyError, ValueError):
            return None, []
        coverage = self.settings.duplicate_coverage
        length = non_silent(items) * chroma.ITEM_SECONDS
        contains: list[str] = []
        for match in identify_prints(self.catalogue, items, HANDOFF.peek(rid), limit=10):
            entry = self.catalogue.get(match.recording_id)
            if entry is None or not entry.fingerprint:
                continue
            found = Existing(entry.recording_id, entry.device_id, entry.path)
            if not self._sidecar_of(found).is_file():
                continue
            if match.overlap_seconds is None:  # landmarks: heard in this audio, never all of it
                contains.append(entry.duplicate_of or entry.recording_id)
                continue
            try:
                known = non_silent(chroma.decode(entry.fingerprint)[0]) * chroma.ITEM_SECONDS
            except ValueError:
                continue
            if match.overlap_seconds < coverage * known:
                continue  # the known recording is not all in this one
            if match.overlap_seconds >= coverage * length:
                return found, []  # and this one is all in it: the same audio
            contains.append(entry.duplicate_of or entry.recording_id)
        return None, sorted(set(contains))

    # --- importing ---

    def import_file(self, path: Path, *, title: str = "", tags: Sequence[str] = ()) -> Outcome:
        """Import `path` (call under `locked`). Raises ImportRejected (the file can never be
        imported), SourceVanished, DiskFullError / DiskReserveError (retry later: nothing is
        left behind) or another RecorderError."""
        label = path.name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise SourceVanished(f"{path}: vanished before it was read") from None
        if not stat_mod.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat_mod.S_ISLNK(st.st_mode) else \
                "a directory" if stat_mod.S_ISDIR(st.st_mode) else "not a regular file"
            raise ImportRejected(f"{label}: {kind}, not a plain file")
        if "\n" in path.name or "\r" in path.name:
            raise ImportRejected("a file name with a line break")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SourceVanished(f"{path}: vanished before it was read") from None
        except OSError as exc:
            raise ImportRejected(f"{label}: cannot be read ({exc.strerror})") from None
        try:
            return self._import_fd(fd, path, title=title, tags=tags)
        except Exception as exc:
            # SQLite's "database or disk is full" and the like: "later", in one line.
            if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                raise write_error(exc, f"importing {label}: retried later") from None
            raise
        finally:
            os.close(fd)

    def _import_fd(self, fd: int, path: Path, *, title: str,
                   tags: Sequence[str]) -> Outcome:
        label = path.name
        st = os.fstat(fd)
        if st.st_size == 0:
            raise ImportRejected(f"{label}: the file is empty")
        digest, head = _sha256_and_head(fd)
        tags_found = file_tags(fd, head)
        origin = origin_of(path.name, tags_found, st.st_mtime)
        keys = [f"sha256:{digest}"] + ([f"call:{origin.call_id}"] if origin.call_id else [])
        existing = self.known(keys)
        if existing is not None:
            return self._duplicate(path, existing, keys, "the same file")
        self.reserve.check()  # DiskFullError / DiskReserveError: retried later
        self.staging.mkdir(parents=True, exist_ok=True)
        rid = new_recording_id(origin.started_utc)
        ogg = self.staging / f"{rid}.ogg"
        try:
            rec = self._encode(fd, label, ogg, rid, origin, digest, title, tags)
            same, contains = self._same_audio(dict(rec.audio_id) if rec.audio_id else None, rid)
            if same is not None:
                ogg.unlink(missing_ok=True)
                return self._duplicate(path, same, keys, "the same audio")
            if contains:
                rec = rec.with_extra({"contains": contains})
            marker = self.staging / f"{rid}.json"
            atomic_write_text(marker, dumps(rec.to_doc()))
            self.remember(keys, Existing(rid, rec.device_id, rec.path))
            result = self.publisher.publish(StagedRecording(rec, ogg))
            marker.unlink(missing_ok=True)
        except BaseException as exc:
            # Not published (the publisher leaves nothing visible on failure): the source is
            # still there, so nothing of this attempt is kept.
            ogg.unlink(missing_ok=True)
            (self.staging / f"{rid}.json").unlink(missing_ok=True)
            if isinstance(exc, Exception) and is_disk_full(exc) and \
                    not isinstance(exc, DiskFullError):
                raise write_error(exc, f"importing {label}: retried later") from None
            raise
        return Outcome(str(path), "imported", rid, str(result.ogg_path),
                       f"{rec.duration:.1f} s, {origin.source}, time from {origin.time_source}",
                       published=result)

    def _duplicate(self, path: Path, existing: Existing, keys: Sequence[str],
                   why: str) -> Outcome:
        self.remember(keys, existing)
        ogg = self.settings.layout.folder_of(existing.device_id) / existing.path
        return Outcome(str(path), "duplicate", existing.recording_id, str(ogg),
                       f"{why} as recording {existing.recording_id}")

    def _encode(self, fd: int, label: str, ogg: Path, rid: str, origin: Origin, digest: str,
                title: str, tags: Sequence[str]) -> Recording:
        fmt = self.format
        decoded = _Decoded(fd, fmt, label)
        max_frames = fmt.frames(self.settings.max_seconds)
        if decoded.frames_hint is not None and decoded.frames_hint > max_frames:
            raise ImportRejected(f"{label}: longer than storage.max_seconds "
                                 f"({self.settings.max_seconds:g} s)")
        start = new_start(
            recording_id=rid, device_id=self.settings.layout.device_id,
            codec=self.settings.encoder.codec,
            samplerate=fmt.samplerate, channels=fmt.channels, started_utc=origin.started_utc,
            monotonic_start=0.0, clock_synced=True, boot_id="", trigger="import", preroll=0.0,
            title=title or origin.title, tags=tags, software=f"recorderpi {__version__}")
        encoder = OggEncoderSink(ogg, fmt, self.settings.encoder, flush_seconds=3600.0, comments={
            "title": start.title or start.name, "date": start.started_at,
            "comment": f"recording_id={rid}", "software": start.software or ""})
        ctx = RecordingContext(rid, self.settings.layout.device_id, fmt, self.staging)
        sinks: list[Sink] = [encoder, LevelMeter(fmt.samplerate, self.settings.silence_dbfs),
                             *(factory(ctx) for factory in self.sink_factories)]

        def checked() -> Iterator[np.ndarray]:
            """The decoded blocks, refusing (so `feed` aborts the sinks) a file that turns
            out too long, or too short once it ends."""
            frames = 0
            for block in decoded.blocks():
                frames += len(block)
                if frames > max_frames:
                    raise ImportRejected(f"{label}: longer than storage.max_seconds "
                                         f"({self.settings.max_seconds:g} s)")
                yield block
            if frames < fmt.frames(MIN_RECORDING_SECONDS) or frames == 0:
                raise TooShortError(f"{label}: {fmt.seconds(frames):.3f} s of audio, under the "
                                    f"{MIN_RECORDING_SECONDS:g} s a recording needs")

        audio, levels, extra = collect_facts(feed(sinks, checked()))
        assert audio is not None  # the encoder is the first sink
        return finished(start, audio, stop_reason=StopReason.END_OF_INPUT, levels=levels,
                        extra={**extra, **self._provenance(origin, label, digest)})

    def _provenance(self, origin: Origin, label: str, digest: str) -> dict[str, Any]:
        """The sidecar's fields about where the recording came from (the caller's key only
        with ``import.publish_caller_key``, the name unless ``publish_caller_name`` is off)."""
        fields: dict[str, Any] = {
            "source": origin.source, "original_name": label, "source_sha256": digest,
            "time_source": origin.time_source,
        }
        if origin.source == SOURCE_PHONE:
            fields["call_id"] = origin.call_id
            caller: dict[str, Any] = {}
            if origin.caller_name and self.settings.imports.publish_caller_name:
                caller["name"] = origin.caller_name
            if origin.caller_key and self.settings.imports.publish_caller_key:
                caller["public_key"] = origin.caller_key
            if origin.call_status:
                caller["status"] = origin.call_status
            fields["caller"] = caller
        return fields


def _sha256_and_head(fd: int) -> tuple[str, bytes]:
    """The sha256 of the whole file and its first 256 KiB (its tags)."""
    h = hashlib.sha256()
    head = b""
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        if len(head) < 256 * 1024:
            head += chunk[: 256 * 1024 - len(head)]
        h.update(chunk)
    return h.hexdigest(), head


def reject_reason(exc: BaseException) -> str:
    """The one-line reason a file was rejected."""
    return " ".join(str(exc).split()) or type(exc).__name__


def is_retryable(exc: BaseException) -> bool:
    """A failure that says "later" (the disk), not "never" (the file)."""
    from recorder.errors import DiskReserveError

    return isinstance(exc, DiskReserveError) or is_disk_full(exc)


__all__ = ["Existing", "ImportRejected", "Importer", "Origin", "Outcome", "SourceVanished",
           "is_retryable", "ogg_comments", "origin_of", "reject_reason"]
