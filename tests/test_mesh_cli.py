"""`recorder mesh bridge` (one-shot, and run until stopped) and `recorder mesh status` listing
quarantined peer files, through the command line, with a real Syncthing.

The peer's folder is written on disk as Syncthing would have delivered it: one good recording,
one sidecar that is not JSON, one whose OGG does not match its sha256.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorder import sidecar as sc
from tests.clips import RATE, tone
from tests.conftest import run_cli, toml_config, wait_until
from tests.corpus import sidecar_for
from tests.syncthing_harness import SyncthingCluster

PEER = "dev-p"


@pytest.fixture
def device(tmp_path):
    with SyncthingCluster(1, tmp_path / "st") as cluster:
        inst = cluster[0]
        cfg = toml_config(tmp_path / "recorder.toml", {
            "device": {"id": inst.recorder_id},
            "storage": {"data_dir": str(tmp_path / "data"), "sync_root": str(inst.sync_root),
                        "reserve_mb": 0},
            "syncthing": {"url": inst.url, "api_key_file": str(inst.key_file)},
        })
        yield cfg, inst.sync_root / PEER


def peer_recording(folder: Path, tmp_path: Path, index: int, wav: Path | None = None) -> dict:
    """A good recording of the peer's (`wav` encoded, or a tone), laid out as README says."""
    audio = tmp_path / f"take{index}.ogg"
    if wav is not None:
        pcm, _ = sf.read(wav, dtype="int16")
    else:
        noise = np.random.default_rng(index).integers(-2000, 2000, 4 * RATE).astype(np.int16)
        pcm = tone(4.0, 300 + 50 * index, 0.2) // 2 + noise
    sf.write(audio, pcm, RATE, format="OGG", subtype="VORBIS")
    doc = sidecar_for(audio, device_id=PEER, started=1_780_000_000.0 + 60 * index)
    target = folder / doc["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(audio.read_bytes())
    target.with_suffix(".json").write_text(sc.dumps(doc))
    return doc


def hostile_files(folder: Path, tmp_path: Path) -> dict[str, str]:
    """Two bad sidecars; returns file name -> words the quarantine reason must hold."""
    good = peer_recording(folder, tmp_path, 7)
    day = (folder / good["path"]).parent
    (day / f"20260528T000000Z_{PEER}_badjson1.json").write_text("{not json")
    ogg = folder / good["path"]
    damaged = bytearray(ogg.read_bytes())
    damaged[-100] ^= 0xFF  # same size, one bit pattern off: no longer the audio it names
    ogg.write_bytes(bytes(damaged))
    return {f"20260528T000000Z_{PEER}_badjson1.json": "not valid JSON",
            Path(good["path"]).with_suffix(".json").name: "sha256 does not match"}


def quarantined_names(entries: list[dict]) -> dict[str, str]:
    return {q["path"].rsplit("/", 1)[-1]: q["reason"] for q in entries}


def test_bridge_once_and_status_list_quarantined_files(device, tmp_path, speech_wav):
    cfg, folder = device
    good = peer_recording(folder, tmp_path, 1, speech_wav)
    expect = hostile_files(folder, tmp_path)
    once = run_cli("--config", cfg, "mesh", "bridge", "--once", "--json")
    assert once.returncode == 0, once.stderr
    report = json.loads(once.stdout)
    assert (report["scan"]["imported"], report["scan"]["quarantined"]) == (1, 2)
    reasons = quarantined_names(report["quarantined"])
    for name, words in expect.items():
        assert words in reasons[name], (name, reasons)
    # The good recording is in the Audio ID catalogue: identify finds it.
    ogg = folder / good["path"]
    found = run_cli("--config", cfg, "identify", str(ogg), "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["matches"][0]["recording_id"] == good["recording_id"]

    status = run_cli("--config", cfg, "mesh", "status", "--json")
    assert status.returncode == 0, status.stderr
    bridge = json.loads(status.stdout)["bridge"]
    assert bridge["peers"][PEER] == {"imported": 1, "pending": 0, "quarantined": 2}
    assert quarantined_names(bridge["quarantined"]).keys() == expect.keys()
    assert all(q["peer"] == PEER for q in bridge["quarantined"])
    text = run_cli("--config", cfg, "mesh", "status")
    assert text.returncode == 0, text.stderr
    for name in expect:
        assert any(line.strip().startswith(f"quarantined {PEER}/") and name in line
                   for line in text.stdout.splitlines()), text.stdout
    # Never touched: the bad files are still there as they were.
    assert (folder / good["path"]).with_suffix(".json").is_file()
    assert (folder / good["path"]).read_bytes() == Path(tmp_path / "take1.ogg").read_bytes()


def test_bridge_runs_until_stopped(device, tmp_path):
    cfg, folder = device
    docs = [peer_recording(folder, tmp_path, i) for i in range(2)]
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg, "mesh",
                             "bridge"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "bridge running" in proc.stdout.readline()

        def imported() -> int:
            status = run_cli("--config", cfg, "mesh", "status", "--json")
            assert status.returncode == 0, status.stderr
            return json.loads(status.stdout)["bridge"]["peers"].get(PEER, {}).get("imported", 0)

        wait_until(lambda: imported() == len(docs), 60, 0.2, "the running bridge's first scan")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
