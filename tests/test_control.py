"""The control socket (real unix sockets) and the ``recorder ctl`` commands on top of it.

The first part tests the generic socket server with a handler of its own; `recorder ctl` is
tested against the real `recorder run` process (tests/service_harness.py).
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import threading

import pytest

from recorder.cli import ctl
from recorder.control import ControlServer, send_command
from recorder.errors import DeviceError, ServiceError
from tests.conftest import one_line_error, run_cli


class Service:
    """A stand-in for the daemon's handler: records requests, answers like the daemon would."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def __call__(self, request: dict) -> dict:
        self.requests.append(request)
        command = request["command"]
        if command == "status":
            return {"state": "recording", "recording": {"seconds": 12.5, "bookmarks": [3.0]},
                    "clock_synced": True}
        if command == "mark":
            raise DeviceError("not recording: nothing to bookmark")
        if command == "explode":
            raise RuntimeError("daemon bug")
        if command == "none":
            return None  # type: ignore[return-value]
        return {"message": f"{command} done"}


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def server(sock_path):
    service = Service()
    with ControlServer(sock_path, service) as srv:
        srv.service = service
        yield srv


def raw_exchange(path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10.0)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return json.loads(data)


def test_round_trip(server, sock_path):
    reply = send_command(sock_path, "start", source="test")
    assert reply == {"ok": True, "message": "start done"}
    assert server.service.requests == [{"command": "start", "source": "test"}]
    status = send_command(sock_path, "status")
    assert status["state"] == "recording" and status["recording"]["bookmarks"] == [3.0]


def test_socket_and_directory_permissions(server, sock_path):
    st = sock_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o750
    assert [p.name for p in sock_path.parent.iterdir()] == ["control.sock"]  # no temp left


def test_group_ownership(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name  # a group we may give files to
    path = tmp_path / "control.sock"
    with ControlServer(path, Service(), group=group):
        assert path.stat().st_gid == os.getgid()
        assert send_command(path, "stop")["message"] == "stop done"


def test_unknown_group_is_refused(tmp_path):
    with pytest.raises(ServiceError, match="no such group 'no-such-group-xyz'"):
        ControlServer(tmp_path / "c.sock", Service(), group="no-such-group-xyz")


def test_not_running_without_socket(sock_path):
    with pytest.raises(ServiceError, match=r"not running \(no control socket at"):
        send_command(sock_path, "status")


def test_not_running_with_stale_socket_then_replaced(sock_path):
    sock_path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # a crashed service leaves its socket file behind
    with pytest.raises(ServiceError, match=r"not running \(nothing listening on"):
        send_command(sock_path, "status")
    with ControlServer(sock_path, Service()):
        assert send_command(sock_path, "start")["ok"]


def test_second_server_is_refused_and_first_keeps_serving(server, sock_path):
    with pytest.raises(ServiceError, match="already listening"):
        ControlServer(sock_path, Service())
    assert send_command(sock_path, "stop")["ok"]


def test_a_non_socket_file_is_never_replaced(sock_path):
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(ServiceError, match="not a socket"):
        ControlServer(sock_path, Service())
    assert sock_path.read_text() == "precious"


def test_garbage_gets_an_error_reply_and_the_server_keeps_serving(server, sock_path):
    for payload in (b"not json\n", b"[1, 2]\n", b'{"no": "command"}\n', b"\xff\xfe\n", b"\n"):
        reply = raw_exchange(sock_path, payload)
        assert reply["ok"] is False and reply["error"].startswith("bad request")
    assert send_command(sock_path, "start")["ok"]


def test_handler_errors_become_error_replies(server, sock_path):
    with pytest.raises(ServiceError, match=r"^mark: not recording: nothing to bookmark$") as e:
        send_command(sock_path, "mark")
    assert e.value.exit_code == DeviceError.exit_code  # the handler's error keeps its code
    with pytest.raises(ServiceError, match="internal error: RuntimeError: daemon bug") as e:
        send_command(sock_path, "explode")
    assert e.value.exit_code == ServiceError.exit_code
    with pytest.raises(ServiceError, match="handler returned no dict"):
        send_command(sock_path, "none")
    assert send_command(sock_path, "status")["ok"]


def test_a_stalled_client_does_not_block_others(server, sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(sock_path))  # connects, never sends
        assert send_command(sock_path, "start")["ok"]


def test_slow_service_times_out_clearly(sock_path):
    release = threading.Event()

    def slow(request: dict) -> dict:
        release.wait(30)
        return {}

    with ControlServer(sock_path, slow):
        try:
            with pytest.raises(ServiceError, match=r"did not answer 'status' within 0\.3 s"):
                send_command(sock_path, "status", timeout=0.3)
        finally:
            release.set()


def test_close_removes_the_socket(sock_path):
    srv = ControlServer(sock_path, Service())
    srv.close()
    srv.close()
    assert not sock_path.exists()
    with pytest.raises(ServiceError, match="not running"):
        send_command(sock_path, "status")


def test_overlong_path_is_a_clear_error(tmp_path):
    with pytest.raises(ServiceError, match="path too long"):
        ControlServer(tmp_path / ("x" * 120) / "c.sock", Service())


# --- recorder ctl against the real service -----------------------------------------------------


def test_ctl_commands_and_exit_codes(file_service):
    svc = file_service()
    started = svc.ctl("start")
    assert started.returncode == 0, started.stderr
    rid = started.stdout.strip().removeprefix("recording ")
    assert len(rid) == 26
    # README: 9 = start while recording / stop while idle.
    assert "already recording" in one_line_error(svc.ctl("start"), 9)
    mark = svc.ctl("mark", "--json")
    assert mark.returncode == 0 and json.loads(mark.stdout) == {"ok": True,
                                                                "message": "bookmarked"}
    stopped = svc.ctl("stop")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped; publishing"
    (doc,) = svc.wait_published(1)
    assert doc["recording_id"] == rid and doc["trigger"] == "socket"
    svc.wait_state("idle")
    assert "not recording" in one_line_error(svc.ctl("stop"), 9)
    # A refusal without a code of its own: 8.
    assert "nothing to bookmark" in one_line_error(svc.ctl("mark"), 8)


def test_ctl_status_human_and_json(file_service):
    svc = file_service()
    reply = svc.ctl("status", "--json")
    assert reply.returncode == 0, reply.stderr
    status = json.loads(reply.stdout)
    assert status["ok"] is True and status["device_id"] == "testdev01"
    assert status["state"] == "idle" and status["led"] == "idle"
    assert status["audio"]["samplerate"] == 48000 and status["audio"]["channels"] == 1
    human = svc.ctl("status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert "state: idle" in lines and "device_id: testdev01" in lines
    assert "audio:" in lines and "  samplerate: 48000" in lines
    assert not any(line.startswith("ok:") for line in lines)


def test_ctl_without_a_running_service(config_file):
    cfg_path, _ = config_file()
    err = one_line_error(run_cli("--config", cfg_path, "ctl", "status"), 8)
    assert "recorder service is not running" in err


def test_render_status_nested_lists():
    lines = ctl.render_status(
        {"ok": True, "warnings": [], "recent": [{"name": "a.ogg", "seconds": 1.0}], "x": None}
    )
    assert lines == ["warnings: (none)", "recent:", "  - name: a.ogg", "    seconds: 1", "x: -"]
