"""`recorder doctor`: health without the service, each failing check named."""

from __future__ import annotations

import json

from tests.conftest import run_cli


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
