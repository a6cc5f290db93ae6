"""How a file can leave a device's sync tree, measured with three real Syncthing 1.19 instances
(not a test): ``python3 tests/bench/measure_freeing.py /tmp/freeing`` (a fresh directory).

a owns a folder of six dated recordings; b and c hold it receive-only. b frees days 01-02 by an
ignore pattern then deletion, day 03 by a plain local deletion; then b restarts, then b's local
changes are reverted (what the mesh keeper does); finally a frees its own day 05 by pattern
then deletion, and restarts. Printed at each step: b's folder state, completion as b and a see
it, a's ``remoteneed`` for b and ``/rest/db/file`` availability. Figures: README "Storage
budget".
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder.mesh.membership import provision
from tests.syncthing_harness import Instance, SyncthingCluster

STATUS_KEYS = ("state", "needTotalItems", "receiveOnlyChangedFiles", "localFiles",
               "globalFiles")


def publish(inst: Instance, rel: str, data: bytes) -> None:
    staging = inst.root / "staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / Path(rel).name
    tmp.write_bytes(data)
    dest = inst.folder_path(inst.recorder_id) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


def ignore(inst: Instance, fid: str, patterns: list[str]) -> None:
    inst.client.request("POST", "/rest/db/ignores", params={"folder": fid},
                        json={"ignore": patterns})


def main() -> None:
    base = Path(sys.argv[1])
    base.mkdir(parents=True, exist_ok=True)
    with SyncthingCluster(3, base) as cluster:
        a, b, c = cluster
        cluster.pair_all()
        fid = provision.folder_id(a.recorder_id)
        rels = [f"recordings/2026/01/0{d}/r{d}.ogg" for d in range(1, 7)]
        for rel in rels:
            publish(a, rel, os.urandom(200_000))
        a.client.scan(fid)
        for rel in rels:
            b.wait_for_file(rel, a.recorder_id, 60)
            c.wait_for_file(rel, a.recorder_id, 60)
        time.sleep(2)
        names = {a.device_id: "a", b.device_id: "b", c.device_id: "c"}

        def show(tag: str) -> None:
            st = b.client.db_status(fid)
            print(tag, "b status", {k: st.get(k) for k in STATUS_KEYS})
            print(tag, "b completion (own view)", b.client.completion(fid)["completion"],
                  "as a sees it", a.client.completion(fid, b.device_id)["completion"])
            need = a.client.request("GET", "/rest/db/remoteneed",
                                    params={"folder": fid, "device": b.device_id})
            print(tag, "a remoteneed(b)", [f["name"] for f in need.get("files") or []])
            for rel in rels[:4]:
                avail = a.client.file_info(fid, rel).get("availability") or []
                print(tag, rel, "available on", sorted(names.get(x["id"], "?") for x in avail))
            print(tag, "on b's disk", [(b.folder_path(a.recorder_id) / r).exists()
                                       for r in rels])

        show("before")
        ignore(b, fid, ["/recordings/2026/01/01", "/recordings/2026/01/02"])
        for day in ("01", "02"):
            shutil.rmtree(b.folder_path(a.recorder_id) / f"recordings/2026/01/{day}")
        b.client.scan(fid)
        time.sleep(3)
        show("ignored+deleted 01,02")
        (b.folder_path(a.recorder_id) / rels[2]).unlink()
        b.client.scan(fid)
        time.sleep(3)
        show("local deletion 03")
        changed = b.client.request("GET", "/rest/db/localchanged", params={"folder": fid})
        print("b localchanged", [f["name"] for f in changed.get("files") or []])
        b.restart()
        cluster.wait_connected(60)
        time.sleep(5)
        show("after b restart")
        b.client.revert(fid)
        time.sleep(5)
        show("after revert")

        ignore(a, fid, ["/recordings/2026/01/05"])
        shutil.rmtree(a.folder_path(a.recorder_id) / "recordings/2026/01/05")
        a.client.scan(fid)
        time.sleep(5)
        for tag in ("owner freed 05", "after a restart"):
            if tag == "after a restart":
                a.restart()
                cluster.wait_connected(60)
                time.sleep(5)
            print(tag, "a status", {k: a.client.db_status(fid).get(k) for k in STATUS_KEYS})
            print(tag, "05 on a/b/c", [(i.folder_path(a.recorder_id) / rels[4]).exists()
                                       for i in (a, b, c)])
            print(tag, "c status", {k: c.client.db_status(fid).get(k) for k in STATUS_KEYS})


if __name__ == "__main__":
    main()
