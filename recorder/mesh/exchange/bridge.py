"""The sync bridge: bring the recordings peers send through Syncthing into this device.

Each peer owns ``<sync_root>/<peer-id>/``, which this device holds **receiveonly**. The bridge
finds the sidecars there (``recordings/YYYY/MM/DD/NAME.json``), checks each one and its OGG, and
then adds the recording to the Audio ID catalogue (origin ``peer:<id>``, duplicates recognised)
and queues it in the papad outbox (origin ``peer:<id>``), which registers it in the local papad.

Discovery is event-driven (Syncthing's ``/rest/events`` long poll: ``ItemFinished`` when a pulled
file is in place, ``LocalIndexUpdated`` when the folder's index changed), with a full scan at
start and every `rescan_interval` seconds as a safety net (Syncthing down, events missed across
a Syncthing restart).

Never trusted, never touched: a peer folder is Syncthing's receive-only copy, so the bridge only
reads it (anything it wrote or moved there would show as a local change). Per file it:

- ignores Syncthing temporary files (``.syncthing.*.tmp``, ``~syncthing~*``), conflict copies
  (``*.sync-conflict-*``), hidden files and names that are not sidecar names;
- refuses symlinks (``lstat``, then ``open`` with ``O_NOFOLLOW``), non-regular files, paths that
  resolve outside the peer folder, and sidecars over ``MAX_SIDECAR_BYTES``;
- validates the sidecar strictly (`recorder.sidecar.loads` and ``validate(expect_device=peer)``),
  checks it lies where its own ``path`` says, that its recording id is not already another
  device's or another sidecar's, and that the OGG is a regular file inside the folder with the
  sidecar's sha256;
- checks the audio itself, since a sha256 only proves the peer sent the file it described: the
  OGG must decode to the end at the sidecar's rate and channels, hold the sidecar's duration
  (within `DURATION_TOLERANCE`), and its fingerprint, computed here while decoding, must match
  the ``audio_id`` it claims (BER within the catalogue's threshold, at offset 0); a recording
  that claims none is catalogued with the fingerprint computed here. The same decoding gives
  its landmarks (`recorder.audioid.landmarks`), recomputed here, never taken from a peer. This
  decodes each new
  peer recording once, on the bridge thread (tests/bench/bench_robust.py measures it).

Bad files are **quarantined in the database only** (state, reason, shown by `status()` and
``recorder mesh status``); a sidecar whose OGG has not arrived yet (Syncthing pulls files in
any order) is **pending** and retried on the next event or scan. Quarantined files are looked
at again when they change.

Per-file state lives in the ``bridge_files`` table (shared database): path, mtime, size and
sha256 of the sidecar and its OGG, so unchanged files cost one ``stat`` per scan and are never
re-hashed. The import is idempotent (catalogue upsert, outbox enqueue keyed by recording id), so
a bridge stopped mid-import finishes on restart without duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recorder.audioid.landmarks import Landmarks, PeakFinder, triplets
from recorder.layout import Layout, device_folders, origin_label
from recorder.mesh.exchange.store import (
    IMPORTED,
    PENDING,
    QUARANTINED,
    SIDECAR,
    BridgeStore,
    FileStat,
    Quarantine,
)
from recorder.recording import parse_utc
from recorder.safefile import UnsafeFile, check_regular, open_nofollow
from recorder.sidecar import SidecarError, candidates, is_sidecar_name, read_sidecar

if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue
    from recorder.mesh.exchange.annotations import AnnotationExchange
    from recorder.mesh.net.syncthing import SyncthingClient
    from recorder.papad.outbox import Outbox

log = logging.getLogger(__name__)

DEFAULT_RESCAN = 60.0
# How far a peer's decoded audio may be from the duration its sidecar states: seconds, and a
# fraction of the duration (Opus pre-skip and encoder padding are a few milliseconds).
DURATION_TOLERANCE = (0.25, 0.01)
EVENT_TYPES = ("ItemFinished", "LocalIndexUpdated")
EVENT_POLL_S = 30.0


def _check_fields(doc: dict[str, Any]) -> None:
    """What the schema leaves loose but registering in papad relies on."""
    try:
        parse_utc(doc["started_at"])
    except (ValueError, TypeError, OverflowError):
        raise Quarantine("sidecar field 'started_at' is not a timestamp") from None
    if not 0 <= float(doc["duration"]) < 1e7 or doc["bytes"] < 0:
        raise Quarantine("sidecar fields 'duration'/'bytes' are out of range")


@dataclass
class ScanReport:
    """What one scan of one or more peer folders did."""

    imported: int = 0
    pending: int = 0
    quarantined: int = 0
    unchanged: int = 0
    ignored: int = 0
    removed: int = 0
    seconds: float = 0.0

    def add(self, other: ScanReport) -> None:
        for key in ("imported", "pending", "quarantined", "unchanged", "ignored", "removed"):
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Bridge:
    """The bridge as a service worker (``start``/``stop``/``status``) or a one-shot scanner
    (`run_once`). Every collaborator is built once in `recorder.app` and handed in.

    `store`: the peer-file table (shared with the annotation exchange); `catalogue`: the
    Audio ID catalogue peers' recordings are added to; `outbox`: the papad outbox they are
    queued in (None without papad); `on_queued` is called after new recordings were queued
    (the outbox worker's ``wake`` and the playlist, so they act at once). `syncthing`: the
    Syncthing client for events (None: periodic scans only). `exchange`: the annotation
    exchange (None without papad).
    """

    name = "bridge"

    def __init__(
        self,
        layout: Layout,
        store: BridgeStore,
        catalogue: Catalogue,
        *,
        outbox: Outbox | None = None,
        on_queued: Callable[[], None] | None = None,
        syncthing: SyncthingClient | None = None,
        exchange: AnnotationExchange | None = None,
        rescan_interval: float = DEFAULT_RESCAN,
        event_timeout: float = EVENT_POLL_S,
    ) -> None:
        self.layout = layout
        self.own_id = layout.device_id
        self.sync_root = layout.sync_root
        self.store = store
        self.catalogue = catalogue
        self.outbox = outbox
        self.on_queued = on_queued
        self.syncthing = syncthing
        self.exchange = exchange
        self.rescan_interval = rescan_interval
        self.event_timeout = event_timeout
        self._lock = threading.RLock()  # one scan at a time
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._last: dict[str, Any] = {"scan_at": None, "scan": None, "full_scan_at": None,
                                      "events": "off", "errors": 0}

    # -- service worker ------------------------------------------------------------------

    def start(self) -> None:
        """Scan everything now, then run the event listener and the periodic scan."""
        if self._threads:
            return
        self._stopping.clear()
        self._wake.set()  # the first pass of the loop is a full scan
        self._threads = [threading.Thread(target=self._loop, name="bridge", daemon=True)]
        if self.syncthing is not None:
            self._threads.append(
                threading.Thread(target=self._events_loop, name="bridge-events", daemon=True)
            )
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the file in hand (the event long poll is abandoned, not waited for)."""
        self._stopping.set()
        self._wake.set()
        for t in self._threads:
            if t.name == "bridge":
                t.join(timeout)
        self._threads = []

    def wake(self, peer: str | None = None) -> None:
        """Scan `peer`'s folder (None: every folder) as soon as possible."""
        with self._dirty_lock:
            self._dirty.add(peer or "*")
        self._wake.set()

    def export_soon(self) -> None:
        """Export this device's annotations as soon as possible (a recording was delivered to
        papad, or a bookmark made), without a full scan (any thread)."""
        if self.exchange is not None:
            self.exchange.request_export()
            self._wake.set()

    def status(self) -> dict[str, Any]:
        """Counts per peer, quarantined and pending files with reasons, last scan."""
        out = {**self.store.summary(), **self._last, "running": bool(self._threads)}
        if self.exchange is not None:
            out["annotations"] = self.exchange.status()
        return out

    def _loop(self) -> None:
        next_full = 0.0
        while not self._stopping.is_set():
            wait = next_full - time.monotonic()
            if self.exchange is not None:
                due = self.exchange.next_due_in()
                if due is not None:
                    wait = min(wait, due)
            self._wake.wait(max(0.0, wait))
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            try:
                if time.monotonic() >= next_full or "*" in dirty:
                    next_full = time.monotonic() + self.rescan_interval
                    self.run_once()
                else:
                    if dirty:
                        self.scan(sorted(dirty))
                    if self.exchange is not None:
                        self.exchange.run_due()
            except Exception:  # the bridge must outlive any bug or database hiccup
                self._last["errors"] += 1
                log.exception("bridge: scan failed")
                self._stopping.wait(1.0)

    def _events_loop(self) -> None:
        from recorder.mesh.membership.provision import owner_of

        syncthing = self.syncthing
        assert syncthing is not None  # started only with a client
        since: int | None = None
        while not self._stopping.is_set():
            try:
                if since is None:
                    # A filtered subscription numbers its events on its own (from 1, measured
                    # on 1.19): the starting point must come from the same filter.
                    latest = syncthing.events(since=0, timeout=0, types=EVENT_TYPES)
                    since = latest[-1]["id"] if latest else 0
                    self._last["events"] = "on"
                    self.wake()  # events may have been missed while we were not listening
                events = syncthing.events(since=since, timeout=self.event_timeout,
                                          types=EVENT_TYPES)
            except Exception as exc:
                if since is not None:
                    log.info("bridge: Syncthing events unavailable (%s); periodic scans only", exc)
                since = None
                self._last["events"] = "unavailable"
                self._stopping.wait(5.0)
                continue
            for event in events:
                since = max(since, int(event.get("id", since)))
                data = event.get("data") or {}
                owner = owner_of(str(data.get("folder", "")))
                if owner and owner != self.own_id:
                    if event.get("type") == "ItemFinished" and data.get("error"):
                        continue
                    self.wake(owner)

    # -- scanning ------------------------------------------------------------------------

    def peers(self) -> list[str]:
        """Peer folders under the sync root: every device folder except our own."""
        for entry in _symlinked_folders(self.sync_root):
            log.warning("bridge: peer folder %s is a symlink: ignored", entry)
        return [f.name for f in device_folders(self.sync_root) if f.name != self.own_id]

    def run_once(self) -> ScanReport:
        """A full pass: scan every peer folder, then exchange annotations."""
        if self.exchange is not None:
            try:
                self.exchange.export_now()
            except Exception:
                self._last["errors"] += 1
                log.exception("bridge: annotation export failed")
        report = self.scan(self.peers())
        self._last["full_scan_at"] = time.time()
        return report

    def scan(self, peers: list[str]) -> ScanReport:
        """Scan the named peer folders ("*" means all) and import what is new or changed."""
        if "*" in peers:
            peers = self.peers()
        total = ScanReport()
        started = time.monotonic()
        with self._lock:
            for peer in peers:
                if peer != self.own_id:
                    total.add(self._scan_peer(peer))
        if self.exchange is not None:
            for peer in peers:
                if peer != self.own_id:
                    self._import_annotations(peer)
        total.seconds = time.monotonic() - started
        self._last["scan_at"] = time.time()
        self._last["scan"] = total.as_dict()
        if total.imported and self.on_queued is not None:
            try:
                self.on_queued()
            except Exception:
                log.exception("bridge: on_queued callback failed")
        if total.imported or total.quarantined:
            log.info("bridge: %s", total.as_dict())
        return total

    def _import_annotations(self, peer: str) -> None:
        if self.exchange is None:
            return
        try:
            self.exchange.import_peer(peer)
        except Exception:
            self._last["errors"] += 1
            log.exception("bridge: importing %s's annotations failed", peer)

    def _scan_peer(self, peer: str) -> ScanReport:
        folder = self.sync_root / peer
        report = ScanReport()
        known = self.store.rows(peer)
        seen: set[str] = set()
        for cand in candidates(folder):
            rel, path, st = cand.rel, cand.path, cand.lstat
            if not is_sidecar_name(path.name) and st is not None:
                report.ignored += 1
                continue
            seen.add(rel)
            if st is None:  # a symlink, or "recordings" is not a directory
                row = known.get(rel)
                if row is None or row["state"] != QUARANTINED:
                    self.store.put(peer, rel, SIDECAR, None, QUARANTINED,
                                   reason="is a symlink or not a regular file")
                    log.warning("bridge: quarantined %s/%s: symlink or special file", peer, rel)
                    report.quarantined += 1
                else:
                    report.unchanged += 1
                continue
            fst = FileStat(st.st_mtime_ns, st.st_size)
            row = known.get(rel)
            if row is not None and self._unchanged(row, fst, folder):
                report.unchanged += 1
                continue
            state = self._import(peer, folder, rel, path, fst, row)
            setattr(report, state, getattr(report, state) + 1)
        gone = [p for p, r in known.items() if p not in seen and r["kind"] == SIDECAR]
        if gone:
            self.store.forget(peer, gone)
            report.removed += len(gone)
        return report

    def _unchanged(self, row: sqlite3.Row, fst: FileStat, folder: Path) -> bool:
        if (row["mtime_ns"], row["size"]) != (fst.mtime_ns, fst.size):
            return False
        if row["state"] == IMPORTED:
            return True
        if row["state"] == QUARANTINED and row["ogg_mtime_ns"] is None:
            return True  # the sidecar itself is bad: only a new version can change that
        # Pending (no OGG yet), or quarantined because of its OGG: look again once the OGG
        # arrived or changed.
        ogg = self._ogg_stat(folder, row)
        if row["state"] == PENDING:
            return ogg is None
        return ogg is not None and (ogg.mtime_ns, ogg.size) == (row["ogg_mtime_ns"],
                                                                  row["ogg_size"])

    def _ogg_stat(self, folder: Path, row: sqlite3.Row) -> FileStat | None:
        rel = Path(row["path"]).with_suffix(".ogg")
        for candidate in (rel, rel.with_suffix(".opus")):
            try:
                st = os.lstat(folder / candidate)
            except OSError:
                continue
            return FileStat(st.st_mtime_ns, st.st_size)
        return None

    def _import(self, peer: str, folder: Path, rel: str, path: Path, fst: FileStat,
                row: sqlite3.Row | None) -> str:
        """Check one sidecar and import it; record and return its state."""
        sha = None
        try:
            found = read_sidecar(path, folder)
            doc, sha = found.doc, hashlib.sha256(found.data).hexdigest()
            _check_fields(doc)
            self._check_identity(peer, rel, doc)
        except FileNotFoundError:
            return "ignored"
        except (SidecarError, Quarantine) as exc:
            return self._quarantine(peer, rel, fst, str(exc), sha=sha)
        except Exception as exc:  # a validator bug must not stop the bridge
            log.exception("bridge: unexpected failure validating %s/%s", peer, rel)
            return self._quarantine(peer, rel, fst, f"internal error: {type(exc).__name__}",
                                    sha=sha)
        ogg_path = folder / doc["path"]
        try:
            ogg_st = os.lstat(ogg_path)
        except FileNotFoundError:
            self.store.put(peer, rel, SIDECAR, fst, PENDING, sha256=sha,
                           reason="recording file not here yet",
                           recording_id=doc["recording_id"])
            return PENDING
        except OSError as exc:
            return self._quarantine(peer, rel, fst, f"recording file: {exc.strerror}", sha=sha)
        ogg = FileStat(ogg_st.st_mtime_ns, ogg_st.st_size)
        try:
            check_regular(ogg_path, ogg_st, folder, "recording file ")
            if ogg.size != doc["bytes"]:
                raise Quarantine(f"recording file has {ogg.size} bytes, sidecar says "
                                 f"{doc['bytes']}")
            known = (row["ogg_sha256"] if row is not None and row["ogg_sha256"]
                     and (row["ogg_mtime_ns"], row["ogg_size"]) == (ogg.mtime_ns, ogg.size)
                     else None)
            finder = PeakFinder()  # the landmarks come from the audio, never from the peer
            ogg_sha, computed = _verify_audio(ogg_path, doc, known, self.catalogue.threshold,
                                              tap=finder.feed)
            if computed is not None:  # it claimed none: ours goes into the catalogue
                doc = {**doc, "audio_id": {**computed, "sha256": ogg_sha}}
        except FileNotFoundError:
            self.store.put(peer, rel, SIDECAR, fst, PENDING, sha256=sha,
                           reason="recording file not here yet",
                           recording_id=doc["recording_id"])
            return PENDING
        except (Quarantine, UnsafeFile) as exc:
            # Remember the OGG's stat: a later version of it is looked at again.
            return self._quarantine(peer, rel, fst, str(exc), sha=sha, ogg=ogg)
        try:
            duplicate_of = self._catalogue_add(doc, peer, triplets(finder.finish()))
        except SidecarError as exc:
            return self._quarantine(peer, rel, fst, str(exc), sha=sha, ogg=ogg)
        if self.outbox is not None:
            self.outbox.enqueue(doc, ogg_path, origin=origin_label(peer, self.own_id))
        self.store.put(peer, rel, SIDECAR, fst, IMPORTED, sha256=sha, ogg=ogg,
                       ogg_sha256=ogg_sha, recording_id=doc["recording_id"],
                       duplicate_of=duplicate_of)
        log.info("bridge: imported %s from %s%s", doc["recording_id"], peer,
                 f" (duplicate of {duplicate_of})" if duplicate_of else "")
        return IMPORTED

    def _check_identity(self, peer: str, rel: str, doc: dict[str, Any]) -> None:
        """A recording id belongs to one device and one sidecar: a peer cannot take over
        another device's recording (or its own other recording) by reusing its id."""
        rid = doc["recording_id"]
        owner = self.store.recording_owner(rid)
        if owner is not None and owner != (peer, rel):
            raise Quarantine(f"recording id {rid} is already used by {owner[0]}/{owner[1]}")
        entry = self.catalogue.get(rid)
        if entry is not None and (entry.device_id != peer or entry.path != doc["path"]):
            raise Quarantine(f"recording id {rid} is already used by {entry.device_id}/"
                             f"{entry.path}")

    def _catalogue_add(self, doc: dict[str, Any], peer: str,
                       landmarks: Landmarks | None = None) -> str | None:
        return self.catalogue.add(doc, origin=origin_label(peer, self.own_id),
                                  landmarks=landmarks)

    def _quarantine(self, peer: str, rel: str, fst: FileStat, reason: str, *,
                    sha: str | None = None, ogg: FileStat | None = None) -> str:
        reason = " ".join(reason.split())[:300]
        self.store.put(peer, rel, SIDECAR, fst, QUARANTINED, reason=reason, sha256=sha, ogg=ogg)
        log.warning("bridge: quarantined %s/%s: %s", peer, rel, reason)
        return QUARANTINED


def _verify_audio(path: Path, doc: dict[str, Any], known_sha: str | None,
                  threshold: float, tap: Callable[[np.ndarray], None] | None = None,
                  ) -> tuple[str, dict[str, Any] | None]:
    """Check a peer's OGG against its sidecar through one descriptor (never followed if
    swapped for a symlink): its sha256 (unless `known_sha` was computed for this very file
    version), that it decodes to the end at the stated format and duration, and that its
    fingerprint matches the claimed Audio ID. Returns (sha256, the Audio ID computed here when
    the sidecar claims none and the audio is long enough); raises Quarantine with the reason.
    `tap` is fed the decoded audio as Chromaprint sees it (the landmarks' peak finder)."""
    import soundfile as sf

    from recorder.audioid import chroma
    from recorder.audioid.compare import compare_near
    from recorder.errors import TooShortError

    with os.fdopen(open_nofollow(path), "rb") as fh:
        sha = known_sha
        if sha is None:
            digest = hashlib.sha256()
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
            sha = digest.hexdigest()
        if sha != doc["sha256"]:
            raise Quarantine("recording file sha256 does not match the sidecar")
        fh.seek(0)
        try:
            snd = sf.SoundFile(fh)
        except Exception:
            raise Quarantine("recording file does not decode as audio") from None
        with snd:
            rate, channels = int(snd.samplerate), int(snd.channels)
            if (rate, channels) != (doc["samplerate"], doc["channels"]):
                raise Quarantine(f"recording file is {rate} Hz x {channels}, the sidecar says "
                                 f"{doc['samplerate']} Hz x {doc['channels']}")
            printer = chroma.StreamingFingerprinter(rate, min(channels, 2), tap)
            frames = 0
            try:
                for block in snd.blocks(blocksize=chroma.READ_FRAMES, dtype="int16",
                                        always_2d=True):
                    printer.feed(np.ascontiguousarray(block[:, :2]))
                    frames += len(block)
            except Exception:
                raise Quarantine(f"recording file stops decoding after {frames / rate:.1f} s"
                                 ) from None
    seconds, claimed = frames / rate, float(doc["duration"])
    if abs(seconds - claimed) > max(DURATION_TOLERANCE[0], DURATION_TOLERANCE[1] * claimed):
        raise Quarantine(f"recording file holds {seconds:.2f} s of audio, the sidecar says "
                         f"{claimed:.2f} s")
    try:
        ours = printer.finish()
    except TooShortError:
        ours = None
    claim = doc.get("audio_id")
    if claim is None:
        return sha, (ours.audio_id() if ours is not None else None)
    try:
        items, _ = chroma.decode(claim["fingerprint"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Quarantine("sidecar field 'audio_id' is not a chromaprint Audio ID") from None
    if ours is None:
        raise Quarantine("sidecar claims an Audio ID for audio too short to fingerprint")
    match = compare_near(ours.items, items, 0, radius=2, threshold=threshold)
    if not match.is_match:
        raise Quarantine(f"recording file does not match the Audio ID its sidecar claims "
                         f"(BER {match.ber:.2f} > {threshold:g})")
    return sha, None


def run_forever(bridge: Bridge, stop: threading.Event) -> None:
    """Run `bridge` as a service until `stop` is set (``recorder mesh bridge``)."""
    bridge.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        with contextlib.suppress(Exception):
            bridge.stop()


def _symlinked_folders(sync_root: Path) -> list[str]:
    try:
        return [e.path for e in os.scandir(sync_root) if e.is_symlink()]
    except OSError:
        return []


__all__ = ["Bridge", "ScanReport", "run_forever"]
