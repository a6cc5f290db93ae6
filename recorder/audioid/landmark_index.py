"""The landmark index: every catalogued recording's triplet landmarks
(`recorder.audioid.landmarks`), in the catalogue's database, and the search that finds where a
clip heard through the air comes from.

Tables (owned by this module; ``num`` is the catalogue's recording number):

- ``landmark_recordings``: one row per recording with landmarks: the sha256 of the audio they
  were computed from (a recording whose audio changes loses them), the landmarks themselves
  (8 bytes each: to remove the postings, or index them later) and whether they are indexed;
- ``landmark_index``: the postings, (key, num, anchor frame), in key order;
- ``landmark_keys``: how many postings each key has.

Search: look up how common each of the query's keys is (``landmark_keys``), read the postings
of the rarest, at most ROW_BUDGET in all (common keys, sounds too frequent to tell recordings
apart, are left out first: the work stays bounded as the catalogue grows), count per
recording how many distinct query landmarks hit it, and align the CANDIDATES best
(`landmarks.align`). A recording matches when its alignment has at least MIN_SCORE agreeing
landmarks spread over at least MIN_COVER seconds of the query, each of those seconds with
COVER_HITS of them.

The two thresholds come from tests/bench/bench_airid.py (README, "Benchmarks"): on a catalogue
of 1,000 real synthetic recordings (espeak-ng speech, melodies, noise) padded to 10,000 with
recordings drawn from the same key distribution, unrelated queries (other texts and voices,
melodies, noise, degraded as the air degrades them) never reached them, while degraded excerpts
of catalogued recordings did (recall per degradation in the README).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from recorder.audioid.landmarks import Alignment, Landmarks, align

ROW_BUDGET = 30000  # postings read per search, the rarest keys' first
CANDIDATES = 8
MIN_SCORE = 20  # agreeing query landmarks
MIN_COVER = 5  # seconds of the query, each with landmarks.COVER_HITS agreeing ones
LOOKUP_CHUNK = 500
COUNT_BLOCK = 16384  # postings whose key counts are worked out at once

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS landmark_recordings (
        num INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        data BLOB NOT NULL,
        indexed INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS landmark_unindexed ON landmark_recordings (indexed) "
    "WHERE indexed = 0",
    # Postings per key: a search reads the rarest of its keys first, within ROW_BUDGET rows.
    """CREATE TABLE IF NOT EXISTS landmark_keys (
        key INTEGER PRIMARY KEY,
        n INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS landmark_index (
        key INTEGER NOT NULL,
        num INTEGER NOT NULL,
        t INTEGER NOT NULL,
        PRIMARY KEY (key, num, t)
    ) WITHOUT ROWID""",
)


@dataclass(frozen=True)
class AirMatch:
    """A recording a query matched by landmarks, and how."""

    num: int
    alignment: Alignment

    @property
    def score(self) -> int:
        return self.alignment.score


def is_match(alignment: Alignment) -> bool:
    """The documented decision (see the module docstring)."""
    return alignment.score >= MIN_SCORE and alignment.span_seconds >= MIN_COVER


# --- writing (inside the caller's transaction) -----------------------------------------------


def put(conn: sqlite3.Connection, num: int, sha256: str, marks: Landmarks,
        *, defer: bool = False) -> None:
    """Store `marks` for recording `num` (replacing any), indexed now or at `index_pending`."""
    remove(conn, num)
    conn.execute("INSERT INTO landmark_recordings (num, sha256, data, indexed) "
                 "VALUES (?, ?, ?, 0)", (num, sha256, marks.to_bytes()))
    if not defer:
        post(conn, num, marks)


def post(conn: sqlite3.Connection, num: int, marks: Landmarks) -> None:
    """Write recording `num`'s postings (its landmarks are stored already)."""
    order = np.lexsort((marks.t, marks.keys))
    conn.executemany(
        "INSERT OR IGNORE INTO landmark_index (key, num, t) VALUES (?, ?, ?)",
        ((k, num, t) for k, t in _rows(marks.keys[order], marks.t[order])))
    _count(conn, marks, +1)
    conn.execute("UPDATE landmark_recordings SET indexed = 1 WHERE num = ?", (num,))


def _count(conn: sqlite3.Connection, marks: Landmarks, sign: int) -> None:
    """Add `sign` x the number of distinct (key, t) postings of `marks` to each key's count,
    a block of keys at a time (whole-array temporaries of an hour's landmarks would add
    about 15 MB to the recorder's peak memory at publish)."""
    order = np.lexsort((marks.t, marks.keys))
    keys, ts = marks.keys[order], marks.t[order]
    del order
    first, n = 0, keys.size
    while first < n:
        last = min(n, first + COUNT_BLOCK)
        if last < n:  # one key's postings are never split between two blocks
            last = int(np.searchsorted(keys, keys[last], side="left"))
            if last <= first:
                last = int(np.searchsorted(keys, keys[first], side="right"))
        k, t = keys[first:last], ts[first:last]
        distinct = np.ones(k.size, bool)
        distinct[1:] = (k[1:] != k[:-1]) | (t[1:] != t[:-1])
        k = k[distinct]
        starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
        counts = np.diff(np.concatenate((starts, [k.size])))
        count_keys(conn, k[starts], sign * counts)
        first = last


def count_keys(conn: sqlite3.Connection, keys: np.ndarray, counts: np.ndarray) -> None:
    """Add `counts` to the postings count of `keys` (distinct)."""
    conn.executemany(
        "INSERT INTO landmark_keys (key, n) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET n = n + excluded.n",
        _rows(keys, counts))


def _rows(a: np.ndarray, b: np.ndarray, block: int = 8192) -> Iterator[tuple[int, int]]:
    """Pairs of `a` and `b` as Python ints, a block at a time: an hour's landmarks turned into
    Python lists at once would add about 20 MB to the recorder's peak memory at publish."""
    for first in range(0, a.size, block):
        yield from zip(a[first : first + block].tolist(), b[first : first + block].tolist(),
                       strict=True)


def remove(conn: sqlite3.Connection, num: int) -> None:
    """Forget recording `num`'s landmarks and postings."""
    row = conn.execute("SELECT data, indexed FROM landmark_recordings WHERE num = ?",
                       (num,)).fetchone()
    if row is None:
        return
    if row[1]:
        marks = Landmarks.from_bytes(row[0])
        keys = np.unique(marks.keys)
        conn.executemany("DELETE FROM landmark_index WHERE key = ? AND num = ?",
                         ((k, num) for k in keys.tolist()))
        _count(conn, marks, -1)
    conn.execute("DELETE FROM landmark_recordings WHERE num = ?", (num,))


def sha256_of(conn: sqlite3.Connection, num: int) -> str | None:
    """The sha256 of the audio recording `num`'s landmarks came from, or None."""
    row = conn.execute("SELECT sha256 FROM landmark_recordings WHERE num = ?",
                       (num,)).fetchone()
    return None if row is None else str(row[0])


def next_pending(conn: sqlite3.Connection) -> tuple[int, Landmarks] | None:
    """A recording whose postings are not written yet."""
    row = conn.execute("SELECT num, data FROM landmark_recordings WHERE indexed = 0 "
                       "LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), Landmarks.from_bytes(row[1]))


# --- searching --------------------------------------------------------------------------------


def search(conn: sqlite3.Connection, query: Landmarks,
           accept: Callable[[Alignment], bool] | None = None) -> list[AirMatch]:
    """Recordings the query matches (`accept`, by default `is_match`), best score first."""
    accept = accept or is_match
    if query.keys.size == 0:
        return []
    counted: list[tuple[int, int]] = []
    unique = np.unique(query.keys).tolist()
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start : start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        counted += conn.execute(
            f"SELECT key, n FROM landmark_keys WHERE key IN ({marks}) AND n > 0", chunk
        ).fetchall()
    if not counted:
        return []
    # The rarest keys first, as many as ROW_BUDGET postings allow: a common key costs many
    # rows and tells little (the work stays bounded however big the catalogue grows).
    known = np.array(counted, dtype=np.int64)
    known = known[np.argsort(known[:, 1], kind="stable")]
    known = known[np.cumsum(known[:, 1]) <= ROW_BUDGET]
    chosen = known[:, 0].tolist()
    parts = []
    for start in range(0, len(chosen), LOOKUP_CHUNK):
        chunk = chosen[start : start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT key, num, t FROM landmark_index WHERE key IN ({marks})", chunk
        ).fetchall()
        # fromiter over the flattened rows: several times faster than np.array of tuples.
        parts.append(np.fromiter(itertools.chain.from_iterable(rows), np.int64, 3 * len(rows)))
    hits = np.concatenate(parts).reshape(-1, 3) if parts else np.zeros((0, 3), np.int64)
    if hits.size == 0:
        return []
    rkey, rnum, rt = hits[:, 0], hits[:, 1], hits[:, 2]
    # Join each posting with every query landmark holding its key.
    order = np.argsort(query.keys, kind="stable")
    sk = query.keys[order]
    left = np.searchsorted(sk, rkey, "left")
    reps = np.searchsorted(sk, rkey, "right") - left
    if reps.sum() == 0:
        return []
    hit = np.repeat(np.arange(rkey.size), reps)
    within = np.arange(hit.size) - np.repeat(np.cumsum(reps) - reps, reps)
    qi = order[np.repeat(left, reps) + within]
    hnum, htr = rnum[hit], rt[hit]
    # Candidates: the recordings most distinct query landmarks hit.
    pairs = np.unique(hnum * (1 << 32) + qi)
    nums, counts = np.unique(pairs >> 32, return_counts=True)
    good = counts >= MIN_SCORE
    nums, counts = nums[good], counts[good]
    top = nums[np.argsort(-counts, kind="stable")[:CANDIDATES]]
    found = []
    for num in top.tolist():
        mine = hnum == num
        alignment = align(query.t[qi[mine]], htr[mine], qi[mine])
        if accept(alignment):
            found.append(AirMatch(int(num), alignment))
    found.sort(key=lambda m: -m.score)
    return found
