"""``recorder outbox``: see and retry papad registrations.

``recorder outbox list [--json]`` shows every entry (state, attempts, last error, remote id);
``recorder outbox retry ID`` / ``retry --all`` makes parked or waiting entries due now. The
running service delivers them at its next pass. Nothing printed here is secret: the outbox
holds no credentials.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from recorder.errors import RecorderError

# The database and the outbox are imported by the handlers: `--help` needs neither.
if TYPE_CHECKING:
    from recorder.config import Config
    from recorder.papad.outbox import Entry


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``outbox list`` and ``outbox retry``."""
    parser = subparsers.add_parser("outbox", help="papad registration queue")
    sub = parser.add_subparsers(dest="outbox_command", metavar="ACTION")
    sub.required = True

    p_list = sub.add_parser("list", help="list queued registrations")
    p_list.add_argument("--json", action="store_true", help="print one JSON document")
    p_list.add_argument("--state", choices=("pending", "delivered", "parked"),
                        help="only entries in this state")
    p_list.set_defaults(func=cmd_list)

    p_retry = sub.add_parser("retry", help="retry a parked or waiting registration now")
    target = p_retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int, help="outbox entry id (see `outbox list`)")
    target.add_argument("--all", action="store_true", help="every undelivered entry")
    p_retry.add_argument("--json", action="store_true", help="print one JSON document")
    p_retry.set_defaults(func=cmd_retry)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _line(e: Entry) -> str:
    ann = f"{e.annotations_delivered}/{e.annotations}" if e.annotations else "-"
    text = (
        f"{e.id:>5}  {e.state:<9}  {e.attempts:>3}  {e.recording_id}  "
        f"{e.remote_id or '-':<36}  {ann:<5}  {_when(e.enqueued_at)}"
    )
    if e.state == "pending" and e.attempts:
        text += f"  next {_when(e.next_attempt_at)}"
    if e.last_error and e.state != "delivered":
        text += f"\n       last error: {e.last_error}"
    return text


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    """Print the outbox."""
    from recorder.cli import database_spec
    from recorder.dbrepair import open_database
    from recorder.papad.outbox import Outbox

    with open_database(database_spec(cfg)) as database:
        outbox = Outbox(database)
        entries, counts = outbox.entries(args.state), outbox.counts()
    if args.json:
        print(json.dumps({"counts": counts, "entries": [e.as_dict() for e in entries]},
                         indent=2, sort_keys=True))
        return 0
    if not entries:
        print("outbox is empty" if not args.state else f"no {args.state} entries")
    else:
        print("   id  state      try  recording                   remote id"
              "                             marks  queued")
        for entry in entries:
            print(_line(entry))
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def cmd_retry(args: argparse.Namespace, cfg: Config) -> int:
    """Make one or all undelivered entries due now."""
    from recorder.cli import database_spec
    from recorder.dbrepair import open_database
    from recorder.papad.outbox import Outbox

    with open_database(database_spec(cfg)) as database:
        outbox = Outbox(database)
        if args.all:
            count = outbox.retry_all()
            result: dict = {"retried": count}
            message = f"{count} entr{'y' if count == 1 else 'ies'} due now"
        else:
            entry = outbox.retry(args.id)
            if entry.state == "delivered":
                raise RecorderError(f"outbox entry {args.id} is already delivered")
            result = {"retried": 1, "entry": entry.as_dict()}
            message = f"entry {entry.id} ({entry.recording_id}) due now"
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(message + "; the recorder service delivers it at its next pass")
    return 0
