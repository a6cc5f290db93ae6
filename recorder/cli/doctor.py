"""`recorder doctor`: checks that need no running service.

This is the command's body, a CLI edge like the rest of `recorder.cli`: it reads every section
and builds its own clients, so it takes the whole `Config` (`recorder.cli.service` registers the
command).

Each check is a dict ``{"name", "ok", "detail", "severity"}``; severity "warning" marks what
degrades the appliance without stopping it (an unsynchronised clock, papad unreachable).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from recorder import clock
from recorder.config import Config
from recorder.errors import RecorderError
from recorder.storage import MIN_FREE_BYTES, Reserve, ensure_dir, free_bytes, same_filesystem

Check = dict[str, Any]


def _check(name: str, fn: Callable[[], str], severity: str = "error") -> Check:
    try:
        return {"name": name, "ok": True, "detail": fn(), "severity": severity}
    except (RecorderError, OSError) as exc:
        return {"name": name, "ok": False, "detail": str(exc), "severity": severity}


def _config(cfg: Config) -> str:
    where = cfg.source_path or "built-in defaults"
    return f"valid ({where}); device id {cfg.device.id}"


def _device(cfg: Config) -> str:
    spec = cfg.audio.source
    if spec.none:
        return 'none: a hub (audio.source = "none"), records nothing'
    if spec.file is not None:
        from recorder.sources.file import open_sound_file

        with open_sound_file(spec.file) as f:
            return f"file source {spec.file} ({f.samplerate} Hz, {f.channels} ch)"
    from recorder.sources import configured_format
    from recorder.sources.portaudio import PortAudioSource

    fmt = configured_format(cfg.audio)
    src = PortAudioSource(spec.device, fmt, blocksize=cfg.audio.blocksize)
    return f"{src.name!r} records {fmt}"


def _writable(cfg: Config) -> str:
    folder = cfg.layout.device_folder
    ensure_dir(folder, "storage.sync_root")
    ensure_dir(cfg.storage.staging_dir, "storage.staging_dir")
    with tempfile.NamedTemporaryFile(dir=cfg.storage.staging_dir):
        pass
    if not same_filesystem(cfg.storage.staging_dir, cfg.storage.sync_root):
        raise RecorderError(
            f"staging {cfg.storage.staging_dir} is not on the sync root's filesystem: "
            "publishing could not be atomic"
        )
    return f"{folder} writable, staging on the same filesystem"


def _free(cfg: Config) -> str:
    ensure_dir(cfg.storage.sync_root, "storage.sync_root")
    # The rule recording itself applies ("disk full" below MIN_FREE_BYTES whatever the reserve).
    free_mb = Reserve(cfg.storage.sync_root, cfg.storage.reserve_mb).check() // (1024 * 1024)
    return f"{free_mb} MB free (reserve {cfg.storage.reserve_mb} MB)"


def _budget(cfg: Config) -> str:
    """Space by use and own recordings not yet safe (recorder.budget), planned, not freed."""
    from recorder.budget import Budget, Policy

    client = None
    if cfg.syncthing.api_key_file is not None:
        from recorder.mesh.net.syncthing import SyncthingClient

        client = SyncthingClient.from_config(cfg.syncthing)
    budget = Budget(cfg.layout, Policy.of(cfg.storage), client, hubs=cfg.storage.hubs)
    result = budget.run_pass(dry_run=True)
    if result.plan.short_bytes and result.plan.own_kept_unsafe:
        raise RecorderError(f"{budget.line()}; {result.plan.own_kept_unsafe} own recording(s) "
                            "kept: not yet on enough other devices, nothing else to free")
    return budget.line()


def _clock(cfg: Config) -> str:
    if not clock.clock_synchronized():
        raise RecorderError("system clock is not NTP-synchronised: timestamps may be wrong")
    return "synchronised"


def _staging(cfg: Config) -> str:
    from recorder.recover import pending

    left = pending(cfg.storage.staging_dir)
    if left:
        if free_bytes(cfg.storage.staging_dir) < MIN_FREE_BYTES:
            raise RecorderError(f"{len(left)} recording(s) wait in staging for free space: "
                                "free some, then `recorder recover` (the service retries "
                                "by itself)")
        raise RecorderError(f"{len(left)} recording(s) wait in staging: run `recorder recover`")
    return "empty"


def doctor(cfg: Config) -> list[Check]:
    """Run every check; never raises for a failing check."""
    checks = [
        _check("config", lambda: _config(cfg)),
        _check("audio device", lambda: _device(cfg)),
        _check("storage", lambda: _writable(cfg)),
        _check("free space", lambda: _free(cfg)),
        _check("staging", lambda: _staging(cfg), severity="warning"),
        _check("storage budget", lambda: _budget(cfg), severity="warning"),
        _check("clock", lambda: _clock(cfg), severity="warning"),
    ]
    for extra in extra_checks(cfg):
        checks.append(extra)
    return checks


def extra_checks(cfg: Config) -> list[Check]:
    """Checks of the optional services this config uses (papad, Syncthing)."""
    checks: list[Check] = []
    if cfg.papad.api != "none":
        from recorder.cli import database_spec
        from recorder.papad.doctor import papad_checks

        checks.extend({"severity": "warning", **c}
                      for c in papad_checks(cfg.papad, database_spec(cfg)))
    if cfg.syncthing.api_key_file is not None:
        checks.append(_check("syncthing", lambda: _syncthing(cfg), severity="warning"))
        if checks[-1]["ok"]:
            checks.append(_check("mesh", lambda: _mesh(cfg), severity="warning"))
    if cfg.radio.station:
        checks.append(_check("station", lambda: _station(cfg), severity="warning"))
    if cfg.yggdrasil.firewall:
        checks.append(_check("firewall", lambda: _firewall(cfg)))
    return checks


def _firewall(cfg: Config) -> str:
    from recorder.cli import database_spec
    from recorder.dbrepair import open_database
    from recorder.mesh.membership import firewall
    from recorder.mesh.net.syncthing import SyncthingClient

    try:
        settings = firewall.Settings.of(cfg.yggdrasil, cfg.web, cfg.radio)
        if cfg.syncthing.api_key_file is None:
            return firewall.check(settings, None, None)
        with open_database(database_spec(cfg)) as database:
            return firewall.check(settings, SyncthingClient.from_config(cfg.syncthing),
                                  database)
    except firewall.FirewallError as exc:
        if not firewall.is_permission_error(exc):
            raise
        # Only root (or CAP_NET_ADMIN) may read nftables, and doctor usually runs as the
        # service's user: the running service, which keeps the rule set, says what it loaded.
        return _firewall_from_service(cfg, exc)


def _firewall_from_service(cfg: Config, denied: Exception) -> str:
    from recorder.control import send_command
    from recorder.errors import RecorderError

    try:
        reply = send_command(cfg.service.control_socket, "status")
    except RecorderError:
        raise denied from None
    fw = (reply.get("workers", {}).get("mesh") or {}).get("firewall")
    if not isinstance(fw, dict):
        raise RecorderError("the running service keeps no firewall (its mesh worker is off)")
    if fw.get("error"):
        raise RecorderError(f"the service could not load the firewall: {fw['error']}")
    if not fw.get("applied"):
        raise RecorderError("the service has not loaded the firewall yet")
    return "rule set kept by the running service (nftables itself needs root to read)"


def _mesh(cfg: Config) -> str:
    from recorder.mesh.membership import health
    from recorder.mesh.membership.pairing import Membership
    from recorder.mesh.net.syncthing import SyncthingClient

    client = SyncthingClient.from_config(cfg.syncthing)
    conflicts = Membership(cfg.layout, client, cfg.syncthing).conflicts()
    return health.doctor_check(client, cfg.device.id, cfg.mesh.degraded_after, conflicts)


def _syncthing(cfg: Config) -> str:
    from recorder.mesh.net.syncthing import SyncthingClient

    client = SyncthingClient.from_config(cfg.syncthing)
    return f"reachable at {cfg.syncthing.url}, device {client.device_id()}"


def _station(cfg: Config) -> str:
    from recorder.radio.station import on_air

    source = on_air(cfg.radio)
    return (f"on the air at {cfg.radio.url}{cfg.radio.mount}: {source.get('title') or '?'} "
            f"({source.get('listeners', '?')} listener(s))")
