"""Helpers shared by the papad tests: secret files, configs pointing at papad, draining."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recorder.config import Config
from recorder.db import Database
from recorder.papad.client import make_client
from recorder.papad.outbox import Outbox, OutboxWorker

TOKEN = "tok-3f9c2e81d04b4a7fa2f1secret"
PASSWORD = "pw-horse-battery-staple-secret"


def write_secret(path: Path, value: str, mode: int = 0o600) -> Path:
    """Write a secret file with `mode` (and a trailing newline, as editors do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    path.chmod(mode)
    return path


def current_config(cfg_factory: Any, tmp_path: Path, url: str, **papad: Any) -> Config:
    """A config for current papad with token auth (token file written, mode 600)."""
    token_file = write_secret(tmp_path / "papad.token", TOKEN)
    values = {"api": "papad", "url": url, "auth": "token", "token_file": str(token_file),
              "group": 1, "timeout": 5.0}
    values.update(papad)
    return cfg_factory(papad=values)


def real_config(cfg_factory: Any, tmp_path: Path, server: Any, url: str | None = None,
                **papad: Any) -> Config:
    """A config for a real papad from the kit (`tests.papad_kit.PapadServer`); `url`
    overrides its address (a `tests.papad_proxy.FaultProxy` in front of it)."""
    section = server.papad_section(tmp_path, **papad)
    if url is not None:
        section["url"] = url
    return cfg_factory(papad=section)


def legacy_config(cfg_factory: Any, url: str, **papad: Any) -> Config:
    """A config for papad-api with a fixed document-root host."""
    values = {"api": "papad-api", "url": url, "host": "papad.local", "timeout": 5.0,
              "media_base_url": "http://{host}/{device_id}/"}
    values.update(papad)
    return cfg_factory(papad=values)


@contextlib.contextmanager
def client_and_outbox(cfg: Config) -> Iterator[tuple[Any, Outbox]]:
    """The papad client and outbox for `cfg`, closed afterwards."""
    client = make_client(cfg.papad)
    outbox = Outbox(Database(cfg.db_path))
    try:
        yield client, outbox
    finally:
        outbox.database.close()
        client.close()


def fast_worker(outbox: Outbox, client: Any, concurrency: int = 1, **kw: Any) -> OutboxWorker:
    """A worker with millisecond backoff, so tests wait for behaviour, not for clocks."""
    kw.setdefault("base_delay", 0.02)
    kw.setdefault("max_delay", 0.2)
    kw.setdefault("quick_retry_pause", 0.05)
    return OutboxWorker(outbox, client, concurrency, **kw)


def drain(worker: OutboxWorker, outbox: Outbox, delivered: int, timeout: float = 60.0) -> int:
    """Call run_once until `delivered` entries are delivered; return the passes it took."""
    deadline = time.monotonic() + timeout
    passes = 0
    while outbox.counts()["delivered"] < delivered:
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained in {timeout} s: {outbox.counts()}, "
                                 f"{[e.last_error for e in outbox.entries()][:3]}")
        worker.run_once()
        passes += 1
        due_in = outbox.next_due_in()
        if due_in:
            time.sleep(min(due_in, 0.25))
    return passes
