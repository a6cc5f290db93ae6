"""The ``recorder`` command line: one module per command group, wired here.

Each command module has ``register(subparsers)``, which adds its sub-commands and sets
``func(args, cfg) -> int`` on them. Errors a user can meet (`RecorderError`) are printed as one
line on stderr and turned into the error's exit code; nothing else is caught.

A command pays only for what it uses: when the command line names a command, only the module
that owns it is imported and registered (`COMMANDS`), and command modules import at their top
only what building their parser needs; the pipeline, numpy, soundfile and requests are imported
by the handlers that use them. ``--help``, an unknown command or no command register every
module, so help and argparse's errors list every command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from recorder import __version__
from recorder.errors import RecorderError

if TYPE_CHECKING:  # imported by main after parsing; the helpers below import at call time
    from recorder.config import Config
    from recorder.dbrepair import DatabaseSpec

# numpy's OpenBLAS starts a thread per core at import, and they spin after every call: about
# 50 ms of CPU at each start, and wake-ups while the service idles, for dot products of a few
# thousand samples that one thread does at once. Set before anything imports numpy; a value
# from the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Which module registers each top-level command, in the order of --help (a test checks it
# against what the modules register).
COMMANDS = {
    "record": "recorder.cli.record",
    "recover": "recorder.cli.record",
    "devices": "recorder.cli.record",
    "demo": "recorder.cli.record",
    "run": "recorder.cli.service",
    "doctor": "recorder.cli.service",
    "ctl": "recorder.cli.ctl",
    "mesh": "recorder.cli.mesh",
    "fingerprint": "recorder.cli.audioid",
    "match": "recorder.cli.audioid",
    "identify": "recorder.cli.audioid",
    "index": "recorder.cli.audioid",
    "outbox": "recorder.cli.outbox",
    "radio": "recorder.cli.radio",
    "import": "recorder.cli.import_",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))

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


def _modules_for(argv: Sequence[str]) -> Sequence[str]:
    """The command modules parsing `argv` needs: none for ``--version``, the named command's
    module, or every module (help, no command, a word this table does not know)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif word == "--version":
            return ()
        elif word in ("-h", "--help"):
            break
        elif not word.startswith("-"):
            if word in COMMANDS:
                return (COMMANDS[word],)
            break
    return COMMAND_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (see `_modules_for`), or with every command (no `argv`)."""
    parser = argparse.ArgumentParser(
        prog="recorder", description="recorderpi: the community audio recorder appliance"
    )
    parser.add_argument("--version", action="version", version=f"recorderpi {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $RECORDER_CONFIG, "
                        "then /etc/recorder/recorder.toml, then built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug events")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES if argv is None else _modules_for(argv):
        importlib.import_module(name).register(sub)
    return parser


def database_spec(cfg: Config) -> DatabaseSpec:
    """The service database of `cfg` and what rebuilding it reads (`recorder.dbrepair`): every
    command opens it through this, so every one repairs it the same way."""
    from recorder.dbrepair import DatabaseSpec

    return DatabaseSpec(cfg.db_path, cfg.layout, cfg.audioid, cfg.papad)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
        from recorder.config import load_config  # after parsing: --help and --version skip it

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
