"""The light commands stay light: what `recorder --version`, `--help`, `ctl status`, `outbox
list` and `mesh status` import, and every command still reachable when only its own module is
loaded.

A command that only talks to the service or reads the database must not pay for the pipeline:
numpy, soundfile and requests are imported by the handlers that use them (README: CLI start).
This checks what is imported, in a fresh interpreter, never how long it took (the start-up time
is measured by tests/bench/bench_cli.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numpy", "soundfile", "requests", "recorder.app", "recorder.pump", "chromaprint")

# Runs one command the way the console script does (recorder.cli.main), then reports its exit
# code and which heavy modules the interpreter loaded, as one JSON line on stderr's last line.
# argv: the heavy module names (JSON), then the command line.
_PROBE = """
import json, sys
from recorder.cli import main
heavy = json.loads(sys.argv[1])
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}),
      file=sys.stderr)
"""


def probe(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(HEAVY), *argv],
                          capture_output=True, text=True, timeout=60)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "recorder.toml"
    path.write_text(f'[device]\nid = "light"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                    'reserve_mb = 0\n')
    return str(path)


@pytest.mark.parametrize("argv", [("--version",), ("--help",), ("ctl", "status"),
                                  ("ctl", "status", "--json"), ("outbox", "list"),
                                  ("ctl", "--help")])
def test_light_commands_import_no_pipeline(argv, cfg_path):
    # ctl status without a running service: exit 8 after the same imports as a reply would.
    result = probe("--config", cfg_path, *argv)
    assert result["code"] in (0, 8), result
    assert result["loaded"] == [], f"`recorder {' '.join(argv)}` imported {result['loaded']}"


def test_mesh_status_imports_no_http_library(tmp_path):
    # Syncthing configured but not running: the warning line and exit 0, after every import
    # the command makes when Syncthing answers.
    key = tmp_path / "st.key"
    key.write_text("k" * 32)
    key.chmod(0o600)
    path = tmp_path / "recorder.toml"
    path.write_text(f'[device]\nid = "light"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                    f'reserve_mb = 0\n[syncthing]\nurl = "http://127.0.0.1:9"\n'
                    f'api_key_file = "{key}"\n')
    result = probe("--config", str(path), "mesh", "status")
    assert result["code"] == 0, result
    assert result["loaded"] == [], f"`recorder mesh status` imported {result['loaded']}"


def test_a_pipeline_command_still_loads_the_pipeline(cfg_path):
    # The probe can fail: `fingerprint` of a missing file has imported the Audio ID code.
    result = probe("--config", cfg_path, "fingerprint", "/nonexistent.wav")
    assert result["code"] == 5, result
    assert "numpy" in result["loaded"]


def test_every_command_in_help_parses_on_its_own(cfg_path):
    """Each command listed by `recorder --help` answers its own --help when only its module is
    loaded (the table of which module registers which command is complete)."""
    listing = subprocess.run([sys.executable, "-m", "recorder", "--help"], capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    choices = _commands_from(listing.stdout)
    assert "ctl" in choices and "record" in choices, listing.stdout
    script = ("import sys, contextlib, io\nfrom recorder.cli import main\nbad = []\n"
              f"for cmd in {choices!r}:\n"
              "    out = io.StringIO()\n"
              "    try:\n"
              "        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
              "            main([cmd, '--help'])\n"
              "    except SystemExit as exc:\n"
              "        if exc.code != 0 or f'recorder {cmd}' not in out.getvalue():\n"
              "            bad.append((cmd, exc.code, out.getvalue()[-300:]))\n"
              "print(bad)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def _commands_from(help_text: str) -> list[str]:
    """Command names from the COMMAND section of argparse's help (one indented line each)."""
    section = help_text.split("  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in section.splitlines()
            if line.startswith("    ") and not line.startswith("     ")]
