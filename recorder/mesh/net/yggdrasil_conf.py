"""yggdrasil's own config file, kept in step with the recorder's ``[yggdrasil]`` section.

``recorder mesh yggdrasil-config --write /etc/yggdrasil/yggdrasil.conf`` runs (as root) before
every start of yggdrasil (a systemd drop-in on the native install and the image; the compose
service's command). The first time, the file is made by ``yggdrasil -genconf -json``: the
node's keys, hence its 200::/7 address, are generated on the device itself, once, and kept.
Every time, the settings the appliance owns are applied:

- ``AdminListen``: ``yggdrasil.admin_endpoint`` (its directory is created if missing, the cause
  of "Admin socket failed to listen" crash loops);
- ``Peers`` / ``Listen``: ``yggdrasil.peers`` / ``yggdrasil.listen`` (other sites);
- ``MulticastInterfaces``: LAN discovery (beacon and listen) on interfaces matching
  ``yggdrasil.multicast``, none when it is empty;
- ``IfName``: ``yggdrasil.interface``; ``NodeInfo``: ``{"name": "recorder-<device id>"}``;
- ``AllowedPublicKeys``: ``yggdrasil.allowed_peers`` (empty: any node may peer directly).

Everything else in the file (keys, MTU, ...) is kept as it is. An existing
file in yggdrasil's HJSON is read through ``yggdrasil -normaliseconf -json``; the result is
written as JSON (which yggdrasil reads too), atomically, mode 0640, group ``yggdrasil`` when that
group exists, and only when something changed.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from recorder.errors import RecorderError

if TYPE_CHECKING:  # `recorder --help` reads CONFIG_FILE from here: it must stay cheap
    from recorder.config import YggdrasilConfig

CONFIG_FILE = Path("/etc/yggdrasil/yggdrasil.conf")
TIMEOUT = 30.0


class YggdrasilConfigError(RecorderError):
    """yggdrasil's config cannot be generated, read or written."""


def _yggdrasil(*args: str) -> dict[str, Any]:
    import subprocess

    binary = shutil.which("yggdrasil")
    if binary is None:
        raise YggdrasilConfigError("yggdrasil not found (apt-get install yggdrasil)")
    try:
        res = subprocess.run([binary, *args], capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise YggdrasilConfigError(f"yggdrasil {' '.join(args)}: no result (timeout)") from None
    if res.returncode != 0:
        detail = " ".join((res.stderr or res.stdout).split())[:200]
        raise YggdrasilConfigError(f"yggdrasil {' '.join(args)} failed: {detail}")
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise YggdrasilConfigError(f"yggdrasil {' '.join(args)}: output is not JSON") from None
    if not isinstance(doc, dict):
        raise YggdrasilConfigError(f"yggdrasil {' '.join(args)}: output is not a JSON object")
    return doc


def wanted_settings(cfg: YggdrasilConfig, device_id: str) -> dict[str, Any]:
    """The yggdrasil config keys the appliance owns, from the ``[yggdrasil]`` section."""
    multicast = [{"Regex": cfg.multicast, "Beacon": True, "Listen": True, "Port": 0,
                  "Priority": 0}] if cfg.multicast else []
    return {
        "AdminListen": cfg.admin_endpoint or "none",
        "Peers": list(cfg.peers),
        "Listen": list(cfg.listen),
        "MulticastInterfaces": multicast,
        "IfName": cfg.interface,
        "NodeInfo": {"name": f"recorder-{device_id}"},
        "AllowedPublicKeys": list(cfg.allowed_peers),
    }


def apply(cfg: YggdrasilConfig, device_id: str, path: Path = CONFIG_FILE) -> list[str]:
    """Create `path` (new keys) if missing, then apply the appliance's settings to it.

    Returns what changed (``["generated keys", "Peers", ...]``; empty when nothing did).
    """
    from recorder.atomic import atomic_write_text

    changes: list[str] = []
    if path.is_file() and path.stat().st_size > 0:
        current = _yggdrasil("-useconffile", str(path), "-normaliseconf", "-json")
        original = json.dumps(current, sort_keys=True)
    else:
        current = _yggdrasil("-genconf", "-json")
        original = ""
        changes.append("generated keys")
    wanted = wanted_settings(cfg, device_id)
    changes += [k for k, v in wanted.items() if current.get(k) != v]
    current.update(wanted)
    _ensure_socket_dir(cfg.admin_endpoint)
    if original and json.dumps(current, sort_keys=True) == original and _mode_ok(path):
        return []
    try:
        atomic_write_text(path, json.dumps(current, indent=2) + "\n")
        _restrict(path)
    except OSError as exc:
        raise YggdrasilConfigError(
            f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    return changes or ["permissions"]


def _group() -> int | None:
    try:
        return grp.getgrnam("yggdrasil").gr_gid
    except KeyError:
        return None


def _mode_ok(path: Path) -> bool:
    st = path.stat()
    gid = _group()
    return st.st_mode & 0o7777 == 0o640 and (gid is None or os.geteuid() != 0
                                             or st.st_gid == gid)


def _restrict(path: Path) -> None:
    """The private key inside: owner and group yggdrasil (its daemon's user) read only."""
    gid = _group()
    if gid is not None and os.geteuid() == 0:
        os.chown(path, 0, gid)
    path.chmod(0o640)


def _ensure_socket_dir(endpoint: str) -> None:
    if not endpoint.startswith("unix://"):
        return
    parts = urlsplit(endpoint)
    directory = Path(parts.netloc + parts.path).parent
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise YggdrasilConfigError(f"cannot create the admin socket directory {directory}: "
                                   f"{exc.strerror or type(exc).__name__}") from None
