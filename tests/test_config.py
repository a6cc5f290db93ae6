"""Configuration: defaults work, every bad value is a one-line error naming its key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.config import load_config, parse_config
from recorder.deviceid import mac_device_id, validate_device_id
from recorder.errors import ConfigError
from tests.conftest import IN_CI, fake_net, run_cli


def real_interface_macs(net: Path = Path("/sys/class/net")) -> set[str]:
    """MACs (lowercase, no colons) of this machine's hardware interfaces: README's default
    device id is one of these."""
    macs = set()
    for iface in net.iterdir():
        if (iface / "device").exists():
            mac = (iface / "address").read_text().strip().lower().replace(":", "")
            if re.fullmatch(r"[0-9a-f]{12}", mac) and mac != "0" * 12:
                macs.add(mac)
    return macs


def test_defaults_work_without_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("RECORDER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config({})
    assert cfg.audio.samplerate == 48000 and cfg.audio.preroll == 3.0
    assert str(cfg.audio.source) == "default" and cfg.storage.reserve_mb == 200
    assert cfg.storage.max_seconds == 10800 and cfg.storage.flush_seconds == 2.0
    assert cfg.storage.data_dir == tmp_path / ".local/share/recorderpi"
    assert cfg.storage.sync_root == cfg.storage.data_dir / "sync"
    assert cfg.storage.staging_dir == cfg.storage.data_dir / "staging"
    assert cfg.papad.api == "none"
    assert (cfg.gpio.record_pin, cfg.gpio.led_pin, cfg.gpio.active_low) == (17, 27, True)
    assert (cfg.gpio.long_press, cfg.gpio.debounce_ms) == (1.5, 30)
    # The device id is the MAC of this machine's first real interface.
    macs = real_interface_macs()
    assert re.fullmatch(r"[0-9a-f]{12}", cfg.device.id)
    if macs:
        assert cfg.device.id in macs, (cfg.device.id, macs)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"audio": {"samplerate": 12345}}, "audio.samplerate"),
        ({"audio": {"channels": 3}}, "audio.channels"),
        ({"audio": {"preroll": "3"}}, "audio.preroll"),
        ({"audio": {"preroll": True}}, "audio.preroll"),
        ({"encoder": {"codec": "mp3"}}, "encoder.codec"),
        ({"encoder": {"vorbis_quality": 11}}, "encoder.vorbis_quality"),
        ({"storage": {"reserve_mb": -1}}, "storage.reserve_mb"),
        ({"storage": {"flush_seconds": 5}}, "storage.flush_seconds"),
        ({"device": {"id": "../etc"}}, "device.id"),
        ({"device": {"id": "Has Space"}}, "device.id"),
        ({"audio": {"sourec": "x"}}, "audio.sourec"),
        ({"audoi": {}}, "audoi"),
        ({"papad": {"api": "papad"}}, "papad.token_file"),
        ({"radio": {"mount": "noslash"}}, "radio.mount"),
        ({"gpio": {"record_pin": 40}}, "gpio.record_pin"),
        ({"storage": {"data_dir": "/x", "staging_dir": "/x/sync/staging"}}, "storage.staging_dir"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    msg = str(err.value)
    assert msg.startswith(key), msg
    assert "\n" not in msg


def test_file_precedence_and_toml_errors(tmp_path, monkeypatch):
    good = tmp_path / "good.toml"
    good.write_text('[audio]\npreroll = 5.0\n[device]\nid = "audio-girish-radio"\n')
    monkeypatch.setenv("RECORDER_CONFIG", str(good))
    cfg = load_config()
    assert cfg.audio.preroll == 5.0 and cfg.device.id == "audio-girish-radio"
    assert cfg.source_path == good
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio\npreroll = 5")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_overrides_are_validated_too():
    with pytest.raises(ConfigError, match=r"audio\.samplerate"):
        load_config(None, {"audio": {"samplerate": 1}})


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nsamplerate = 1\n")
    proc = run_cli("--config", str(bad), "recover")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "audio.samplerate" in proc.stderr


def test_mac_device_id_prefers_wired_hardware(tmp_path):
    net = fake_net(tmp_path / "net", {
        "lo": ("00:00:00:00:00:00", False, False),
        "docker0": ("02:42:aa:bb:cc:dd", False, False),
        "wlan0": ("DC:A6:32:00:00:02", True, True),
        "eth0": ("DC:A6:32:00:00:01", True, False),
    })
    assert mac_device_id(net) == "dca632000001"
    assert mac_device_id(tmp_path / "nothing") is None


def test_example_config_parses():
    example = Path(__file__).parent.parent / "services" / "recorder.example.toml"
    assert example.is_file(), "services/recorder.example.toml must ship"
    cfg = load_config(example)
    assert cfg.storage.data_dir == Path("/srv/recorder")


@pytest.mark.parametrize("good", ["dca632a1b2c3", "audio-girish-radio", "a", "x.y_z-1"])
def test_valid_device_ids(good):
    assert validate_device_id(good) == good


# --- the lookup order through the command line ---------------------------------------------------
#
# README: `--config PATH`, else `$RECORDER_CONFIG`, else /etc/recorder/recorder.toml, else
# built-in defaults (data under ~/.local/share/recorderpi). /etc is the machine's own: the test
# gives the command a private /etc (an overlay in a mount namespace of its own), so a file there
# is seen only by that one process and the machine's /etc is never touched.

_IN_PRIVATE_ETC = """
import os, shutil, subprocess, sys
work, etc_config = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir=/etc,upperdir={work}/upper,workdir={work}/work", "/etc"], check=True)
shutil.rmtree("/etc/recorder", ignore_errors=True)
if etc_config:
    os.makedirs("/etc/recorder")
    shutil.copy(etc_config, "/etc/recorder/recorder.toml")
os.execv(sys.executable, [sys.executable, "-m", "recorder", *sys.argv[3:]])
"""


def private_etc_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def doctor(tmp_path: Path, *args: str, env_config: str | None = None,
           etc_config: Path | None = None, private_etc: bool = True) -> tuple[int, dict, str]:
    """`recorder [ARGS] doctor --json` with a HOME of its own; returns (code, report, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "RECORDER_CONFIG"}
    env["HOME"] = str(tmp_path / "home")
    if env_config is not None:
        env["RECORDER_CONFIG"] = env_config
    argv = [*args, "doctor", "--json"]
    if private_etc:
        work = tmp_path / f"etc-overlay-{len(list(tmp_path.glob('etc-overlay-*')))}"
        (work / "upper").mkdir(parents=True)
        (work / "work").mkdir()
        cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
               _IN_PRIVATE_ETC, str(work), str(etc_config or ""), *argv]
    else:
        cmd = [sys.executable, "-m", "recorder", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report, proc.stderr


def named_config(tmp_path: Path, device_id: str) -> Path:
    path = tmp_path / f"{device_id}.toml"
    path.write_text(f'[device]\nid = "{device_id}"\n'
                    f'[storage]\ndata_dir = "{tmp_path / device_id}"\n')
    return path


def config_check(report: dict) -> str:
    return next(c["detail"] for c in report["checks"] if c["name"] == "config")


def test_config_lookup_order(tmp_path):
    private = private_etc_available()
    if not private:
        msg = "the /etc step needs root and unshare(1) (a private mount namespace)"
        if IN_CI:
            pytest.fail(msg)
        if Path("/etc/recorder/recorder.toml").exists():
            pytest.skip(msg + "; this machine has its own /etc/recorder/recorder.toml")
    arg, env_cfg, etc_cfg = (named_config(tmp_path, f"from-{n}") for n in ("arg", "env", "etc"))
    host_etc = sorted(Path("/etc").iterdir())
    etc = etc_cfg if private else None

    _, report, _ = doctor(tmp_path, "--config", str(arg), env_config=str(env_cfg), etc_config=etc,
                          private_etc=private)
    assert report["device_id"] == "from-arg" and str(arg) in config_check(report)

    _, report, _ = doctor(tmp_path, env_config=str(env_cfg), etc_config=etc, private_etc=private)
    assert report["device_id"] == "from-env" and str(env_cfg) in config_check(report)

    if private:
        _, report, _ = doctor(tmp_path, etc_config=etc_cfg)
        assert report["device_id"] == "from-etc"
        assert "/etc/recorder/recorder.toml" in config_check(report)

    # Nothing anywhere: built-in defaults, data under the user's home.
    _, report, _ = doctor(tmp_path, private_etc=private)
    assert "built-in defaults" in config_check(report)
    storage = next(c for c in report["checks"] if c["name"] == "storage")
    data = tmp_path / "home" / ".local/share/recorderpi"
    assert str(data / "sync" / report["device_id"]) in storage["detail"]
    assert (data / "staging").is_dir()

    # A named file that is not there is an error, never a silent fall-back.
    code, _, err = doctor(tmp_path, env_config=str(tmp_path / "missing.toml"), etc_config=etc,
                          private_etc=private)
    assert code == 2 and "config file not found" in err and err.strip().count("\n") == 0
    assert sorted(Path("/etc").iterdir()) == host_etc  # the machine's /etc never changed


def test_hub_config_refuses_a_live_stream(cfg_factory):
    assert str(cfg_factory(audio={"source": "none"}).audio.source) == "none"
    for sections, key in (({"radio": {"live": True}}, "radio.live"),
                          ({"gpio": {"live_pin": 22}}, "gpio.live_pin")):
        with pytest.raises(ConfigError, match=f"^{key}: a hub"):
            cfg_factory(audio={"source": "none"}, **sections)
