"""chronyd in a test's network namespace (tests/netns.py) with the appliance's mesh config.

`start_chronyd(node, sources_dir)` runs a real chronyd inside `node`'s namespace with
``services/chrony/recorderpi-mesh.conf`` included (orphan mode, serving 200::/7) and the
sources ``recorder mesh time-sources --write`` made. chronyd runs with ``-x``: it measures,
selects and serves time but never touches the clock the namespaces share with the host. Its
command socket is a file in the node's directory, queried with ``chronyc -h SOCKET``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import need, wait_until
from tests.netns import Node, _stop

REPO = Path(__file__).resolve().parent.parent
MESH_CHRONY_CONF = REPO / "services/chrony/recorderpi-mesh.conf"
START_TIMEOUT = 90.0
LOCAL_REFERENCE = "7F7F0101"  # chrony's reference id while it runs on its local clock


class Chrony:
    """One running chronyd of a node, and what its ``chronyc`` says."""

    def __init__(self, node: Node, proc: subprocess.Popen[bytes], sock: Path) -> None:
        self.node = node
        self.proc = proc
        self.sock = sock

    def _chronyc(self, *args: str) -> str:
        chronyc = need("chronyc", "chrony")
        return self.node.exec(chronyc, "-h", str(self.sock), "-n", *args, check=False).stdout

    def sources(self) -> str:
        """``chronyc sources`` as printed."""
        return self._chronyc("sources")

    def tracking(self) -> dict[str, str]:
        """``chronyc tracking`` as a dict of its fields (``Reference ID``, ``System time``...)."""
        out = {}
        for line in self._chronyc("tracking").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def synced_to(self, peers: set[str]) -> str | None:
        """The mesh peer this chrony has selected as its reference (``^*``), if any."""
        for line in self.sources().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[0] == "^*" and fields[1] in peers:
                return fields[1]
        return None

    def on_local_reference(self) -> bool:
        """True while it runs on its own clock (the orphan root of the mesh)."""
        ref = self.tracking().get("Reference ID", "")
        return re.match(rf"{LOCAL_REFERENCE}\b", ref) is not None

    def stop(self) -> None:
        _stop(self.proc)


def start_chronyd(node: Node, sources: Path | None) -> Chrony:
    """chronyd in `node` with the appliance's mesh config and `sources` as its ``sourcedir``;
    returns once its command socket is up. The lab stops it at the end if the test does not."""
    chronyd = need("chronyd", "chrony")
    run = node.dir / "chrony"
    run.mkdir(mode=0o700, exist_ok=True)  # chronyd refuses a socket directory others can open
    lines = [f"include {MESH_CHRONY_CONF}", f"pidfile {run}/chronyd.pid",
             f"bindcmdaddress {run}/chronyd.sock", "cmdport 0", f"driftfile {run}/drift"]
    if sources is not None:
        lines.append(f"sourcedir {sources}")
    conf = run / "chrony.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = node.popen([chronyd, "-d", "-x", "-u", "root", "-f", str(conf)], run / "chronyd.log")
    sock = run / "chronyd.sock"

    def ready() -> bool:
        assert proc.poll() is None, (run / "chronyd.log").read_text()
        return sock.exists()

    wait_until(ready, START_TIMEOUT, 0.05, f"chronyd on {node.short}")
    return Chrony(node, proc, sock)


def one_clock(chronys: dict[Chrony, set[str]]) -> bool:
    """The mesh agrees on one clock: exactly one chrony runs on its local reference and every
    other one is synchronised to one of its peers (`chronys` maps each to its peers'
    yggdrasil addresses)."""
    synced = [c for c, peers in chronys.items() if c.synced_to(peers)]
    roots = [c for c in chronys if c not in synced and c.on_local_reference()]
    return len(synced) == len(chronys) - 1 and len(roots) == 1
