"""The ``recorder`` command line: one module per command group, wired here.

Each command module has ``register(subparsers)``, which adds its sub-commands and sets
``func(args, cfg) -> int`` on them. Errors a user can meet (`RecorderError`) are printed as one
line on stderr and turned into the error's exit code; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence

from recorder import __version__
from recorder.config import load_config
from recorder.errors import RecorderError

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "recorder.cli.record",
    "recorder.cli.service",
    "recorder.cli.ctl",
    "recorder.cli.mesh",
    "recorder.cli.audioid",
    "recorder.cli.outbox",
    "recorder.cli.radio",
)


class OneLineFormatter(logging.Formatter):
    """One event per line: tracebacks are folded so the journal keeps them as one entry."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """Every uncaught exception in any thread is one logged event, never a silent death."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("recorder").critical(
        "uncaught exception in thread %s", name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recorder", description="recorderpi: the community audio recorder appliance"
    )
    parser.add_argument("--version", action="version", version=f"recorderpi {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $RECORDER_CONFIG, "
                        "then /etc/recorder/recorder.toml, then built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug events")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal adds its own timestamps.
    timestamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler.setFormatter(OneLineFormatter(timestamp + "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        handlers=[handler])
    logging.captureWarnings(True)  # library warnings become single log events too
    threading.excepthook = _log_thread_exception
    try:
        overrides = args.overrides(args) if hasattr(args, "overrides") else None
        cfg = load_config(args.config, overrides)
        return int(args.func(args, cfg) or 0)
    except RecorderError as exc:
        print(f"recorder: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A system failure no specific error covers (a disk, a permission): still one line;
        # the traceback is in the log with -v.
        logging.getLogger("recorder").debug("unexpected system error", exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"recorder: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
