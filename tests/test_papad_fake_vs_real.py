"""The fake papad is honest where it overlaps the real servers: the same requests go to
`tests.fake_papad.FakePapad(flavour)` and to the real papad of that flavour (from the kit), and
the status codes and response shapes (keys, nesting, value types) must agree.

papadam's own flaky 500 ("Event loop is closed", on uploads and deletes) is the one difference
allowed: the real server is asked again, as the recorder's outbox does.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests

from tests.fake_papad import FakePapad
from tests.papad_recordings import ogg_bytes


def shape(value: Any) -> Any:
    """The structure of a JSON value: dict keys with their shapes, a list's first element,
    the type name of anything else."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


class Side:
    """One server (fake or real) and the recorder user's credentials on it."""

    def __init__(self, url: str, flavour: str, token: str | None, username: str,
                 password: str) -> None:
        self.url, self.flavour = url, flavour
        self.session = requests.Session()
        self.session.trust_env = False
        if flavour == "upstream":
            self.auth = {"Authorization": f"Token {token}"}
        else:
            r = self.session.post(f"{url}/auth/jwt/create/", timeout=30,
                                  json={"username": username, "password": password})
            assert r.status_code == 200, r.text
            self.auth = {"Authorization": f"Bearer {r.json()['access']}"}

    def call(self, method: str, path: str, *, flaky: bool = False, auth: Any = True,
             **kw: Any) -> requests.Response:
        headers = self.auth if auth is True else (auth or {})
        for _ in range(4 if flaky else 1):
            resp = self.session.request(method, self.url + path, headers=headers, timeout=30,
                                        **kw)
            if not (flaky and resp.status_code == 500 and "Event loop is closed" in resp.text):
                break
        return resp


@pytest.fixture
def sides(papad_real):
    fake = FakePapad(flavour=papad_real.flavour)
    fake.add_user(papad_real.username, token=papad_real.token, password=papad_real.password,
                  groups=(1,))
    fake.add_user("other", groups=(2,))
    fake.groups[1]["name"], fake.groups[2]["name"] = "Radio", "Closed"
    with fake:
        yield [Side(s.url, papad_real.flavour, papad_real.token, papad_real.username,
                    papad_real.password) for s in (fake, papad_real)]


def both(sides, method, path, **kw):
    """(fake response, real response)."""
    return tuple(side.call(method, path, **kw) for side in sides)


def same_status(pair, *expected):
    fake, real = pair
    assert fake.status_code == real.status_code, (fake.status_code, real.status_code,
                                                  fake.text[:200], real.text[:200])
    if expected:
        assert real.status_code in expected, (real.status_code, real.text[:300])
    return pair


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out or {prefix: "{}"}
    if isinstance(value, list):
        return _flat(value[0], prefix + "[]") if value else {prefix: "[]"}
    return {prefix: value}


def same_shape(pair):
    fake, real = (_flat(shape(r.json())) for r in same_status(pair))
    differ = {k: (fake.get(k), real.get(k)) for k in fake.keys() | real.keys()
              if fake.get(k) != real.get(k)}
    assert not differ, f"{pair[1].request.method} {pair[1].request.path_url}: (fake, real) {differ}"
    return pair


def upload_fields(name: str, **over: Any) -> dict[str, Any]:
    fields = {"group": "1", "name": name, "description": "compared", "tags": "cmp,Fake-Real"}
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


def test_fake_and_real_papad_agree(sides, papad_real):
    flavour = papad_real.flavour
    data = ogg_bytes(0.3)
    upload = {"upload": ("a.ogg", data, "audio/ogg")}
    marker = "cmp" + secrets.token_hex(6)

    # The listing: searchFrom needed on upstream; group is a permission check.
    same_status(both(sides, "GET", "/api/v1/archive/?group=1"),
                500 if flavour == "upstream" else 200)
    same_status(both(sides, "GET", "/api/v1/archive/?searchFrom=my_collections&group=2"), 403)
    same_status(both(sides, "GET", "/api/v1/archive/?searchFrom=my_collections&group=1"), 200)

    # Uploads: the caller mistakes and their (sometimes 500) answers.
    same_status(both(sides, "POST", "/api/v1/archive/", data=upload_fields("x", group=None),
                     files=upload), 500 if flavour == "upstream" else 403)
    same_status(both(sides, "POST", "/api/v1/archive/", data=upload_fields("x", tags=None),
                     files=upload, flaky=True), 500)
    same_status(both(sides, "POST", "/api/v1/archive/",
                     data=upload_fields("x", description=None), files=upload), 500)
    same_status(both(sides, "POST", "/api/v1/archive/", data=upload_fields("x", group="2"),
                     files=upload), 403)

    # A good upload, twice (no de-duplication): 200, the same shape, upload relative.
    created = []
    for n in range(2):
        pair = same_shape(both(sides, "POST", "/api/v1/archive/",
                               data=upload_fields(f"{marker} {n}"), files=upload, flaky=True))
        for resp in pair:
            assert resp.json()["upload"].startswith("/media/archive/")
            assert {t["name"] for t in resp.json()["tags"]} == {"cmp", "fake-real"}
        created.append([r.json()["uuid"] for r in pair])

    # Listing: oldest first, absolute upload, paginated.
    pair = same_shape(both(sides, "GET", f"/api/v1/archive/?searchFrom=my_collections&search="
                                         f"{marker}&searchWhere=name&page_size=1"))
    for i, resp in enumerate(pair):
        body = resp.json()
        assert body["count"] == 2 and body["next"] and body["previous"] is None
        assert body["results"][0]["uuid"] == created[0][i]  # oldest first
        assert body["results"][0]["upload"].startswith("http://")
    same_status(both(sides, "GET", f"/api/v1/archive/?searchFrom=my_collections&search="
                                   f"{marker}&searchWhere=description"), 200)
    for i, side in enumerate(sides):  # the detail
        resp = side.call("GET", f"/api/v1/archive/{created[0][i]}/")
        assert resp.status_code == 200
    same_shape(tuple(side.call("GET", f"/api/v1/archive/{created[0][i]}/")
                     for i, side in enumerate(sides)))
    same_shape(both(sides, "GET", "/auth/users/me/"))

    # The other scheme: 401, and WWW-Authenticate names the expected one.
    other = ({"Authorization": "Bearer abc.def.ghi"} if flavour == "upstream"
             else {"Authorization": "Token 0123456789abcdef"})
    pair = same_status(both(sides, "GET", "/auth/users/me/", auth=other), 401)
    assert pair[0].headers["WWW-Authenticate"] == pair[1].headers["WWW-Authenticate"]
    login = "/auth/jwt/create/" if flavour == "upstream" else "/auth/token/login/"
    same_status(both(sides, "POST", login, auth=None, data={"username": "u", "password": "p"}),
                404)

    # Annotations: 200 (upstream) / 201 (papadam), shapes, PATCH, soft delete.
    fields = {"annotation_text": "compared", "media_target": "t=0,0.2", "tags": "a,B"}
    notes = []
    for i, side in enumerate(sides):
        notes.append(side.call("POST", "/api/v1/annotate/",
                               data={**fields, "media_reference_id": created[0][i]}))
    same_shape(tuple(notes))
    assert notes[1].status_code == (200 if flavour == "upstream" else 201)
    same_status(both(sides, "POST", "/api/v1/annotate/",
                     data={**fields, "media_reference_id": "6d0c9c5e-2f9e-4c39-9e0e-3b1f0f6f1a11"}),
                500 if flavour == "upstream" else 403)
    same_shape(tuple(side.call("GET", f"/api/v1/annotate/search/{created[0][i]}/")
                     for i, side in enumerate(sides)))
    same_shape(tuple(side.call("PATCH", f"/api/v1/annotate/{notes[i].json()['uuid']}/",
                               data={"annotation_text": "changed", "tags": "c"})
                     for i, side in enumerate(sides)))
    deleted = tuple(side.call("DELETE", f"/api/v1/annotate/{notes[i].json()['uuid']}/")
                    for i, side in enumerate(sides))
    assert deleted[0].status_code == 204
    assert deleted[1].status_code in ((204,) if flavour == "upstream" else (204, 500))
    same_status(tuple(side.call("PATCH", f"/api/v1/annotate/{notes[i].json()['uuid']}/",
                                data={"annotation_text": "again"})
                      for i, side in enumerate(sides)), 404)
    assert all(side.call("GET", f"/api/v1/annotate/search/{created[0][i]}/").json() == []
               for i, side in enumerate(sides))
    # A deleted media: gone from lists, its detail still answers.
    deleted = tuple(side.call("DELETE", f"/api/v1/archive/{created[1][i]}/")
                    for i, side in enumerate(sides))
    assert deleted[0].status_code == 204 and deleted[1].status_code in (204, 500)
    same_status(tuple(side.call("GET", f"/api/v1/archive/{created[1][i]}/")
                      for i, side in enumerate(sides)), 200)
    pair = same_status(both(sides, "GET", f"/api/v1/archive/?searchFrom=my_collections&search="
                                          f"{marker}&searchWhere=name"), 200)
    assert [r.json()["count"] for r in pair] == [1, 1]
