"""Time as the appliance records it: UTC, boot id, monotonic time, and whether to trust UTC.

A Pi has no real-time clock; without internet its wall clock may be days off. Every sidecar
therefore carries the boot id and monotonic start beside the UTC time, plus a flag saying whether
the kernel considers the clock synchronised, so times can be corrected later.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from dataclasses import dataclass
from pathlib import Path

_TIME_ERROR = 5  # adjtimex(2): clock not synchronised
_TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


@dataclass(frozen=True)
class Timestamp:
    """One instant, read from all the clocks at once."""

    utc: float  # seconds since the epoch (wall clock)
    monotonic: float  # CLOCK_MONOTONIC seconds since boot
    boot_id: str
    clock_synced: bool


def boot_id() -> str:
    """The kernel's random id for this boot ("" if unavailable)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Looked up once: find_library runs `ldconfig -p` in a subprocess (3 ms here, far more on a
    # Pi), and now() is called for every recording and status request.
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def clock_synchronized() -> bool:
    """True if the kernel says the wall clock is NTP-synchronised (adjtimex state).

    This is what ``timedatectl``'s "System clock synchronized" reports, read without D-Bus.
    """
    libc = _libc()
    if libc is not None:
        # struct timex is 208 bytes on 64-bit Linux; modes (the first field) = 0: read-only.
        buf = ctypes.create_string_buffer(256)
        state = libc.adjtimex(buf)
        if state != -1:
            return state != _TIME_ERROR
    # adjtimex denied (a seccomp filter such as systemd's ProtectClock=): timesyncd's flag file.
    return _TIMESYNC_FLAG.exists()


_BOOT_ID = boot_id()


def now() -> Timestamp:
    """Read every clock once."""
    return Timestamp(
        utc=time.time(),
        monotonic=time.monotonic(),
        boot_id=_BOOT_ID,
        clock_synced=clock_synchronized(),
    )
