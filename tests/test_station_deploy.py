"""Deploying the station: its systemd unit (checked by systemd itself), radio-setup.sh in a
scratch tree, and its compose service and image."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

from tests.conftest import need, need_root
from tests.test_deploy import REPO, SERVICES, UNITS, _directives, _load_compose, _unit_root

UNIT = "recorder-station.service"


def _station_root(tmp_path: Path) -> Path:
    root = _unit_root(tmp_path)
    stub = root / "usr/bin/liquidsoap"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return root


def test_station_unit_verifies(tmp_path):
    analyze = need("systemd-analyze", "systemd")
    root = _station_root(tmp_path)
    res = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", UNIT],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    # ... and a mistake in it is caught.
    unit = root / "etc/systemd/system" / UNIT
    unit.write_text(unit.read_text().replace("RestartSec=", "RestartSecs="))
    res = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", UNIT],
                         capture_output=True, text=True, timeout=120)
    assert "RestartSecs" in res.stdout + res.stderr


def test_station_unit_is_hardened_read_only_and_restarts(tmp_path):
    d = _directives(UNITS / UNIT)
    expect = {"User": "recorder", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
              "PrivateTmp": "yes", "PrivateDevices": "yes", "Restart": "always",
              "ExecStart": "/usr/bin/liquidsoap /run/recorder-station/station.liq",
              "RuntimeDirectory": "recorder-station", "CapabilityBoundingSet": ""}
    for key, value in expect.items():
        assert d.get(key) == [value], (key, d.get(key))
    assert "ReadWritePaths" not in d  # Liquidsoap writes nothing of the recorder's
    # The script is made from the config before every start, into the runtime directory.
    assert d["ExecCondition"] == [
        "/opt/recorderpi/venv/bin/recorder radio script --output "
        "/run/recorder-station/station.liq"]
    analyze = need("systemd-analyze", "systemd")
    res = subprocess.run([analyze, "security", "--offline=yes", f"--root={_station_root(tmp_path)}",
                          "--no-pager", "--threshold=100", UNIT],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for recorder-station\.service: (\d+\.\d+)",
                      res.stdout)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= 2.0, res.stdout[-2000:]


def test_radio_setup_makes_secrets_once_and_renders_icecast_xml(tmp_path):
    need_root("radio-setup.sh chowns its secrets (root)")
    calls = tmp_path / "calls"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                         f'[ "$1" = is-enabled ] && grep -q "^enable.*$3" {calls} && exit 0\n'
                         '[ "$1" = is-enabled ] && exit 1\nexit 0\n')
    systemctl.chmod(0o755)
    env = {**os.environ, "RECORDER_ETC": str(tmp_path / "etc"), "RECORDER_USER": "root",
           "RECORDER_ICECAST_TEMPLATE": str(SERVICES / "icecast/icecast.xml"),
           "RECORDER_ICECAST_XML": str(tmp_path / "icecast2/icecast.xml"),
           "RECORDER_SYSTEMCTL": str(systemctl)}
    script = SERVICES / "icecast/radio-setup.sh"
    first = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    secrets = sorted((tmp_path / "etc/secrets").iterdir())
    assert [p.name for p in secrets] == [f"icecast-{n}-password" for n in ("admin", "relay",
                                                                              "source")]
    for p in secrets:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and len(p.read_text()) >= 20
    xml = (tmp_path / "icecast2/icecast.xml").read_text()
    assert "@ICECAST_" not in xml and secrets[2].read_text() in xml
    assert stat.S_IMODE((tmp_path / "icecast2/icecast.xml").stat().st_mode) == 0o640
    assert "enable --quiet icecast2.service" in calls.read_text()
    assert "enable --quiet recorder-station.service" in calls.read_text()
    before = {p: p.stat().st_mtime_ns for p in [*secrets, tmp_path / "icecast2/icecast.xml"]}
    again = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # a re-run changes nothing


def test_compose_station_service_reads_only():
    station = _load_compose()["services"]["station"]
    assert station["build"]["dockerfile"] == "services/Dockerfile"
    assert station["build"]["target"] == "station" and station["read_only"] is True
    assert "secrets:/run/secrets:ro" in station["volumes"]
    assert any(v.endswith(":/srv/recorder:ro") for v in station["volumes"])
    assert station["healthcheck"]["test"] == ["CMD", "recorder", "radio", "status"]
    assert station["depends_on"]["icecast"]["condition"] == "service_healthy"
    docker = (SERVICES / "Dockerfile").read_text()
    stage = docker[docker.index("AS station"):]
    assert "liquidsoap" in stage and re.search(r"^USER recorder$", stage, re.M)
    assert "recorder radio script --output" in stage


def test_compose_config_puts_the_station_on_the_air():
    from recorder.config import load_config

    # The template's device id is a placeholder the config refuses: set one, as a user must.
    cfg = load_config(SERVICES / "recorder.compose.toml", {"device": {"id": "dev-station"}})
    assert cfg.radio.station and cfg.radio.harbor_url == "http://station:8005"
    assert cfg.radio.harbor_bind == "0.0.0.0" and cfg.radio.url == "http://icecast:8001"


def test_install_and_image_carry_the_station():
    install = (SERVICES / "install.sh").read_text()
    assert "icecast2 liquidsoap" in install and "recorder-station.service" in install
    assert "--with-icecast --radio-later" in (REPO / "image/customize-rootfs.sh").read_text()
