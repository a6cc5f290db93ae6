"""Configuration: defaults work, every bad value is a one-line error naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recorder.config import load_config, parse_config
from recorder.deviceid import mac_device_id, validate_device_id
from recorder.errors import ConfigError
from tests.conftest import fake_net


def test_defaults_work_without_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("RECORDER_CONFIG", raising=False)
    cfg = parse_config({})
    assert cfg.audio.samplerate == 48000 and cfg.audio.preroll == 3.0
    assert cfg.storage.sync_root == cfg.storage.data_dir / "sync"
    assert cfg.storage.staging_dir.parent == cfg.storage.sync_root.parent
    assert cfg.device.id  # derived from the MAC


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
    proc = subprocess.run(
        [sys.executable, "-m", "recorder", "--config", str(bad), "recover"],
        capture_output=True, text=True,
    )
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
