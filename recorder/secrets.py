"""Secrets (tokens, passwords) read from files named in config.

A secret file must exist, belong to nobody else's eyes (no group or world permission bits) and
hold a non-empty value. Refusing a loose file at start-up is deliberate: a token readable by
every user on a shared Pi is a leaked token. Values are returned, never logged or echoed.
"""

from __future__ import annotations

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
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose:
        raise ConfigError(
            f"{key}: secret file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); fix with: chmod 600 {path}"
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
