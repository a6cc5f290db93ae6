"""Power loss mid-recording, then recovery: at most the last 2 s lost, never silently.

Two ways to cut the power: SIGKILL of the recorder (the page cache survives, so everything
written is still there) and a real power cut on `tests.powercut`'s filesystem, where every byte
not yet fsynced is lost, as on a card whose Pi lost power.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder import sidecar
from tests.clips import best_lag
from tests.conftest import need, run_cli, toml_config, wait_until


def test_sigkill_then_recover_loses_at_most_two_seconds(config_file, long_speech_wav):
    cfg_path, data = config_file(audio={"preroll": 0.0})
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", "--config", cfg_path, "record", "--source",
         f"file:{long_speech_wav}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = data / "staging"
    try:
        wait_until(lambda: list(staging.glob("*.meta.json")) or proc.poll() is not None, 30,
                   what="the recording to begin")
        assert proc.poll() is None, proc.communicate(timeout=30)
        time.sleep(7.3)  # several flush intervals, and not on a flush boundary
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    meta = json.loads(next(staging.glob("*.meta.json")).read_text())
    recorded = killed_at - meta["monotonic_start"]
    assert not list((data / "sync").rglob("*.ogg")), "nothing may be published before recovery"

    out = run_cli("--config", cfg_path, "recover", "--json")
    assert out.returncode == 0, out.stderr
    outcomes = json.loads(out.stdout)
    assert [o["action"] for o in outcomes] == ["published"]
    ogg = Path(outcomes[0]["path"])
    doc = sidecar.loads(ogg.with_suffix(".json").read_bytes())
    assert doc["recovered"] is True and doc["stop_reason"] == "recovered"
    assert doc["recording_id"] == meta["recording_id"]
    audio, _ = sf.read(ogg, dtype="int16")
    print("recorded", recorded, "recovered", len(audio) / 48000)
    assert len(audio) / 48000 >= recorded - 2.0 - 0.25, (len(audio) / 48000, recorded)
    original, _ = sf.read(long_speech_wav, dtype="int16")
    lag, corr = best_lag(original[: len(audio) + 48000], audio)
    assert lag == 0 and corr > 0.98
    assert not any(staging.iterdir()), "staging must be empty after recovery"
    # A second run has nothing left to do.
    again = recover_json(cfg_path)
    assert again == []


def recover_json(cfg_path: str) -> list[dict]:
    """`recorder recover --json`, which must succeed."""
    out = run_cli("--config", cfg_path, "recover", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _stage(data: Path, rid: str, meta: dict, journal: bytes = b"", ogg: bytes = b"") -> None:
    staging = data / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / f"{rid}.meta.json").write_text(json.dumps(meta))
    (staging / f"{rid}.pcm").write_bytes(journal)
    (staging / f"{rid}.ogg").write_bytes(ogg)


def _meta(rid: str) -> dict:
    return {
        "schema": sidecar.SCHEMA, "recording_id": rid, "device_id": "testdev01",
        "path": f"recordings/2026/11/28/20261128T120000Z_testdev01_{rid[-8:]}.ogg",
        "media_type": "audio/ogg", "codec": "vorbis", "samplerate": 48000, "channels": 1,
        "started_at": "2026-11-28T12:00:00.000Z", "clock_synced": False, "boot_id": "b",
        "monotonic_start": 1.0, "trigger": "cli", "preroll": 0.0, "title": "", "tags": [],
        "bookmarks": [{"at": 0.5, "label": ""}],
    }


def test_journal_only_recording_is_rebuilt_with_bookmarks(config_file):
    cfg_path, data = config_file()
    rid = sidecar.new_recording_id()
    pcm = (np.sin(np.arange(48000 * 3) / 10) * 8000).astype("<i2").tobytes()
    _stage(data, rid, _meta(rid), journal=pcm + b"\x01")  # a torn final sample
    out = recover_json(cfg_path)
    assert out[0]["action"] == "published" and "journal" in out[0]["detail"]
    doc = json.loads(Path(out[0]["path"]).with_suffix(".json").read_text())
    assert doc["frames"] == 48000 * 3 and doc["bookmarks"] == [{"at": 0.5, "label": ""}]


def test_unsalvageable_recording_is_moved_aside_with_a_reason(config_file):
    cfg_path, data = config_file()
    rid = sidecar.new_recording_id()
    _stage(data, rid, _meta(rid), journal=b"", ogg=b"OggS garbage")
    stray = data / "staging" / "orphan.ogg"
    stray.write_bytes(b"some bytes")
    out = recover_json(cfg_path)
    actions = {o["recording_id"]: o for o in out}
    assert actions[rid]["action"] == "moved_aside"
    aside = data / "lost+found" / rid
    assert (aside / f"{rid}.ogg").read_bytes() == b"OggS garbage"
    assert "no audio" in (aside / "REASON.txt").read_text()
    assert actions["orphan"]["action"] == "moved_aside"
    assert (data / "lost+found" / "orphan" / "orphan.ogg").read_bytes() == b"some bytes"


def test_leftovers_of_a_published_recording_are_cleaned(config_file, long_speech_wav):
    cfg_path, data = config_file()
    rid = sidecar.new_recording_id()
    meta = _meta(rid)
    target = data / "sync" / "testdev01" / meta["path"]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"published audio")
    target.with_suffix(".json").write_text("{}")
    _stage(data, rid, meta, journal=b"\0\0" * 100)
    out = recover_json(cfg_path)
    assert out[0]["action"] == "cleaned"
    assert target.read_bytes() == b"published audio"
    assert not any((data / "staging").iterdir())


def test_power_cut_loses_at_most_two_seconds(tmp_path, long_speech_wav):
    """Unsynced data really lost (tests.powercut): recovery still holds all but the last
    flush interval, and the cut did lose some (or this would prove no more than SIGKILL)."""
    need("fusermount3", "fuse3")
    from tests.powercut import PowerCut  # mfusepy: the test extra

    backing, mount, state = tmp_path / "card", tmp_path / "mnt", tmp_path / "state"
    sections = {"device": {"id": "testdev01"}, "audio": {"preroll": 0.0},
                "storage": {"data_dir": str(mount), "state_dir": str(state), "reserve_mb": 0}}
    cfg_path = toml_config(tmp_path / "recording.toml", sections)
    sections["storage"]["data_dir"] = str(backing)  # after the cut: the card as it is
    after = toml_config(tmp_path / "after.toml", sections)
    disk = PowerCut(backing, mount)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recorder", "--config", cfg_path, "record", "--source",
             f"file:{long_speech_wav}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        staging = mount / "staging"
        deadline = time.monotonic() + 30
        while not list(staging.glob("*.meta.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(7.3)  # several flush intervals, and not on a flush boundary
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(30)
        written = next(staging.glob("*.pcm")).stat().st_size // 2  # what the kernel was given
    finally:
        disk.cut()
    meta = json.loads(next((backing / "staging").glob("*.meta.json")).read_text())
    recorded = killed_at - meta["monotonic_start"]
    kept = next((backing / "staging").glob("*.pcm")).stat().st_size // 2
    assert kept < written, "the cut must lose what was not fsynced"
    out = run_cli("--config", after, "recover", "--json")
    assert out.returncode == 0, out.stderr
    (outcome,) = json.loads(out.stdout)
    assert outcome["action"] == "published"
    audio, _ = sf.read(outcome["path"], dtype="int16")
    print("recorded", recorded, "written", written / 48000, "recovered", len(audio) / 48000)
    assert len(audio) / 48000 >= recorded - 2.0 - 0.25, (len(audio) / 48000, recorded)
    original, _ = sf.read(long_speech_wav, dtype="int16")
    lag, corr = best_lag(original[: len(audio) + 48000], audio)
    assert lag == 0 and corr > 0.98
