"""Secret files (README): a group- or world-readable one stops the service with a one-line
error naming its key, and secrets never appear in logs or `--json` output.

papad, Syncthing and Icecast are configured at closed ports: the secrets are read and used
(the outbox worker, the scan hand-off and the live stream all retry), nothing answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli, wait_until
from tests.service_harness import RunningService

PAPAD_TOKEN = "tok-7d1f0c9e55b2secret-papad"
SYNCTHING_KEY = "stkey-4b8e2a61secret-syncthing"
ICECAST_PASSWORD = "ice-93ac17secret-icecast"
SECRETS = (PAPAD_TOKEN, SYNCTHING_KEY, ICECAST_PASSWORD)


def secret_file(path: Path, value: str, mode: int = 0o600) -> str:
    path.write_text(value + "\n")
    path.chmod(mode)
    return str(path)


def sections(tmp_path: Path, loose: str = "") -> dict:
    """Config sections using all three secret files; the one named `loose` is 0644."""
    def mode(name: str) -> int:
        return 0o644 if name == loose else 0o600

    return {
        "papad": {"api": "papad", "url": f"http://127.0.0.1:{free_port()}", "auth": "token",
                  "token_file": secret_file(tmp_path / "papad.token", PAPAD_TOKEN,
                                            mode("papad.token_file"))},
        "syncthing": {"url": f"http://127.0.0.1:{free_port()}",
                      "api_key_file": secret_file(tmp_path / "st.key", SYNCTHING_KEY,
                                                  mode("syncthing.api_key_file"))},
        "radio": {"url": f"http://127.0.0.1:{free_port()}", "live": True,
                  "password_file": secret_file(tmp_path / "ice.pw", ICECAST_PASSWORD,
                                               mode("radio.password_file"))},
    }


@pytest.mark.parametrize("key", [
    "papad.token_file", "syncthing.api_key_file",
    "radio.password_file",
])
def test_a_loose_secret_file_stops_the_service(config_file, loop_wav, tmp_path, key):
    cfg_path, data = config_file(audio={"source": f"file:{loop_wav}"}, **sections(tmp_path, key))
    sock = data / "state" / "control.sock"
    proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", cfg_path, "run"],
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or sock.exists(), 60,
                   what="the service to refuse (or to start)")
        started = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert not started, "the service started serving with a loose secret file"
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"recorder: error: {key}: ") and "chmod 600" in errors[0]
    assert not any(s in err + out for s in SECRETS)


def test_secrets_never_appear_in_output_or_logs(config_file, loop_wav, tmp_path):
    cfg_path, data = config_file(audio={"source": f"file:{loop_wav}", "preroll": 0.5},
                                 **sections(tmp_path))
    doctor = run_cli("--config", cfg_path, "doctor", "--json")
    report = json.loads(doctor.stdout)
    assert {"papad", "syncthing"} & {c["name"].split()[0] for c in report["checks"]}
    svc = RunningService(cfg_path, data, {}, verbose=True)  # debug logs too
    try:
        svc.cmd("start")
        svc.wait(lambda: svc.recorded() >= 1.0, 20, "1 s recorded")
        svc.cmd("stop")
        svc.wait_published(1)  # publishing never depends on papad or Syncthing being up
        svc.wait(lambda: svc.status()["workers"]["radio"].get("error"), 30,
                 "the stream's failed connection")
        status = svc.ctl("status", "--json")
        human = svc.ctl("status")
        assert status.returncode == 0 and human.returncode == 0
        outbox = run_cli("--config", cfg_path, "outbox", "list", "--json")
    finally:
        svc.stop()
    texts = {"doctor --json": doctor.stdout + doctor.stderr,
             "ctl status --json": status.stdout, "ctl status": human.stdout,
             "outbox list --json": outbox.stdout + outbox.stderr,
             "the service log": svc.log.read_text()}
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret in {where}"


@pytest.mark.parametrize("state", ["missing", "loose"])
def test_the_secret_of_a_radio_that_is_off_is_not_needed(config_file, loop_wav, tmp_path,
                                                         state):
    """The native install without Icecast: [radio] names a password file that was never made
    (or one left loose), and the radio is off. The service runs; going live is refused with the
    one-line error that would have stopped a service whose radio is on."""
    pw = tmp_path / "icecast-source-password"
    if state == "loose":
        secret_file(pw, ICECAST_PASSWORD, 0o644)
    cfg_path, data = config_file(audio={"source": f"file:{loop_wav}", "preroll": 0.5},
                                 radio={"url": f"http://127.0.0.1:{free_port()}",
                                        "password_file": str(pw)})
    svc = RunningService(cfg_path, data, {})
    try:
        svc.wait(lambda: svc.status().get("workers") is not None, 60, "the service to serve")
        live = svc.ctl("live", "on")
        assert live.returncode != 0, live.stdout
        errors = [line for line in live.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "radio.password_file" in errors[0], live.stderr
        assert ("does not exist" if state == "missing" else "chmod 600") in errors[0]
        assert ICECAST_PASSWORD not in live.stdout + live.stderr
        # Refused, not half-switched: the stream never asked to go live.
        assert not svc.status()["workers"]["radio"].get("live_requested")
        svc.cmd("start")
        svc.wait(lambda: svc.recorded() >= 0.5, 20, "recording with the radio off")
        svc.cmd("stop")
        svc.wait_published(1)
    finally:
        svc.stop()
