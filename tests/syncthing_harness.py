"""Real Syncthing instances on 127.0.0.1 for tests (recipe: /work/shared/syncthing.md).

`SyncthingCluster(n, base)` starts `n` syncthing 1.19 daemons side by side, each with a fresh home
under `base`, its own free GUI and sync ports, a random API key, discovery, relays, NAT and usage
reporting off, and ``reconnectionIntervalS`` 5 (the lowest value Syncthing 1.19 keeps: it raises
2 to 5; the default 60 makes a second drop wait up to a minute). Use it as a context manager (or
the `syncthing_cluster` fixture factory): every process is stopped on exit, even when a test fails.

Each `Instance` exposes its Syncthing device id, a REST client (`recorder.mesh.net.syncthing`), a
`recorder` config for it (`cfg`, with its own sync root, device id and API key file) and
`kill()`, `restart()`, `pause()`, `resume()`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from recorder.config import Config, parse_config
from recorder.mesh.net.syncthing import SyncthingClient
from tests.conftest import free_port, need, wait_until

START_TIMEOUT = 30.0  # generous: other engineers load the same 2-core machine




def _set(parent: ET.Element, tag: str, value: str) -> None:
    node = parent.find(tag)
    if node is None:
        node = ET.SubElement(parent, tag)
    node.text = value


class Instance:
    """One syncthing daemon with its own home, ports, key and recorder config."""

    def __init__(self, binary: str, base: Path, name: str, recorder_id: str, *,
                 prefix: Sequence[str] = (), listen: str | None = None) -> None:
        """`prefix` runs the daemon through a wrapper (``ip netns exec NS``: tests.netns);
        `listen` replaces the default sync address ``tcp://127.0.0.1:<free port>``."""
        self.binary = binary
        self.prefix = list(prefix)
        self.name = name
        self.recorder_id = recorder_id
        self.root = base / name
        self.home = self.root / "st-home"
        self.sync_root = self.root / "sync"
        self.api_key = secrets.token_urlsafe(24)
        self.gui_port = free_port()
        self.sync_port = free_port()
        self.listen = listen or f"tcp://127.0.0.1:{self.sync_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._generate()
        self.key_file = self.root / "syncthing.key"
        self.key_file.write_text(self.api_key + "\n")
        self.key_file.chmod(0o600)
        self.client = SyncthingClient(self.url, self.api_key, timeout=10.0)
        self.device_id = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gui_port}"

    @property
    def address(self) -> str:
        return self.listen

    def config(self, **syncthing: Any) -> Config:
        """A recorder Config for this instance; keyword args override `[syncthing]` keys."""
        section = {
            "url": self.url,
            "api_key_file": str(self.key_file),
            "watcher_delay": 60,
            "rescan_interval": 3600,
        }
        section.update(syncthing)
        return parse_config(
            {
                "device": {"id": self.recorder_id},
                "storage": {"data_dir": str(self.root / "data"), "sync_root": str(self.sync_root),
                            "reserve_mb": 0},
                "syncthing": section,
            }
        )

    @property
    def cfg(self) -> Config:
        return self.config()

    def _generate(self) -> None:
        self.root.mkdir(parents=True)
        subprocess.run(
            [self.binary, "generate", f"--home={self.home}", "--no-default-folder",
             "--skip-port-probing"],
            check=True, capture_output=True, timeout=60,
        )
        # Edit config.xml before the first start: afterwards syncthing owns it.
        path = self.home / "config.xml"
        tree = ET.parse(path)
        gui = tree.getroot().find("gui")
        assert gui is not None
        _set(gui, "address", f"127.0.0.1:{self.gui_port}")
        _set(gui, "apikey", self.api_key)
        options = tree.getroot().find("options")
        assert options is not None
        for tag, value in {
            "listenAddress": self.listen,
            "globalAnnounceEnabled": "false",
            "localAnnounceEnabled": "false",
            "relaysEnabled": "false",
            "natEnabled": "false",
            "urAccepted": "-1",
            "crashReportingEnabled": "false",
            "startBrowser": "false",
            "autoUpgradeIntervalH": "0",
            "reconnectionIntervalS": "5",  # 1.19 raises anything lower to 5
        }.items():
            _set(options, tag, value)
        tree.write(path)

    def start(self) -> None:
        """Start the daemon (no monitor process, no hashing benchmark) and wait for REST."""
        env = dict(os.environ, STNODEFAULTFOLDER="1", STNORESTART="1", STMONITORED="yes",
                   STHASHING="minio")
        log = open(self.root / "syncthing.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            self.proc = subprocess.Popen(
                [*self.prefix, self.binary, "serve", f"--home={self.home}", "--no-browser",
                 "--no-restart", "--no-upgrade"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"syncthing {self.name} exited with {self.proc.returncode}; "
                            f"see {self.root / 'syncthing.log'}")
            return self.client.ping_quietly()

        wait_until(ready, START_TIMEOUT, 0.05, f"syncthing {self.name} REST ping")
        self.device_id = self.client.device_id()

    def kill(self) -> None:
        """SIGKILL the daemon (a crash or power loss) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """Shut down cleanly (REST shutdown), falling back to SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.client.shutdown()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.kill()

    def restart(self) -> None:
        """Kill and start again with the same home (same device id, config and database)."""
        self.kill()
        self.start()

    def pause(self, device_id: str | None = None) -> None:
        """Pause all connections (or the one to `device_id`)."""
        self.client.pause(device_id)

    def resume(self, device_id: str | None = None) -> None:
        """Resume, and return once config.xml says so too: Syncthing 1.19 saves the resumed
        state seconds after answering (measured: about 5 s), so a kill right after a resume
        would bring the daemon back paused, and whatever test ran next would inherit that."""
        self.client.resume(device_id)

        def saved() -> bool:
            try:
                root = ET.parse(self.home / "config.xml").getroot()
            except ET.ParseError:  # caught mid-write
                return False
            return not any(d.findtext("paused") == "true" for d in root.iter("device")
                           if device_id in (None, d.get("id")) and d.find("paused") is not None)

        wait_until(saved, 30, 0.1, f"syncthing {self.name} saving the resume")

    def folder_path(self, recorder_id: str) -> Path:
        """Where this instance keeps the folder owned by `recorder_id`."""
        return self.sync_root / recorder_id

    def wait_for_file(self, relpath: Path | str, owner: str, timeout: float = 30.0) -> Path:
        """Wait until `owner`'s folder on this instance holds `relpath`; return its path."""
        path = self.folder_path(owner) / relpath
        wait_until(path.is_file, timeout, 0.02, f"{path} on {self.name}")
        return path

    def connected_to(self, other: Instance) -> bool:
        conns = self.client.connections().get("connections", {})
        return bool(conns.get(other.device_id, {}).get("connected"))


class SyncthingCluster:
    """N instances named a, b, c... with recorder device ids ``dev-a``, ``dev-b``, ..."""

    def __init__(self, n: int, base: Path) -> None:
        binary = need("syncthing")
        self.instances: list[Instance] = []
        names = "abcdefgh"[:n]
        for name in names:
            self.instances.append(Instance(binary, base, name, f"dev-{name}"))

    def __enter__(self) -> SyncthingCluster:
        try:
            for inst in self.instances:
                inst.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __getitem__(self, index: int) -> Instance:
        return self.instances[index]

    def close(self) -> None:
        for inst in self.instances:
            with contextlib.suppress(Exception):
                inst.stop()

    def pair_all(self) -> None:
        """Pair every instance with every other the old way (`Provisioner.add_peer`, as ``recorder
        mesh add-peer`` does), then wait until all are connected."""
        from recorder.mesh.membership import provision

        for me in self.instances:
            for peer in self.instances:
                if peer is not me:
                    provision.Provisioner(me.cfg.layout, me.client, me.cfg.syncthing).add_peer(
                        peer.device_id, peer.name, peer.address,
                        peer_recorder_id=peer.recorder_id)
        self.wait_connected()

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until every pair of instances is connected (after provisioning a full mesh)."""
        for a in self.instances:
            for b in self.instances:
                if a is not b:
                    wait_until(lambda a=a, b=b: a.connected_to(b), timeout, 0.1,
                               f"{a.name} connected to {b.name}")


@pytest.fixture
def syncthing_cluster(tmp_path: Path) -> Iterator[Callable[[int], SyncthingCluster]]:
    """Factory fixture: ``cluster = syncthing_cluster(3)``; all instances stopped afterwards."""
    made: list[SyncthingCluster] = []

    def make(n: int) -> SyncthingCluster:
        cluster = SyncthingCluster(n, tmp_path / f"st{len(made)}")
        made.append(cluster)
        return cluster.__enter__()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
