"""The appliance's document root for tests: real nginx with the shipped server block.

`nginx_config(root, port, workdir)` takes ``services/nginx/recorder-docroot.conf`` with only its
``root`` and ``listen`` lines changed (127.0.0.1:PORT, no IPv6 listener) and wraps it in a
minimal main config (no daemon, pid, logs and temporary files in `workdir`).
`serve_docroot(root, port, workdir)` runs it until the block ends and yields the base URL.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.conftest import need, wait_until

SHIPPED_CONF = Path(__file__).resolve().parent.parent / "services/nginx/recorder-docroot.conf"


def nginx_config(root: Path, port: int, workdir: Path) -> Path:
    """The shipped server block with only its root and listen lines changed, in a minimal
    main config (no daemon, pid and logs in `workdir`)."""
    server = []
    for line in SHIPPED_CONF.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("listen "):
            if "[::]" in stripped:
                continue
            line = f"    listen 127.0.0.1:{port};"
        elif stripped.startswith("root "):
            line = f"    root {root};"
        server.append(line)
    text = f"""daemon off;
user root;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
{chr(10).join(server)}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def http_session() -> requests.Session:
    """A requests session that never goes through a proxy from the environment."""
    http = requests.Session()
    http.trust_env = False
    return http


@contextlib.contextmanager
def serve_docroot(root: Path, port: int, workdir: Path) -> Iterator[str]:
    """nginx serving `root` on 127.0.0.1:`port` (config checked with ``nginx -t`` first);
    yields ``http://127.0.0.1:PORT`` once ``/_health`` answers; stopped on exit."""
    nginx = need("nginx", "nginx-light")
    workdir.mkdir(parents=True, exist_ok=True)
    conf = nginx_config(root, port, workdir)
    args = [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        http = http_session()

        def up() -> bool:
            assert proc.poll() is None, (workdir / "error.log").read_text()[-2000:]
            try:
                return http.get(base + "/_health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 20, 0.05, "nginx")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
