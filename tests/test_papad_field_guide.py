"""The field guide's papad set-up works against the real upstream papad: its shell block (user,
token, group, group id) is run as written (papad's address and the token file's place
changed, `sudo` and `chown` left out), its `[papad]` section is used as written with the printed
group id, and `recorder doctor` then reports a healthy papad."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

from tests.conftest import run_cli, toml_config

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "field-guide.md"


def guide_blocks() -> tuple[str, dict]:
    text = GUIDE.read_text()
    at = text.index("<!-- papad-setup:")
    shell = re.search(r"```sh\n(.*?)```", text[at:], re.S).group(1)
    toml_at = text.index("Then in `/etc/recorder/recorder.toml`", at)
    section = re.search(r"```toml\n(.*?)```", text[toml_at:], re.S).group(1)
    return shell, tomllib.loads(section)["papad"]


def test_field_guide_papad_setup_runs_and_doctor_is_happy(papad_upstream, tmp_path):
    shell, section = guide_blocks()
    token_file = tmp_path / "papad-token"
    lines = []
    for line in shell.splitlines():
        if line.startswith("PAPAD="):
            line = f"PAPAD={papad_upstream.url}"
        elif line.startswith("TOKEN_FILE="):
            line = f"TOKEN_FILE={token_file}"
        elif "chown recorder" in line:
            continue  # no recorder user here; the mode is checked below
        lines.append(line.replace("sudo ", ""))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert token_file.stat().st_mode & 0o777 == 0o600
    group_line = proc.stdout.strip().splitlines()[-1]
    group_id, group_name = group_line.split(" ", 1)
    assert group_name == "Village radio"
    user = re.search(r"papad login: (\S+) /", proc.stdout).group(1)

    section.update(url=papad_upstream.url, token_file=str(token_file), group=int(group_id))
    cfg = toml_config(tmp_path / "recorder.toml", {
        "device": {"id": "dca632a1b2c3"},
        "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 0},
        "papad": section,
    })
    doctor = run_cli("--config", cfg, "doctor", "--json", timeout=120)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["papad credentials accepted"]["detail"] == f"logged in as {user}"
    assert checks["papad group"]["detail"] == (
        f"group {group_id} Village radio: {user} is a member")
    for name in ("papad reachable", "papad credentials accepted", "papad group",
                 "papad listing", "papad outbox depth"):
        assert checks[name]["ok"], checks[name]
