"""Secrets (tokens, passwords) read from files named in config.

A secret file must exist, be readable by nobody but the service and hold a non-empty value:

- no permission bit for others (world), ever;
- no group write or execute bit;
- group read (0640, 0440) only when the file's group is the service's own group (its effective
  gid: ``recorder`` on the appliance, where first boot writes the Syncthing key root:recorder
  0640), so exactly the service's group can read it; owner-only (0600, 0400) always.

Refusing a loose file at start-up is deliberate: a token readable by every user on a shared Pi
is a leaked token. Values are returned, never logged or echoed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recorder.errors import ConfigError


def read_secret(path: Path | None, key: str) -> str:
    """Return the stripped content of the secret file `path` configured under `key`.

    Raises ConfigError (naming `key` and the file, never the value) when the file is not
    configured, missing, unreadable, readable by group or others, or empty.
    """
    if path is None:
        raise ConfigError(f"{key}: no secret file configured")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{key}: secret file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot stat secret file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{key}: secret file {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    own_group = info.st_gid == os.getegid()
    if mode & 0o037 or (mode & 0o040 and not own_group):
        who = "others" if mode & 0o007 else "its group" if mode & 0o030 else (
            f"group {info.st_gid}, not the service's group {os.getegid()}")
        raise ConfigError(
            f"{key}: secret file {path} is readable or writable by {who} "
            f"(mode {mode:04o}); fix with: chmod 600 {path} (0640 only with the service's "
            "group)"
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: secret file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{key}: secret file {path} is empty")
    return value
