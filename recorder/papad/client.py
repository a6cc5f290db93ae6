"""papad clients for both API generations behind one `PapadClient` protocol.

- :class:`CurrentPapadClient`: papad / papadam, ``/api/v1/``, multipart uploads, token or JWT.
- :class:`LegacyPapadClient`: papad-api (Bottle + MongoDB), which stores a URL, not a file.

Clients take validated sidecar dicts and map them with :mod:`recorder.papad.mapping`. They
never deduplicate on their own: the outbox decides when to look up before creating.

What the real current papad servers do (both upstream papad and papadam), which shapes
:class:`CurrentPapadClient`:

- ``GET /api/v1/archive/`` needs ``searchFrom``: without it upstream answers 500. With
  ``searchFrom=my_collections`` the list holds every media of every group the user belongs to,
  oldest first; ``group=N`` is only a permission check (403 if not a member), so the client
  filters by group id itself. ``page_size`` is honoured without a maximum.
- ``search=X&searchWhere=description`` filters on the server (case-insensitive substring).
  ``searchWhere=tags`` does not work (papad tests each *character* of X as a tag name), so
  the lookup of one recording searches the description, which names the recording id, and
  checks the description line (or, on media from older versions, the machine tag) of each hit.
- Every media in an answer nests its group, with the tag counts of the whole group computed
  for each item: a listing costs papad time per item that grows with the archive (a page of
  200 took 9 s at 1,000 media, measured), so nothing here lists the whole group.
- Objects are nested: ``group`` and ``created_by`` are objects, tags ``{"id","name","count"}``;
  ``upload`` is relative in the create answer and absolute in lists.
- Media create answers 200; annotation create 200 (upstream) or 201 (papadam).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from recorder.config import PapadConfig
from recorder.papad import mapping
from recorder.papad.auth import JwtAuth, TokenAuth
from recorder.papad.errors import PapadError, PermanentError, RetryableError
from recorder.papad.http import Transport, decode_json
from recorder.papad.multipart import MultipartBody
from recorder.recording import Recording
from recorder.secrets import read_secret

log = logging.getLogger(__name__)

Sidecar = Mapping[str, Any]
_MAX_PAGES = 1000  # a runaway `next` chain must end
PAGE_SIZE = 200  # media per listing page: few requests, answers of a few hundred kB


@dataclass(frozen=True)
class RemoteAnnotation:
    """An annotation as papad holds it: its papad id (uuid or legacy ``$oid``) and content."""

    id: str
    media_target: str
    text: str
    tags: tuple[str, ...]


def check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    """One `recorder doctor` line."""
    return {"name": name, "ok": ok, "detail": detail}


class PapadClient(Protocol):
    """What the outbox needs from a papad server."""

    api: str
    annotation_span: float

    def find_media(self, sidecar: Sidecar) -> str | None:
        """The remote id of an existing media for this recording, or None."""
        ...

    def create_media(self, sidecar: Sidecar, ogg_path: Path) -> str:
        """Register the recording; return its remote id (media uuid or legacy ``$oid``)."""
        ...

    def annotation_keys(self, remote_id: str, sidecar: Sidecar) -> set[tuple[str, str]]:
        """(media_target, text) of the annotations already on this media."""
        ...

    def create_annotation(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> None:
        """Post one bookmark as an annotation on the media."""
        ...

    def checks(self) -> list[dict[str, Any]]:
        """Doctor lines: reachable, credentials accepted, group (or station) exists."""
        ...

    # The annotation exchange of the mesh bridge (recorder.mesh.exchange.annotations) also needs:

    def list_annotations(self, remote_id: str, sidecar: Sidecar) -> list[RemoteAnnotation]:
        """Every annotation on this media, with its papad id."""
        ...

    def post_annotation(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> str:
        """Create one annotation on the media; return its papad id."""
        ...

    def update_annotation(
        self, annotation_id: str, remote_id: str, sidecar: Sidecar,
        annotation: mapping.Annotation,
    ) -> None:
        """Replace the target, text and tags of an annotation (PermanentError if it is gone)."""
        ...

    def delete_annotation(self, annotation_id: str) -> None:
        """Delete an annotation; one already gone counts as deleted."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _tag_names(tags: Any) -> list[str]:
    # papad has answered tags as a list of names, of {"name": ...} objects, or a CSV string.
    if isinstance(tags, str):
        return [t.strip().lower() for t in tags.split(",")]
    names = []
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, str):
                names.append(tag.strip().lower())
            elif isinstance(tag, dict) and isinstance(tag.get("name"), str):
                names.append(tag["name"].strip().lower())
    return names


def _group_id(item: Mapping[str, Any]) -> int | None:
    """The group id of a media: papad nests the group object (``{"id": 1, ...}``)."""
    group = item.get("group")
    if isinstance(group, dict):
        group = group.get("id")
    if isinstance(group, bool):
        return None
    if isinstance(group, int):
        return group
    if isinstance(group, str) and group.strip().isdigit():
        return int(group)
    return None


def _recording_id_of(item: Mapping[str, Any]) -> str | None:
    found = mapping.recording_id_from_tags(_tag_names(item.get("tags")))
    if found:
        return found
    description = item.get("description")
    if isinstance(description, str):
        for line in description.splitlines():
            prefix = mapping.description_marker("")
            if line.startswith(prefix):
                return line[len(prefix) :].strip() or None
    return None


class CurrentPapadClient:
    """papad-backend and papadam: ``/api/v1/archive/`` and ``/api/v1/annotate/``."""

    api = "papad"

    def __init__(self, transport: Transport, group: int, annotation_span: float) -> None:
        self.transport = transport
        self.group = group
        self.annotation_span = annotation_span

    def __repr__(self) -> str:
        return f"CurrentPapadClient({self.transport.base_url!r}, group={self.group})"

    def _media(self, **search: str) -> Iterator[dict[str, Any]]:
        """Media of our group, oldest first, optionally filtered by papad's `search`."""
        page: str | None = "/api/v1/archive/"
        params: dict[str, Any] | None = {
            "searchFrom": "my_collections", "group": self.group, "page_size": PAGE_SIZE, **search,
        }
        for _ in range(_MAX_PAGES):
            if page is None:
                return
            body = self.transport.get_json(page, params)
            if isinstance(body, list):  # an unpaginated deployment
                items: list[Any] = body
                page = None
            elif isinstance(body, dict):
                items = body.get("results") or []
                page, params = body.get("next"), None
            else:
                raise RetryableError("papad GET /api/v1/archive/: unexpected response shape")
            for item in items:
                # `group` is a permission check, not a filter: other groups are listed too.
                if isinstance(item, dict) and _group_id(item) in (self.group, None):
                    yield item

    def find_media(self, sidecar: Sidecar) -> str | None:
        wanted = sidecar["recording_id"]
        # The description names the recording id: papad filters, we check each hit.
        for item in self._media(search=wanted, searchWhere="description"):
            if _recording_id_of(item) == wanted and isinstance(item.get("uuid"), str):
                return item["uuid"]
        return None

    def create_media(self, sidecar: Sidecar, ogg_path: Path) -> str:
        rec = Recording.from_doc(sidecar)
        fields = {
            "group": str(self.group),
            "name": mapping.media_name(rec),
            "description": mapping.media_description(rec),
            "tags": mapping.wire_tags(mapping.media_tags(rec, marker=False)),
        }
        resp = self.transport.request(
            "POST",
            "/api/v1/archive/",
            form=lambda: MultipartBody(fields, "upload", ogg_path, "audio/ogg"),
        )
        body = decode_json(resp, "POST /api/v1/archive/")
        uuid = body.get("uuid") if isinstance(body, dict) else None
        if not isinstance(uuid, str) or not uuid:
            # Created, but we cannot tell its id: the next attempt looks it up.
            raise RetryableError("papad POST /api/v1/archive/: HTTP 200 without a media uuid")
        return uuid

    def annotation_keys(self, remote_id: str, sidecar: Sidecar) -> set[tuple[str, str]]:
        body = self.transport.get_json(f"/api/v1/annotate/search/{quote(remote_id)}/")
        items = body.get("results", []) if isinstance(body, dict) else body
        keys = set()
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                keys.add((str(item.get("media_target", "")), str(item.get("annotation_text", ""))))
        return keys

    def create_annotation(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> None:
        self._post_annotation(remote_id, annotation)

    def _post_annotation(self, remote_id: str, annotation: mapping.Annotation) -> Any:
        fields = {
            "media_reference_id": remote_id,
            "annotation_text": annotation.text,
            "media_target": annotation.media_target,
            "tags": mapping.wire_tags(annotation.tags),  # upstream needs all four fields
        }
        return self.transport.request(
            "POST", "/api/v1/annotate/", form=lambda: MultipartBody(fields)
        )

    def list_annotations(self, remote_id: str, sidecar: Sidecar) -> list[RemoteAnnotation]:
        body = self.transport.get_json(f"/api/v1/annotate/search/{quote(remote_id)}/")
        items = body.get("results", []) if isinstance(body, dict) else body
        out = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("uuid"), str) and item["uuid"]:
                out.append(RemoteAnnotation(
                    id=item["uuid"],
                    media_target=str(item.get("media_target") or ""),
                    text=str(item.get("annotation_text") or ""),
                    tags=tuple(t for t in _tag_names(item.get("tags")) if t),
                ))
        return out

    def post_annotation(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> str:
        resp = self._post_annotation(remote_id, annotation)
        body = decode_json(resp, "POST /api/v1/annotate/")
        uuid = body.get("uuid") if isinstance(body, dict) else None
        if not isinstance(uuid, str) or not uuid:
            raise RetryableError("papad POST /api/v1/annotate/: created without an annotation uuid")
        return uuid

    def update_annotation(
        self, annotation_id: str, remote_id: str, sidecar: Sidecar,
        annotation: mapping.Annotation,
    ) -> None:
        fields = {
            "annotation_text": annotation.text,
            "media_target": annotation.media_target,
            "tags": mapping.wire_tags(annotation.tags),  # sending tags replaces the whole set
        }
        self.transport.request("PATCH", f"/api/v1/annotate/{quote(annotation_id)}/",
                               form=lambda: MultipartBody(fields))

    def delete_annotation(self, annotation_id: str) -> None:
        try:
            self.transport.request("DELETE", f"/api/v1/annotate/{quote(annotation_id)}/")
        except PermanentError as exc:
            if exc.status != 404:
                raise

    def checks(self) -> list[dict[str, Any]]:
        """Who am I (reachable, credentials, group membership), then one listing page.

        ``/auth/users/me/`` is answered by both flavours and lists the user's groups; papad's
        ``/api/v1/group/`` lists only public ones. Costs one authenticated request, two with
        JWT (the login), three with the listing: little of papadam's hourly budget.
        """
        try:
            me = self.transport.get_json("/auth/users/me/")
        except PapadError as exc:
            if exc.status is None and exc.unavailable:
                return [check("papad reachable", False, str(exc))]
            return [check("papad reachable", True, self.transport.base_url),
                    check("papad credentials accepted", False, str(exc))]
        me = me if isinstance(me, dict) else {}
        user = str(me.get("username") or "?")
        out = [check("papad reachable", True, self.transport.base_url),
               check("papad credentials accepted", True, f"logged in as {user}")]
        groups = {}
        for group in me.get("groups") or []:
            if isinstance(group, dict) and isinstance(group.get("id"), int):
                groups[group["id"]] = str(group.get("name") or "")
        if self.group in groups:
            out.append(check("papad group", True,
                             f"group {self.group} {groups[self.group]}: {user} is a member"))
        else:
            member_of = ", ".join(f"{gid} {name}" for gid, name in sorted(groups.items()))
            out.append(check("papad group", False,
                             f"{user} is not a member of group {self.group} (papad.group); "
                             f"member of: {member_of or 'no group'}"))
            return out
        try:
            body = self.transport.get_json("/api/v1/archive/", {
                "searchFrom": "my_collections", "group": self.group, "page_size": 1})
            count = body.get("count") if isinstance(body, dict) else None
            detail = f"{count} media visible to {user}" if isinstance(count, int) else "works"
            out.append(check("papad listing", True, detail))
        except PapadError as exc:
            out.append(check("papad listing", False, str(exc)))
        return out

    def close(self) -> None:
        self.transport.close()


class LegacyPapadClient:
    """papad-api: stations, recordings by URL, W3C-style fragments. No auth."""

    api = "papad-api"

    def __init__(
        self,
        transport: Transport,
        media_base_url: str,
        host: str,
        station: str,
        annotation_span: float,
    ) -> None:
        self.transport = transport
        self.media_base_url = media_base_url
        self.host = host
        self.station = station  # "" → each recording's own device id
        self.annotation_span = annotation_span
        self._stations: set[str] = set()

    def __repr__(self) -> str:
        return f"LegacyPapadClient({self.transport.base_url!r})"

    def station_for(self, sidecar: Sidecar) -> str:
        """The station a recording is filed under: the configured one, else its device id."""
        return self.station or sidecar["device_id"]

    def audio_url(self, sidecar: Sidecar) -> str:
        """The dynamic document root URL of the recording (host may differ, path never does)."""
        base = self.media_base_url.replace("{host}", self.host).replace(
            "{device_id}", sidecar["device_id"]
        )
        return base.rstrip("/") + "/" + quote(sidecar["path"])

    def _list(self, entity: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        body = self.transport.get_json(f"/{entity}/", params)
        if isinstance(body, dict):  # some builds wrap lists
            body = body.get("results") or body.get(entity) or []
        return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []

    @staticmethod
    def oid(item: Mapping[str, Any]) -> str | None:
        """The id of a document: ``{"_id": {"$oid": "..."}}`` (or a plain string)."""
        value = item.get("_id")
        if isinstance(value, dict):
            value = value.get("$oid")
        return value if isinstance(value, str) and value else None

    def _station_exists(self, name: str) -> bool:
        return any(
            s.get("station_name") == name for s in self._list("channels", {"station_name": name})
        )

    def ensure_station(self, name: str) -> None:
        """Create the station unless it exists (a duplicate POST fails: look, then create)."""
        if name in self._stations:
            return
        if not self._station_exists(name):
            try:
                self.transport.request("POST", "/channels/", json_body={"station_name": name})
            except PapadError as exc:
                # Another device may have created it meanwhile: a duplicate is success.
                if exc.unavailable or not self._station_exists(name):
                    raise
            log.info("papad-api station %s created", name)
        self._stations.add(name)

    def find_media(self, sidecar: Sidecar) -> str | None:
        url = self.audio_url(sidecar)
        for item in self._list("recordings", {"audio_url": url}):
            if item.get("audio_url") == url and self.oid(item):
                return self.oid(item)
        # The host part of the URL may have changed since: match the machine tag instead.
        wanted = sidecar["recording_id"]
        for item in self._list("recordings", {"station_name": self.station_for(sidecar)}):
            if mapping.recording_id_from_tags(_tag_names(item.get("tags"))) == wanted:
                return self.oid(item)
        return None

    def create_media(self, sidecar: Sidecar, ogg_path: Path) -> str:
        station = self.station_for(sidecar)
        self.ensure_station(station)
        url = self.audio_url(sidecar)
        rec = Recording.from_doc(sidecar)
        self.transport.request(
            "POST",
            "/recordings/",
            json_body={
                "station_name": station,
                "audio_url": url,
                "tags": ",".join(mapping.media_tags(rec)),
                "img_tags": "",
                "upload_date": f"{rec.started:%Y.%m.%d}",
            },
        )
        # papad-api answers an empty 200: learn the id by looking the record up.
        for item in self._list("recordings", {"audio_url": url}):
            if item.get("audio_url") == url and self.oid(item):
                return self.oid(item)  # type: ignore[return-value]
        raise RetryableError(f"papad-api: created {url} but cannot find it afterwards")

    def annotation_keys(self, remote_id: str, sidecar: Sidecar) -> set[tuple[str, str]]:
        url = self.audio_url(sidecar)
        keys = set()
        # The filter may be ignored by the server: match on the client side too.
        for item in self._list("fragments", {"target.source": url}):
            target, body = item.get("target"), item.get("body")
            if not isinstance(target, dict) or target.get("source") != url:
                continue
            found = target.get("selector")
            selector: dict[str, Any] = found if isinstance(found, dict) else {}
            text = body.get("value", "") if isinstance(body, dict) else ""
            keys.add((str(selector.get("value", "")), str(text)))
        return keys

    def _fragment(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> dict[str, Any]:
        return {
            "type": "Annotation",
            "target": {
                "source": self.audio_url(sidecar),
                "recording_id": remote_id,
                "selector": {
                    "type": "FragmentSelector",
                    "conformsTo": "http://www.w3.org/TR/media-frags/",
                    "value": annotation.media_target,
                    "start": annotation.start,
                    "end": annotation.end,
                },
            },
            "body": {"purpose": "commenting", "type": "TextualBody", "value": annotation.text},
            "tags": ",".join(annotation.tags),
        }

    def create_annotation(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> None:
        self.transport.request(
            "POST", "/fragments/", json_body=self._fragment(remote_id, sidecar, annotation)
        )

    def list_annotations(self, remote_id: str, sidecar: Sidecar) -> list[RemoteAnnotation]:
        url = self.audio_url(sidecar)
        out = []
        for item in self._list("fragments", {"target.source": url}):
            target, body, oid = item.get("target"), item.get("body"), self.oid(item)
            if not isinstance(target, dict) or target.get("source") != url or not oid:
                continue
            found = target.get("selector")
            selector: dict[str, Any] = found if isinstance(found, dict) else {}
            out.append(RemoteAnnotation(
                id=oid,
                media_target=str(selector.get("value") or ""),
                text=str(body.get("value") or "") if isinstance(body, dict) else "",
                tags=tuple(t for t in _tag_names(item.get("tags")) if t),
            ))
        return out

    def post_annotation(
        self, remote_id: str, sidecar: Sidecar, annotation: mapping.Annotation
    ) -> str:
        before = {a.id for a in self.list_annotations(remote_id, sidecar)}
        self.create_annotation(remote_id, sidecar, annotation)
        # papad-api answers an empty 200: find the new fragment by its content.
        for found in reversed(self.list_annotations(remote_id, sidecar)):
            if found.id not in before and (found.media_target, found.text) == annotation.key:
                return found.id
        raise RetryableError("papad-api: created a fragment but cannot find it afterwards")

    def update_annotation(
        self, annotation_id: str, remote_id: str, sidecar: Sidecar,
        annotation: mapping.Annotation,
    ) -> None:
        self.transport.request("PUT", f"/fragments/{quote(annotation_id)}",
                               json_body=self._fragment(remote_id, sidecar, annotation))

    def delete_annotation(self, annotation_id: str) -> None:
        try:
            self.transport.request("DELETE", f"/fragments/{quote(annotation_id)}")
        except PermanentError as exc:
            if exc.status != 404:
                raise

    def checks(self) -> list[dict[str, Any]]:
        try:
            self._list("channels")
        except PapadError as exc:
            return [check("papad reachable", False, str(exc))]
        out = [
            check("papad reachable", True, self.transport.base_url),
            check("papad credentials accepted", True, "papad-api needs no credentials"),
        ]
        if self.station:
            try:
                there = self._station_exists(self.station)
                detail = "exists" if there else "missing; created on the first registration"
                out.append(check("papad station", True, f"{self.station}: {detail}"))
            except PapadError as exc:
                out.append(check("papad station", False, str(exc)))
        return out

    def close(self) -> None:
        self.transport.close()


def make_client(p: PapadConfig) -> PapadClient | None:
    """The client ``[papad] api`` (`p`) asks for, with its secrets read; None for
    ``api = "none"``.

    Raises ConfigError when a secret file is missing or readable by group or others.
    """
    if p.api == "none":
        return None
    transport = Transport(p.url, p.timeout)
    if p.api == "papad-api":
        return LegacyPapadClient(
            transport, p.media_base_url, p.host or socket.gethostname(), p.station,
            p.annotation_span,
        )
    if p.auth == "jwt":
        read_secret(p.password_file, "papad.password_file")  # refuse a bad file at start
        transport.auth = JwtAuth(
            p.username,
            lambda: read_secret(p.password_file, "papad.password_file"),
            transport.post_json_noauth,
        )
    else:
        transport.auth = TokenAuth(lambda: read_secret(p.token_file, "papad.token_file"))
    return CurrentPapadClient(transport, p.group, p.annotation_span)


__all__ = [
    "CurrentPapadClient",
    "LegacyPapadClient",
    "PapadClient",
    "PermanentError",
    "RemoteAnnotation",
    "make_client",
]
