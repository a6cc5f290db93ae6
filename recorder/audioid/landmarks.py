"""Landmarks: the Audio ID built for audio that went through the air (a room, a phone call, a
radio with a drifting clock), beside Chromaprint.

The idea is the one of Wang's Shazam paper, with the speed-change answer of Six and Leman's
Panako: the loudest local maxima of a spectrogram (peaks) survive reverb, noise and a narrow
band far better than a whole spectrum does, and a *triplet* of peaks can be described by
numbers a small change of playback speed leaves alone:

- frequencies are taken on a logarithmic scale, where a speed change (``sox speed``: time and
  pitch together) shifts every peak by the same amount: the *differences* of the second and
  third peak's log-frequency to the first's do not change; the first's own log-frequency only
  moves a little (2 % of speed is a third of a semitone), so it enters coarsely;
- times enter as the *ratio* of the first-to-second to the first-to-third gap, which a speed
  change does not touch either, plus the first-to-third gap itself on a coarse logarithmic scale.

Each triplet becomes a 25-bit key, stored with the time of its first peak (`Landmarks`); a
query's keys are looked up in the catalogue's landmark index (`recorder.audioid.landmark_index`)
and the hits are scored by `align`: genuine hits lie on one line ``t_ref = offset + speed *
t_query``, chance hits scatter.

Peaks are found while recording, from the 11025 Hz int16 stream Chromaprint's resampler
already makes (`chroma.StreamingFingerprinter`'s tap): no second resampler, and the spectrogram
of 1024-sample frames every 256 samples costs little next to the encoder. Triplets are formed
once, at the end (an hour has about 40,000 peaks).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

RATE = 11025  # Chromaprint's analysis rate: the tap's stream
N_FFT = 512
HOP = 256
FRAME_SECONDS = HOP / RATE  # 23.2 ms
LOW_HZ, HIGH_HZ = 250.0, 3400.0  # inside a phone call's band
LO_BIN = int(LOW_HZ * N_FFT / RATE)
HI_BIN = math.ceil(HIGH_HZ * N_FFT / RATE) + 1
# Peaks: a local maximum over +-F_NEIGH bins and +-T_NEIGH frames, at most PEAKS_PER_CHUNK of
# the loudest per chunk of CHUNK frames (about two seconds).
F_NEIGH = 3
T_NEIGH = 7
CHUNK = 86
BATCH_SAMPLES = CHUNK * HOP
PEAKS_PER_CHUNK = 24
FLOOR = 1e6  # power under which nothing is a peak (about -75 dBFS)
# Log-frequency in 1/48 octave, from 200 Hz.
UNITS_PER_OCTAVE = 48
F_REF = 200.0
# Triplets: from an anchor, the next FAN peaks within DT frames and DF units, in pairs.
MIN_DT, MAX_DT = 2, 48
MAX_DF = 48
FAN = 3  # a recording: 3 triplets per peak, about 30 landmarks a second
ANCHOR_BLOCK = 1024  # anchors whose triplets are made at once (bounds the work arrays)
QUERY_FAN = 5  # a query: 10 per peak, so more of the recording's triplets are among them
F1_STEP = 8  # units per coarse step of the first peak's frequency (1/6 octave)
DF_STEP = 3  # units per step of a frequency difference
RATIO_LEVELS = 10
DT_PER_OCTAVE = 2.5  # log steps of the first-to-third gap
KEY_BITS = 25
KEY_REST_BITS = 14  # the key's bits under its frequency part (first peak, second's difference)
KEY_VERSION = 3  # changes with the key's definition: stored landmarks of another are recomputed


@dataclass(frozen=True)
class Peaks:
    """Spectral peaks: frame index (int32), log-frequency in units (float32), log power."""

    t: np.ndarray
    lf: np.ndarray
    power: np.ndarray

    @property
    def seconds(self) -> float:
        return float(self.t[-1] + 1) * FRAME_SECONDS if self.t.size else 0.0


@dataclass(frozen=True)
class Landmarks:
    """Triplet keys (int64) and their anchor frame (int32), in frame order."""

    keys: np.ndarray
    t: np.ndarray

    def to_bytes(self) -> bytes:
        """Compact storage: (key uint32, frame uint32) little-endian pairs."""
        return np.stack([self.keys.astype("<u4"), self.t.astype("<u4")], axis=1).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Landmarks:
        """Inverse of `to_bytes`; ValueError for a blob of the wrong size."""
        if len(data) % 8:
            raise ValueError("landmark blob is not a whole number of entries")
        pairs = np.frombuffer(data, dtype="<u4").reshape(-1, 2)
        return cls(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int32))


class PeakFinder:
    """Feed 11025 Hz int16 blocks (mono or interleaved stereo as (frames, channels)), then
    `finish()`: the peaks, the same however the stream is cut into blocks.

    Blocks are only queued until about a second of audio is in (the pump hands over a block
    every 20 ms: numpy's per-call cost would be most of the work otherwise), then transformed
    and searched together."""

    def __init__(self) -> None:
        self._samples = np.zeros(0, np.float64)  # not yet framed
        self._queued: list[np.ndarray] = []
        self._queued_n = 0
        self._frame0 = 0  # frame index of the first row of _spec
        self._spec = np.zeros((0, HI_BIN - LO_BIN), np.float32)
        self._done = 0  # frames whose peaks are decided
        self._t: list[np.ndarray] = []
        self._lf: list[np.ndarray] = []
        self._p: list[np.ndarray] = []
        self._finished = False

    def feed(self, block: np.ndarray) -> None:
        """Add int16 samples at `RATE` (copied; the caller keeps its block)."""
        if block.ndim == 2 and block.shape[1] > 1:
            block = block.mean(axis=1)
        self._queued.append(block.reshape(-1).copy())
        self._queued_n += block.shape[0]
        if self._queued_n >= BATCH_SAMPLES:
            self._transform()

    def _transform(self) -> None:
        self._samples = np.concatenate([self._samples, *self._queued], dtype=np.float64)
        self._queued, self._queued_n = [], 0
        count = (self._samples.size - N_FFT) // HOP + 1 if self._samples.size >= N_FFT else 0
        if count <= 0:
            return
        frames = np.lib.stride_tricks.sliding_window_view(self._samples, N_FFT)[::HOP][:count]
        # float64: numpy's FFT is several times faster in double than in single precision.
        # The Hann window is applied after the transform, on the band's bins only: a periodic
        # Hann window is the spectrum convolved with (-1/4, 1/2, -1/4).
        raw = np.fft.rfft(frames, axis=1)[:, LO_BIN - 1 : HI_BIN + 1]
        spec = 0.5 * raw[:, 1:-1] - 0.25 * (raw[:, :-2] + raw[:, 2:])
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        self._spec = np.concatenate([self._spec, power])
        self._samples = self._samples[count * HOP :]
        while self._frame0 + self._spec.shape[0] - self._done >= CHUNK + T_NEIGH:
            self._chunk(CHUNK)

    def _chunk(self, length: int) -> None:
        """Decide the peaks of frames [done, done + length), with T_NEIGH frames of context
        either side where there are any."""
        start = self._done - self._frame0
        lo = max(0, start - T_NEIGH)
        ctx = self._spec[lo : start + length + T_NEIGH]
        cut = start - lo
        hood = _running_max(_running_max(ctx, F_NEIGH, 1), T_NEIGH, 0)
        mine = ctx[cut : cut + length]
        is_peak = (mine >= hood[cut : cut + length]) & (mine > FLOOR)
        is_peak[:, 0] = is_peak[:, -1] = False  # interpolation needs both neighbours
        ti, fi = np.divmod(np.flatnonzero(is_peak), is_peak.shape[1])
        if ti.size > PEAKS_PER_CHUNK:
            keep = np.argsort(-mine[ti, fi], kind="stable")[:PEAKS_PER_CHUNK]
            keep.sort()
            ti, fi = ti[keep], fi[keep]
        if ti.size:
            a, b, c = (np.log(mine[ti, fi + d] + 1.0) for d in (-1, 0, 1))
            denom = a - 2 * b + c
            delta = np.where(denom < 0, 0.5 * (a - c) / np.where(denom < 0, denom, -1), 0.0)
            hz = (fi + LO_BIN + np.clip(delta, -0.5, 0.5)) * (RATE / N_FFT)
            self._t.append((ti + self._done).astype(np.int32))
            self._lf.append((UNITS_PER_OCTAVE * np.log2(hz / F_REF)).astype(np.float32))
            self._p.append(b.astype(np.float32))
        self._done += length
        # Keep only the context the next chunk needs.
        drop = max(0, self._done - T_NEIGH - self._frame0)
        self._spec = self._spec[drop:]
        self._frame0 += drop

    def finish(self) -> Peaks:
        """The peaks of everything fed."""
        if not self._finished:
            self._finished = True
            self._transform()
            left = self._frame0 + self._spec.shape[0] - self._done
            while left > 0:
                step = min(CHUNK, left)
                self._chunk(step)
                left -= step
        if not self._t:
            return Peaks(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return Peaks(np.concatenate(self._t), np.concatenate(self._lf), np.concatenate(self._p))


def _running_max(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """The maximum over [i - radius, i + radius] along `axis` (0 or 1 of a 2-D array; edges:
    what exists), in log2(window) + 1 passes by doubling the covered width."""
    shape = list(a.shape)
    shape[axis] += 2 * radius
    m = np.full(shape, -np.inf, a.dtype)
    if axis == 0:
        m[radius : radius + a.shape[0]] = a
    else:
        m[:, radius : radius + a.shape[1]] = a
    width, covered = 2 * radius + 1, 1

    def shifted(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return (x[:-k], x[k:]) if axis == 0 else (x[:, :-k], x[:, k:])

    while 2 * covered <= width:
        m = np.maximum(*shifted(m, covered))  # now covers 2 * covered
        covered *= 2
    if covered < width:
        m = np.maximum(*shifted(m, width - covered))
    return m


def triplets(peaks: Peaks, fan: int = FAN) -> Landmarks:
    """The triplet keys of `peaks`: each peak with each pair of its next `fan` peaks in the
    target zone (later by 1..MAX_DT frames, within MAX_DF units)."""
    t, lf = peaks.t.astype(np.int64), peaks.lf
    n = t.size
    empty = Landmarks(np.zeros(0, np.int64), np.zeros(0, np.int32))
    if n < 3:
        return empty
    # Peaks are in frame order; the candidates of anchor i are i+1 .. i+reach. Anchors go in
    # blocks: the (anchors x reach) work arrays of an hour's recording at once would add tens
    # of MB to the recorder's peak memory at publish.
    reach = min(n - 1, 6 * fan)
    steps = np.arange(1, reach + 1)[None, :]
    keys, anchors = [], []
    for first in range(0, n, ANCHOR_BLOCK):
        rows = np.arange(first, min(n, first + ANCHOR_BLOCK))
        idx = rows[:, None] + steps
        inside = idx < n
        idx = np.minimum(idx, n - 1)
        dt = t[idx] - t[rows][:, None]
        df = lf[idx] - lf[rows][:, None]
        valid = inside & (dt >= 1) & (dt <= MAX_DT) & (np.abs(df) <= MAX_DF)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :fan]
        cand = np.take_along_axis(idx, order, axis=1)
        ok = np.take_along_axis(valid, order, axis=1)
        for p in range(fan):
            for q in range(p + 1, fan):
                use = np.flatnonzero(ok[:, p] & ok[:, q])
                a, j, k = rows[use], cand[use, p], cand[use, q]
                d13 = t[k] - t[a]
                good = d13 >= MIN_DT
                a, j, k, d13 = a[good], j[good], k[good], d13[good]
                keys.append(_key(lf[a], lf[j], lf[k], t[j] - t[a], d13))
                anchors.append(peaks.t[a])
    # One array at a time, each list or unsorted copy dropped as soon as it is used (the peak
    # memory of publishing an hour's recording).
    at = np.concatenate(anchors)
    del anchors
    order2 = np.argsort(at, kind="stable")
    at = at[order2].astype(np.int32)
    key = np.concatenate(keys)
    del keys
    return Landmarks(key[order2], at)


def _key(lf1: np.ndarray, lf2: np.ndarray, lf3: np.ndarray, d12: np.ndarray,
         d13: np.ndarray) -> np.ndarray:
    """The KEY_BITS-bit key of triplets (see the module docstring); the layout, high to low:
    first peak's band (5 bits), second and third peak's difference to it (6 + 6), gap ratio
    (4), first-to-third gap (4)."""
    f1 = np.clip(np.floor(lf1 / F1_STEP), 0, 31).astype(np.int64)
    q2 = np.clip(np.rint((lf2 - lf1) / DF_STEP) + 32, 0, 63).astype(np.int64)
    q3 = np.clip(np.rint((lf3 - lf1) / DF_STEP) + 32, 0, 63).astype(np.int64)
    ratio = np.clip(np.floor(d12 / d13 * RATIO_LEVELS), 0, RATIO_LEVELS - 1).astype(np.int64)
    dtq = np.clip(np.floor(np.log2(d13 / MIN_DT) * DT_PER_OCTAVE), 0, 15).astype(np.int64)
    return (f1 << 20) | (q2 << 14) | (q3 << 8) | (ratio << 4) | dtq


# --- alignment ------------------------------------------------------------------------------

SPEED_MIN, SPEED_MAX, SPEED_STEP = 0.96, 1.04, 0.002
SPEEDS = np.arange(SPEED_MIN, SPEED_MAX + SPEED_STEP / 2, SPEED_STEP)
OFFSET_BIN = 2  # frames per offset bin of the alignment vote
INLIER_FRAMES = 2.5  # a hit this close to the fitted line counts
COVER_HITS = 3


@dataclass(frozen=True)
class Alignment:
    """How a query lies in a reference: ``t_ref = offset + speed * t_query`` (frames), and how
    many distinct query landmarks agree (`score`)."""

    offset_frames: float
    speed: float
    score: int
    span_seconds: float = 0.0  # how much of the query the agreeing landmarks cover

    @property
    def offset_seconds(self) -> float:
        return self.offset_frames * FRAME_SECONDS


def align(t_query: np.ndarray, t_ref: np.ndarray, q_index: np.ndarray) -> Alignment:
    """The best line through one reference's hits: a vote over (speed, offset) on a grid, then
    a least-squares fit on the votes' inliers. `q_index` names the query landmark of each hit:
    a landmark counts once however many reference positions share its key."""
    tq = t_query.astype(np.float64)
    tr = t_ref.astype(np.float64)
    off = tr[None, :] - SPEEDS[:, None] * tq[None, :]
    bins = np.floor(off / OFFSET_BIN).astype(np.int64)
    base = int(bins.min()) - 1
    width = int(bins.max()) - base + 2
    # One histogram per speed, side by side; a hit on a bin's edge: neighbouring bins summed.
    counts = np.bincount((bins - base + np.arange(SPEEDS.size)[:, None] * width).ravel(),
                         minlength=SPEEDS.size * width).reshape(SPEEDS.size, width)
    pair = counts[:, :-1] + counts[:, 1:]
    si, b = np.unravel_index(int(pair.argmax()), pair.shape)
    centre = (b + base + 1) * OFFSET_BIN  # the shared edge of the two bins
    s, o = float(SPEEDS[si]), float(centre)
    for _ in range(2):
        resid = tr - (o + s * tq)
        inl = np.abs(resid) <= INLIER_FRAMES + OFFSET_BIN
        if inl.sum() < 3:
            break
        x, y = tq[inl], tr[inl]
        dx = x - x.mean()
        var = float(dx @ dx)
        if var > 0:  # least squares, in closed form (np.polyfit costs ten times as much)
            s_fit = float(dx @ (y - y.mean())) / var
            if SPEED_MIN - 0.01 <= s_fit <= SPEED_MAX + 0.01:
                s, o = s_fit, float(y.mean() - s_fit * x.mean())
    resid = tr - (o + s * tq)
    inl = np.abs(resid) <= INLIER_FRAMES
    score = int(np.unique(q_index[inl]).size)
    # Seconds of the query with at least COVER_HITS agreeing landmarks: a shared word or a
    # chance alignment agrees in a second or two, the same recording all along the query.
    secs = np.floor(tq[inl] * FRAME_SECONDS).astype(np.int64)
    per_sec = np.bincount(secs) if secs.size else np.zeros(0, np.int64)
    span = float(np.count_nonzero(per_sec >= COVER_HITS))
    return Alignment(o, s, score, span)


class Handoff:
    """Landmarks a recording's sink computed, waiting for the catalogue to collect them when
    the recording is published (same process; a bounded few, so a recording never published
    cannot make it grow). Thread-safe: the pump's worker puts, the publisher takes."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._items: OrderedDict[str, Landmarks] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, recording_id: str, marks: Landmarks) -> None:
        with self._lock:
            self._items[recording_id] = marks
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def peek(self, recording_id: str) -> Landmarks | None:
        """The landmarks left for `recording_id`, left there (for the publisher), or None."""
        with self._lock:
            return self._items.get(recording_id)

    def take(self, recording_id: str) -> Landmarks | None:
        """The landmarks left for `recording_id` (once), or None."""
        with self._lock:
            return self._items.pop(recording_id, None)


HANDOFF = Handoff()
