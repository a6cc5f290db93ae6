"""``recorder ctl``: control the running service through its local control socket.

``recorder ctl start|stop|mark|status [--json]`` and ``recorder ctl live on|off [--json]``.
Each sends one command (see :mod:`recorder.control`); a service that is not running or that
refuses the command is a ServiceError with a one-line message: exit code 8, or the code of the
service's own error (9: start while recording or stop while idle, 3: no audio device, 4: free
space below the reserve).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config module is imported once, by recorder.cli.main
    from recorder.config import Config

_SIMPLE = {
    "start": "start recording (as a short press of the record button)",
    "stop": "stop the recording and publish it",
    "mark": "drop a bookmark into the recording in progress",
    "status": "show the service's state and health",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ctl`` command group."""
    parser = subparsers.add_parser(
        "ctl", help="control the running service", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="ctl_command", metavar="ACTION")
    sub.required = True
    for name, text in _SIMPLE.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print the reply as JSON")
        p.set_defaults(func=run_ctl)
    p = sub.add_parser("live", help="switch the live radio stream on or off")
    p.add_argument("state", choices=("on", "off"))
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=run_ctl)


def run_ctl(args: argparse.Namespace, cfg: Config) -> int:
    """Send the command, print the reply; errors propagate as ServiceError."""
    from recorder.control import send_command

    command = args.ctl_command
    extra: dict[str, Any] = {"on": args.state == "on"} if command == "live" else {}
    reply = send_command(cfg.service.control_socket, command, **extra)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True, default=str))
    elif command == "status":
        print("\n".join(render_status(reply)))
    else:
        message = reply.get("message")
        print(message if isinstance(message, str) and message else f"{command}: ok")
    return 0


def render_status(reply: dict[str, Any]) -> list[str]:
    """The status reply as ``key: value`` lines, nested sections indented under their name."""
    return _render({k: v for k, v in reply.items() if k != "ok"}, 0)


def _render(obj: dict[str, Any], depth: int) -> list[str]:
    lines: list[str] = []
    pad = "  " * depth
    for key, value in obj.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(_render(value, depth + 1) if value else [f"{pad}  (none)"])
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                lines.append(f"{pad}{key}: {', '.join(_scalar(v) for v in value) or '(none)'}")
            else:
                lines.append(f"{pad}{key}:")
                for item in value:
                    if isinstance(item, dict):
                        sub = _render(item, depth + 2)
                        lines.append(f"{pad}  - {sub[0].strip()}" if sub else f"{pad}  -")
                        lines.extend(sub[1:])
                    else:
                        lines.append(f"{pad}  - {_scalar(item)}")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)
