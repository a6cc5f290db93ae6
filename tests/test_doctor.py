"""`recorder doctor`: health without the service, each failing check named."""

from __future__ import annotations

import json

import pytest

from tests.conftest import free_port, run_cli, toml_config
from tests.syncthing_harness import SyncthingCluster


def doctor(cfg_path: str) -> tuple[int, dict]:
    proc = run_cli("--config", cfg_path, "doctor", "--json")
    return proc.returncode, json.loads(proc.stdout)


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_file_source(config_file, speech_wav):
    cfg_path, _ = config_file(audio={"source": f"file:{speech_wav}"})
    code, report = doctor(cfg_path)
    checks = by_name(report)
    assert code == 0 and report["healthy"] is True and report["device_id"] == "testdev01"
    for name in ("config", "audio device", "storage", "free space", "staging"):
        assert checks[name]["ok"], checks[name]
    assert checks["clock"]["severity"] == "warning"  # never fails the appliance


def test_reserve_and_device_failures(config_file, tmp_path):
    cfg_path, _ = config_file(audio={"source": f"file:{tmp_path}/gone.wav"},
                              storage={"reserve_mb": 10**7})
    code, report = doctor(cfg_path)
    checks = by_name(report)
    assert code == 1 and report["healthy"] is False
    assert not checks["free space"]["ok"] and "reserve" in checks["free space"]["detail"]
    assert not checks["audio device"]["ok"] and "no such file" in checks["audio device"]["detail"]


def test_leftovers_in_staging_are_a_warning(config_file, speech_wav):
    cfg_path, data = config_file(audio={"source": f"file:{speech_wav}"})
    (data / "staging").mkdir(parents=True)
    (data / "staging" / "01abc.meta.json").write_text("{}")
    code, report = doctor(cfg_path)
    staging = by_name(report)["staging"]
    assert code == 0 and not staging["ok"] and "recorder recover" in staging["detail"]


# --- the Syncthing check, against a real Syncthing --------------------------------------------


@pytest.fixture(scope="module")
def syncthing(tmp_path_factory):
    with SyncthingCluster(1, tmp_path_factory.mktemp("doctor-st")) as cluster:
        yield cluster[0]


def syncthing_config(tmp_path, inst, speech_wav, **syncthing) -> str:
    section = {"url": inst.url, "api_key_file": str(inst.key_file), **syncthing}
    return toml_config(tmp_path / "recorder.toml", {
        "device": {"id": inst.recorder_id},
        "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 0},
        "audio": {"source": f"file:{speech_wav}"},
        "syncthing": section,
    })


def test_syncthing_reachable(syncthing, tmp_path, speech_wav):
    code, report = doctor(syncthing_config(tmp_path, syncthing, speech_wav))
    check = by_name(report)["syncthing"]
    assert code == 0 and check["ok"] and check["severity"] == "warning"
    assert syncthing.device_id in check["detail"] and syncthing.url in check["detail"]


def test_syncthing_down_or_refusing_is_a_warning(syncthing, tmp_path, speech_wav):
    down = syncthing_config(tmp_path, syncthing, speech_wav,
                            url=f"http://127.0.0.1:{free_port()}")
    code, report = doctor(down)
    check = by_name(report)["syncthing"]
    # Publishing never depends on Syncthing: a warning, the appliance stays healthy.
    assert code == 0 and report["healthy"] is True
    assert not check["ok"] and check["severity"] == "warning"
    assert "cannot connect" in check["detail"]
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-key\n")
    wrong.chmod(0o600)
    code, report = doctor(syncthing_config(tmp_path, syncthing, speech_wav,
                                           api_key_file=str(wrong)))
    check = by_name(report)["syncthing"]
    assert code == 0 and not check["ok"] and "forbidden" in check["detail"]
    assert "not-the-key" not in json.dumps(report)
