"""Time without internet: chrony sources for the mesh peers' yggdrasil addresses.

Every device runs chrony with ``services/chrony/recorderpi-mesh.conf``: it serves time to
``200::/7`` (``allow``), and falls back to orphan mode (``local stratum 10 orphan``) when no
better source is reachable, so an offline mesh still agrees on one clock. Each device uses its
mesh peers as sources; chrony prefers the lowest stratum, so a device with internet (pool
servers, stratum 2-3), GPS or an RTC wins over the orphans automatically.

The peers are the Syncthing devices of the mesh whose configured address lies in ``200::/7``
(``tcp://[200:...]:22000``, as ``recorder mesh add-peer`` stores it). `sources_text` renders
one ``server ADDR iburst`` line per peer; `write_sources` replaces chrony's sources file
atomically, only when its content changes (``recorder mesh time-sources --write``, run as root
by ``recorder-mesh-time.timer``, followed by ``chronyc reload sources``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from recorder.errors import RecorderError

SOURCES_FILE = Path("/etc/chrony/sources.d/recorderpi-mesh.sources")
HEADER = ("# Written by `recorder mesh time-sources --write`: the mesh peers' yggdrasil "
          "addresses.\n# Do not edit: rewritten from the Syncthing peers.\n")


def peer_yggdrasil_addresses(device_addresses: Iterable[Iterable[str]]) -> list[str]:
    """The sorted, distinct yggdrasil addresses among peers' Syncthing addresses."""
    from recorder.mesh.net.yggdrasil import address_of  # here: `recorder --help` reads SOURCES_FILE

    found = {a for addresses in device_addresses for uri in addresses
             if (a := address_of(uri)) is not None}
    return sorted(found)


def sources_text(addresses: Iterable[str]) -> str:
    """chrony ``sourcedir`` content: one ``server ADDR iburst`` line per address."""
    lines = [f"server {a} iburst\n" for a in sorted(set(addresses))]
    return HEADER + "".join(lines)


def write_sources(path: Path, addresses: Iterable[str]) -> bool:
    """Atomically make `path` hold the sources for `addresses`; True when it changed.

    Raises RecorderError (one line) when the file cannot be read or written.
    """
    from recorder.atomic import atomic_write_text

    text = sources_text(addresses)
    try:
        try:
            if path.read_text(encoding="utf-8") == text:
                return False
        except FileNotFoundError:
            pass
        atomic_write_text(path, text)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise RecorderError(f"cannot write chrony sources {path}: {reason}") from None
    return True
