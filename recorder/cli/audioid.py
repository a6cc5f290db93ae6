"""Audio ID commands: ``fingerprint``, ``match``, ``identify`` and ``index rebuild``.

``identify`` answers with Chromaprint's matches, or, when it has none, the landmarks' (see
`recorder.audioid.identify`); ``index rebuild`` also computes the landmarks of recordings that
have none from their audio files.

Files are read with soundfile (any format it decodes). An unreadable or undecodable file exits
with InputFileError's code, audio under 3 s (or none) with TooShortError's code. ``match``
exits 0 whether or not the files match: the answer is in the output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

# numpy, chromaprint and soundfile are imported by the handlers that use them.
if TYPE_CHECKING:
    from recorder.audioid.catalogue import Catalogue
    from recorder.config import Config
    from recorder.db import Database


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the Audio ID sub-commands."""
    p = subparsers.add_parser("fingerprint", help="print the Chromaprint Audio ID of a file")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_fingerprint)

    p = subparsers.add_parser("match", help="compare two files by Audio ID")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_match)

    p = subparsers.add_parser("identify", help="find the recordings a clip comes from")
    p.add_argument("file", type=Path)
    p.add_argument("--limit", type=int, default=5, help="at most this many matches (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_identify)

    p = subparsers.add_parser("index", help="the Audio ID catalogue")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True
    r = sub.add_parser("rebuild", help="rebuild the catalogue from the sidecars in the sync root")
    r.add_argument("--json", action="store_true", help="one JSON document on stdout")
    r.set_defaults(func=cmd_index_rebuild)


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, sort_keys=True) if args.json else text)


def _catalogue(database: Database, cfg: Config) -> Catalogue:
    from recorder.audioid.catalogue import Catalogue

    return Catalogue.from_config(database, cfg.audioid)


def cmd_fingerprint(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.audioid.chroma import fingerprint_file

    fp = fingerprint_file(args.file)
    doc = {"file": str(args.file), "items": int(fp.items.size), "audio_id": fp.audio_id()}
    _emit(args, doc, f"FILE={args.file}\nDURATION={fp.duration:.3f}\nFINGERPRINT={fp.encoded}")
    return 0


def cmd_match(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.audioid.chroma import fingerprint_file
    from recorder.audioid.compare import compare

    a, b = fingerprint_file(args.a), fingerprint_file(args.b)
    m = compare(a.items, b.items, threshold=cfg.audioid.match_threshold)
    doc = {
        "a": str(args.a),
        "b": str(args.b),
        "match": m.is_match,
        "similarity": round(m.similarity, 4),
        "ber": round(m.ber, 4),
        "offset_seconds": round(m.offset_seconds, 3),
        "overlap_seconds": round(m.overlap_seconds, 3),
        "threshold": cfg.audioid.match_threshold,
    }
    verdict = "match" if m.is_match else "no match"
    _emit(
        args,
        doc,
        f"{verdict}: similarity {m.similarity:.3f} (BER {m.ber:.3f}), "
        f"{args.a} starts at {m.offset_seconds:+.2f} s in {args.b}, "
        f"overlap {m.overlap_seconds:.1f} s",
    )
    return 0


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def cmd_identify(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.audioid.identify import identify_file
    from recorder.cli import database_spec
    from recorder.dbrepair import open_database

    with open_database(database_spec(cfg)) as database:
        results = identify_file(_catalogue(database, cfg), args.file, limit=args.limit)
    matches = [
        {
            "method": r.method,
            "recording_id": r.recording_id,
            "device_id": r.device_id,
            "path": r.path,
            "file": str(cfg.storage.sync_root / r.device_id / r.path),
            "offset_seconds": round(r.offset_seconds, 3),
            "speed": round(r.speed, 4),
            "score": round(r.score, 4),
            "threshold": round(r.threshold, 4),
            "similarity": _rounded(r.similarity, 4),
            "ber": _rounded(r.ber, 4),
            "overlap_seconds": _rounded(r.overlap_seconds, 3),
            "cover_seconds": _rounded(r.cover_seconds, 1),
            "duplicate_of": r.duplicate_of,
        }
        for r in results
    ]
    lines = [
        f"{r.score:g}  {r.recording_id}  {r.device_id}  at {r.offset_seconds:.2f} s"
        + (f"  speed {r.speed:.3f}" if abs(r.speed - 1) >= 0.005 else "")
        + f"  {m['file']}  ({r.method}, threshold {r.threshold:g})"
        for r, m in zip(results, matches, strict=True)
    ]
    _emit(args, {"file": str(args.file), "matches": matches}, "\n".join(lines) or "no match")
    return 0


def cmd_index_rebuild(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.cli import database_spec
    from recorder.dbrepair import open_database

    with open_database(database_spec(cfg)) as database:
        catalogue = _catalogue(database, cfg)
        report = catalogue.rebuild(cfg.storage.sync_root, own_device=cfg.device.id)
        # Landmarks are not in sidecars: recordings without them get them from their files.
        computed, unreadable = catalogue.fill_landmarks(cfg.storage.sync_root)
        total = catalogue.count()
    doc = report.as_dict() | {"catalogued": total, "landmarks_computed": computed,
                              "landmarks_unreadable": [p for p, _ in unreadable]}
    text = (
        f"indexed {report.added} recordings ({report.duplicates} duplicates), "
        f"removed {report.removed}, skipped {len(report.skipped)}, "
        f"invalid {len(report.invalid)}; {total} in the catalogue; landmarks computed for "
        f"{computed} ({len(unreadable)} files unreadable)"
    )
    for path, reason in report.invalid:
        text += f"\ninvalid: {path}: {reason}"
    _emit(args, doc, text)
    return 0
