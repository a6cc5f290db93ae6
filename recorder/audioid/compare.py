"""Compare two decoded Chromaprint fingerprints: bit error rate, minimised over offsets.

Two prints of the same audio agree in most of their bits once aligned; prints of different audio
agree in about half. `compare()` finds the alignment with the lowest bit error rate (BER) among
all offsets that leave at least `min_overlap` sub-fingerprints overlapping, and decides.

The threshold (`cfg.audioid.match_threshold`, default 0.15) was chosen from measured
separations (shared/audio-stack.md, and tests/bench/bench_audioid.py on the test corpus):

- same audio re-encoded (Vorbis q1-q6, Opus 24-64 kbps): BER 0.005-0.035;
- a 10-15 s excerpt found inside its source: 0.02-0.09; re-encoded excerpts with noise added at
  10 dB SNR, the worst genuine case measured: up to about 0.135;
- different speech: 0.31-0.44; the same text in another voice: 0.24-0.36; melodies and noise
  against speech: 0.26 and above; two unrelated noises: about 0.23 (the closest impostors).

0.15 sits in the gap between the worst genuine case (about 0.135) and the closest impostor
(about 0.23). A false match (calling a different story the same) costs more than a miss, and
excerpts noisier than 10 dB SNR are rare in practice, so the threshold stays near the genuine
side rather than the middle of the gap. Digital silence is left out of the comparison (see
`chroma.silence_item`): two silent stretches would otherwise agree perfectly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recorder.audioid.chroma import ITEM_SECONDS, silence_item

DEFAULT_THRESHOLD = 0.15
# About 5 s: below this, chance alignments of unrelated audio get too close to the threshold.
MIN_OVERLAP = 40


@dataclass(frozen=True)
class Match:
    """The best alignment of two prints.

    `offset_seconds`: where the start of the first print lies in the second (positive: `a`
    starts that far into `b`; negative: `b` starts inside `a`). `similarity` is ``1 - 2 * ber``
    clipped to [0, 1]: 1 for identical prints, about 0 for unrelated audio.
    """

    similarity: float
    ber: float
    offset_seconds: float
    overlap_seconds: float
    is_match: bool
    offset_items: int = 0
    overlap_items: int = 0


NO_MATCH = Match(0.0, 0.5, 0.0, 0.0, False)


def as_items(fp: np.ndarray | list[int]) -> np.ndarray:
    """A fingerprint as a 1-D uint32 array (no copy when it already is one)."""
    arr = np.asarray(fp, dtype=np.uint32)
    if arr.ndim != 1:
        raise ValueError("a fingerprint is a 1-D sequence of sub-fingerprints")
    return arr


def _planes(items: np.ndarray, length: int) -> np.ndarray:
    """Bit planes as +1/-1 (rows 0-31) and a weight row (32), zero-padded to `length`.

    Silent sub-fingerprints get weight 0 and contribute neither agreement nor overlap.
    """
    weight = (items != np.uint32(silence_item())).astype(np.float64)
    bits = (items[None, :] >> np.arange(32, dtype=np.uint32)[:, None]) & np.uint32(1)
    out = np.zeros((33, length), dtype=np.float64)
    out[:32, : items.size] = (1.0 - 2.0 * bits) * weight
    out[32, : items.size] = weight
    return out


def errors_all_offsets(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bit errors for every offset of `a` against `b`, exactly, via FFT cross-correlation.

    With bits mapped to +1/-1, the correlation of two aligned bit streams is
    (agreements - disagreements), so errors = (32 * overlap - correlation) / 2. One FFT per bit
    plane and a single inverse transform give all offsets in O((n + m) log(n + m)).
    Returns (offsets, overlaps, errors), offset d meaning a[i] aligns with b[i + d]; overlaps
    count aligned pairs where neither item is silence.
    """
    m, n = a.size, b.size
    length = 1 << int(np.ceil(np.log2(max(m + n, 2))))
    fa = np.fft.rfft(_planes(a, length), axis=1)
    fb = np.fft.rfft(_planes(b, length), axis=1)
    prod = np.conj(fa) * fb
    corr = np.fft.irfft(prod[:32].sum(axis=0), n=length)
    both = np.fft.irfft(prod[32], n=length)
    # Circular index d (0..n-1) is offset d; index length-k is offset -k.
    offsets = np.arange(-(m - 1), n)
    idx = offsets % length
    overlaps = np.rint(both[idx]).astype(np.int64)
    errors = (32 * overlaps - np.rint(corr[idx]).astype(np.int64)) // 2
    return offsets, overlaps, errors


def errors_at_offsets(
    a: np.ndarray, b: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bit errors and overlaps of `a` against `b` at the given offsets only (direct popcount)."""
    silence = np.uint32(silence_item())
    errors = np.zeros(offsets.size, dtype=np.int64)
    overlaps = np.zeros(offsets.size, dtype=np.int64)
    for k, d in enumerate(offsets.tolist()):
        lo, hi = max(0, -d), min(a.size, b.size - d)
        if hi > lo:
            x, y = a[lo:hi], b[lo + d : hi + d]
            keep = (x != silence) & (y != silence)
            overlaps[k] = int(keep.sum())
            errors[k] = int(np.bitwise_count(x[keep] ^ y[keep]).sum())
    return errors, overlaps


def non_silent(items: np.ndarray) -> int:
    """How many sub-fingerprints are not digital silence (the comparable length)."""
    return int((as_items(items) != np.uint32(silence_item())).sum())


def _decide(
    offsets: np.ndarray,
    overlaps: np.ndarray,
    errors: np.ndarray,
    min_overlap: int,
    threshold: float,
) -> Match:
    ok = overlaps >= min_overlap
    if not ok.any():
        return NO_MATCH
    ber = np.full(offsets.size, np.inf)
    ber[ok] = errors[ok] / (32.0 * overlaps[ok])
    best = int(np.argmin(ber))
    value = float(ber[best])
    return Match(
        similarity=max(0.0, 1.0 - 2.0 * value),
        ber=value,
        offset_seconds=float(offsets[best]) * ITEM_SECONDS,
        overlap_seconds=float(overlaps[best]) * ITEM_SECONDS,
        is_match=value <= threshold,
        offset_items=int(offsets[best]),
        overlap_items=int(overlaps[best]),
    )


def compare(
    a: np.ndarray | list[int],
    b: np.ndarray | list[int],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_overlap: int = MIN_OVERLAP,
) -> Match:
    """Best alignment of print `a` against print `b` over every offset.

    The overlap needed is `min_overlap` non-silent items, or the shorter print's non-silent
    length if that is less (a print under 3 s never gets here: fingerprinting refuses it).
    """
    a, b = as_items(a), as_items(b)
    if a.size == 0 or b.size == 0:
        return NO_MATCH
    need = max(1, min(min_overlap, non_silent(a), non_silent(b)))
    offsets, overlaps, errors = errors_all_offsets(a, b)
    return _decide(offsets, overlaps, errors, need, threshold)


def compare_near(
    a: np.ndarray,
    b: np.ndarray,
    offset: int,
    *,
    radius: int = 3,
    threshold: float = DEFAULT_THRESHOLD,
    min_overlap: int = MIN_OVERLAP,
) -> Match:
    """Like `compare()` but only offsets within `radius` of a candidate `offset` (index hits)."""
    a, b = as_items(a), as_items(b)
    if a.size == 0 or b.size == 0:
        return NO_MATCH
    need = max(1, min(min_overlap, non_silent(a), non_silent(b)))
    offsets = np.arange(offset - radius, offset + radius + 1)
    errors, overlaps = errors_at_offsets(a, b, offsets)
    return _decide(offsets, overlaps, errors, need, threshold)
