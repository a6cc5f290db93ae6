"""Annotation exchange: every device's papad shows the annotations made on every device.

papad has no sync of its own, so the bridge carries annotations through Syncthing:

- **Export.** This device writes the annotations *made here* on every recording its papad knows
  (its own and its peers', i.e. the delivered outbox entries) to
  ``<sync_root>/<device-id>/papad/annotations.json``, atomically (staged in
  ``storage.staging_dir``, fsynced, renamed) and only when the content changed. Each entry has a
  stable id, ``<recording id>:<papad annotation id>``, and names its origin device. A failed
  papad listing writes nothing (a partial export would read as deletions on the peers).
- **Import.** Each peer's export is validated strictly (size, schema, every entry claiming that
  peer as its origin: a peer only speaks for itself) and merged into the local papad: new
  entries are created, changed ones updated (PUT/PATCH), entries gone from the export deleted.
  ``annotation_links`` maps (origin device, origin id) to the local papad id, so nothing is
  created twice; a create whose answer was lost is found again by its content and origin tag.
- **Origin.** papad has no origin field: an imported annotation carries the tag
  ``origin:<device-id>``. Annotations linked in ``annotation_links`` or tagged with another
  device's origin are never exported as ours, so nothing echoes back. Edits and deletions follow
  the owner only: a local edit of an imported annotation stays local (it is overwritten by the
  owner's next edit), a local deletion of one is respected (it is not re-created).
- **Bookmarks.** The outbox posts a peer recording's sidecar bookmarks on its own; their owner
  exports the same annotations. When importing, such an outbox-made annotation (same target and
  text, no origin tag, on the owner's recording) is adopted and tagged instead of duplicated,
  and it is never exported as this device's.
- **Tags** are normalised (lowercase, single spaces, no empties, no duplicates).
- **Failures stay with their entry.** An entry papad refuses or fails (a PATCH refused, a 500)
  is retried on its own schedule, 2 s doubling to 15 min (`ENTRY_RETRY`, `ENTRY_RETRY_MAX`),
  logged once per try and listed in `status()["failing"]`; the peer's other entries go on.
  Only papad being unavailable (down, throttling, credentials) postpones a peer's whole import,
  and an export whose entries wait for recordings not registered here yet is re-read 2 s
  doubling to 1 min apart until something changes.

papad deletes: current papad ``DELETE /api/v1/annotate/<uuid>/`` (a soft delete that hides it),
papad-api ``DELETE /fragments/<id>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recorder.atomic import atomic_write_text
from recorder.layout import Layout
from recorder.mesh.exchange.store import (
    ANNOTATIONS,
    IMPORTED,
    PENDING,
    QUARANTINED,
    BridgeStore,
    FileStat,
    Quarantine,
)
from recorder.papad import mapping
from recorder.papad.errors import PapadError
from recorder.safefile import UnsafeFile, read_regular

if TYPE_CHECKING:
    from recorder.mesh.net.syncthing import SyncthingClient
    from recorder.papad.client import PapadClient
    from recorder.papad.outbox import Outbox

log = logging.getLogger(__name__)

SCHEMA_ID = "recorderpi.annotations/1"
EXPORT_PATH = "papad/annotations.json"
MAX_EXPORT_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 20000
MAX_TEXT = 10000
MAX_TAGS = 50
MAX_TAG = 100
DEFAULT_EXPORT_INTERVAL = 300.0
PENDING_RETRY = 2.0
ORIGIN_TAG = "origin:"
ENTRY_RETRY = 2.0  # first retry of an entry papad refused or failed, doubling ...
ENTRY_RETRY_MAX = 900.0  # ... up to this
WAITING_RETRY_MAX = 60.0  # a peer's export with waiting entries is re-read at most this far apart
MAX_REPORTED = 20  # failing entries listed in status()

_RID = r"[0-9a-hjkmnp-tv-z]{26}"
_ID_RE = re.compile(rf"^({_RID}):[A-Za-z0-9._-]{{1,100}}$")
_TARGET_RE = re.compile(r"^t=[0-9:.]{1,20}(,[0-9:.]{1,20})?$")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS annotation_links (
        origin TEXT NOT NULL,
        origin_id TEXT NOT NULL,
        recording_id TEXT NOT NULL,
        local_id TEXT NOT NULL,
        content TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'linked' CHECK (state IN ('linked', 'gone')),
        updated_at REAL NOT NULL,
        PRIMARY KEY (origin, origin_id)
    )""",
    "CREATE INDEX IF NOT EXISTS annotation_links_local ON annotation_links (local_id)",
)


def origin_tag(device_id: str) -> str:
    """The tag naming the device an imported annotation came from."""
    return ORIGIN_TAG + device_id


def _seconds(value: str) -> float:
    total = 0.0
    for part in value.split(":"):
        total = total * 60 + float(part or 0)
    return total


def annotation_for(target: str, text: str, tags: list[str]) -> mapping.Annotation:
    """A `mapping.Annotation` for a Media Fragments target like ``t=12.5,22.5``."""
    start = end = 0.0
    try:
        parts = target[2:].split(",")
        start = _seconds(parts[0])
        end = _seconds(parts[1]) if len(parts) > 1 else start
    except (ValueError, IndexError):
        pass
    return mapping.Annotation(index=0, start=start, end=end, media_target=target, text=text,
                              tags=tuple(tags))


def content_key(target: str, text: str, tags: list[str]) -> str:
    """A digest of what an annotation says (what an update must change)."""
    blob = json.dumps([target, text, sorted(tags)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def validate_export(doc: Any, peer: str) -> list[dict[str, Any]]:
    """The entries of a peer's export, checked strictly; raise Quarantine naming the fault."""
    if not isinstance(doc, dict):
        raise Quarantine("annotation export must be a JSON object")
    if doc.get("schema") != SCHEMA_ID:
        raise Quarantine(f"unsupported annotation export schema {str(doc.get('schema'))[:80]!r}")
    if doc.get("device_id") != peer:
        raise Quarantine(f"annotation export names device {str(doc.get('device_id'))[:80]!r} "
                         f"but lies in {peer!r}'s folder")
    entries = doc.get("annotations")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise Quarantine("annotation export field 'annotations' must be a list "
                         f"of at most {MAX_ENTRIES}")
    seen: set[str] = set()
    out = []
    for n, item in enumerate(entries):
        where = f"annotation {n + 1}"
        if not isinstance(item, dict):
            raise Quarantine(f"{where} is not an object")
        ident = item.get("id")
        match = _ID_RE.match(ident) if isinstance(ident, str) else None
        if match is None or not isinstance(ident, str):
            raise Quarantine(f"{where} has no valid id")
        if ident in seen:
            raise Quarantine(f"{where}: id {ident} appears twice")
        seen.add(ident)
        if item.get("recording_id") != match.group(1):
            raise Quarantine(f"{where}: recording_id does not match its id")
        if item.get("origin") != peer:
            raise Quarantine(f"{where} claims origin {str(item.get('origin'))[:80]!r}: "
                             f"{peer} may only export its own annotations")
        target, text, tags = item.get("media_target"), item.get("text"), item.get("tags")
        if not isinstance(target, str) or not _TARGET_RE.match(target):
            raise Quarantine(f"{where}: media_target is not a t=start,end fragment")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise Quarantine(f"{where}: text must be a string of at most {MAX_TEXT} characters")
        if (not isinstance(tags, list) or len(tags) > MAX_TAGS
                or not all(isinstance(t, str) and len(t) <= MAX_TAG for t in tags)):
            raise Quarantine(f"{where}: tags must be at most {MAX_TAGS} short strings")
        clean = [t for t in mapping.normalise_tags(tags) if not t.startswith(ORIGIN_TAG)]
        out.append({"id": ident, "recording_id": match.group(1), "media_target": target,
                    "text": " ".join(text.split()), "tags": clean})
    return out


def _again_after_500(call: Callable[..., Any], *args: Any) -> Any:
    """Call; after a 500, once more at once. For idempotent requests (PATCH, DELETE) only:
    papadam answers some of them 500 ("Event loop is closed") after doing them, and the
    second try then passes (a DELETE gets 404, which counts as deleted)."""
    try:
        return call(*args)
    except PapadError as exc:
        if exc.unavailable or not exc.retryable or (exc.status or 0) < 500:
            raise
        log.info("annotations: %s; trying once more", exc)
        return call(*args)


class EntryBackoff:
    """Import retry state: per entry (papad refused or failed it) and per peer (when its export
    is worth reading again). In memory: after a restart every entry gets one early try."""

    def __init__(self) -> None:
        self.failing: dict[tuple[str, str], dict[str, Any]] = {}
        self.peer_next: dict[str, float] = {}
        self.peer_streak: dict[str, int] = {}
        self.peer_waiting: dict[str, int] = {}

    def due(self, peer: str, ident: str, now: float) -> bool:
        """Whether entry `ident` of `peer` may be tried now."""
        rec = self.failing.get((peer, ident))
        return rec is None or now >= rec["next_at"]

    def failed(self, peer: str, ident: str, error: str, now: float) -> dict[str, Any]:
        """Count a failure of the entry; return its record (attempts, next_at, error)."""
        rec = self.failing.setdefault((peer, ident), {"attempts": 0, "since": now})
        rec["attempts"] += 1
        rec["error"] = error
        rec["next_at"] = now + min(ENTRY_RETRY_MAX, ENTRY_RETRY * 2 ** min(rec["attempts"] - 1, 20))
        return rec

    def succeeded(self, peer: str, ident: str) -> None:
        self.failing.pop((peer, ident), None)

    def keep_only(self, peer: str, idents: set[str]) -> None:
        """Forget failures of `peer`'s entries other than `idents` (resolved meanwhile)."""
        for key in [k for k in self.failing if k[0] == peer and k[1] not in idents]:
            del self.failing[key]

    def next_failing(self, peer: str) -> float | None:
        times = [r["next_at"] for (p, _), r in self.failing.items() if p == peer]
        return min(times) if times else None

    def _step(self, peer: str, now: float) -> int:
        """The backoff streak for a read of `peer`'s export now. It grows only once the wait
        it set has passed: reads that Syncthing's events bring forward (a burst of them as a
        folder catches up) are not steps, or one burst would push the next try a minute out."""
        streak = self.peer_streak.get(peer, -1)
        if streak < 0 or now >= self.peer_next.get(peer, now):
            streak += 1
        return streak

    def schedule(self, peer: str, now: float, waiting: int, progressed: bool) -> None:
        """When to read `peer`'s export again: waiting entries back off while nothing changes;
        failing entries when the first of them is due."""
        if progressed or waiting < self.peer_waiting.get(peer, waiting + 1):
            self.peer_streak[peer] = 0
        else:
            self.peer_streak[peer] = self._step(peer, now)
        self.peer_waiting[peer] = waiting
        candidates = []
        if waiting:
            candidates.append(now + min(WAITING_RETRY_MAX,
                                        PENDING_RETRY * 2 ** min(self.peer_streak[peer], 10)))
        failing = self.next_failing(peer)
        if failing is not None:
            candidates.append(failing)
        self.peer_next[peer] = min(candidates) if candidates else now

    def postponed(self, peer: str, now: float) -> int:
        """The whole import was postponed (papad unavailable); return the streak so far."""
        streak = self._step(peer, now)
        self.peer_streak[peer] = streak
        self.peer_next[peer] = now + min(WAITING_RETRY_MAX, PENDING_RETRY * 2 ** min(streak, 10))
        return streak

    def forget_peer(self, peer: str) -> None:
        for key in [k for k in self.failing if k[0] == peer]:
            del self.failing[key]
        for table in (self.peer_next, self.peer_streak, self.peer_waiting):
            table.pop(peer, None)

    def report(self, now: float) -> list[dict[str, Any]]:
        """The failing entries, most attempts first (at most `MAX_REPORTED`)."""
        items = sorted(self.failing.items(), key=lambda kv: (-kv[1]["attempts"], kv[0]))
        return [{"peer": peer, "id": ident, "attempts": rec["attempts"], "error": rec["error"],
                 "retry_in_s": round(max(0.0, rec["next_at"] - now), 1)}
                for (peer, ident), rec in items[:MAX_REPORTED]]


class AnnotationExchange:
    """Export this device's annotations and import its peers' (see the module docstring).

    `outbox` tells which recordings the local papad has (delivered entries and their remote
    ids); `client` is the local papad client; `store` the peer-file table it shares with the
    bridge; `syncthing`, if given, is asked to scan the export right after it is written.
    All are built once in `recorder.app`.
    """

    def __init__(
        self,
        layout: Layout,
        outbox: Outbox,
        client: PapadClient,
        store: BridgeStore,
        *,
        syncthing: SyncthingClient | None = None,
        export_interval: float = DEFAULT_EXPORT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = layout
        self.own_id = layout.device_id
        self.outbox = outbox
        self.client = client
        self.syncthing = syncthing
        self.export_interval = export_interval
        self.clock = clock
        self._lock = threading.RLock()
        self.store = store
        store.db.ensure_schema(SCHEMA)
        self._next_export = 0.0
        self._pending_peers: set[str] = set()
        self._state: dict[str, Any] = {"exported": None, "export_at": None,
                                       "export_error": None, "import_errors": 0}

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store.conn

    # -- scheduling ----------------------------------------------------------------------

    @property
    def backoff(self) -> EntryBackoff:
        """The import's retry state (made on first use)."""
        found = self.__dict__.get("_backoff")
        if found is None:
            found = self.__dict__["_backoff"] = EntryBackoff()
        return found

    def next_due_in(self) -> float | None:
        """Seconds until `run_due` has work (export interval, or a pending import)."""
        now = self.clock()
        due = max(0.0, self._next_export - now)
        for peer in self._pending_peers:
            due = min(due, max(0.0, self.backoff.peer_next.get(peer, now) - now))
        return due

    def request_export(self) -> None:
        """Export at the next turn of the bridge (something papad shows changed here)."""
        self._next_export = 0.0

    def run_due(self) -> None:
        """Export if the interval passed; retry the pending imports that are due."""
        if self.clock() >= self._next_export:
            self.export_now()
        for peer in sorted(self._pending_peers):
            if self.clock() >= self.backoff.peer_next.get(peer, 0.0):
                self.import_peer(peer)

    def export_now(self) -> bool:
        """Export now (and restart the interval); False when unchanged or papad failed."""
        self._next_export = self.clock() + self.export_interval
        try:
            return self.export()
        except PapadError as exc:
            self._state["export_error"] = str(exc)
            log.info("annotations: export skipped: %s", exc)
            return False

    def run(self) -> None:
        """Export now, then import every peer's export that changed."""
        self.export_now()
        root = self.layout.sync_root
        try:
            peers = sorted(p.name for p in root.iterdir()
                           if p.name != self.own_id and p.is_dir() and not p.is_symlink())
        except OSError:
            peers = []
        for peer in peers:
            self.import_peer(peer)

    def status(self) -> dict[str, Any]:
        with self._lock:
            links = self._conn.execute(
                "SELECT origin, state, COUNT(*) AS n FROM annotation_links GROUP BY origin, state"
            ).fetchall()
        return {**self._state, "pending_peers": sorted(self._pending_peers),
                "imported": {f"{r['origin']}/{r['state']}": r["n"] for r in links},
                "failing": self.backoff.report(self.clock()),
                "failing_count": len(self.backoff.failing)}

    # -- export --------------------------------------------------------------------------

    def _delivered(self) -> dict[str, Any]:
        return {e.recording_id: e for e in self.outbox.entries("delivered") if e.remote_id}

    def collect(self) -> list[dict[str, Any]]:
        """This device's own annotations on every recording the local papad has.

        Raises PapadError when papad cannot list one of them (then nothing is exported)."""
        with self._lock:
            linked = {r[0] for r in self._conn.execute("SELECT local_id FROM annotation_links")}
        own_origin = origin_tag(self.own_id)
        items = []
        for rid, entry in sorted(self._delivered().items()):
            sidecar = entry.sidecar
            peer_bookmarks: set[tuple[str, str]] = set()
            if sidecar["device_id"] != self.own_id:
                peer_bookmarks = {a.key for a in mapping.bookmark_annotations(
                    entry.recording, self.client.annotation_span)}
            for ann in self.client.list_annotations(entry.remote_id, sidecar):
                if ann.id in linked:
                    continue  # imported from a peer: not ours to export
                origins = {t for t in ann.tags if t.startswith(ORIGIN_TAG)}
                if origins - {own_origin}:
                    continue
                if (ann.media_target, ann.text) in peer_bookmarks:
                    continue  # the owner's bookmark, posted here from its sidecar
                if not _TARGET_RE.match(ann.media_target) or not _ID_RE.match(f"{rid}:{ann.id}"):
                    continue
                # Sorted: papad lists a media's tags in the order the tags were first made
                # anywhere on the server, so the same annotation would read differently from
                # one papad to the next (and a reorder would rewrite the export for nothing).
                tags = sorted(t for t in mapping.normalise_tags(ann.tags)
                              if not t.startswith(ORIGIN_TAG))[:MAX_TAGS]
                items.append({"id": f"{rid}:{ann.id}", "recording_id": rid,
                              "origin": self.own_id, "media_target": ann.media_target,
                              "text": " ".join(ann.text.split())[:MAX_TEXT],
                              "tags": [t[:MAX_TAG] for t in tags]})
        items.sort(key=lambda i: str(i["id"]))
        return items

    def export(self) -> bool:
        """Write the export if its content changed; True if it was written."""
        items = self.collect()
        doc = {"schema": SCHEMA_ID, "device_id": self.own_id, "annotations": items}
        text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        target = self.layout.device_folder / EXPORT_PATH
        self._state.update(exported=len(items), export_error=None)
        try:
            if target.read_text(encoding="utf-8") == text:
                return False
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_text(target, text, staging_dir=self.layout.staging_dir)
        self._state["export_at"] = time.time()
        log.info("annotations: exported %d annotation(s)", len(items))
        if self.syncthing is not None:
            from recorder.mesh.membership.provision import folder_id

            self.syncthing.scan_quietly(folder_id(self.own_id), sub="papad")
        return True

    # -- import --------------------------------------------------------------------------

    def import_peer(self, peer: str) -> str | None:
        """Merge `peer`'s export into the local papad if it changed (or is pending).

        Returns the file's state (imported, pending, quarantined) or None when there is none
        or nothing changed. Never raises for bad input or papad failures (logged, retried).
        """
        folder = self.layout.folder_of(peer)
        path = folder / EXPORT_PATH
        with self._lock:
            try:
                st = os.lstat(path)
            except OSError:
                self._pending_peers.discard(peer)
                self.backoff.forget_peer(peer)
                return None
            fst = FileStat(st.st_mtime_ns, st.st_size)
            row = self.store.rows(peer).get(EXPORT_PATH)
            if (row is not None and row["state"] != PENDING
                    and (row["mtime_ns"], row["size"]) == (fst.mtime_ns, fst.size)):
                return None
            try:
                data = read_regular(path, folder, MAX_EXPORT_BYTES)
                try:
                    doc = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                    raise Quarantine(f"annotation export is not valid JSON: {exc}") from None
                entries = validate_export(doc, peer)
            except FileNotFoundError:
                return None
            except (Quarantine, UnsafeFile, OSError) as exc:
                reason = str(exc) if isinstance(exc, (Quarantine, UnsafeFile)) else \
                    f"cannot read: {exc.strerror or exc}"
                if not reason.startswith("annotation"):
                    reason = f"annotation export {reason}"
                reason = " ".join(reason.split())[:300]
                self.store.put(peer, EXPORT_PATH, ANNOTATIONS, fst, QUARANTINED, reason=reason)
                self._pending_peers.discard(peer)
                self.backoff.forget_peer(peer)
                log.warning("annotations: quarantined %s/%s: %s", peer, EXPORT_PATH, reason)
                return QUARANTINED
            try:
                waiting, failing, applied = self._merge(peer, entries)
            except PapadError as exc:  # papad unavailable: the whole import waits
                self._state["import_errors"] += 1
                self.store.put(peer, EXPORT_PATH, ANNOTATIONS, fst, PENDING,
                               reason=f"papad: {exc}"[:300])
                self._pending_peers.add(peer)
                streak = self.backoff.postponed(peer, self.clock())
                (log.info if streak == 0 else log.debug)(
                    "annotations: import from %s postponed: %s", peer, exc)
                return PENDING
            # Failures of entries still exported, or still linked here (a delete to retry).
            self.backoff.keep_only(peer, {item["id"] for item in entries} | set(self._links(peer)))
            self.backoff.schedule(peer, self.clock(), waiting, applied > 0)
            state = PENDING if waiting or failing else IMPORTED
            reasons = []
            if waiting:
                reasons.append(f"{waiting} annotation(s) wait for their recording")
            if failing:
                reasons.append(f"{failing} annotation(s) failing, retried with backoff "
                               "(see status: failing)")
            self.store.put(peer, EXPORT_PATH, ANNOTATIONS, fst, state,
                           reason="; ".join(reasons) or None)
            if state == PENDING:
                self._pending_peers.add(peer)
            else:
                self._pending_peers.discard(peer)
            return state

    def _links(self, peer: str) -> dict[str, sqlite3.Row]:
        cur = self._conn.execute("SELECT * FROM annotation_links WHERE origin = ?", (peer,))
        return {r["origin_id"]: r for r in cur}

    def _link(self, peer: str, origin_id: str, rid: str, local_id: str, content: str,
              state: str = "linked") -> None:
        self._conn.execute(
            """INSERT INTO annotation_links (origin, origin_id, recording_id, local_id, content,
                   state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (origin, origin_id) DO UPDATE SET local_id = excluded.local_id,
                   content = excluded.content, state = excluded.state,
                   updated_at = excluded.updated_at""",
            (peer, origin_id, rid, local_id, content, state, time.time()),
        )

    def _merge(self, peer: str, entries: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Create, update and delete local annotations to match `peer`'s entries.

        Returns (waiting for a recording the local papad does not have yet, failing, applied).
        A PapadError of one entry is that entry's (backed off, reported); only an unavailable
        papad is raised, postponing the rest.
        """
        delivered = self._delivered()
        links = self._links(peer)
        all_linked = {r[0] for r in self._conn.execute("SELECT local_id FROM annotation_links")}
        listed: dict[str, list[Any]] = {}
        tag = origin_tag(peer)
        waiting = failing = applied = 0
        now = self.clock()
        for item in entries:
            entry = delivered.get(item["recording_id"])
            if entry is None:
                waiting += 1
                continue
            if not self.backoff.due(peer, item["id"], now):
                failing += 1
                continue
            try:
                changed = self._apply(peer, item, entry, links.get(item["id"]), listed,
                                      all_linked, tag)
            except PapadError as exc:
                if exc.unavailable:
                    raise
                self._entry_failed(peer, item["id"], exc)
                failing += 1
                continue
            self.backoff.succeeded(peer, item["id"])
            applied += changed
        present = {item["id"] for item in entries}
        for origin_id, link in links.items():
            if origin_id in present:
                continue
            if not self.backoff.due(peer, origin_id, now):
                failing += 1
                continue
            try:
                if link["state"] == "linked":
                    _again_after_500(self.client.delete_annotation, link["local_id"])
            except PapadError as exc:
                if exc.unavailable:
                    raise
                # papadam may answer 500 with the delete done: the retry then finds it gone.
                self._entry_failed(peer, origin_id, exc)
                failing += 1
                continue
            self.backoff.succeeded(peer, origin_id)
            self._conn.execute("DELETE FROM annotation_links WHERE origin = ? AND origin_id = ?",
                               (peer, origin_id))
            applied += 1
        return waiting, failing, applied

    def _entry_failed(self, peer: str, ident: str, exc: PapadError) -> None:
        reason = " ".join(str(exc).split())[:300]
        rec = self.backoff.failed(peer, ident, reason, self.clock())
        log.warning("annotations: %s's annotation %s failed (try %d, next in %.0f s): %s",
                    peer, ident, rec["attempts"], rec["next_at"] - self.clock(), reason)

    def _apply(self, peer: str, item: dict[str, Any], entry: Any, link: sqlite3.Row | None,
               listed: dict[str, list[Any]], all_linked: set[str], tag: str) -> int:
        """Make the local papad hold `item` (create, adopt or PATCH); 1 if papad changed."""
        tags = [*item["tags"], tag]
        content = content_key(item["media_target"], item["text"], tags)
        wanted = annotation_for(item["media_target"], item["text"], tags)
        if link is None:
            if entry.remote_id not in listed:
                listed[entry.remote_id] = self.client.list_annotations(
                    entry.remote_id, entry.sidecar)
            found = self._adoptable(peer, entry, item, listed[entry.remote_id], all_linked)
            if found is None:
                local_id = self.client.post_annotation(entry.remote_id, entry.sidecar, wanted)
            else:
                local_id = found.id
                if content_key(found.media_target, found.text, list(found.tags)) != content:
                    self.client.update_annotation(local_id, entry.remote_id, entry.sidecar,
                                                  wanted)
            self._link(peer, item["id"], item["recording_id"], local_id, content)
            all_linked.add(local_id)
            return 1
        if link["state"] != "linked" or link["content"] == content:
            return 0
        try:
            # papad's PATCH: text, target, and tags (replacing the whole set).
            _again_after_500(self.client.update_annotation, link["local_id"], entry.remote_id,
                             entry.sidecar, wanted)
        except PapadError as exc:
            if exc.retryable or exc.status != 404:
                raise
            # Deleted here by a local user (papad's soft delete: 404 from then on):
            # respected, not re-created.
            self._link(peer, item["id"], item["recording_id"], link["local_id"], content,
                       state="gone")
            return 0
        self._link(peer, item["id"], item["recording_id"], link["local_id"], content)
        return 1

    def _adoptable(self, peer: str, entry: Any, item: dict[str, Any], existing: list[Any],
                   linked: set[str]) -> Any:
        """A local annotation that already is this entry: made by an earlier import whose
        answer was lost (origin tag), or posted by the outbox from the owner's sidecar."""
        key = (item["media_target"], item["text"])
        bookmarks: set[tuple[str, str]] = set()
        if entry.sidecar["device_id"] == peer:
            bookmarks = {a.key for a in mapping.bookmark_annotations(
                entry.recording, self.client.annotation_span)}
        for ann in existing:
            if ann.id in linked or (ann.media_target, " ".join(ann.text.split())) != key:
                continue
            origins = {t for t in ann.tags if t.startswith(ORIGIN_TAG)}
            if origins == {origin_tag(peer)} or (not origins and key in bookmarks):
                return ann
        return None
