"""icecast.xml rendered from its template by radio-setup.sh (native install and compose alike):
every placeholder replaced, values taken literally and XML-escaped, so a secret holding "--",
"&", "|" or a backslash yields a valid config Icecast reads back unchanged."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parent.parent / "services"
SCRIPT = SERVICES / "icecast/radio-setup.sh"
TEMPLATE = SERVICES / "icecast/icecast.xml"


def render(secrets: Path, hostname: str = "radio.local",
           template: Path = TEMPLATE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "render", str(template), str(secrets), hostname],
                          capture_output=True, text=True, timeout=60)


def write_secrets(root: Path, **values: str) -> Path:
    root.mkdir(exist_ok=True)
    for name, value in values.items():
        (root / f"icecast-{name}-password").write_text(value + "\n")
    return root


def test_placeholders_live_in_elements_never_in_a_comment():
    text = TEMPLATE.read_text()
    # Comments hold no placeholder (a secret rendered into a comment could end it with "--").
    for comment in re.findall(r"<!--(.*?)-->", text, re.S):
        assert "@ICECAST_" not in comment, comment


def test_secrets_with_hyphens_ampersands_and_quotes_yield_valid_xml(tmp_path):
    values = {"source": "a--b&c", "relay": "x|y\\z<'\"--", "admin": "&amp;--&"}
    secrets = write_secrets(tmp_path / "secrets", **values)
    res = render(secrets, hostname="radio & co")
    assert res.returncode == 0, res.stderr
    root = ET.fromstring(res.stdout)  # a refused document raises here
    auth = root.find("authentication")
    assert auth is not None
    assert auth.findtext("source-password") == values["source"]
    assert auth.findtext("relay-password") == values["relay"]
    assert auth.findtext("admin-password") == values["admin"]
    assert root.findtext("hostname") == "radio & co"
    assert "@ICECAST_" not in res.stdout


def test_every_occurrence_of_a_placeholder_is_replaced(tmp_path):
    template = tmp_path / "icecast.xml"
    template.write_text("<icecast><a>@ICECAST_SOURCE_PASSWORD@</a>"
                        "<b>@ICECAST_SOURCE_PASSWORD@:@ICECAST_SOURCE_PASSWORD@</b>"
                        "<hostname>@ICECAST_HOSTNAME@</hostname></icecast>")
    secrets = write_secrets(tmp_path / "secrets", source="s&--", relay="r", admin="a")
    res = render(secrets, template=template)
    assert res.returncode == 0, res.stderr
    root = ET.fromstring(res.stdout)
    assert root.findtext("a") == "s&--" and root.findtext("b") == "s&--:s&--"


@pytest.mark.parametrize("case", ["empty", "missing", "unknown"])
def test_a_bad_secret_or_placeholder_fails_with_one_line(tmp_path, case):
    secrets = write_secrets(tmp_path / "secrets", source="s", relay="r", admin="a")
    template = TEMPLATE
    if case == "empty":
        (secrets / "icecast-admin-password").write_text("\n")
    elif case == "missing":
        (secrets / "icecast-relay-password").unlink()
    else:
        template = tmp_path / "icecast.xml"
        template.write_text("<icecast>@ICECAST_SOMETHING@</icecast>")
    res = render(secrets, template=template)
    assert res.returncode != 0 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radio-setup: "), res.stderr
