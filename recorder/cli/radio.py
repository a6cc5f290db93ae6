"""``recorder radio``: the Cow Radio station (Liquidsoap) from the configuration.

``recorder radio script [--output PATH]`` writes the station's Liquidsoap script from
``[radio]`` (atomically; only when it changed): the station's systemd unit runs it before every
start, so the script is never edited by hand. ``recorder radio playlist`` rebuilds the playlist
files now (the service does it after every publish and import). ``recorder radio status`` says
whether the station is on the air and what it played last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config module is imported once, by recorder.cli.main
    from recorder.config import Config
    from recorder.radio.settings import RadioSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``radio script``, ``radio playlist`` and ``radio status``."""
    parser = subparsers.add_parser("radio", help="Cow Radio station: Liquidsoap script, "
                                   "playlist, on-air status")
    sub = parser.add_subparsers(dest="radio_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("script", help="write the station's Liquidsoap script from [radio]")
    p.add_argument("--output", type=Path, metavar="PATH",
                   help="where to write it (default: <state_dir>/radio/station.liq)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_script)

    p = sub.add_parser("playlist", help="rebuild the station playlist files now")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_playlist)

    p = sub.add_parser("status", help="is the station on the air, and what did it play")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_status)


def cmd_script(args: argparse.Namespace, cfg: Config) -> int:
    """Write the script; exit 2 (naming the key) when the configuration cannot make one."""
    from recorder.radio.station import write_script

    path, changed = write_script(_settings(cfg), args.output)
    if args.json:
        print(json.dumps({"path": str(path), "changed": changed}))
    else:
        print(f"{path} ({'written' if changed else 'unchanged'})")
    return 0


def cmd_playlist(args: argparse.Namespace, cfg: Config) -> int:
    """Rebuild playlist.m3u, playlist.json and the station's station.m3u."""
    from recorder import app
    from recorder.radio.playlist import (
        JSON_NAME,
        catalogue_records,
        playlist_dir,
        station_playlist_path,
        write_playlist,
    )

    settings = _settings(cfg)
    parts = app.assemble(cfg)
    try:
        records = (catalogue_records(parts.catalogue, cfg.storage.sync_root,
                                     cfg.radio.playlist_length)
                   if parts.catalogue is not None else None)
        changed = write_playlist(settings, records)
    finally:
        parts.close()
    doc = json.loads((playlist_dir(settings) / JSON_NAME).read_text(encoding="utf-8"))
    result = {"changed": changed, "entries": len(doc["entries"]),
              "playlist": str(playlist_dir(settings)),
              "station": str(station_playlist_path(settings))}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['entries']} recording(s) in {result['playlist']} "
              f"({'rewritten' if changed else 'unchanged'})")
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    """On the air (exit 0) or not (exit 7, one line), with the latest plays."""
    from recorder.radio.playlist import read_played
    from recorder.radio.station import on_air

    source = on_air(cfg.radio)
    played = read_played(_settings(cfg))[:5]
    if args.json:
        print(json.dumps({"on_air": True, "mount": cfg.radio.mount,
                          "title": source.get("title"), "listeners": source.get("listeners"),
                          "played": played}))
        return 0
    print(f"on the air at {cfg.radio.url}{cfg.radio.mount}: {source.get('title') or '?'} "
          f"({source.get('listeners', '?')} listener(s))")
    for play in played:
        print(f"  {play.get('at')}  {play.get('source'):<8}  {play.get('title')}"
              f"  [{play.get('device_id')}]")
    return 0


def _settings(cfg: Config) -> RadioSettings:
    """What the radio modules need from `cfg` (without importing the pipeline: the station's
    unit runs `radio script` before every start)."""
    from recorder.radio.settings import RadioSettings

    return RadioSettings.of(cfg.radio, cfg.device.id, cfg.storage, cfg.source_path)
