"""The catalogue: every recording this device knows (its own and its peers'), with an Audio ID
index that finds a clip's source without comparing the clip to every recording.

Tables (in the shared database opened by `recorder.db.connect`):

- ``recordings``: one row per recording id: where it is (device, path inside the device folder),
  what it is (sha256, duration, start), its fingerprint (compressed text, and the raw uint32
  items for fast verification), the whole sidecar as JSON, and ``duplicate_of``. Other
  components keep their own per-recording data (remote ids, ...) in their own tables keyed by
  ``recording_id``.
- ``audioid_index``: an inverted index, as AcoustID's server does it: every sub-fingerprint of
  every recording, reduced to a 20-bit key, with its recording and position.
- ``audioid_pending``: recordings whose index postings are not written yet. Publishing adds a
  recording with ``defer_index`` (its postings, thousands for an hour, would make
  stop-to-published grow with the length) and calls `Catalogue.index_pending` once the files
  are visible; every search first indexes what is pending, so a crash in between only delays
  the postings.

- ``landmark_recordings`` and ``landmark_postings`` (`recorder.audioid.landmark_index`): the
  second fingerprint, built for audio heard through the air, searched when Chromaprint finds
  nothing (`identify_air`, and ``duplicate_of``: a recording that is an earlier one heard
  through the air, a rebroadcast caught by a microphone, is marked its duplicate). A
  recording's landmarks come from its sink through `landmarks.HANDOFF` when it is published,
  from the bridge's own decoding for a peer's recording (never from the peer), or from its
  file at ``recorder index rebuild``; a recording
  whose sha256 changes loses them.

Identification looks up the query's keys, lets each hit vote for (recording, offset), and then
verifies the best-voted candidates by bit error rate (`recorder.audioid.compare`) around the
voted offset. The work grows with the number of hits, not with the catalogue.

The key is built from the 20 sub-fingerprint bits that survive re-encoding best: measured on the
test corpus (Opus 24 kbps, 15 dB SNR, 10 s excerpts), those bits flip 1-5% of the time against
6-14% for the least stable ones, so a key survives in 25-40% of aligned positions (against 12-25%
for the plain top 20 bits), which leaves a 10 s excerpt 20-30 votes for its source.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.ma  # np.unique imports it on first use (7 ms): not while publishing

from recorder import sidecar as sidecar_mod
from recorder.audioid import chroma
from recorder.audioid import landmark_index as lx
from recorder.audioid.compare import DEFAULT_THRESHOLD, as_items, compare_near, non_silent
from recorder.audioid.landmarks import FRAME_SECONDS, HANDOFF, Landmarks, PeakFinder, triplets
from recorder.config import AudioIdConfig
from recorder.db import Database, transaction
from recorder.layout import device_folders, origin_label

log = logging.getLogger(__name__)

# Sub-fingerprint bits, most stable first (measured; see the module docstring).
KEY_BITS = (26, 27, 30, 21, 31, 29, 7, 3, 15, 28, 9, 19, 23, 25, 2, 1, 6, 18, 11, 20)
MAX_QUERY_KEYS = 600  # a long query (a whole recording) is sampled evenly down to this
STOP_KEY_ROWS = 5000  # a key this common (silence-like) carries no information: ignore it
MIN_VOTES = 2
CANDIDATES = 12  # recordings verified per query, best voted first
VERIFY_RADIUS = 2  # items either side of the voted offset
REBUILD_BATCH = 200
CACHE_KIB = 32768
# A recording Chromaprint finds no original for is a copy heard through the air when these
# windows of it all match one earlier recording by landmarks, on one line.
AIR_WINDOWS = 3
AIR_WINDOW_SECONDS = 20.0
AIR_BUDGET = 30000  # postings read per window: a whole copy shares many rare keys; publishing
# must stay fast (3 windows of 300,000 postings were 140 ms at 10,000 recordings)

# recorder/web/listing.py keeps its `web_listing` in step through triggers on `recordings`
# (reading recording_id, device_id, path, origin, started_at, duration, sidecar, duplicate_of):
# a change to these columns must change those triggers too.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS recordings (
        recording_id TEXT PRIMARY KEY,
        num INTEGER NOT NULL UNIQUE,
        device_id TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        duration REAL NOT NULL,
        started_at TEXT NOT NULL,
        origin TEXT NOT NULL,
        fingerprint TEXT,
        items BLOB,
        sidecar TEXT NOT NULL,
        duplicate_of TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS recordings_sha256 ON recordings (sha256)",
    "CREATE INDEX IF NOT EXISTS recordings_device ON recordings (device_id, started_at)",
    # The playlist walks the newest recordings: by this index, without reading every row.
    "CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_at)",
    """CREATE TABLE IF NOT EXISTS audioid_index (
        key INTEGER NOT NULL,
        num INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        PRIMARY KEY (key, num, pos)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS audioid_pending (num INTEGER PRIMARY KEY)",
)


@dataclass(frozen=True)
class IdentifyResult:
    """A recording a query matched, and where in it the query starts."""

    recording_id: str
    path: str  # inside the device folder: recordings/YYYY/MM/DD/NAME.ogg
    device_id: str
    offset_seconds: float
    similarity: float
    ber: float
    overlap_seconds: float
    duplicate_of: str | None = None


@dataclass(frozen=True)
class AirResult:
    """A recording a query matched by landmarks: where the query starts in it, at what speed
    the query plays it (1.02: 2 % fast), and the alignment's score (agreeing landmarks) and
    cover (seconds of the query they span); see `landmark_index` for the threshold."""

    recording_id: str
    path: str
    device_id: str
    offset_seconds: float
    speed: float
    score: int
    cover_seconds: float
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Entry:
    """One catalogued recording."""

    recording_id: str
    device_id: str
    path: str
    sha256: str
    duration: float
    started_at: str
    origin: str
    fingerprint: str | None
    duplicate_of: str | None
    sidecar: dict[str, Any]


@dataclass
class RebuildReport:
    """What `Catalogue.rebuild` did: counts, and each invalid sidecar with its reason."""

    added: int = 0
    duplicates: int = 0
    removed: int = 0
    skipped: list[str] = field(default_factory=list)  # conflict copies, temporary files
    invalid: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "removed": self.removed,
            "skipped": self.skipped,
            "invalid": [{"path": p, "reason": r} for p, r in self.invalid],
        }


def index_keys(items: np.ndarray) -> np.ndarray:
    """The 20-bit index key of each sub-fingerprint (int64)."""
    items = as_items(items).astype(np.int64)
    keys = np.zeros(items.size, dtype=np.int64)
    for j, bit in enumerate(KEY_BITS):
        keys |= ((items >> bit) & 1) << j
    return keys


def _indexable(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, positions) worth indexing: no silence, and only the first of a run of equal keys
    (steady sounds repeat a key for many items; one posting per run keeps the index small)."""
    keys = index_keys(items)
    keep = items != np.uint32(chroma.silence_item())
    keep[1:] &= keys[1:] != keys[:-1]
    pos = np.flatnonzero(keep)
    return keys[pos], pos


def audio_id_items(doc: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    """Decode a sidecar's ``audio_id`` (None if it has none); SidecarError if it is malformed."""
    aid = doc.get("audio_id")
    if aid is None:
        return None
    if (
        not isinstance(aid, dict)
        or aid.get("algorithm") != "chromaprint"
        or not isinstance(aid.get("fingerprint"), str)
    ):
        raise sidecar_mod.SidecarError("sidecar field 'audio_id' is not a chromaprint Audio ID")
    try:
        items, _ = chroma.decode(aid["fingerprint"])
    except ValueError as exc:
        raise sidecar_mod.SidecarError(f"sidecar field 'audio_id': {exc}") from None
    return items, aid["fingerprint"]


class Catalogue:
    """The recordings table and its Audio ID index in the shared database.

    Safe to share between threads: every call uses the calling thread's connection of the
    `Database`. Each `add` is one transaction.
    """

    def __init__(
        self,
        database: Database,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        duplicate_coverage: float = 0.8,
    ) -> None:
        self.db = database
        self.threshold = threshold
        self.duplicate_coverage = duplicate_coverage
        self._tuned: set[int] = set()
        database.ensure_schema(SCHEMA)
        database.ensure_schema(lx.SCHEMA)
        chroma.silence_item()  # cached: computed now, not inside the first publish

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, with the catalogue's page cache."""
        conn = self.db.conn
        if id(conn) not in self._tuned:
            # The index is read at random: SQLite's default 2 MB page cache makes lookups at
            # 10,000 recordings (a 60 MB index) about twice as slow as a 32 MB one (measured).
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._tuned.add(id(conn))
        return conn

    @classmethod
    def from_config(cls, database: Database, audioid: AudioIdConfig) -> Catalogue:
        """A catalogue using the configured threshold and duplicate coverage."""
        return cls(
            database,
            threshold=audioid.match_threshold,
            duplicate_coverage=audioid.duplicate_coverage,
        )

    # --- writing -------------------------------------------------------------------------------

    def add(self, sidecar: dict[str, Any], *, origin: str = "own",
            defer_index: bool = False, landmarks: Landmarks | None = None) -> str | None:
        """Insert or update a recording from its (validated) sidecar; index its Audio ID (with
        `defer_index`: at the next `index_pending`, or before the next search), and its
        `landmarks` (by default those its sink left in `landmarks.HANDOFF`, if any; without
        any, landmarks stored earlier for the same sha256 stay).

        Returns the recording id it duplicates, or None. A recording duplicates an earlier one
        (by ``started_at``, then id, so the relation never forms a cycle) when their prints match
        over at least `duplicate_coverage` of the new recording's length; the earliest such
        original is chosen, following its own ``duplicate_of``. Raises SidecarError if
        ``audio_id`` is malformed.
        """
        decoded = audio_id_items(sidecar)
        if landmarks is None:
            landmarks = HANDOFF.take(sidecar["recording_id"])
        self.index_pending()  # the duplicate search below must see every recording
        with transaction(self.conn):
            duplicate_of = self._add(sidecar, origin, decoded, defer_index=defer_index,
                                     landmarks=landmarks)
            if landmarks is not None:
                num = self._num(sidecar["recording_id"])
                lx.put(self.conn, num, sidecar["sha256"], landmarks, defer=defer_index)
            return duplicate_of

    def _num(self, recording_id: str) -> int:
        return int(self.conn.execute("SELECT num FROM recordings WHERE recording_id = ?",
                                     (recording_id,)).fetchone()[0])

    def index_pending(self) -> int:
        """Write the postings of every recording added with `defer_index`; how many."""
        done = 0
        while True:
            row = self.conn.execute(
                "SELECT p.num, r.items FROM audioid_pending p LEFT JOIN recordings r "
                "ON r.num = p.num LIMIT 1").fetchone()
            if row is None:
                return done + self._index_pending_landmarks()
            with transaction(self.conn):  # one recording per transaction: writers interleave
                if row["items"] is not None:
                    self._index(row["num"], np.frombuffer(row["items"], dtype="<u4"))
                self.conn.execute("DELETE FROM audioid_pending WHERE num = ?", (row["num"],))
            done += 1

    def _index_pending_landmarks(self) -> int:
        done = 0
        while True:
            with transaction(self.conn):
                pending = lx.next_pending(self.conn)
                if pending is None:
                    return done
                lx.post(self.conn, *pending)
            done += 1

    def _index(self, num: int, items: np.ndarray) -> None:
        keys, pos = _indexable(items)
        # In key order: neighbouring postings share B-tree pages.
        order = np.argsort(keys, kind="stable")
        self.conn.executemany(
            "INSERT OR IGNORE INTO audioid_index (key, num, pos) VALUES (?, ?, ?)",
            zip(keys[order].tolist(), [num] * keys.size, pos[order].tolist(), strict=True),
        )

    def add_many(
        self, sidecars: Iterable[dict[str, Any]], *, origin: str = "own"
    ) -> list[str | None]:
        """`add` for many sidecars in one transaction (bulk loads)."""
        docs = [(doc, audio_id_items(doc)) for doc in sidecars]
        self.index_pending()
        with transaction(self.conn):
            return [self._add(doc, origin, decoded) for doc, decoded in docs]

    def _add(
        self,
        doc: dict[str, Any],
        origin: str,
        decoded: tuple[np.ndarray, str] | None,
        *,
        defer_index: bool = False,
        landmarks: Landmarks | None = None,
    ) -> str | None:
        rid = doc["recording_id"]
        old = self.conn.execute(
            "SELECT num, items FROM recordings WHERE recording_id = ?", (rid,)
        ).fetchone()
        if old is not None:
            self._unindex(old["num"], old["items"])
            num = old["num"]
        else:
            num = self.conn.execute(
                "SELECT COALESCE(MAX(num), 0) + 1 FROM recordings"
            ).fetchone()[0]
        items, encoded = decoded if decoded is not None else (None, None)
        if lx.sha256_of(self.conn, num) not in (None, doc["sha256"]):
            lx.remove(self.conn, num)  # landmarks of audio this recording no longer has
        duplicate_of = self._find_original(doc, items)
        if duplicate_of is None and landmarks is not None:
            duplicate_of = self._find_original_by_air(doc, num, landmarks)
        self.conn.execute(
            """INSERT INTO recordings (recording_id, num, device_id, path, sha256, duration,
                   started_at, origin, fingerprint, items, sidecar, duplicate_of)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (recording_id) DO UPDATE SET
                   device_id = excluded.device_id, path = excluded.path,
                   sha256 = excluded.sha256, duration = excluded.duration,
                   started_at = excluded.started_at, origin = excluded.origin,
                   fingerprint = excluded.fingerprint, items = excluded.items,
                   sidecar = excluded.sidecar, duplicate_of = excluded.duplicate_of""",
            (
                rid, num, doc["device_id"], doc["path"], doc["sha256"], float(doc["duration"]),
                doc["started_at"], origin, encoded,
                None if items is None else items.astype("<u4").tobytes(),
                json.dumps(doc, sort_keys=True, ensure_ascii=False), duplicate_of,
            ),
        )
        if items is not None and defer_index:
            self.conn.execute("INSERT OR IGNORE INTO audioid_pending (num) VALUES (?)", (num,))
        else:
            self.conn.execute("DELETE FROM audioid_pending WHERE num = ?", (num,))
            if items is not None:
                self._index(num, items)
        return duplicate_of

    def _unindex(self, num: int, blob: bytes | None) -> None:
        if blob is None:
            return
        keys, _ = _indexable(np.frombuffer(blob, dtype="<u4"))
        # The primary key starts with `key`: deleting by (key, num) needs no second index.
        self.conn.executemany(
            "DELETE FROM audioid_index WHERE key = ? AND num = ?",
            ((k, num) for k in np.unique(keys).tolist()),
        )

    def _find_original(self, doc: dict[str, Any], items: np.ndarray | None) -> str | None:
        rid, when = doc["recording_id"], doc["started_at"]
        earlier = "(started_at < ? OR (started_at = ? AND recording_id < ?))"
        same = self.conn.execute(
            f"SELECT recording_id, duplicate_of FROM recordings WHERE sha256 = ? "
            f"AND recording_id != ? AND {earlier} ORDER BY started_at, recording_id LIMIT 1",
            (doc["sha256"], rid, when, when, rid),
        ).fetchone()
        if same is not None:
            return same["duplicate_of"] or same["recording_id"]
        if items is None:
            return None
        length = non_silent(items)
        if length == 0:
            return None
        best: tuple[tuple[str, str], str] | None = None
        for match, row in self._matches(items, exclude=rid):
            if match.overlap_items < self.duplicate_coverage * length:
                continue
            key = (row["started_at"], row["recording_id"])
            if key >= (when, rid):
                continue
            if best is None or key < best[0]:
                best = (key, row["duplicate_of"] or row["recording_id"])
        return best[1] if best is not None else None

    def _find_original_by_air(self, doc: dict[str, Any], num: int,
                              marks: Landmarks) -> str | None:
        """The earliest recording this one is a copy of heard through the air (Chromaprint
        found none), as `identify` would answer for it: its AIR_WINDOWS windows of
        AIR_WINDOW_SECONDS, spread over its length, each matched by landmarks to the same
        earlier recording on one line (offsets a speed apart). The windows bound the work
        whatever the length (publishing stays fast)."""
        if marks.t.size == 0:
            return None
        frames = int(marks.t[-1]) + 1
        width = int(AIR_WINDOW_SECONDS / FRAME_SECONDS)
        starts = sorted({int(s) for s in np.linspace(0, max(0, frames - width), AIR_WINDOWS)})
        lines: dict[int, list[tuple[float, float, float]]] = {}
        for start in starts:
            inside = (marks.t >= start) & (marks.t < start + width)
            window = Landmarks(marks.keys[inside], marks.t[inside] - start)
            for match in lx.search(self.conn, window, budget=AIR_BUDGET):
                if match.num != num:
                    a = match.alignment
                    lines.setdefault(match.num, []).append((start, a.offset_frames, a.speed))
        rid, when = doc["recording_id"], doc["started_at"]
        best: tuple[tuple[str, str], str] | None = None
        for other, found in lines.items():
            if len(found) < len(starts):
                continue
            speed = float(np.median([f[2] for f in found]))
            at = [o - speed * s for s, o, _ in found]  # where the recording starts in `other`
            if max(at) - min(at) > 1.0 / FRAME_SECONDS:
                continue
            row = self.conn.execute(
                "SELECT recording_id, started_at, duplicate_of FROM recordings WHERE num = ?",
                (other,)).fetchone()
            if row is None:
                continue
            key = (row["started_at"], row["recording_id"])
            if key < (when, rid) and (best is None or key < best[0]):
                best = (key, row["duplicate_of"] or row["recording_id"])
        return best[1] if best is not None else None

    def remove(self, recording_id: str) -> bool:
        """Forget a recording (its file is gone); True if it was known."""
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT num, items FROM recordings WHERE recording_id = ?", (recording_id,)
            ).fetchone()
            if row is None:
                return False
            self._unindex(row["num"], row["items"])
            lx.remove(self.conn, row["num"])
            self.conn.execute("DELETE FROM audioid_pending WHERE num = ?", (row["num"],))
            self.conn.execute("DELETE FROM recordings WHERE recording_id = ?", (recording_id,))
            self.conn.execute(
                "UPDATE recordings SET duplicate_of = NULL WHERE duplicate_of = ?", (recording_id,)
            )
        return True

    # --- reading -------------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Every catalogued recording as its sidecar, with the catalogue's own ``duplicate_of``
        (which also knows duplicates across devices that no sidecar records)."""
        for row in self.conn.execute("SELECT sidecar, duplicate_of FROM recordings"):
            yield {**json.loads(row["sidecar"]), "duplicate_of": row["duplicate_of"]}

    def newest_originals(self) -> Iterator[dict[str, Any]]:
        """Recordings not marked a duplicate, newest ``started_at`` first (as text: the
        sidecar's UTC ISO form sorts in time order), with only ``recording_id``, ``device_id``,
        ``path``, ``duration``, ``started_at`` and ``title``: what a playlist needs. Rows are
        read through the ``started_at`` index as the caller iterates, so the newest N cost N
        rows, not the catalogue (a sidecar with its print is kilobytes)."""
        rows = self.conn.execute(
            "SELECT recording_id, device_id, path, duration, started_at, "
            "json_extract(sidecar, '$.title') AS title FROM recordings "
            "INDEXED BY recordings_started WHERE duplicate_of IS NULL "
            "ORDER BY started_at DESC")
        for row in rows:
            yield {"recording_id": row["recording_id"], "device_id": row["device_id"],
                   "path": row["path"], "duration": row["duration"],
                   "started_at": row["started_at"], "title": row["title"] or "",
                   "duplicate_of": None}

    def count(self) -> int:
        """How many recordings are catalogued."""
        return int(self.conn.execute("SELECT COUNT(*) FROM recordings").fetchone()[0])

    def get(self, recording_id: str) -> Entry | None:
        """The catalogued recording with this id, or None."""
        row = self.conn.execute(
            "SELECT * FROM recordings WHERE recording_id = ?", (recording_id,)
        ).fetchone()
        if row is None:
            return None
        return Entry(
            recording_id=row["recording_id"],
            device_id=row["device_id"],
            path=row["path"],
            sha256=row["sha256"],
            duration=row["duration"],
            started_at=row["started_at"],
            origin=row["origin"],
            fingerprint=row["fingerprint"],
            duplicate_of=row["duplicate_of"],
            sidecar=json.loads(row["sidecar"]),
        )

    def identify(self, fingerprint: np.ndarray | list[int], limit: int = 5) -> list[IdentifyResult]:
        """Recordings the query matches (BER at or below the threshold), most similar first."""
        self.index_pending()
        results = [
            IdentifyResult(
                recording_id=row["recording_id"],
                path=row["path"],
                device_id=row["device_id"],
                offset_seconds=match.offset_seconds,
                similarity=match.similarity,
                ber=match.ber,
                overlap_seconds=match.overlap_seconds,
                duplicate_of=row["duplicate_of"],
            )
            for match, row in self._matches(as_items(fingerprint))
        ]
        results.sort(key=lambda r: (-r.similarity, r.recording_id))
        return results[: max(0, limit)]

    def identify_air(self, query: Landmarks, limit: int = 5) -> list[AirResult]:
        """Recordings the query's landmarks match (`landmark_index.is_match`), best first."""
        self.index_pending()
        results = []
        for match in lx.search(self.conn, query)[: max(0, limit)]:
            row = self.conn.execute(
                "SELECT recording_id, path, device_id, duplicate_of FROM recordings "
                "WHERE num = ?", (match.num,)).fetchone()
            if row is None:
                continue
            a = match.alignment
            results.append(AirResult(
                recording_id=row["recording_id"], path=row["path"], device_id=row["device_id"],
                offset_seconds=a.offset_seconds, speed=a.speed, score=a.score,
                cover_seconds=a.span_seconds, duplicate_of=row["duplicate_of"]))
        return results

    def fill_landmarks(
        self, sync_root: Path, *, should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[bool], None] = lambda computed: None,
    ) -> tuple[int, list[tuple[str, str]]]:
        """Compute, from its file, the landmarks of every recording that has none or has them
        for other audio (catalogued before landmarks existed, or by a rebuild): how many, and
        (path, reason) of each file that could not be read. `should_stop` is asked before each
        recording (the service's worker stops between two); `progress` is told of each (True:
        computed, False: unreadable)."""
        from recorder.audioid.chroma import fingerprint_file
        from recorder.errors import RecorderError

        rows = self.conn.execute(
            "SELECT r.num, r.device_id, r.path, r.sha256 FROM recordings r "
            "LEFT JOIN landmark_recordings l ON l.num = r.num "
            "WHERE l.num IS NULL OR l.sha256 != r.sha256").fetchall()
        done, failed = 0, []
        for row in rows:
            if should_stop():
                break
            path = Path(sync_root) / row["device_id"] / row["path"]
            finder = PeakFinder()
            try:
                fingerprint_file(path, tap=finder.feed)
            except (RecorderError, OSError) as exc:
                failed.append((str(path), str(exc)))
                progress(False)
                continue
            with transaction(self.conn):
                lx.put(self.conn, row["num"], row["sha256"], triplets(finder.finish()))
            done += 1
            progress(True)
        return done, failed

    def _matches(
        self, query: np.ndarray, exclude: str | None = None
    ) -> Iterator[tuple[Any, sqlite3.Row]]:
        """Verified matches of `query`: (Match, recordings row) for each candidate that passes."""
        for num, offset in self._candidates(query):
            row = self.conn.execute(
                "SELECT recording_id, path, device_id, started_at, duplicate_of, items "
                "FROM recordings WHERE num = ?",
                (num,),
            ).fetchone()
            if row is None or row["items"] is None or row["recording_id"] == exclude:
                continue
            ref = np.frombuffer(row["items"], dtype="<u4").astype(np.uint32)
            match = compare_near(
                query, ref, offset, radius=VERIFY_RADIUS, threshold=self.threshold
            )
            if match.is_match:
                yield match, row

    def _candidates(self, query: np.ndarray) -> list[tuple[int, int]]:
        """Best-voted (recording num, offset in items), at most CANDIDATES, best first."""
        qkeys, qpos = _indexable(query)
        if qkeys.size == 0:
            return []
        if qkeys.size > MAX_QUERY_KEYS:
            pick = np.linspace(0, qkeys.size - 1, MAX_QUERY_KEYS).astype(np.int64)
            qkeys, qpos = qkeys[pick], qpos[pick]
        unique = np.unique(qkeys).tolist()
        rows: list[tuple[int, int, int]] = []
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self.conn.execute(
                f"SELECT key, num, pos FROM audioid_index WHERE key IN ({marks})", chunk
            ).fetchall()
        if not rows:
            return []
        hits = np.array(rows, dtype=np.int64)
        rkey, rnum, rpos = hits[:, 0], hits[:, 1], hits[:, 2]
        _, inverse, per_key = np.unique(rkey, return_inverse=True, return_counts=True)
        common = per_key[inverse] > STOP_KEY_ROWS
        rkey, rnum, rpos = rkey[~common], rnum[~common], rpos[~common]
        # Join every hit with every query position holding its key.
        order = np.argsort(qkeys, kind="stable")
        sk, sp = qkeys[order], qpos[order]
        left = np.searchsorted(sk, rkey, "left")
        right = np.searchsorted(sk, rkey, "right")
        reps = right - left
        if reps.sum() == 0:
            return []
        hit_idx = np.repeat(np.arange(rkey.size), reps)
        within = np.arange(hit_idx.size) - np.repeat(np.cumsum(reps) - reps, reps)
        qp = sp[np.repeat(left, reps) + within]
        delta = rpos[hit_idx] - qp
        # A vote for (recording, offset); neighbours +-1 count too (half-item phase shifts).
        span = 1 << 24
        code = rnum[hit_idx] * span + (delta + span // 2)
        codes, votes = np.unique(code, return_counts=True)
        score = votes.copy()
        for step in (-1, 1):
            at = np.searchsorted(codes, codes + step)
            ok = (at < codes.size) & (codes[np.minimum(at, codes.size - 1)] == codes + step)
            score[ok] += votes[at[ok]]
        nums = codes // span
        # Each recording's best offset, then the best recordings.
        order = np.lexsort((-score, nums))
        first = order[np.r_[True, nums[order][1:] != nums[order][:-1]]]
        first = first[score[first] >= MIN_VOTES]
        top = first[np.argsort(-score[first], kind="stable")][:CANDIDATES]
        return [(int(nums[i]), int(codes[i] % span) - span // 2) for i in top]

    # --- rebuilding ----------------------------------------------------------------------------

    def rebuild(self, sync_root: Path, *, own_device: str | None = None) -> RebuildReport:
        """Re-read every sidecar under ``<sync_root>/*/recordings/**`` and make the catalogue
        match them: add or update each valid one (oldest first, so duplicates point to the
        earliest recording), forget recordings whose sidecar is gone, and report invalid
        sidecars (skipped, never fatal) and ignored conflict copies and temporary files."""
        report = RebuildReport()
        found: list[tuple[dict[str, Any], tuple[np.ndarray, str] | None, str]] = []
        for folder in device_folders(Path(sync_root)):
            for item in sidecar_mod.published_sidecars(folder, with_ignored=True):
                if item.ignored:
                    report.skipped.append(str(item.path))
                    continue
                try:
                    if item.doc is None:
                        raise sidecar_mod.SidecarError(item.problem)
                    decoded = audio_id_items(item.doc)
                except sidecar_mod.SidecarError as exc:
                    report.invalid.append((str(item.path), str(exc)))
                    log.warning("rebuild: skipping invalid sidecar %s: %s", item.path, exc)
                    continue
                found.append((item.doc, decoded, origin_label(folder.name, own_device)))
        found.sort(key=lambda f: (f[0]["started_at"], f[0]["recording_id"]))
        # Two sidecars claiming one id: the first (oldest) wins; the other is reported.
        seen: set[str] = set()
        unique = []
        for doc, decoded, origin in found:
            if doc["recording_id"] in seen:
                report.invalid.append((doc["path"], "recording id already used by another sidecar"))
                continue
            seen.add(doc["recording_id"])
            unique.append((doc, decoded, origin))
        known = [r[0] for r in self.conn.execute("SELECT recording_id FROM recordings")]
        for rid in known:
            if rid not in seen and self.remove(rid):
                report.removed += 1
        for start in range(0, len(unique), REBUILD_BATCH):
            with transaction(self.conn):
                for doc, decoded, origin in unique[start : start + REBUILD_BATCH]:
                    if self._add(doc, origin, decoded) is not None:
                        report.duplicates += 1
                    report.added += 1
        return report
