"""The clocks every sidecar carries: UTC, monotonic start, boot id and the synchronised flag."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import time
from datetime import datetime
from pathlib import Path

from recorder import clock
from tests.conftest import run_cli

_TIME_ERROR = 5  # adjtimex(2) returns TIME_ERROR when the clock is not synchronised


def kernel_says_synchronised() -> bool | None:
    """adjtimex(2) asked directly (None where the call is not allowed)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    state = libc.adjtimex(ctypes.create_string_buffer(256))  # modes = 0: read only
    return None if state == -1 else state != _TIME_ERROR


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_flag_falls_back_to_timesyncd_when_adjtimex_is_unavailable(monkeypatch, tmp_path):
    flag = tmp_path / "synchronized"
    monkeypatch.setattr(clock, "_TIMESYNC_FLAG", flag)
    monkeypatch.setattr(clock, "_libc", lambda: None)  # no libc: as under a seccomp filter
    assert clock.clock_synchronized() is False
    flag.touch()
    assert clock.clock_synchronized() is True


def test_now_reads_every_clock():
    utc0, mono0 = time.time(), time.monotonic()
    ts = clock.now()
    utc1, mono1 = time.time(), time.monotonic()
    assert utc0 <= ts.utc <= utc1 and mono0 <= ts.monotonic <= mono1
    assert ts.boot_id == boot_id()
    kernel = kernel_says_synchronised()
    if kernel is not None:
        assert ts.clock_synced is kernel


def test_sidecar_carries_the_clocks(config_file, speech_wav):
    cfg_path, _ = config_file(audio={"preroll": 0.0})
    utc0, mono0 = time.time(), time.monotonic()  # CLOCK_MONOTONIC is the same in every process
    proc = run_cli("--config", cfg_path, "record", "--source", f"file:{speech_wav}", "--fast",
                   "--json")
    utc1, mono1 = time.time(), time.monotonic()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(Path(json.loads(proc.stdout)["sidecar"]).read_text())
    assert doc["boot_id"] == boot_id()
    assert mono0 <= doc["monotonic_start"] <= mono1
    started = doc["started_at"]  # UTC of the first sample, ms precision: 2026-11-28T17:01:02.123Z
    assert len(started) == 24 and started.endswith("Z") and started[19] == "."
    at = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    assert utc0 - 0.001 <= at <= utc1
    kernel = kernel_says_synchronised()
    if kernel is not None:
        assert doc["clock_synced"] is kernel
