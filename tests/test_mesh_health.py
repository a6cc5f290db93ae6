"""Mesh health in a real ``recorder run``: a silently cut link is seen, shown and healed.

Two nodes on one LAN (tests/netns.py: real yggdrasil, Syncthing on the yggdrasil addresses),
paired with ``recorder mesh add-peer``. The service runs inside a's namespace (its pings must
leave from a), on a looping file source, with its control socket in a's directory. b's link is
then cut (``ip link set lan0 down``: no RST, no ICMP error, processes keep running). The LED
state is read from ``recorder ctl status --json``, the same reply the appliance's LED follows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clips import tone, write_wav
from tests.conftest import need, need_root, run_cli, terminate, wait_until
from tests.netns import NetLab, Node

DEADLINE = 90.0


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root("network namespaces need root")


def _toml(node: Node, path: Path, **extra: dict) -> Path:
    inst = node.syncthing
    assert inst is not None
    sections: dict[str, dict] = {
        "device": {"id": inst.recorder_id},
        "storage": {"data_dir": str(inst.root / "data"), "sync_root": str(inst.sync_root),
                    "reserve_mb": 0},
        "syncthing": {"url": inst.url, "api_key_file": str(inst.key_file),
                      "watcher_delay": 60, "rescan_interval": 3600},
        "yggdrasil": {"admin_endpoint": node.ygg.endpoint},
        **extra,
    }
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                    for k, v in values.items())
                            for name, values in sections.items()))
    return path


def _cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    res = run_cli("--config", str(_toml(node, node.dir / "cli.toml")), *args, timeout=90)
    assert "Traceback" not in res.stderr, res.stderr
    return res


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    for tool in ("yggdrasil", "socat", "syncthing"):
        need(tool)
    with NetLab(tmp_path_factory.mktemp("health")) as lab:
        lan = lab.lan("lan")
        a, b = lab.node("a", lan), lab.node("b", lan)
        for node in (a, b):
            node.start_yggdrasil()
            node.start_syncthing()
            # What systemd sets on the appliance: every group may open ICMP echo sockets.
            node.exec("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647")
        for me, other in ((a, b), (b, a)):
            res = _cli(me, "mesh", "add-peer", other.syncthing.device_id, "--name",
                       other.short, "--address", other.sync_address, "--peer-id",
                       other.syncthing.recorder_id)
            assert res.returncode == 0, res.stderr
        yield a, b


def _status(sock: Path) -> dict:
    from recorder.control import send_command
    from recorder.errors import ServiceError

    try:
        return send_command(sock, "status", timeout=15)
    except ServiceError:
        return {}


def test_cut_link_shows_in_status_doctor_and_led(pair, tmp_path):
    a, b = pair
    clip = write_wav(tmp_path / "clip.wav", tone(2.0))
    sock = a.dir / "control.sock"
    cfg = _toml(a, tmp_path / "service.toml",
                audio={"source": f"file:{clip}", "preroll": 0.0},
                service={"control_socket": str(sock)},
                mesh={"probe_interval": 1.0, "degraded_after": 1.0})
    log = tmp_path / "service.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*a.prefix, sys.executable, "-m", "recorder", "--config",
                                 str(cfg), "run"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    try:
        def state(led: str) -> dict | None:
            assert proc.poll() is None, log.read_text()[-3000:]
            status = _status(sock)
            return status if status.get("led") == led else None

        healthy = wait_until(lambda: state("idle"), DEADLINE, 0.2, "a armed, mesh healthy")
        assert healthy["workers"]["mesh"]["degraded"] is False
        wait_until(lambda: a.syncthing.connected_to(b.syncthing), DEADLINE, 0.2, "a-b link")
        b.cut()
        try:
            down = wait_until(lambda: state("mesh_degraded"), DEADLINE, 0.2,
                              "the LED showing the cut link")
            mesh = down["workers"]["mesh"]
            assert any(p.startswith("peer dev-b ") for p in mesh["problems"]), mesh
            assert any(w.startswith("mesh: peer dev-b ") for w in down["warnings"])
            peer = next(p for p in mesh["peers"] if p["id"] == "dev-b")
            assert peer["connected"] is False
            text = run_cli("--config", str(cfg), "ctl", "status", timeout=30)
            assert "mesh: peer dev-b" in text.stdout and "led: mesh_degraded" in text.stdout

            def doctor_says() -> dict | None:
                doctor = run_cli("--config", str(cfg), "doctor", "--json", timeout=60)
                check = next(c for c in json.loads(doctor.stdout)["checks"]
                             if c["name"] == "mesh")
                return check if not check["ok"] else None

            check = wait_until(doctor_says, DEADLINE, 0.5, "doctor reporting the cut link")
            assert "peer dev-b disconnected for" in check["detail"], check
            assert "stopped answering" in log.read_text()
        finally:
            b.restore()
        wait_until(lambda: state("idle"), DEADLINE, 0.2, "the LED back to idle after healing")
        wait_until(lambda: a.syncthing.connected_to(b.syncthing), DEADLINE, 0.2, "reconnected")
    finally:
        terminate(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
