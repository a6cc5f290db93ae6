"""papad on the Pi: compose's "papad" profile and papad.env.example, checked against papad itself.

No Docker engine runs here, so the images are not built; `tests/test_deploy.py` validates the
compose file (Compose Specification schema, `docker compose config`). These tests check what can
be checked without Docker: the API is built from the same source commit the test suite runs
(the papad kit's upstream tree), its data lives on the data partition, and papad's own settings
code, run with the example's values in the kit's upstream venv, resolves them as intended (every
variable papad requires is present: its settings raise on a missing one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.papad_kit import require_kit, venv_dir

SERVICES = Path(__file__).resolve().parent.parent / "services"
GIT_CONTEXT = re.compile(r"^https://github\.com/micahchoo/papadam\.git#([0-9a-f]{40}):api$")


def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((SERVICES / "compose.yaml").read_text())


def env_file(name: str) -> dict[str, str]:
    out = {}
    for line in (SERVICES / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def test_papad_api_is_built_from_a_pinned_commit_on_the_pi():
    api = compose()["services"]["papad-api"]
    assert GIT_CONTEXT.match(api["build"]["context"]), api["build"]
    assert "image" in api and not api["image"].endswith(":latest")
    minio = compose()["services"]["papad-minio"]
    assert "RELEASE.2025-04-22T22-12-26Z" in minio["build"]["dockerfile_inline"]


def test_the_pi_runs_the_papad_the_tests_run():
    kit = require_kit()
    source = (kit / "upstream" / "SOURCE.txt").read_text()
    commit = re.search(r"Commit:\s+([0-9a-f]{40})", source).group(1)
    pinned = GIT_CONTEXT.match(compose()["services"]["papad-api"]["build"]["context"]).group(1)
    assert pinned == commit


def test_papad_data_lives_on_the_data_partition():
    services = compose()["services"]
    for name, where in (("papad-db", "postgres:/var/lib/postgresql/data"),
                        ("papad-minio", "minio:/data")):
        assert f"${{RECORDER_DATA:-/srv/recorder}}/papad/{where}" in services[name]["volumes"]
    # No named volume holds papad data: a named volume lives on the root filesystem.
    assert not [v for v in compose()["volumes"] if v.startswith(("papad", "minio"))]


def test_papad_env_example_names_only_variables_papad_reads():
    kit = require_kit()
    config = "\n".join(p.read_text() for p in (kit / "upstream/papadapi/config").glob("*.py"))
    for key in env_file("papad.env.example"):
        assert re.search(rf'env\.\w+\("{key}"', config), f"papad does not read {key}"


def test_papad_settings_resolve_from_the_example_values(papad_upstream, tmp_path):
    # papad_upstream: the session server, which guarantees the kit's upstream venv exists.
    kit = require_kit()
    values = {k: v.replace("REPLACE", "example-secret-1234") for k, v in
              env_file("papad.env.example").items()}
    script = """
import json, os
import configurations
configurations.setup()
from django.conf import settings as s
from django.core.management import call_command
call_command("check")
db = s.DATABASES["default"]
print(json.dumps({"allowed_hosts": s.ALLOWED_HOSTS, "debug": s.DEBUG,
    "storage": s.STORAGES["default"]["BACKEND"], "endpoint": s.AWS_S3_ENDPOINT_URL,
    "bucket": s.AWS_STORAGE_BUCKET_NAME, "querystring_auth": s.AWS_QUERYSTRING_AUTH,
    "db": [db["ENGINE"], db["HOST"], int(db["PORT"]), db["NAME"], db["USER"]],
    "page_size": s.REST_FRAMEWORK["PAGE_SIZE"]}))
"""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
           "DJANGO_SETTINGS_MODULE": "papadapi.config", "DJANGO_CONFIGURATION": "Production",
           **values}
    proc = subprocess.run([str(venv_dir("upstream") / "bin" / "python"), "-c", script],
                          cwd=kit / "upstream", env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    services = compose()["services"]
    db_env = services["papad-db"]["environment"]
    assert got["allowed_hosts"] == ["*"] and got["debug"] is False
    assert got["storage"] == "storages.backends.s3.S3Storage" and not got["querystring_auth"]
    assert got["db"] == ["django.db.backends.postgresql", "papad-db", 5432,
                         db_env["POSTGRES_DB"], db_env["POSTGRES_USER"]]
    assert got["page_size"] == 50
    # Uploads: the endpoint browsers and papad-api both use is the Pi's name and MinIO's
    # published port; papad-api resolves that name to the host.
    endpoint = urlsplit(got["endpoint"])
    assert endpoint.hostname == env_file(".env.example")["PAPAD_HOST"]
    assert f"{endpoint.port}:9000" in services["papad-minio"]["ports"]
    assert "${PAPAD_HOST:-recorder.local}:host-gateway" in services["papad-api"]["extra_hosts"]
    assert got["bucket"] == values["PAPAD_STORAGE_BUCKET_NAME"]
    # The recorder in compose talks to papad-api by its service name (allowed: any host).
    recorder_toml = (SERVICES / "recorder.compose.toml").read_text()
    assert 'url = "http://papad-api:8000"' in recorder_toml
