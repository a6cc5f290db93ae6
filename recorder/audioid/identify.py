"""Identify a clip: which catalogued recording it comes from, and where.

Chromaprint first (exact and fast: a re-encoded copy or an excerpt of the same file); when it
finds nothing, the landmarks (`recorder.audioid.landmarks`: reverb, a narrow band, noise, a
speed drift). One decoding of the clip feeds both prints. Every answer says which method found
it, the offset, the speed factor (1 for Chromaprint, which only matches at speed 1), and a
score with the threshold it passed:

- chromaprint: score = similarity (1 - 2 BER), threshold 1 - 2 ``audioid.match_threshold``;
- landmarks: score = agreeing landmarks, threshold `landmark_index.MIN_SCORE` (and at least
  `landmark_index.MIN_COVER` seconds of the clip covered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recorder.audioid import landmark_index
from recorder.audioid.catalogue import Catalogue
from recorder.audioid.chroma import fingerprint_file
from recorder.audioid.landmarks import QUERY_FAN, Landmarks, PeakFinder, triplets


@dataclass(frozen=True)
class Answer:
    """One recording a clip matched."""

    method: str  # "chromaprint" or "landmarks"
    recording_id: str
    device_id: str
    path: str
    offset_seconds: float
    speed: float
    score: float
    threshold: float
    duplicate_of: str | None
    similarity: float | None = None  # chromaprint only
    ber: float | None = None  # chromaprint only
    overlap_seconds: float | None = None  # chromaprint only
    cover_seconds: float | None = None  # landmarks only


def identify_file(catalogue: Catalogue, path: Path, limit: int = 5) -> list[Answer]:
    """The recordings `path` comes from, best first (empty: none). Raises InputFileError or
    TooShortError as `chroma.fingerprint_file` does."""
    finder = PeakFinder()
    fp = fingerprint_file(path, tap=finder.feed)
    return identify_prints(catalogue, fp.items, lambda: triplets(finder.finish(),
                                                                 fan=QUERY_FAN), limit)


def identify_prints(catalogue: Catalogue, items: np.ndarray | list[int],
                    landmarks: Callable[[], Landmarks | None] | Landmarks | None,
                    limit: int = 5) -> list[Answer]:
    """`identify_file`'s answer for prints already computed: Chromaprint `items`, and the
    landmarks (or a function making them, called only when Chromaprint finds nothing; None:
    Chromaprint alone). The one answer imports, the catalogue and the CLI give."""
    similar = 1.0 - 2.0 * catalogue.threshold
    found = [
        Answer("chromaprint", r.recording_id, r.device_id, r.path, r.offset_seconds, 1.0,
               r.similarity, similar, r.duplicate_of, similarity=r.similarity, ber=r.ber,
               overlap_seconds=r.overlap_seconds)
        for r in catalogue.identify(items, limit=limit)
    ]
    if found:
        return found
    query = landmarks() if callable(landmarks) else landmarks
    if query is None:
        return []
    return [
        Answer("landmarks", r.recording_id, r.device_id, r.path, r.offset_seconds, r.speed,
               r.score, landmark_index.MIN_SCORE, r.duplicate_of,
               cover_seconds=r.cover_seconds)
        for r in catalogue.identify_air(query, limit=limit)
    ]
