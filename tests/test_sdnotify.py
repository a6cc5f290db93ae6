"""sd_notify against a fake NOTIFY_SOCKET: a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from recorder import sdnotify
from recorder.sdnotify import Notifier


@pytest.fixture
def fake_systemd(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10.0)
        yield str(path), sock


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(fake_systemd):
    path, sock = fake_systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready()
    assert recv(sock) == "READY=1"
    assert n.status("armed, 3.0 s pre-roll\nsecond line")
    assert recv(sock) == "STATUS=armed, 3.0 s pre-roll second line"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"
    assert n.notify("READY=1", "STATUS=ok")
    assert recv(sock) == "READY=1\nSTATUS=ok"
    n.close()


def test_abstract_socket_name():
    name = f"recorder-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10.0)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert recv(sock) == "WATCHDOG=1"


def test_module_functions_follow_the_environment(fake_systemd, monkeypatch):
    path, sock = fake_systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.ready()
    assert recv(sock) == "READY=1"
    assert sdnotify.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert sdnotify.status("recording")
    assert recv(sock) == "STATUS=recording"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.ready() is False


def test_no_systemd_means_no_ops():
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.status("x") is False
    assert n.watchdog_interval() is None


def test_vanished_socket_does_not_raise(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
    assert n.watchdog() is False
    assert sum("sd_notify" in r.message for r in caplog.records) == 1  # warned once


def test_non_unix_address_is_ignored():
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 20.0),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert Notifier(env).watchdog_interval() == expected


def test_module_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 4.0
