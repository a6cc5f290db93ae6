"""The landmark index: every catalogued recording's triplet landmarks
(`recorder.audioid.landmarks`), in the catalogue's database, and the search that finds where a
clip heard through the air comes from.

Tables (owned by this module; ``num`` is the catalogue's recording number):

- ``landmark_recordings``: one row per recording with landmarks: the sha256 of the audio they
  were computed from (a recording whose audio changes loses them), the landmarks themselves
  (8 bytes each: to remove the postings, or index them later) and whether they are indexed;
- ``landmark_postings``: one row per key: how many postings (recording num, anchor frame) it
  has and the postings themselves, packed in one blob (8 bytes each), while there are at most
  MAX_POSTINGS: a key more common than that is a stop word (as in audfprint's capped hash
  buckets), too frequent to tell recordings apart; its postings are dropped.

Search: read the counts of the query's distinct keys (one B-tree lookup each), then the
postings of the rarest, at most ROW_BUDGET in all (the work stays bounded as the catalogue
grows); pick the CANDIDATES recordings with the most votes for one (recording, offset) by
counting (numpy's bincount, no sort over the hits), and align each (`landmarks.align`). A
recording matches when its alignment has at least MIN_SCORE agreeing landmarks spread over at
least MIN_COVER seconds of the query, each of those seconds with COVER_HITS of them.

The thresholds come from tests/bench/bench_airid.py and bench_airid_ota.py (README,
"Benchmarks"): against 800 generated recordings (espeak-ng speech, melodies, noise), the best
alignments of 2,640 unrelated 10 s queries (other texts and voices, melodies, noise, degraded
as the air degrades them) reached a score of 34 with 3 s of cover and 27 with 4 s, never 5 s;
degraded excerpts of catalogued recordings that Chromaprint missed scored 39 or more with 5 s
or more (but one, 4 s), excerpts played through Icecast and PulseAudio into a hall and a phone
call 41 or more.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from recorder.audioid.landmarks import KEY_VERSION, Alignment, Landmarks, align

ROW_BUDGET = 300000  # postings read per search, the rarest keys' first
MAX_POSTINGS = 1000  # a key with more is a stop word: its postings are dropped, never read
CANDIDATES = 8
VOTE_BIN = 128  # frames (3 s) per offset bin of the candidates' vote
VOTE_WRAP = 256  # offset bins per recording (12.7 minutes, then they wrap around)
MIN_SCORE = 28  # agreeing query landmarks
MIN_COVER = 5  # seconds of the query, each with landmarks.COVER_HITS agreeing ones
LOOKUP_CHUNK = 900  # keys per SELECT (under SQLite's default limit of host parameters)
WRITE_BLOCK = 8192  # postings turned into rows at once

POSTING = np.dtype([("num", "<u4"), ("t", "<u4")])

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS landmark_recordings (
        num INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        data BLOB NOT NULL,
        indexed INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS landmark_unindexed ON landmark_recordings (indexed) "
    "WHERE indexed = 0",
    # One row per key: how many postings it has (n) and, while n <= MAX_POSTINGS, the postings
    # themselves packed in one blob (POSTING records): a search reads one row per key it uses,
    # not one per posting.
    """CREATE TABLE IF NOT EXISTS landmark_postings (
        key INTEGER PRIMARY KEY,
        n INTEGER NOT NULL,
        data BLOB NOT NULL
    ) WITHOUT ROWID""",
    # The first layout (one row per posting) is replaced: its recordings are indexed again
    # from their stored landmarks by the next `index_pending` (idempotent: with no postings
    # at all, every recording is re-indexed, which only costs time).
    "DROP TABLE IF EXISTS landmark_index",
    "DROP TABLE IF EXISTS landmark_keys",
    "UPDATE landmark_recordings SET indexed = 0 WHERE indexed = 1 "
    "AND NOT EXISTS (SELECT 1 FROM landmark_postings)",
    # Landmarks stored under another key definition (`landmarks.KEY_VERSION`; none recorded:
    # the first, 23-bit one) cannot be searched with this one's keys, nor turned into them
    # (the peaks are not stored): they are forgotten, postings and all, and computed again
    # from the recordings' audio by `Catalogue.fill_landmarks` (`recorder index rebuild`), as
    # for recordings catalogued before landmarks existed. A constant condition: with the
    # version current, nothing is scanned.
    """CREATE TABLE IF NOT EXISTS landmark_meta (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    f"DELETE FROM landmark_postings WHERE NOT EXISTS (SELECT 1 FROM landmark_meta "
    f"WHERE name = 'key_version' AND value = {KEY_VERSION})",
    f"DELETE FROM landmark_recordings WHERE NOT EXISTS (SELECT 1 FROM landmark_meta "
    f"WHERE name = 'key_version' AND value = {KEY_VERSION})",
    f"INSERT OR REPLACE INTO landmark_meta (name, value) VALUES ('key_version', {KEY_VERSION})",
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


def _grouped(marks: Landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`marks`' distinct (key, t) in key order: keys, times, and where each key starts
    (with the end appended)."""
    order = np.lexsort((marks.t, marks.keys))
    keys, ts = marks.keys[order], marks.t[order]
    del order
    distinct = np.ones(keys.size, bool)
    distinct[1:] = (keys[1:] != keys[:-1]) | (ts[1:] != ts[:-1])
    keys, ts = keys[distinct], ts[distinct]
    # (no landmarks at all, e.g. silence: no keys, so no starts; [True] alone would make one)
    starts = np.flatnonzero(np.concatenate(([keys.size > 0], keys[1:] != keys[:-1])))
    return keys, ts, np.append(starts, keys.size)


def post(conn: sqlite3.Connection, num: int, marks: Landmarks) -> None:
    """Write recording `num`'s postings (its landmarks are stored already). A key that goes
    over MAX_POSTINGS loses its postings for good (a stop word: too common to tell recordings
    apart, and the blob every later recording would rewrite)."""
    keys, ts, bounds = _grouped(marks)
    postings = np.empty(ts.size, POSTING)
    postings["num"] = num
    postings["t"] = ts
    del ts

    def rows() -> Iterator[tuple[int, int, bytes]]:
        # A block of keys at a time: an hour's landmarks as Python objects at once would add
        # tens of MB to the recorder's peak memory at publish.
        for first in range(0, bounds.size - 1, WRITE_BLOCK):
            b = bounds[first : first + WRITE_BLOCK + 1].tolist()
            ks = keys[b[:-1]].tolist()
            for i, k in enumerate(ks):
                n = b[i + 1] - b[i]
                yield k, n, postings[b[i] : b[i + 1]].tobytes() if n <= MAX_POSTINGS else b""

    conn.executemany(
        "INSERT INTO landmark_postings (key, n, data) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET n = n + excluded.n, "
        # (|| makes text of blobs: CAST gives the bytes back, unchanged)
        f"data = CASE WHEN n + excluded.n <= {MAX_POSTINGS} "
        "THEN CAST(data || excluded.data AS BLOB) ELSE x'' END", rows())
    conn.execute("UPDATE landmark_recordings SET indexed = 1 WHERE num = ?", (num,))


def remove(conn: sqlite3.Connection, num: int) -> None:
    """Forget recording `num`'s landmarks and postings. (A stop word stays one until the
    index is rebuilt: its dropped postings are not recovered when its count falls again.)"""
    row = conn.execute("SELECT data, indexed FROM landmark_recordings WHERE num = ?",
                       (num,)).fetchone()
    if row is None:
        return
    if row[1]:
        keys, _, bounds = _grouped(Landmarks.from_bytes(row[0]))
        counts = np.diff(bounds)
        for k, c in zip(keys[bounds[:-1]].tolist(), counts.tolist(), strict=True):
            got = conn.execute("SELECT n, data FROM landmark_postings WHERE key = ?",
                               (k,)).fetchone()
            if got is None:
                continue
            if got[0] - c <= 0:
                conn.execute("DELETE FROM landmark_postings WHERE key = ?", (k,))
                continue
            postings = np.frombuffer(got[1], POSTING)
            conn.execute("UPDATE landmark_postings SET n = ?, data = ? WHERE key = ?",
                         (got[0] - c, postings[postings["num"] != num].tobytes(), k))
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
           accept: Callable[[Alignment], bool] | None = None,
           budget: int = ROW_BUDGET) -> list[AirMatch]:
    """Recordings the query matches (`accept`, by default `is_match`), best score first,
    reading at most `budget` postings."""
    accept = accept or is_match
    if query.keys.size == 0:
        return []
    # How common each of the query's keys is (the rows' counts: the blobs, in SQLite's
    # overflow pages when long, are not read for this), then the postings of the rarest, as
    # many as ROW_BUDGET allows: a common key costs many postings and tells little (the work
    # stays bounded however big the catalogue grows). Stop words have no postings to read.
    unique = np.unique(query.keys).tolist()
    counted: list[tuple[int, int]] = []
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start : start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        counted += conn.execute(
            f"SELECT key, n FROM landmark_postings WHERE key IN ({marks}) "
            f"AND n BETWEEN 1 AND {MAX_POSTINGS}", chunk).fetchall()
    if not counted:
        return []
    known = np.array(counted, dtype=np.int64)
    known = known[np.argsort(known[:, 1], kind="stable")]
    chosen = known[np.cumsum(known[:, 1]) <= budget, 0].tolist()
    keys_read: list[int] = []
    blobs: list[bytes] = []
    for start in range(0, len(chosen), LOOKUP_CHUNK):
        chunk = chosen[start : start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        for k, data in conn.execute(
                f"SELECT key, data FROM landmark_postings WHERE key IN ({marks})", chunk):
            keys_read.append(k)
            blobs.append(data)
    posts = np.frombuffer(b"".join(blobs), POSTING)
    if posts.size == 0:
        return []
    n_of = np.array([len(b) // POSTING.itemsize for b in blobs], np.int64)
    rnum = posts["num"].astype(np.int64)
    rt = posts["t"].astype(np.int64)
    # Join each posting with every query landmark holding its key (looked up once per key,
    # then spread over the key's postings).
    order = np.argsort(query.keys, kind="stable")
    sk = query.keys[order]
    kr = np.array(keys_read, np.int64)
    key_left = np.searchsorted(sk, kr, "left")
    left = np.repeat(key_left, n_of)
    reps = np.repeat(np.searchsorted(sk, kr, "right") - key_left, n_of)
    if reps.sum() == 0:
        return []
    hit = np.repeat(np.arange(rnum.size), reps)
    within = np.arange(hit.size) - np.repeat(np.cumsum(reps) - reps, reps)
    qi = order[np.repeat(left, reps) + within]
    hnum, htr = rnum[hit], rt[hit]
    # Candidates, by counting only (no sort: a search joins hundreds of thousands of hits at
    # 100,000 recordings): recordings with MIN_SCORE hits at all, then their hits' votes for
    # (recording, offset at speed 1 in VOTE_BIN frames, wrapped at VOTE_WRAP bins); a pair of
    # neighbouring bins holds a clip's line at any speed searched. Chance hits scatter over
    # the bins, a clip's own hits pile up in one.
    per_num = np.bincount(hnum)
    strong = np.flatnonzero(per_num >= MIN_SCORE)
    if strong.size == 0:
        return []
    dense = np.full(per_num.size, -1, np.int64)
    dense[strong] = np.arange(strong.size)
    mine = dense[hnum]
    keep = mine >= 0
    bins = ((htr[keep] - query.t[qi[keep]]) // VOTE_BIN) % VOTE_WRAP
    votes = np.bincount(mine[keep] * VOTE_WRAP + bins,
                        minlength=strong.size * VOTE_WRAP).reshape(strong.size, VOTE_WRAP)
    best = (votes + np.roll(votes, -1, axis=1)).max(axis=1)
    order = np.argsort(-best, kind="stable")[:CANDIDATES]
    top = strong[order[best[order] >= MIN_SCORE]]
    found = []
    for num in top.tolist():
        mine = hnum == num
        alignment = align(query.t[qi[mine]], htr[mine], qi[mine])
        if accept(alignment):
            found.append(AirMatch(int(num), alignment))
    found.sort(key=lambda m: -m.score)
    return found
