"""The ring buffer: exact copies across the wrap, pre-roll behind the reader, counted overruns."""

from __future__ import annotations

import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.ring import RingBuffer


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40),
       st.integers(min_value=64, max_value=1024))
def test_reads_return_exactly_what_was_written(sizes, capacity):
    ring = RingBuffer(capacity, 2)
    written = []
    pos = 0
    counter = 0
    for n in sizes:
        block = (np.arange(counter, counter + n, dtype=np.int64) % 30000).astype(np.int16)
        block = np.stack([block, -block], axis=1)
        counter += n
        ring.write(block)
        written.append(block)
        start, out = ring.read(pos)
        expected = np.concatenate(written)[start:]
        assert np.array_equal(out, expected[: len(out)])
        assert start + len(out) == ring.write_pos
        pos = ring.write_pos


def test_history_behind_the_reader_is_readable_until_overwritten():
    ring = RingBuffer(1000, 1)
    ring.write(np.arange(800, dtype=np.int16)[:, None])
    _, _ = ring.read(0)
    start, back = ring.read(500, 800)  # pre-roll: already read, still held
    assert start == 500 and back[0, 0] == 500 and len(back) == 300
    ring.write(np.arange(800, 1600, dtype=np.int16)[:, None])
    start, out = ring.read(100)  # 100..600 were overwritten
    assert start == 600 and out[0, 0] == 600
    assert ring.overruns == 500


def test_oversized_block_keeps_the_newest_frames():
    ring = RingBuffer(100, 1)
    ring.write(np.arange(250, dtype=np.int16)[:, None])
    assert ring.dropped == 150
    start, out = ring.read(0)
    assert ring.write_pos == 250
    assert start == 150 and out[0, 0] == 150 and out[-1, 0] == 249


def test_concurrent_producer_never_corrupts_what_reader_gets():
    ring = RingBuffer(4096, 1)
    total = 200_000

    def produce():
        value = 0
        while value < total:
            n = 256
            ring.write((np.arange(value, value + n) % 32000).astype(np.int16)[:, None])
            value += n

    t = threading.Thread(target=produce)
    t.start()
    pos = received = 0
    while t.is_alive() or pos < ring.write_pos:
        start, out = ring.read(pos)
        if len(out):
            expected = (np.arange(start, start + len(out)) % 32000).astype(np.int16)
            assert np.array_equal(out[:, 0], expected)
        received += len(out)
        pos = start + len(out)
    t.join()
    # Whatever was lost to the fast producer was counted, the rest arrived intact.
    assert pos == ring.write_pos >= total
    assert received + ring.overruns == ring.write_pos
    assert ring.dropped == 0


def test_overruns_count_exactly_the_frames_the_reader_lost():
    ring = RingBuffer(1000, 1)
    ring.write(np.arange(600, dtype=np.int16)[:, None])
    start, out = ring.read(0)
    assert (start, len(out), ring.overruns) == (0, 600, 0)
    # The reader at 600 is lapped: 600..1100 are gone.
    ring.write(np.arange(600, 2100, dtype=np.int16)[:, None])
    start, out = ring.read(600)
    assert (start, out[0, 0], len(out), ring.overruns) == (1100, 1100, 1000, 500)
