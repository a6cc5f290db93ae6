"""The roster a peer publishes (``<device-id>/mesh/members.json``) and the invite code, checked
without Syncthing: hostile or damaged files are refused with a reason, decisions merge the same
whatever order they arrive in, and codes survive a round trip and reject damage."""

from __future__ import annotations

import itertools
import json
import os

import pytest

from recorder.db import Database
from recorder.mesh.membership import invite
from recorder.mesh.membership.roster import (
    MEMBER,
    REMOVED,
    Roster,
    RosterError,
    Statement,
    read_peer,
)

A = "RQEU7DH-ZOQ2WHF-J7THEV5-2EKASDW-EL3XMYS-UKS6U2U-KRTSKXC-OJ6EEQC"
B = "NCQF5LB-A6K4NGT-JQOGCSN-UXXOHYF-BZOGN3V-TH7KFAY-WKSXZIL-LT5FPQK"
C = "5BOUH4U-PHG5WIT-MPY2RQ4-EJDJIR2-WW7TLOX-VCMXN7E-DXIU7UB-RXLOZQT"


def _roster_file(folder, doc) -> None:
    path = folder / "mesh" / "members.json"
    path.parent.mkdir(parents=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


def _good(**changes):
    doc = {"schema": "recorderpi.mesh/1", "device_id": "dev-b", "syncthing_id": B,
           "addresses": ["tcp://[200::1]:22000"],
           "members": [{"syncthing_id": C, "device_id": "dev-c", "state": "member",
                        "since": 1.8e9, "addresses": []}]}
    doc.update(changes)
    return doc


def test_a_valid_peer_roster_is_read(tmp_path):
    folder = tmp_path / "dev-b"
    _roster_file(folder, _good())
    peer = read_peer(folder)
    assert peer.syncthing_id == B and peer.addresses == ("tcp://[200::1]:22000",)
    assert peer.statements == (Statement(C, "dev-c", MEMBER, 1.8e9, ()),)
    assert read_peer(tmp_path / "nobody") is None


@pytest.mark.parametrize(("doc", "reason"), [
    ("{not json", "roster is not valid JSON"),
    ([1, 2], "not a recorderpi.mesh/1 document"),
    (_good(device_id="dev-a"), "roster names device 'dev-a' but lies in 'dev-b''s folder"),
    (_good(syncthing_id="nope"), "syncthing_id is not a Syncthing device id"),
    (_good(members=[{"syncthing_id": C, "device_id": "../etc", "state": "member",
                     "since": 1.0}]), "entry 1: device_id is not a recorder id"),
    (_good(members=[{"syncthing_id": C, "device_id": "dev-c", "state": "owner",
                     "since": 1.0}]), "entry 1: state must be member or removed"),
    (_good(members=[{"syncthing_id": C, "device_id": "dev-c", "state": "member",
                     "since": True}]), "entry 1: since is not a time"),
    (_good(addresses=["file:///etc/passwd"]), "addresses must be at most 8 tcp://"),
    (_good(members=[{}] * 1001), "members must be a list of at most 1000"),
])
def test_hostile_rosters_are_refused_with_a_reason(tmp_path, doc, reason):
    folder = tmp_path / "dev-b"
    _roster_file(folder, doc)
    with pytest.raises(RosterError) as exc:
        read_peer(folder)
    assert reason in str(exc.value)


def test_a_symlinked_roster_is_refused(tmp_path):
    folder = tmp_path / "dev-b"
    (folder / "mesh").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(_good()))
    os.symlink(secret, folder / "mesh" / "members.json")
    with pytest.raises(RosterError, match="roster"):
        read_peer(folder)


def test_decisions_merge_the_same_in_any_order(tmp_path):
    statements = [Statement(C, "dev-c", MEMBER, 100.0), Statement(C, "dev-c", REMOVED, 200.0),
                  Statement(C, "dev-c", MEMBER, 300.0, ("tcp://10.0.0.3:22000",)),
                  Statement(A, "dev-a", MEMBER, 50.0), Statement(A, "dev-a", REMOVED, 50.0)]
    results = set()
    for n, order in enumerate(itertools.permutations(statements)):
        roster = Roster(Database(tmp_path / f"r{n}.db"))
        for stmt in order:
            roster.merge(stmt)
        results.add(tuple((s.syncthing_id, s.state, s.since) for s in roster.all()))
        if n > 20:
            break
    # The latest decision wins; at the same time, removal wins.
    assert results == {((A, REMOVED, 50.0), (C, MEMBER, 300.0))}


def test_invite_codes_round_trip_and_refuse_damage():
    inv = invite.Invite(b"0123456789", A, "dev-a",
                        ("tcp://[200:1234::1]:22000", "tcp://10.0.0.5:22000", "quic://x:1"),
                        frozenset({invite.id_digest("dev-a"), invite.id_digest("dev-b")}))
    code = inv.encode()
    assert code.startswith("RPI1-") and set(code) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567-1")
    assert invite.decode(code.lower().replace("-", " ")) == inv
    assert inv.id_taken("dev-b") and not inv.id_taken("dev-c")
    for i in range(5, len(code) - 1):  # the last character also holds padding bits
        if code[i] == "-":
            continue
        bad = code[:i] + ("B" if code[i] != "B" else "C") + code[i + 1:]
        with pytest.raises(invite.InviteError, match="invite code"):
            invite.decode(bad)
    with pytest.raises(invite.InviteError, match="not a recorderpi invite"):
        invite.decode("hello")
    assert invite.syncthing_id_from_bytes(invite.syncthing_id_to_bytes(B)) == B
    name = invite.join_name(inv.token, B, "dev-b")
    assert invite.parse_join_name(name) == ("dev-b", invite.proof(inv.token, B, "dev-b"))
    assert invite.proof(inv.token, C, "dev-b") != invite.proof(inv.token, B, "dev-b")
