"""`setup.sh` waits for another apt/dpkg process instead of failing at once.

apt runs for real, against a private state directory (``APT_CONFIG``) with no sources, so the
test needs no mirror and never touches the machine's package state; the test holds apt's lists
lock the way a concurrent ``apt-get update`` (or unattended-upgrades) would.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import IN_CI, need

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_apt(tmp_path):
    need("apt-get", "apt")
    if os.geteuid() != 0:
        msg = "apt-get update needs root (setup.sh uses sudo): run the tests as root"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    state, cache = tmp_path / "state", tmp_path / "cache"
    for d in (state / "lists" / "partial", cache / "archives" / "partial",
              tmp_path / "sources.list.d"):
        d.mkdir(parents=True)
    (tmp_path / "status").write_text("")
    (tmp_path / "sources.list").write_text("")
    conf = tmp_path / "apt.conf"
    conf.write_text(
        f'Dir::State "{state}";\nDir::State::status "{tmp_path / "status"}";\n'
        f'Dir::Cache "{cache}";\nDir::Etc::SourceList "{tmp_path / "sources.list"}";\n'
        f'Dir::Etc::SourceParts "{tmp_path / "sources.list.d"}";\n'
    )
    return {**os.environ, "APT_CONFIG": str(conf)}, state / "lists" / "lock"


def hold_lock(path: Path, released: threading.Event) -> threading.Event:
    """Hold apt's (fcntl) lock on `path` until `released` is set; returns 'taken'."""
    taken = threading.Event()

    def run() -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            taken.set()
            released.wait(60)
        finally:
            os.close(fd)

    threading.Thread(target=run, daemon=True).start()
    assert taken.wait(10)
    return taken


def setup_sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source ./setup.sh && {command}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_apt_waits_for_the_lock_instead_of_failing(private_apt):
    env, lock = private_apt
    released = threading.Event()
    hold_lock(lock, released)
    # Plain apt-get gives up at once on the lists lock: this is what setup.sh must not do.
    plain = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=60", "update", "-q"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "Could not get lock" in plain.stderr
    waiting = subprocess.Popen(["bash", "-c", "source ./setup.sh && apt_get update -q"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # It is still waiting (not failed) while the lock is held; then it goes ahead.
        line = waiting.stderr.readline()
        assert "waiting for another apt/dpkg process" in line, line
        assert waiting.poll() is None
        released.set()
        _out, err = waiting.communicate(timeout=120)
    finally:
        released.set()
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err


def test_apt_gives_up_after_the_wait_limit(private_apt):
    env, lock = private_apt
    released = threading.Event()
    hold_lock(lock, released)
    try:
        res = setup_sh("APT_LOCK_WAIT=2 apt_get update -q", env)
    finally:
        released.set()
    assert res.returncode != 0
    assert "Could not get lock" in res.stderr
