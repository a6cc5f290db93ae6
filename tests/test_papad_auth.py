"""Auth against the real papad servers: both schemes, the wrong-scheme message, `recorder
doctor` through the CLI, and papadam's throttling (429 honoured, the login budget kept)."""

from __future__ import annotations

import json
import logging
import time

import requests

from recorder.db import Database
from recorder.papad.client import make_client
from recorder.papad.outbox import Outbox
from tests.conftest import free_port, run_cli, toml_config
from tests.papad_kit import OTHER_GROUP
from tests.papad_recordings import make_recording
from tests.papad_setup import client_and_outbox, drain, fast_worker, real_config, write_secret

LOGIN = ("POST", "/auth/jwt/create/")


def doctor(tmp_path, papad_section) -> dict[str, dict]:
    """`recorder doctor --json` for a config with this [papad] section: its papad lines."""
    path = toml_config(tmp_path / "doctor.toml", {
        "device": {"id": "testdev01"},
        "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 0},
        "audio": {"source": "file:/nonexistent.wav"},
        "papad": papad_section,
    })
    proc = run_cli("--config", path, "doctor", "--json", timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    return {c["name"]: c for c in out["checks"] if c["name"].startswith("papad")}


def wrong_scheme_section(papad, tmp_path):
    """The other flavour's auth settings for this server."""
    if papad.auth == "token":
        pw = write_secret(tmp_path / "pw", papad.password)
        return {"api": "papad", "url": papad.url, "auth": "jwt", "username": papad.username,
                "password_file": str(pw), "group": 1}
    tok = write_secret(tmp_path / "tok", "0123456789abcdef0123456789abcdef01234567")
    return {"api": "papad", "url": papad.url, "auth": "token", "token_file": str(tok),
            "group": 1}


EXPECTS = {"upstream": "this papad expects Token", "papadam": "this papad expects Bearer"}


def test_doctor_reports_a_healthy_papad(papad_real, tmp_path):
    checks = doctor(tmp_path, papad_real.papad_section(tmp_path))
    assert checks["papad reachable"]["ok"], checks
    assert checks["papad credentials accepted"]["ok"], checks
    assert checks["papad credentials accepted"]["detail"] == "logged in as recorder"
    assert checks["papad group"] == {"name": "papad group", "ok": True, "severity": "warning",
                                     "detail": "group 1 Radio: recorder is a member"}
    assert checks["papad listing"]["ok"] and "media visible to recorder" in (
        checks["papad listing"]["detail"])
    assert checks["papad outbox depth"]["ok"]


def test_doctor_names_a_group_the_user_is_not_in(papad_real, tmp_path):
    checks = doctor(tmp_path, papad_real.papad_section(tmp_path, group=OTHER_GROUP))
    group = checks["papad group"]
    assert not group["ok"]
    assert group["detail"] == ("recorder is not a member of group 2 (papad.group); "
                               "member of: 1 Radio")


def test_doctor_when_papad_is_down(tmp_path, papad_upstream):
    section = papad_upstream.papad_section(tmp_path, url=f"http://127.0.0.1:{free_port()}",
                                           timeout=2.0)
    checks = doctor(tmp_path, section)
    assert not checks["papad reachable"]["ok"]
    assert "cannot connect" in checks["papad reachable"]["detail"]


def test_wrong_scheme_is_named_in_one_line_by_doctor_and_the_log(papad_real, cfg_factory,
                                                                 tmp_path, caplog):
    expects = EXPECTS[papad_real.flavour]
    section = wrong_scheme_section(papad_real, tmp_path)
    checks = doctor(tmp_path, section)
    cred = checks["papad credentials accepted"]
    assert not cred["ok"] and cred["detail"].startswith(expects), cred
    assert "\n" not in cred["detail"]
    # The outbox waits (the whole queue: every request would be refused) and says why.
    caplog.set_level(logging.INFO)
    cfg = cfg_factory(papad=section)
    with client_and_outbox(cfg) as (client, outbox):
        doc, ogg = make_recording(cfg.layout.device_folder)
        outbox.enqueue(doc, ogg)
        fast_worker(outbox, client).run_once()
        [entry] = outbox.entries()
    assert entry.state == "pending" and entry.last_error.startswith(expects)
    lines = [r.getMessage() for r in caplog.records if expects in r.getMessage()]
    assert lines and all("\n" not in line for line in lines)
    assert papad_real.media(doc["recording_id"]) == []


def test_both_schemes_register(papad_real, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_real)
    assert cfg.papad.auth == {"upstream": "token", "papadam": "jwt"}[papad_real.flavour]
    with client_and_outbox(cfg) as (client, outbox):
        doc, ogg = make_recording(cfg.layout.device_folder, bookmarks=[{"at": 0.1, "label": "x"}])
        outbox.enqueue(doc, ogg)
        worker = fast_worker(outbox, client)
        drain(worker, outbox, delivered=1)
        worker.stop()
    media = papad_real.one_media(doc["recording_id"])
    assert [a["annotation_text"] for a in papad_real.annotations(media["uuid"])] == ["x"]


def test_papadam_throttling_is_honoured_and_never_burns_the_login_budget(papad_fresh,
                                                                         cfg_factory, tmp_path):
    papad = papad_fresh("papadam", throttle=True)
    # The recorder account's hourly budget (1000) is spent by someone else using it.
    papad.spend_budget("user", 1000)
    throttled = papad.request("GET", "/auth/users/me/")
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 3000
    cfg = real_config(cfg_factory, tmp_path, papad)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    doc, ogg = make_recording(cfg.layout.device_folder)
    outbox.enqueue(doc, ogg)
    worker = fast_worker(outbox, client)
    assert worker.run_once() == 0
    [entry] = outbox.entries()
    assert entry.state == "pending" and "HTTP 429" in entry.last_error
    assert entry.next_attempt_at > time.time() + 600  # papad's Retry-After, not our 20 ms
    logins = papad.access_count(*LOGIN)
    for _ in range(3):  # an impatient operator: the 429 is not taken for a login problem
        outbox.retry_all()
        worker.run_once()
    assert papad.access_count(*LOGIN) == logins
    assert outbox.entries()[0].state == "pending"
    worker.stop()
    client.close()

    # Now the anonymous budget (100 an hour, logins and health checks) is spent too: a
    # restarted service's login is throttled, and it does not try again until Retry-After.
    papad.spend_budget("anon", 100)
    assert requests.get(papad.url + "/healthcheck/", timeout=30).status_code == 429
    client = make_client(cfg.papad)
    worker = fast_worker(outbox, client)
    outbox.retry_all()
    worker.run_once()
    [entry] = outbox.entries()
    assert entry.state == "pending" and "throttle" in entry.last_error
    assert entry.next_attempt_at > time.time() + 60
    logins = papad.access_count(*LOGIN)
    for _ in range(3):
        outbox.retry_all()
        worker.run_once()
    assert papad.access_count(*LOGIN) == logins
    worker.stop()
    client.close()
    outbox.database.close()
