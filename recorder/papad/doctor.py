"""papad health for ``recorder doctor``: server, credentials, group, and the outbox backlog."""

from __future__ import annotations

from typing import Any

from recorder.config import PapadConfig
from recorder.dbrepair import DatabaseSpec, open_database
from recorder.errors import RecorderError
from recorder.papad.client import check, make_client
from recorder.papad.outbox import PARKED, PENDING, Outbox

# An entry waiting longer than this means registrations are not flowing.
STALE_SECONDS = 24 * 3600.0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def outbox_checks(spec: DatabaseSpec) -> list[dict[str, Any]]:
    """Outbox depth (parked entries fail the check) and the age of the oldest entry."""
    if not spec.path.exists():
        return [check("papad outbox depth", True, "empty (no database yet)")]
    with open_database(spec) as database:
        outbox = Outbox(database)
        counts, age = outbox.counts(), outbox.oldest_age()
        latest = outbox.entries(PARKED)[-1:] if counts[PARKED] else []
    parked = counts[PARKED]
    detail = f"{counts[PENDING]} pending, {parked} parked"
    if latest:
        # The latest parked entry's reason: papad's answer, what to fix.
        detail += (f"; #{latest[0].id}: {latest[0].last_error} (see `recorder outbox list`, "
                   "then `recorder outbox retry`)")
    out = [check("papad outbox depth", parked == 0, detail)]
    if age is None:
        out.append(check("papad outbox oldest entry", True, "none waiting"))
    else:
        out.append(check("papad outbox oldest entry", age < STALE_SECONDS, f"{_age(age)} old"))
    return out


def papad_checks(papad: PapadConfig, spec: DatabaseSpec) -> list[dict[str, Any]]:
    """Doctor lines ``{"name", "ok", "detail"}``; never raises for a papad or config problem."""
    if papad.api == "none":
        return [check("papad", True, "registration disabled (papad.api = none)")]
    try:
        client = make_client(papad)
    except RecorderError as exc:
        return [check("papad credentials accepted", False, str(exc)), *outbox_checks(spec)]
    assert client is not None
    try:
        lines = client.checks()
    finally:
        client.close()
    return lines + outbox_checks(spec)
