"""``recorder import FILE...``: audio files (phone calls, voice notes, field recordings) become
recordings like the button's."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recorder.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="import audio files (any format libsndfile or ffmpeg "
                       "decodes) as recordings")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--title", default="", help="title of the recordings (default: the file's)")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace, cfg: Config) -> int:
    """Each file is imported or named as the recording it already is; exit 0 when every file
    was, else the exit code of the first failure (5: cannot be read or decoded, 6: too short,
    4: no room; the others are still tried)."""
    from recorder import app
    from recorder.cli.record import hand_over
    from recorder.errors import RecorderError
    from recorder.importer import Importer

    parts = app.assemble(cfg)
    code = 0
    try:
        importer = Importer(app.import_settings(cfg, parts.layout), parts.database,
                            parts.publisher, parts.reserve, parts.sink_factories, parts.catalogue)
        with importer.locked():
            importer.finish_interrupted()
            for path in args.files:
                try:
                    outcome = importer.import_file(path, title=args.title, tags=args.tag)
                except RecorderError as exc:
                    code = code or exc.exit_code
                    if args.json:
                        print(json.dumps({"file": str(path), "action": "failed",
                                          "error": str(exc), "exit_code": exc.exit_code}))
                    print(f"recorder: error: {exc}", file=sys.stderr)
                    continue
                if args.json:
                    print(json.dumps(outcome.as_dict()))
                elif outcome.action == "duplicate":
                    print(f"{path}: already imported: {outcome.detail} ({outcome.path})")
                else:
                    print(outcome.path)
    finally:
        parts.close()
    hand_over(cfg)
    return code
