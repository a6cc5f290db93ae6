"""``recorder run`` (the appliance service) and ``recorder doctor`` (health without it)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from recorder.cli.record import source_override

if TYPE_CHECKING:  # the config module is imported once, by recorder.cli.main
    from recorder.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the appliance service (buttons, LED, control socket)")
    p.add_argument("--source", help="audio source: device name/index or file:PATH")
    p.set_defaults(func=cmd_run, overrides=source_override)

    p = sub.add_parser("doctor", help="check config, audio device, storage, clock, services")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from recorder import app
    from recorder.daemon import Service

    return Service(app.service_wiring(cfg)).run()


def cmd_doctor(args: argparse.Namespace, cfg: Config) -> int:
    from recorder.cli.doctor import doctor

    checks = doctor(cfg)
    healthy = all(c["ok"] or c.get("severity") == "warning" for c in checks)
    if args.json:
        print(json.dumps({"healthy": healthy, "device_id": cfg.device.id, "checks": checks},
                         indent=2))
    else:
        for c in checks:
            mark = "ok  " if c["ok"] else ("warn" if c.get("severity") == "warning" else "FAIL")
            print(f"[{mark}] {c['name']}: {c['detail']}")
    return 0 if healthy else 1
