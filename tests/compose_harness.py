"""The compose stack (services/compose.yaml) on real containers, for tests/test_compose.py.

- A private Docker Engine (Debian's docker.io): its own data root (kept between runs under the
  cache directory, so images and build cache survive: a changed input rebuilds only what
  changed), exec root, socket and pid file. It never touches the host's firewall or NAT
  (``--iptables=false --ip-masq=false --bridge=none``): containers reach each other on their
  compose network and the tests reach them through ports published on 127.0.0.1. Builds use
  the host's network (compose ``build: network: host``) to reach the Debian mirror and PyPI.
- Compose v2 from Debian 13's packages (services/docker/install-compose-plugin.sh) in the
  cache's own DOCKER_CONFIG; the base image debian:bookworm-slim from debootstrap
  (services/docker/make-base.sh, its tarball cached).
- A :class:`Stack` is one device (or, with ``hub=True``, the community hub: services/hub.yaml
  over compose.yaml): a compose project of its own with its data directory, its ports on
  127.0.0.1 and its device id. yggdrasil runs in the stack's network, not the host's.

Cache: RECORDER_DOCKER_CACHE (default ~/.cache/recorderpi-test/docker). papad's source:
RECORDER_PAPAD_SOURCE (default: the papad kit's upstream/, the commit compose.yaml pins).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import IN_CI, free_port, need, need_root, wait_until

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "services"
CACHE = Path(os.environ.get("RECORDER_DOCKER_CACHE")
             or Path.home() / ".cache" / "recorderpi-test" / "docker")
BASE_IMAGE = "debian:bookworm-slim"
# Every service but the firewall (its nftables table would go into the host's namespace).
# yggdrasil runs too, in the stack's network instead of the host's (TEST_OVERRIDE): its tun
# interface is made inside its own container's network namespace, never on the host.
TEST_SERVICES = ("init", "syncthing", "recorder", "web", "papad", "icecast", "station",
                 "yggdrasil")
# A hub (hub.yaml) runs no Cow Radio unless asked (COMPOSE_PROFILES=radio).
HUB_SERVICES = tuple(s for s in TEST_SERVICES if s not in ("icecast", "station"))
LONG_RUNNING = tuple(s for s in TEST_SERVICES if s != "init")
HUB_LONG_RUNNING = tuple(s for s in HUB_SERVICES if s != "init")
YGGDRASIL_PORT = 12345  # where each test device's yggdrasil listens for its peers

def _fail_or_skip(msg: str) -> None:
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)  # outside CI only: IN_CI fails above


class Engine:
    """A private dockerd; :meth:`run` runs the docker CLI against it."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        # Short paths: containerd's shim sockets live under the exec root (108-byte limit).
        self.run_dir = Path(tempfile.mkdtemp(prefix="rpd-", dir="/tmp"))
        self.sock = self.run_dir / "docker.sock"
        self.config = cache / "cli"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.sock}",
                "DOCKER_CONFIG": str(self.config), "DOCKER_BUILDKIT": "1",
                "BUILDKIT_PROGRESS": "plain"}

    def start(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        # One daemon per data root: a second test session waits for the first.
        self._lock = os.open(self.cache / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + 3600
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.cache}: another test session holds the Docker cache")
                time.sleep(2)
        log = open(self.run_dir / "dockerd.log", "wb")  # noqa: SIM115 (kept open for the daemon)
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.cache / "root"),
             "--exec-root", str(self.run_dir / "exec"), "-H", f"unix://{self.sock}",
             "--pidfile", str(self.run_dir / "dockerd.pid"),
             "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false",
             "--bridge=none",
             "--default-address-pool", "base=10.237.0.0/16,size=24",
             "--log-driver", "json-file", "--log-opt", "max-size=5m"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: self.proc.poll() is not None or self.run(
            "version", check=False, timeout=30).returncode == 0, 120, 0.5,
            "private dockerd answering", detail=self.log_tail)
        if self.proc.poll() is not None:
            pytest.fail(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
        # What an interrupted earlier session left in this data root (its own, nothing else's):
        # containers, networks and volumes go; images and build cache stay.
        left = self.run("ps", "-aq").stdout.split()
        if left:
            self.run("rm", "-f", "-v", *left, timeout=300)
        self.run("network", "prune", "-f")
        self.run("volume", "prune", "-f")

    def log_tail(self, lines: int = 30) -> str:
        path = self.run_dir / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else ""

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            cwd: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["docker", *args], env={**self.env, **(env or {})}, cwd=cwd,
                             capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {res.returncode}:\n"
                        f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Containers a failed test left are stopped with the daemon (no live-restore).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        # dockerd leaves its default network namespace bind-mounted under the exec root.
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(f"{self.run_dir}/")),
                            key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def prepare_tools() -> None:
    """docker.io, debootstrap and the compose plugin present (fail in CI, skip elsewhere)."""
    need_root("a private Docker Engine")
    need("dockerd", "docker.io")
    need("docker", "docker.io")
    need("debootstrap")
    plugins = CACHE / "cli" / "cli-plugins"
    if not (plugins / "docker-compose").exists():
        res = subprocess.run([str(SERVICES / "docker/install-compose-plugin.sh"), str(plugins)],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            _fail_or_skip(f"compose plugin not installed: {res.stderr[-1500:]}")


def papad_source() -> Path:
    explicit = os.environ.get("RECORDER_PAPAD_SOURCE")
    if explicit:
        return Path(explicit)
    from tests.papad_kit import require_kit

    return require_kit() / "upstream"


def ensure_base(engine: Engine) -> None:
    """debian:bookworm-slim in the private engine: made by debootstrap once, the tarball kept."""
    if engine.run("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    res = subprocess.run([str(SERVICES / "docker/make-base.sh")], env={
        **engine.env, "RECORDER_BASE_TARBALL": str(CACHE / "base-bookworm.tar")},
        capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        pytest.fail(f"make-base.sh exited {res.returncode}:\n{res.stderr[-3000:]}")


def build(engine: Engine, project_env: dict[str, str]) -> float:
    """Builds every image (cached layers make an unchanged build take seconds); its seconds."""
    start = time.monotonic()
    engine.run("compose", "--project-directory", str(SERVICES), "-f",
               str(SERVICES / "compose.yaml"), "build", env=project_env, timeout=3600,
               cwd=SERVICES)
    return time.monotonic() - start


OVERRIDE = """\
# tests: no sound card or GPIO on a build machine; audio from a file, GPIO mocked.
services:
  init:
    volumes:
      - {template}:/template/recorder.toml:ro
  recorder:
    devices: !reset []
    group_add: !reset []
    environment:
      GPIOZERO_PIN_FACTORY: mock
    volumes:
      - {clips}:/clips:ro
  # yggdrasil in the stack's own network, not the host's: its tun (and 200::/7 address) is made
  # in the container's network namespace, so the host's networking is never touched.
  yggdrasil:
    network_mode: !reset null
    networks: [recorderpi{ygg_lan}]
    sysctls:
      net.ipv6.conf.all.disable_ipv6: "0"
"""

# Devices of one test mesh share a network (their "LAN"): Syncthing dials its peers there, and
# yggdrasil its static peer.
LAN_OVERRIDE = """  syncthing:
    networks: [recorderpi, lan]
networks:
  lan:
    external: true
    name: {lan}
"""


@dataclass
class Stack:
    """One device: a compose project on the private engine."""

    engine: Engine
    project: str
    root: Path
    device_id: str
    index: int
    lan: str | None = None
    hub: bool = False  # services/hub.yaml over compose.yaml: records nothing, no Cow Radio
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        for name in ("http", "papad", "web", "icecast", "syncthing", "gui"):
            self.ports[name] = free_port()

    @property
    def papad_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['papad']}"

    def write_config(self, template: str, clips: Path) -> None:
        (self.root / "recorder.toml").write_text(template)
        text = OVERRIDE.format(template=self.root / "recorder.toml", clips=clips,
                               ygg_lan=", lan" if self.lan else "")
        if self.lan:
            text += LAN_OVERRIDE.format(lan=self.lan)
        (self.root / "override.yaml").write_text(text)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PAPAD_SOURCE": str(papad_source()),
            "RECORDER_DATA": str(self.data),
            "RECORDER_DEVICE_ID": self.device_id,
            "RECORDER_PUBLISH_IP": "127.0.0.1",
            "RECORDER_HTTP_PORT": str(self.ports["http"]),
            "PAPAD_PORT": str(self.ports["papad"]),
            "RECORDER_WEB_PORT": str(self.ports["web"]),
            "ICECAST_PORT": str(self.ports["icecast"]),
            "SYNCTHING_PORT": str(self.ports["syncthing"]),
            "SYNCTHING_GUI_PORT": str(self.ports["gui"]),
            "RECORDER_IPV6_SUBNET": f"fd72:7065:7269:{self.index:x}::/64",
            "ICECAST_HOSTNAME": "127.0.0.1",
        }

    @property
    def services(self) -> tuple[str, ...]:
        return HUB_SERVICES if self.hub else TEST_SERVICES

    @property
    def long_running(self) -> tuple[str, ...]:
        return HUB_LONG_RUNNING if self.hub else LONG_RUNNING

    @property
    def compose_files(self) -> list[str]:
        files = [SERVICES / "compose.yaml"] + ([SERVICES / "hub.yaml"] if self.hub else [])
        return [arg for f in [*files, self.root / "override.yaml"] for arg in ("-f", str(f))]

    def compose(self, *args: str, check: bool = True, timeout: float = 600,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.engine.run(
            "compose", "-p", self.project, "--project-directory", str(SERVICES),
            *self.compose_files, *args, check=check, timeout=timeout, cwd=SERVICES,
            env=self.env, input=input)

    def up(self, *services: str) -> None:
        res = self.compose("up", "-d", "--no-build", *(services or self.services),
                           timeout=900, check=False)
        if res.returncode != 0:
            pytest.fail(f"{self.project}: up exited {res.returncode}: "
                        f"{res.stderr.strip().splitlines()[-1:]}\n{self.states()}\n"
                        f"{self.logs(tail=60)}")

    def states(self) -> dict[str, tuple[str, str]]:
        """service -> (state, health) of this project's containers."""
        out = self.compose("ps", "-a", "--format", "json", check=False).stdout.strip()
        rows: list[dict] = []
        if out.startswith("["):
            rows = json.loads(out)
        else:
            rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {r["Service"]: (r.get("State", ""), r.get("Health", "")) for r in rows}

    def wait_healthy(self, services: tuple[str, ...] | None = None,
                     timeout: float = 600) -> float:
        """Waits until every service (default: every long-running one of this stack) is running
        and healthy; returns the seconds it took."""
        start = time.monotonic()
        services = services or self.long_running

        def healthy() -> bool:
            states = self.states()
            for name in services:
                state, health = states.get(name, ("missing", ""))
                if state != "running" or health != "healthy":
                    return False
            return True

        wait_until(healthy, timeout, 2.0, f"{self.project} healthy",
                   detail=lambda: f"{self.states()}\n{self.logs()}")
        return time.monotonic() - start

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), *services,
                            check=False, timeout=120).stdout[-8000:]

    def exec(self, service: str, *cmd: str, check: bool = True, user: str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        args = ["exec", "-T"] + (["--user", user] if user else []) + [service, *cmd]
        return self.compose(*args, check=check, timeout=timeout)

    @property
    def syncthing_address(self) -> str:
        """Where the other devices of the test LAN dial this device's Syncthing."""
        return f"tcp://{self.project}-syncthing-1:22000"

    def secret(self, name: str) -> str:
        return self.exec("recorder", "cat", f"/run/secrets/{name}").stdout.strip()

    def down(self, volumes: bool = False) -> None:
        self.compose("down", "--timeout", "30", *(["-v"] if volumes else []),
                     check=False, timeout=600)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    prepare_tools()
    eng = Engine(CACHE)
    try:
        eng.start()
        yield eng
    finally:
        eng.stop()
