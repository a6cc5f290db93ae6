"""Recordings made before the clock was synchronised are corrected by their owner afterwards.

The clocks come through `recorder.clockfix.Clocks` (a seam): no real clock is changed and
no wall-clock threshold is involved. Sidecars are written here field by field
(tests.papad_recordings), then marked as made with an unsynchronised clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recorder import app
from recorder.clockfix import Clocks, correct_folder
from recorder.sidecar import utc_iso, validate
from tests.papad_recordings import make_recording

BOOT = "3" * 32
WRONG = datetime(2020, 1, 1, 0, 0, 0, tzinfo=UTC)  # an offline Pi after a power cut
TRUE_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()


def _unsynced(folder: Path, index: int, boot: str, mono: float) -> tuple[dict, Path]:
    doc, ogg = make_recording(folder, index=index, started=WRONG + timedelta(minutes=index))
    doc.update(clock_synced=False, boot_id=boot, monotonic_start=mono)
    sidecar = ogg.with_suffix(".json")
    sidecar.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc, sidecar


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_current_boot_recordings_are_corrected_by_the_owner(tmp_path):
    folder = tmp_path / "sync" / "dev-a"
    staging = tmp_path / "staging"
    staging.mkdir()
    doc, sidecar = _unsynced(folder, 0, BOOT, 100.0)  # 60 s before "now" on this boot
    _, earlier_boot = _unsynced(folder, 1, "f" * 32, 100.0)
    make_recording(folder, index=2)  # made with a synchronised clock
    before = _files(folder)
    now = Clocks(wall=TRUE_NOW, monotonic=160.0, boot_id=BOOT, synced=True)

    fixed = correct_folder(folder, staging, now)

    assert [d["recording_id"] for d in fixed] == [doc["recording_id"]]
    got = json.loads(sidecar.read_text())
    validate(got, expect_device="dev-a")
    assert got["started_at"] == utc_iso(TRUE_NOW - 60.0)
    offset = (TRUE_NOW - 160.0) - (WRONG.timestamp() - 100.0)
    assert got["clock_corrected"] == {"original_started_at": doc["started_at"],
                                      "offset_s": round(offset, 3),
                                      "method": "boot_id+monotonic",
                                      "corrected_at": utc_iso(TRUE_NOW)}
    assert got["clock_synced"] is False  # how it was made; the correction says the rest
    assert {k: v for k, v in got.items() if k not in ("started_at", "clock_corrected")} == \
        {k: v for k, v in doc.items() if k != "started_at"}
    after = _files(folder)
    changed = {k for k in after if after[k] != before.get(k)}
    # Only that sidecar changed: same names, the OGG, the other boot's and the synced one
    # untouched, no temporary file left behind.
    assert changed == {str(sidecar.relative_to(folder))} and set(after) == set(before)
    assert list(staging.iterdir()) == []
    # Corrected once: a second pass changes nothing, and an unsynchronised clock corrects
    # nothing at all.
    assert correct_folder(folder, staging, now) == []
    assert correct_folder(folder, staging, Clocks(TRUE_NOW, 170.0, BOOT, False)) == []
    assert json.loads(earlier_boot.read_text())["started_at"] == utc_iso(
        (WRONG + timedelta(minutes=1)).timestamp())


def test_service_worker_corrects_when_the_clock_synchronises(tmp_path, cfg_factory):
    cfg = cfg_factory(device={"id": "dev-a"})
    parts = app.assemble(cfg, app.Role.WORKERS)
    try:
        assert parts.clock is not None and parts.catalogue is not None
        doc, sidecar = _unsynced(cfg.layout.device_folder, 0, BOOT, 10.0)
        parts.catalogue.add(doc)
        readings = iter([Clocks(TRUE_NOW - 50.0, 20.0, BOOT, False),
                         Clocks(TRUE_NOW, 70.0, BOOT, True),
                         Clocks(TRUE_NOW + 60.0, 130.0, BOOT, True)])
        parts.clock.clocks = lambda: next(readings)
        assert parts.clock.run_once(None) is False  # not synchronised: nothing happens
        assert json.loads(sidecar.read_text())["started_at"] == doc["started_at"]
        assert parts.clock.run_once(False) is True  # the transition: one pass
        corrected = utc_iso(TRUE_NOW - 60.0)
        assert json.loads(sidecar.read_text())["started_at"] == corrected
        assert parts.catalogue.get(doc["recording_id"]).started_at == corrected
        assert parts.clock.status()["corrected"] == 1
        assert parts.clock.run_once(True) is True  # still synchronised: no new pass
        assert parts.clock.status()["corrected"] == 1
    finally:
        parts.close()
