"""Secret files, the outbox CLI and the doctor checks (against the real papad): refusal, and no
secret ever shown."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from recorder.cli import database_spec
from recorder.cli import outbox as outbox_cli
from recorder.db import Database
from recorder.errors import ConfigError, RecorderError
from recorder.papad.client import make_client
from recorder.papad.doctor import papad_checks
from recorder.papad.outbox import Outbox
from recorder.secrets import read_secret
from tests.papad_proxy import FaultProxy
from tests.papad_recordings import make_recording
from tests.papad_setup import TOKEN, current_config, fast_worker, real_config, write_secret


def test_read_secret_strips_and_accepts_private_file(tmp_path):
    path = write_secret(tmp_path / "t", "  abc \n")
    assert read_secret(path, "papad.token_file") == "abc"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660])  # 0640: tests/test_never_lose.py
def test_group_or_world_readable_secret_is_refused(tmp_path, mode):
    path = write_secret(tmp_path / "token", TOKEN, mode)
    with pytest.raises(ConfigError) as info:
        read_secret(path, "papad.token_file")
    message = str(info.value)
    assert "papad.token_file" in message and str(path) in message
    assert f"chmod 600 {path}" in message
    assert TOKEN not in message and "\n" not in message


def test_missing_empty_and_unset_secrets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret(tmp_path / "nope", "papad.token_file")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(write_secret(tmp_path / "empty", "  "), "papad.token_file")
    with pytest.raises(ConfigError, match="no secret file configured"):
        read_secret(None, "papad.token_file")


def test_world_readable_token_file_refused_at_start(cfg_factory, tmp_path):
    cfg = current_config(cfg_factory, tmp_path, "http://127.0.0.1:9")
    cfg.papad.token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        make_client(cfg.papad)
    pw = write_secret(tmp_path / "pw", "secret-pw", 0o604)
    jwt = cfg_factory(papad={"api": "papad", "auth": "jwt", "username": "u",
                             "password_file": str(pw)})
    with pytest.raises(ConfigError, match=r"papad\.password_file"):
        make_client(jwt.papad)


def run_cli(cfg, argv):
    parser = argparse.ArgumentParser()
    outbox_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args, cfg)


@pytest.fixture
def papad(papad_upstream):
    with FaultProxy(papad_upstream.url) as proxy:
        yield papad_upstream, proxy


def test_cli_list_and_retry_show_state_never_secrets(papad, cfg_factory, tmp_path, capsys,
                                                     caplog):
    caplog.set_level(logging.DEBUG)
    server, proxy = papad
    cfg = real_config(cfg_factory, tmp_path, server, url=proxy.url)
    outbox = Outbox(Database(cfg.db_path))
    client = make_client(cfg.papad)
    docs = [make_recording(cfg.layout.device_folder, index=i) for i in range(2)]
    for doc, ogg in docs:
        outbox.enqueue(doc, ogg)
    proxy.answer(400, {"detail": "Bad upload"}, method="POST", path="/api/v1/archive/")
    fast_worker(outbox, client).run_once()

    assert run_cli(cfg, ["outbox", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["counts"] == {"pending": 0, "delivered": 1, "parked": 1}
    parked = next(e for e in listing["entries"] if e["state"] == "parked")
    assert "Bad upload" in parked["last_error"]
    assert run_cli(cfg, ["outbox", "list"]) == 0
    text = capsys.readouterr().out
    assert "parked" in text and "Bad upload" in text

    assert run_cli(cfg, ["outbox", "retry", str(parked["id"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entry"]["state"] == "pending"
    fast_worker(outbox, client).run_once()
    assert run_cli(cfg, ["outbox", "retry", "--all"]) == 0
    assert "0 entries due now" in capsys.readouterr().out
    with pytest.raises(RecorderError, match="does not exist"):
        run_cli(cfg, ["outbox", "retry", "999"])
    with pytest.raises(RecorderError, match="already delivered"):
        run_cli(cfg, ["outbox", "retry", str(parked["id"])])
    for doc, _ in docs:
        server.one_media(doc["recording_id"])

    assert run_cli(cfg, ["outbox", "list", "--json"]) == 0
    everything = capsys.readouterr()
    assert server.token not in everything.out and server.token not in everything.err
    assert server.token not in caplog.text
    outbox.database.close()
    client.close()


def test_doctor_all_good(papad_real, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_real)
    checks = papad_checks(cfg.papad, database_spec(cfg))
    assert [c["name"] for c in checks] == [
        "papad reachable", "papad credentials accepted", "papad group", "papad listing",
        "papad outbox depth"]  # no database yet: no oldest entry
    assert all(c["ok"] for c in checks), checks
    secret = papad_real.token or papad_real.password
    assert secret not in json.dumps(checks)


def test_doctor_reports_each_failure(papad_upstream, cfg_factory, tmp_path):
    cfg = real_config(cfg_factory, tmp_path, papad_upstream, group=5)
    by_name = {c["name"]: c for c in papad_checks(cfg.papad, database_spec(cfg))}
    assert by_name["papad credentials accepted"]["ok"]
    assert not by_name["papad group"]["ok"]
    assert "not a member of group 5" in by_name["papad group"]["detail"]
    write_secret(cfg.papad.token_file, "wrong-token")
    by_name = {c["name"]: c for c in papad_checks(cfg.papad, database_spec(cfg))}
    assert by_name["papad reachable"]["ok"]
    assert not by_name["papad credentials accepted"]["ok"]
    assert "HTTP 401" in by_name["papad credentials accepted"]["detail"]
    assert "wrong-token" not in json.dumps(list(by_name.values()))
    down = current_config(cfg_factory, tmp_path, "http://127.0.0.1:9")
    by_name = {c["name"]: c for c in papad_checks(down.papad, database_spec(down))}
    assert not by_name["papad reachable"]["ok"]
    cfg.papad.token_file.chmod(0o644)
    by_name = {c["name"]: c for c in papad_checks(cfg.papad, database_spec(cfg))}
    assert not by_name["papad credentials accepted"]["ok"]
    assert "chmod 600" in by_name["papad credentials accepted"]["detail"]


def test_doctor_outbox_depth_and_age(cfg_factory, tmp_path):
    from recorder.papad.doctor import outbox_checks

    cfg = current_config(cfg_factory, tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(Database(cfg.db_path), clock=lambda: 1_000_000.0)
    outbox.enqueue(*make_recording(cfg.layout.device_folder))
    outbox.database.close()
    by_name = {c["name"]: c for c in outbox_checks(database_spec(cfg))}
    assert by_name["papad outbox depth"] == {
        "name": "papad outbox depth", "ok": True, "detail": "1 pending, 0 parked"}
    assert not by_name["papad outbox oldest entry"]["ok"]  # queued long ago
