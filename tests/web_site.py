"""One real appliance with its web page, and a peer, for the web tests (HTTP and Chromium).

`web_site` (session-scoped: built once for tests/test_web_http.py and test_web_browser.py):

- device b runs the real `recorder run` (file source looping a speech clip in real time, mock
  GPIO pins) with the web page on a free port behind a password file, papad (the in-process
  current-papad server), Syncthing and an admin socket of a real yggdrasil node (no TUN);
- device a is a second real Syncthing instance paired with b; a recording made on a with the
  real pipeline reaches b, whose bridge imports it (and quarantines a malformed sidecar a
  carries, with its reason);
- b's own recordings were made before the service started (``recorder record``): "Lemon rice"
  (tags cooking, rice), whose papad registration was refused (parked with papad's reason), and
  "Harvest song" (music); a's "Chutney from the hills" (cooking) is the same audio as "Lemon
  rice" (an Audio ID duplicate); a's "Broken upload" has a valid sidecar and the right sha256
  but is no audio, so the bridge quarantines it; and one recording the service made with a
  bookmark.

Tests may start and stop recordings, but leave the service idle and the files in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from recorder.mesh.membership import provision
from recorder.mesh.net.yggdrasil import AdminClient, YggdrasilError
from tests.clips import speech
from tests.conftest import free_port, need, run_cli, terminate, toml_config, wait_until
from tests.fake_papad import FakePapad
from tests.papad_setup import TOKEN, write_secret
from tests.syncthing_harness import SyncthingCluster

PASSWORD = "correct-horse-web-7"
PARK_REASON = "Ensure this field has no more than 100 characters."
CLIPS = {
    "lemon": "Squeeze a lemon over the warm rice, add salt, and serve it to your neighbours. ",
    "harvest": "We sang the harvest song twice, once slowly and once very fast. ",
    "live": "The river rose in the night and the ferry did not run until noon. ",
}


@dataclass
class WebSite:
    url: str
    password: str
    config: Path  # device b's recorder.toml
    data: Path  # b's data dir
    sync_root: Path
    db: Path
    log: Path
    proc: subprocess.Popen[bytes]
    ygg_address: str
    recordings: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name: sidecars
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def json(self, path: str) -> Any:
        res = self.get(path)
        assert res.status_code == 200, (path, res.status_code, res.text)
        return res.json()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = run_cli("--config", str(self.config), "ctl", *args, env=self.env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out

    def status(self) -> dict[str, Any]:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self.json("/api/status")

    def published(self) -> list[dict[str, Any]]:
        own = self.sync_root / "dev-b" / "recordings"
        return [json.loads(p.read_text()) for p in sorted(own.rglob("*.json"))]

    def wait_idle_and_published(self, n: int) -> None:
        wait_until(lambda: len(self.published()) >= n and self.status()["state"] == "idle",
                   60, 0.1, f"{n} recordings published and the service idle")

    def login(self, session: requests.Session) -> str:
        """Log `session` in; returns the CSRF token."""
        res = session.post(self.url + "/api/login", json={"password": self.password}, timeout=30)
        assert res.status_code == 200, res.text
        return res.json()["csrf"]


class YggNode:
    """A real yggdrasil daemon without a TUN interface or peers: only its admin socket."""

    def __init__(self, base: Path) -> None:
        binary = need("yggdrasil")
        base.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"unix://{base / 'ygg.sock'}"
        conf = json.loads(subprocess.run([binary, "-genconf", "-json"], capture_output=True,
                                         check=True, timeout=30).stdout)
        conf.update({"AdminListen": self.endpoint, "IfName": "none", "Peers": [], "Listen": [],
                     "MulticastInterfaces": []})
        path = base / "yggdrasil.conf"
        path.write_text(json.dumps(conf))
        path.chmod(0o600)
        self.log = open(base / "yggdrasil.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, "-useconffile", str(path)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def up() -> str:
            assert self.proc.poll() is None, (base / "yggdrasil.log").read_text()
            try:
                return AdminClient(self.endpoint, 2.0).node().address
            except YggdrasilError:
                return ""

        self.address = wait_until(up, 30, 0.05, "yggdrasil admin socket")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _record(cfg: Path, clip: Path, title: str, *tags: str, env: dict[str, str]) -> dict:
    args = ["--config", str(cfg), "record", "--source", f"file:{clip}", "--fast", "--json",
            "--title", title]
    for tag in tags:
        args += ["--tag", tag]
    out = run_cli(*args, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    sidecar = Path(doc["sidecar"]) if "sidecar" in doc else Path(doc["path"]).with_suffix(".json")
    return json.loads(sidecar.read_text())


def _broken_upload(folder: Path, like: dict[str, Any]) -> dict[str, Any]:
    """A peer recording whose sidecar is valid and whose bytes match its sha256, but which is
    no audio at all: the bridge refuses it (it must decode)."""
    junk = b"OggS" + bytes(range(256)) * 40
    rid = like["recording_id"][:-8] + "badc0ded"
    path = f"recordings/2026/01/02/20260102T000000Z_dev-a_{rid[-8:]}.ogg"
    doc = {**like, "recording_id": rid, "path": path, "title": "Broken upload", "tags": [],
           "bytes": len(junk), "sha256": hashlib.sha256(junk).hexdigest(),
           "started_at": "2026-01-02T00:00:00.000Z", "bookmarks": []}
    doc.pop("audio_id", None)
    doc.pop("duplicate_of", None)
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    (folder / path).write_bytes(junk)
    (folder / path).with_suffix(".json").write_text(json.dumps(doc))
    return doc


@pytest.fixture(scope="session")
def web_site(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    clips = {}
    for name, text in CLIPS.items():
        clips[name] = base / f"{name}.wav"
        speech(clips[name], text)
    papad = FakePapad().start()
    papad.add_user("recorder", token=TOKEN, groups=(1,))
    ygg = YggNode(base / "ygg")
    proc = None
    log_fh = None
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    env.pop("RECORDER_CONFIG", None)
    with contextlib.ExitStack() as stack:
        stack.callback(papad.stop)
        stack.callback(ygg.stop)
        cluster = stack.enter_context(SyncthingCluster(2, base / "st"))
        a, b = cluster
        cluster.pair_all()
        token = write_secret(base / "papad.token", TOKEN)
        password = write_secret(base / "web-password", PASSWORD)
        port = free_port()

        def sections(inst, **extra):
            out = {
                "device": {"id": inst.recorder_id},
                "storage": {"data_dir": str(inst.root / "data"),
                            "sync_root": str(inst.sync_root), "reserve_mb": 0},
                "syncthing": {"url": inst.url, "api_key_file": str(inst.key_file),
                              "watcher_delay": 60, "rescan_interval": 3600},
                "audio": {"source": f"file:{clips['live']}", "preroll": 0.5},
            }
            out.update(extra)
            return out

        a_cfg = Path(toml_config(base / "a.toml", sections(a)))
        b_cfg = Path(toml_config(base / "b.toml", sections(
            b,
            # One delivery at a time: the first (Lemon rice) is the one papad refuses.
            papad={"api": "papad", "url": papad.url, "token_file": str(token), "timeout": 5.0,
                   "concurrency": 1},
            web={"listen": "127.0.0.1", "port": port, "password_file": str(password)},
            yggdrasil={"admin_endpoint": ygg.endpoint},
            mesh={"rescan_interval": 5.0},
        )))
        recs = {"lemon": _record(b_cfg, clips["lemon"], "Lemon rice", "cooking", "rice",
                                 env=env)}
        recs["harvest"] = _record(b_cfg, clips["harvest"], "Harvest song", "music", env=env)
        recs["chutney"] = _record(a_cfg, clips["lemon"], "Chutney from the hills", "cooking",
                                  env=env)
        bad = a.sync_root / "dev-a" / "recordings" / "2026" / "01" / "01"
        bad.mkdir(parents=True, exist_ok=True)
        (bad / "20260101T000000Z_dev-a_badbadba.json").write_text('{"schema": "nope"}\n')
        recs["broken"] = _broken_upload(a.sync_root / "dev-a", recs["chutney"])
        a.client.scan(provision.folder_id("dev-a"))
        # papad refuses the first registration for good: it is parked with this reason.
        papad.force_error(400, {"title": [PARK_REASON]})
        log = base / "service.log"
        log_fh = open(log, "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", str(b_cfg), "run"],
                                env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        site = WebSite(url=f"http://127.0.0.1:{port}", password=PASSWORD, config=b_cfg,
                       data=b.root / "data", sync_root=b.sync_root,
                       db=b.root / "data" / "state" / "recorder.db", log=log, proc=proc,
                       ygg_address=ygg.address, recordings=recs, env=env)

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                return site.get("/api/status").json().get("state") == "idle"
            return False

        try:
            wait_until(up, 60, 0.1, "the service and its web page")
            # One recording made by the service, with a bookmark 1 s in.
            site.ctl("start")
            time.sleep(1.0)
            site.ctl("mark")
            time.sleep(2.5)
            site.ctl("stop")
            wait_until(lambda: len(site.published()) >= 3, 60, 0.1, "the bookmarked recording")
            recs["marked"] = next(d for d in site.published() if d["bookmarks"])

            seen: dict[str, Any] = {}

            def settled() -> bool:
                items = site.json("/api/recordings")["items"]
                seen["papad"] = {i["title"]: (i["papad"] or {}).get("state") for i in items}
                seen["quarantined"] = site.json("/api/mesh")["bridge"]["quarantined"]
                reasons = " ".join(q["reason"] for q in seen["quarantined"])
                return (len(items) == 4 and seen["papad"].get("Lemon rice") == "parked"
                        and seen["papad"].get("Chutney from the hills") == "registered"
                        and "missing" in reasons and "does not decode" in reasons)

            wait_until(settled, 90, 0.2, "peer import, papad deliveries and the quarantine",
                       detail=lambda: f"the web site did not settle: {seen}\n"
                                      f"{log.read_text()[-3000:]}")
            yield site
        finally:
            terminate(proc)
            log_fh.close()
