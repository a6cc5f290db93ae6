"""The device id: the name of this Pi's own folder in the Syncthing tree.

By default it is the MAC address of the first real network interface (lowercase hex, no
separators, e.g. ``dca632a1b2c3``), so it survives reinstalls and needs no setup. The field also
uses readable names such as ``audio-girish-radio``; any configured id must be a safe single path
component.
"""

from __future__ import annotations

import re
from pathlib import Path

from recorder.errors import ConfigError

_SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Interfaces that are not a device's own hardware: loopback, bridges, tunnels, containers, VPNs.
_VIRTUAL_PREFIXES = ("lo", "docker", "br-", "veth", "virbr", "tun", "tap", "wg", "ygg", "dummy")


def validate_device_id(value: str, key: str = "device.id") -> str:
    """Return `value` if it is a safe, single, lowercase path component; raise ConfigError."""
    if not _SAFE_ID.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{key}: must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a "
            f"letter or digit; got {value!r}"
        )
    return value


def is_device_id(value: str) -> bool:
    """True if `value` is a safe device id (see `validate_device_id`)."""
    return bool(_SAFE_ID.match(value)) and value not in (".", "..")


def mac_device_id(sys_class_net: Path = Path("/sys/class/net")) -> str | None:
    """MAC of the first real interface (sorted by name, wired before wireless), or None."""
    candidates = []
    try:
        entries = sorted(sys_class_net.iterdir())
    except OSError:
        return None
    for iface in entries:
        if iface.name.startswith(_VIRTUAL_PREFIXES):
            continue
        # Real hardware has a "device" link; virtual interfaces do not.
        if not (iface / "device").exists():
            continue
        try:
            mac = (iface / "address").read_text().strip().lower()
        except OSError:
            continue
        if not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac) or mac == "00:00:00:00:00:00":
            continue
        wireless = (iface / "wireless").exists()
        candidates.append((wireless, iface.name, mac.replace(":", "")))
    return min(candidates)[2] if candidates else None


def resolve_device_id(configured: str) -> str:
    """The configured id if set (validated), else the MAC id, else the host's node id."""
    if configured:
        return validate_device_id(configured)
    # uuid.getnode() falls back to a random number when no MAC is readable: good enough for a
    # laptop demo, but a real appliance always has an interface with a device link.
    import uuid  # only here: it imports `platform`, which every command would pay for

    return mac_device_id() or f"{uuid.getnode():012x}"
