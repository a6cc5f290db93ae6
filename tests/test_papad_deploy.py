"""papad in the compose stack, checked without Docker against papad itself: the image is built
from the commit the tests run (the papad kit's upstream tree), its data lives on the data
partition, and the stack's own settings (services/papad/recorderpi_settings.py: SQLite,
uploads on local disk, static files for nginx) and account bootstrap (bootstrap.py) work with
upstream papad's code in the kit's venv. tests/test_compose.py runs the real containers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.papad_kit import require_kit, venv_dir

SERVICES = Path(__file__).resolve().parent.parent / "services"
GIT_CONTEXT = re.compile(
    r"^\$\{PAPAD_SOURCE:-https://github\.com/micahchoo/papadam\.git#([0-9a-f]{40}):api\}$")


def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((SERVICES / "compose.yaml").read_text())


def test_papad_is_built_from_the_commit_the_tests_run():
    build = compose()["services"]["papad"]["build"]
    match = GIT_CONTEXT.match(build["context"])
    assert match, build["context"]
    source = (require_kit() / "upstream" / "SOURCE.txt").read_text()
    assert match.group(1) == re.search(r"Commit:\s+([0-9a-f]{40})", source).group(1)
    # No CDN: video.js from the npm registry, checked, and the template pointed at it.
    inline = build["dockerfile_inline"]
    assert "https://registry.npmjs.org/video.js/-/video.js-8.3.0.tgz" in inline
    assert "sha512sum -c" in inline and "! grep -rn 'zencdn'" in inline


def test_papad_data_lives_on_the_data_partition():
    papad = compose()["services"]["papad"]
    assert "${RECORDER_DATA:-/srv/recorder}/papad:/srv/papad" in papad["volumes"]
    assert papad["environment"]["DB_URL"] == "sqlite:////srv/papad/db.sqlite3"
    # No MinIO and no PostgreSQL: no service, no named volume for them.
    assert not [s for s in compose()["services"] if "minio" in s or "db" in s]


def test_stack_settings_and_bootstrap_work_with_upstream_papad(papad_upstream, tmp_path):
    # papad_upstream: the session server, which guarantees the kit's upstream venv exists.
    kit = require_kit()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    token = "0123456789abcdef0123456789abcdef01234567"
    for name, value in (("papad-django-secret", "x" * 50), ("papad-admin-password", "pw-1234"),
                        ("papad-token", token)):
        (secrets / name).write_text(value + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
           "PYTHONPATH": str(SERVICES / "papad"),
           "DJANGO_SETTINGS_MODULE": "recorderpi_settings", "DJANGO_CONFIGURATION": "Pi",
           "RECORDERPI_SECRETS": str(secrets), "RECORDERPI_PAPAD_DATA": str(tmp_path),
           "RECORDERPI_PAPAD_STATIC": str(tmp_path / "static"),
           **{k: str(v) for k, v in compose()["services"]["papad"]["environment"].items()
              if not str(v).startswith("$")}}
    python = str(venv_dir("upstream") / "bin" / "python")

    def manage(*args: str, stdin: str | None = None) -> str:
        proc = subprocess.run([python, "manage.py", *args], cwd=kit / "upstream", env=env,
                              input=stdin, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    manage("migrate", "--noinput", "-v", "0")
    bootstrap = (SERVICES / "papad" / "bootstrap.py").read_text()
    first = manage("shell", stdin=bootstrap)
    assert "group Community" in first and "user recorder" in first, first
    assert "nothing to do" in manage("shell", stdin=bootstrap)  # a second start changes nothing
    probe = """
import json
from django.conf import settings as s
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from papadapi.common.models import Group
call_command("check")
t = Token.objects.get(key=TOKEN)
print(json.dumps({"debug": s.DEBUG, "storage": s.STORAGES["default"]["BACKEND"],
    "db": s.DATABASES["default"]["ENGINE"], "media": s.MEDIA_ROOT, "user": t.user.username,
    "vendor": s.STATICFILES_DIRS[-1],
    "group": [g.pk for g in Group.objects.filter(name="Community", users=t.user)]}))
"""
    got = json.loads(manage("shell", stdin=f"TOKEN = {token!r}\n{probe}").strip().splitlines()[-1])
    assert got == {"debug": False,
                   "storage": "django.core.files.storage.FileSystemStorage",
                   "db": "django.db.backends.sqlite3", "media": str(tmp_path / "media"),
                   "user": "recorder", "group": [1], "vendor": "/opt/papad-vendor"}
    # The group id the compose config registers into is the group bootstrap made.
    assert re.search(r"(?m)^group = 1$", (SERVICES / "recorder.compose.toml").read_text())
