"""A preallocated ring buffer of int16 frames: one producer (the capture callback), one reader.

The producer side (`write`) is what the PortAudio callback runs, so it only copies into the
preallocated array and bumps a counter: no allocation of buffers, no locks, no waiting, no I/O.
Positions are absolute frame counts since the source started, so the reader can ask for any
span that is still held (the pre-roll lies *behind* the read position) and the bookkeeping never
wraps. A reader that falls more than `capacity` frames behind has lost audio: `read` reports that
as an overrun (counted, never hidden) and resumes at the oldest frame still held.
"""

from __future__ import annotations

import threading
import time

import numpy as np

POLL_SECONDS = 0.01


class RingBuffer:
    """Fixed-capacity ring of ``(frames, channels)`` int16 samples with absolute positions."""

    def __init__(self, capacity_frames: int, channels: int) -> None:
        if capacity_frames <= 0 or channels <= 0:
            raise ValueError("capacity and channels must be positive")
        self.capacity = int(capacity_frames)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.int16)
        # Written only by the producer; a Python int assignment is atomic under the GIL, and it is
        # published after the samples are copied, so a reader never sees a position ahead of data.
        self.write_pos = 0
        self.read_pos = 0  # the main reader's position; only non-realtime producers look at it
        # A non-realtime producer waiting for room sleeps on this until the reader moves on
        # (`release`): the reader is an ordinary thread, so it may take the Event's lock.
        self._space = threading.Event()
        self._space_wanted: tuple[int, int] | None = None  # (frames, keep) it waits for
        self.overruns = 0  # frames the reader lost because the producer lapped it
        self.dropped = 0  # frames the producer refused (block larger than the ring)

    # -- producer --------------------------------------------------------------------------------
    def write(self, block: np.ndarray) -> None:
        """Copy `block` in (producer only). Never blocks; the oldest frames are overwritten."""
        n = block.shape[0]
        if n > self.capacity:
            # Positions count every frame the source produced, kept or not.
            skip = n - self.capacity
            self.dropped += skip
            self.write_pos += skip
            block = block[skip:]
            n = self.capacity
        start = self.write_pos % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = block[:first]
        if first < n:
            self._buf[: n - first] = block[first:]
        self.write_pos += n

    # -- reader ----------------------------------------------------------------------------------
    @property
    def oldest_pos(self) -> int:
        """The oldest absolute position still held."""
        return max(0, self.write_pos - self.capacity)

    def wait(self, since: int, timeout: float) -> bool:
        """Wait up to `timeout` s for the write position to pass `since`; True if it did.

        Polls: the producer never signals, because signalling (an Event, a condition) takes a
        lock in the real-time callback. A 10 ms poll costs about 0.1% of a core.
        """
        deadline = time.monotonic() + timeout
        while self.write_pos <= since:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def read(self, start: int, end: int | None = None) -> tuple[int, np.ndarray]:
        """Copy frames ``[start, end)`` (end defaults to the write position).

        Returns ``(actual_start, frames)``. If `start` was already overwritten, the lost frames
        are added to `overruns` and the copy begins at the oldest frame still held.
        """
        end = self.write_pos if end is None else min(end, self.write_pos)
        oldest = self.oldest_pos
        if start < oldest:
            self.overruns += oldest - start
            start = oldest
        if end <= start:
            return start, np.empty((0, self.channels), dtype=np.int16)
        out = self._copy(start, end)
        # The producer may have lapped us during the copy: drop what was overwritten meanwhile.
        lapped = self.write_pos - self.capacity - start
        if lapped > 0:
            self.overruns += lapped
            out = out[lapped:]
            start += lapped
        return start, out

    def release(self, pos: int) -> None:
        """Reader: everything before `pos` is consumed; wakes a producer waiting for room."""
        self.read_pos = pos
        wanted = self._space_wanted
        if wanted is not None and self._has_space(*wanted):
            self._space.set()

    def _has_space(self, frames: int, keep: int) -> bool:
        return self.write_pos + frames - (self.read_pos - keep) <= self.capacity

    def _copy(self, start: int, end: int) -> np.ndarray:
        n = end - start
        s = start % self.capacity
        first = min(n, self.capacity - s)
        if first == n:
            return self._buf[s : s + n].copy()
        return np.concatenate((self._buf[s:], self._buf[: n - first]))

    def wait_for_space(self, frames: int, keep: int, timeout: float) -> bool:
        """For non-realtime producers (a file replayed as fast as possible): wait until writing
        `frames` more leaves the main reader's unread data and `keep` frames behind it intact.

        Sleeps until the reader has `release`d enough (no polling: a file replayed as fast as
        possible waits for the encoder most of the time, and wakes only when the room is
        there)."""
        deadline = time.monotonic() + timeout
        self._space_wanted = (frames, keep)
        try:
            while True:
                self._space.clear()
                # Checked after the clear: a release in between sets the event again.
                if self._has_space(frames, keep):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._space.wait(remaining):
                    return self._has_space(frames, keep)
        finally:
            self._space_wanted = None
