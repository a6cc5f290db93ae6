"""BER comparison: exact over all offsets, silence ignored, decisions at the threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.audioid import chroma
from recorder.audioid.compare import (
    MIN_OVERLAP,
    compare,
    compare_near,
    errors_all_offsets,
    errors_at_offsets,
)


def _random(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint32)


def _flip(items: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Flip each bit with probability `rate`."""
    rng = np.random.default_rng(seed)
    bits = rng.random((items.size, 32)) < rate
    mask = (bits.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(axis=1)
    return items ^ mask.astype(np.uint32)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 120), n=st.integers(1, 200), seed=st.integers(0, 2**16)
)
def test_fft_errors_equal_direct_popcount(m: int, n: int, seed: int) -> None:
    a, b = _random(m, seed), _random(n, seed + 1)
    if seed % 3 == 0:  # some silence in both
        a[: m // 3] = chroma.silence_item()
        b[n // 2 :] = chroma.silence_item()
    offsets, overlaps, errors = errors_all_offsets(a, b)
    direct_errors, direct_overlaps = errors_at_offsets(a, b, offsets)
    assert np.array_equal(overlaps, direct_overlaps)
    assert np.array_equal(errors, direct_errors)


@pytest.mark.parametrize("offset", [0, 37, 250, -60])
def test_finds_offset_and_ber_of_a_noisy_excerpt(offset: int) -> None:
    ref = _random(600, 1)
    start = max(offset, 0)
    excerpt = ref[start : start + 100].copy()
    if offset < 0:  # the query starts before the reference does
        excerpt = np.concatenate([_random(-offset, 9), ref[:100]])
    noisy = _flip(excerpt, 0.05, 2)
    m = compare(noisy, ref)
    assert m.is_match
    assert m.offset_items == offset
    assert m.offset_seconds == pytest.approx(offset * chroma.ITEM_SECONDS)
    assert 0.03 < m.ber < 0.08 if offset >= 0 else m.ber < 0.3
    assert m.similarity == pytest.approx(1 - 2 * m.ber)


def test_unrelated_prints_do_not_match() -> None:
    m = compare(_random(300, 3), _random(500, 4))
    assert not m.is_match
    assert m.ber > 0.4
    assert m.overlap_items >= MIN_OVERLAP


def test_threshold_decides() -> None:
    ref = _random(400, 5)
    noisy = _flip(ref, 0.12, 6)
    assert compare(noisy, ref).is_match
    assert not compare(noisy, ref, threshold=0.08).is_match


def test_silence_never_matches_silence() -> None:
    silent = np.full(300, chroma.silence_item(), dtype=np.uint32)
    a = np.concatenate([silent, _random(100, 7)])
    b = np.concatenate([_random(100, 8), silent])
    m = compare(a, b)
    assert not m.is_match  # 300 identical silent items must not make them the same audio


def test_min_overlap_rejects_short_chance_alignments() -> None:
    ref = _random(500, 10)
    # Only the last 20 items of the query overlap the start of the reference.
    query = np.concatenate([_random(200, 11), ref[:20]])
    m = compare(query, ref)
    assert m.overlap_items >= MIN_OVERLAP
    assert not m.is_match


def test_compare_near_agrees_with_full_search() -> None:
    ref = _random(800, 12)
    q = _flip(ref[300:400], 0.04, 13)
    full = compare(q, ref)
    near = compare_near(q, ref, 299, radius=2)
    assert near == full


def test_empty_prints_give_no_match() -> None:
    assert not compare([], _random(10, 1)).is_match
    assert not compare_near(np.array([], dtype=np.uint32), _random(10, 1), 0).is_match
