"""Recordings made before the clock was synchronised get their real start time afterwards.

A Pi has no clock battery: offline it may record with a wall clock days off, and its sidecars
then say ``clock_synced: false``. Each sidecar also holds the kernel's ``boot_id`` and the
``monotonic_start`` (CLOCK_MONOTONIC, seconds since boot). Within one boot the monotonic clock
runs steadily while the wall clock is stepped, so once chrony (or anything else) has
synchronised the wall clock:

    true start = started_at + offset, where
    offset = (wall - monotonic)[now] - (started_at - monotonic_start)[then]

The **owner** (only the device that made a recording ever writes its sidecar) rewrites the
sidecar atomically (staged, fsynced, renamed: `recorder.atomic`) with the corrected
``started_at`` and a ``clock_corrected`` record ``{"original_started_at", "offset_s",
"method": "boot_id+monotonic", "corrected_at"}``; ``clock_synced`` stays false (it tells how the
recording was made), the file names stay. Listeners re-register the change (the catalogue's
``started_at``; peers re-import the changed sidecar through their bridge).

A recording from an **earlier boot** cannot be corrected this way (its monotonic time belongs
to a clock that no longer runs) and is left as it is.

`ClockFixer` is the service's worker: it looks at the clock every `CHECK_INTERVAL` seconds and
corrects the current boot's recordings once per transition to "synchronised" (and once at start
when the clock is already synchronised). Clocks come through seams, so tests need no real
clock change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder import clock as sysclock
from recorder.atomic import atomic_write_text
from recorder.recording import Recording, dumps, utc_iso
from recorder.sidecar import published_sidecars

log = logging.getLogger(__name__)

CHECK_INTERVAL = 60.0
METHOD = "boot_id+monotonic"


@dataclass(frozen=True)
class Clocks:
    """The clock readings a correction needs, all taken now."""

    wall: float
    monotonic: float
    boot_id: str
    synced: bool

    @classmethod
    def read(cls) -> Clocks:
        ts = sysclock.now()
        return cls(ts.utc, ts.monotonic, ts.boot_id, ts.clock_synced)


def correction(rec: Recording, now: Clocks) -> float | None:
    """The offset (s) to add to this recording's ``started_at``, or None when it cannot or need
    not be corrected (clock was synchronised, already corrected, another boot)."""
    start = rec.start
    if start.clock_synced or "clock_corrected" in rec.extra:
        return None
    if not now.synced or not now.boot_id or start.boot_id != now.boot_id:
        return None
    try:
        then_wall = start.started.timestamp()
        then_mono = float(start.monotonic_start)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 <= then_mono <= now.monotonic:
        return None
    return (now.wall - now.monotonic) - (then_wall - then_mono)


def corrected(rec: Recording, offset: float, now: Clocks) -> Recording:
    """`rec` with its start moved by `offset` seconds and the correction recorded
    (``clock_corrected``: the original time, the offset, how and when)."""
    was = rec.started_at
    return rec.with_start(started_at=utc_iso(rec.started.timestamp() + offset)).with_extra(
        {"clock_corrected": {"original_started_at": was, "offset_s": round(offset, 3),
                             "method": METHOD, "corrected_at": utc_iso(now.wall)}})


def correct_folder(device_folder: Path, staging_dir: Path, now: Clocks, *,
                   on_corrected: Callable[[Recording, Path], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Correct every sidecar of this device's folder that `correction` allows; return the
    rewritten documents. `on_corrected(recording, sidecar_path)` follows each rewrite."""
    done = []
    for found in published_sidecars(device_folder):
        rec = found.recording
        if rec is None:
            continue
        offset = correction(rec, now)
        if offset is None:
            continue
        fixed = corrected(rec, offset, now)
        doc = fixed.to_doc()
        atomic_write_text(found.path, dumps(doc), staging_dir=staging_dir)
        log.info("clock: %s started at %s, not %s (corrected by %+.1f s)",
                 rec.recording_id, fixed.started_at, rec.started_at, offset)
        done.append(doc)
        if on_corrected is not None:
            try:
                on_corrected(fixed, found.path)
            except Exception:
                log.exception("clock: re-registering %s failed", rec.recording_id)
    return done


class ClockFixer:
    """The service's clock-correction worker (thread ``clock-fix``)."""

    name = "clock"

    def __init__(self, device_folder: Path, staging_dir: Path, *,
                 on_corrected: Callable[[Recording, Path], None] | None = None,
                 clocks: Callable[[], Clocks] = Clocks.read,
                 interval: float = CHECK_INTERVAL) -> None:
        self.device_folder = device_folder
        self.staging_dir = staging_dir
        self.on_corrected = on_corrected
        self.clocks = clocks
        self.interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] = {"synced": None, "corrected": 0, "last_pass_at": None}
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="clock-fix", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def run_once(self, was_synced: bool | None = None) -> bool:
        """Look at the clock; correct on a transition to synchronised. Returns synced."""
        now = self.clocks()
        if now.synced and not was_synced:
            try:
                fixed = correct_folder(self.device_folder, self.staging_dir, now,
                                       on_corrected=self.on_corrected)
            except OSError as exc:
                log.error("clock: correcting recordings failed: %s", exc)
                return False  # try again next time
            with self._lock:
                self._state["corrected"] += len(fixed)
                self._state["last_pass_at"] = now.wall
        with self._lock:
            self._state["synced"] = now.synced
        return now.synced

    def _run(self) -> None:
        synced: bool | None = None
        while not self._stopping.is_set():
            try:
                synced = self.run_once(synced)
            except Exception:
                log.exception("clock: correction pass failed")
            self._stopping.wait(self.interval)


__all__ = ["ClockFixer", "Clocks", "correct_folder", "correction"]
