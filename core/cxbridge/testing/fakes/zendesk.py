"""A fake Zendesk Support API for tests: a real threaded HTTP server on 127.0.0.1 speaking Zendesk's
shapes.

It keeps tickets, comments and users in memory, counts requests, honours ``Idempotency-Key`` on
POSTs (same key, same stored answer, no second record) and can be told to fail::

    with FakeZendesk() as zd:
        zd.fail("POST", r"/api/v2/tickets\\.json", status=429, headers={"Retry-After": "30"})
        ...
        assert zd.count("POST", "/api/v2/tickets.json") == 1

Shapes follow the REST reference: create answers ``201 {"ticket", "audit"}``, update ``200
{"ticket", "audit"}``, lists by ``external_id`` use cursor pagination (``meta.has_more``,
``meta.after_cursor``, absolute ``links.next``), errors are ``{"error", "description", "details"}``.

Only plain HTTP is served: point a destination at it with its endpoint override,
:meth:`FakeZendesk.options` (``subdomain: acme``, ``endpoint: http://127.0.0.1:<port>``,
``allow_networks: [127.0.0.0/8]``). The links it answers with name ``https://acme.zendesk.com``, as
the real account would.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from cxbridge.testing.fakes.server import FakeHandler, FakeServer

__all__ = ["FakeZendesk", "Fault", "Recorded"]

API = "/api/v2"
SUBDOMAIN = "acme"
PUBLIC = f"https://{SUBDOMAIN}.zendesk.com"


@dataclass
class Fault:
    """One programmed failure.

    Requests matching ``method`` and ``path`` (a regex on the path, without the query) get this
    answer ``times`` times (``None``: forever). ``delay`` sleeps before answering, to test read
    timeouts; ``status=0`` with a delay only delays and then serves the real answer."""

    method: str
    path: str
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = 1
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.method in (method, "*") and re.fullmatch(self.path, path) is not None


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(error: str, description: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error, "description": description}
    if details is not None:
        body["details"] = details
    return body


class _Answer(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class FakeZendesk(FakeServer):
    """The fake server. Start it with ``start()`` or as a context manager; ``url`` is its base.

    :param email: with ``token``, the only credentials accepted (``{email}/token:{token}``, HTTP
    Basic).
        OAuth ``Bearer {oauth_token}`` is accepted too.
    :param page_size: the largest page served, whatever the client asks (to exercise pagination).
    """

    def __init__(
        self,
        *,
        email: str = "bot@acme.test",
        token: str = "tok-123",
        oauth_token: str = "oauth-123",
        page_size: int = 100,
    ) -> None:
        self.email = email
        self.token = token
        self.oauth_token = oauth_token
        self.page_size = page_size
        self.lock = threading.RLock()
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.screen_pops: list[tuple[str, int, int]] = []
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._idempotent: dict[str, tuple[int, Any]] = {}
        self._ids = itertools.count(1001)

    # -- programming and inspecting ----------------------------------------------------------------

    def options(self, **more: Any) -> dict[str, Any]:
        """The options that point a destination at this fake (merge them into its options)."""
        return {
            "subdomain": SUBDOMAIN,
            "endpoint": self.url,
            "allow_networks": ["127.0.0.0/8"],
            **more,
        }

    def fail(
        self,
        method: str,
        path: str,
        *,
        status: int,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        times: int | None = 1,
        delay: float = 0.0,
    ) -> Fault:
        """Program a failure (see :class:`Fault`); ``body`` is bytes, str or a JSON-able value."""
        if isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        elif body is None:
            raw = b""
        else:
            raw = json.dumps(body).encode()
        fault = Fault(method, path, status, raw, content_type, dict(headers or {}), times, delay)
        with self.lock:
            self.faults.append(fault)
        return fault

    def add_user(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            return self._new_user(fields)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            )

    def tickets_by_external_id(self, external_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [t for t in self.tickets.values() if t["external_id"] == external_id]

    # -- request handling
    # ----------------------------------------------------------------------------

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if auth == f"Bearer {self.oauth_token}":
            return True
        expected = base64.b64encode(f"{self.email}/token:{self.token}".encode()).decode()
        return auth == f"Basic {expected}"

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, bytes, str, dict[str, str]]:
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self.lock:
            self.requests.append(Recorded(method, path, query, headers, body))

        fault = self._take_fault(method, path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status:
                return fault.status, fault.body, fault.content_type, fault.headers

        if not self._authorized(headers):
            return self._json(401, {"error": "Couldn't authenticate you"})

        key = headers.get("idempotency-key")
        with self.lock:
            if method == "POST" and key and key in self._idempotent:
                status, answer = self._idempotent[key]
                return self._json(status, answer, {"x-idempotency-lookup": "hit"})
            try:
                status, answer = self._route(method, path, query, body)
            except _Answer as exc:
                return self._json(exc.status, exc.body, exc.headers)
            extra = {}
            if method == "POST" and key:
                self._idempotent[key] = (status, answer)
                extra["x-idempotency-lookup"] = "miss"
            return self._json(status, answer, extra)

    def _json(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, str, dict[str, str]]:
        raw = b"" if body is None else json.dumps(body).encode()
        return status, raw, "application/json; charset=utf-8", headers or {}

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        if not path.startswith(API + "/"):
            raise _Answer(404, _error("InvalidEndpoint", "Not found"))
        rest = path[len(API) :]
        routes: list[tuple[str, str, Any]] = [
            ("GET", r"/tickets\.json", self._list_tickets),
            ("POST", r"/tickets\.json", self._create_ticket),
            ("GET", r"/tickets/(\d+)\.json", self._show_ticket),
            ("PUT", r"/tickets/(\d+)\.json", self._update_ticket),
            ("GET", r"/tickets/(\d+)/comments\.json", self._list_comments),
            ("GET", r"/users/search\.json", self._search_users),
            ("POST", r"/users\.json", self._create_user),
            ("POST", r"/users/create_or_update\.json", self._create_or_update_user),
            ("GET", r"/users/(\d+)\.json", self._show_user),
            (
                "POST",
                r"/channels/voice/agents/(\d+)/(tickets|users)/(\d+)/display\.json",
                self._display,
            ),
        ]
        for verb, pattern, handler in routes:
            m = re.fullmatch(pattern, rest)
            if m and verb == method:
                result: tuple[int, Any] = handler(*m.groups(), query=query, body=body)
                return result
        raise _Answer(404, _error("InvalidEndpoint", "Not found"))

    # -- pagination
    # ----------------------------------------------------------------------------------

    def _page(
        self, items: list[dict[str, Any]], key: str, path: str, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        size = min(int(query.get("page[size]", ["100"])[0]), self.page_size)
        after = query.get("page[after]", [None])[0]
        start = int(after) if after else 0
        page = items[start : start + size]
        has_more = start + size < len(items)
        next_link = None
        if has_more:
            kept = "&".join(
                f"{k}={quote(v[0], safe='')}"
                for k, v in query.items()
                if k not in ("page[after]", "page[size]")
            )
            kept = kept + "&" if kept else ""
            cursor = f"page[size]={size}&page[after]={start + size}"
            next_link = f"{PUBLIC}{API}{path}?{kept}{cursor}"
        return {
            key: page,
            "meta": {
                "has_more": has_more,
                "after_cursor": str(start + size) if has_more else None,
                "before_cursor": str(start) if start else None,
            },
            "links": {"next": next_link, "prev": None},
        }

    # -- tickets
    # -------------------------------------------------------------------------------------

    def _list_tickets(self, *, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        external_id = query.get("external_id", [None])[0]
        tickets = sorted(self.tickets.values(), key=lambda t: t["id"])
        if external_id is not None:
            tickets = [t for t in tickets if t["external_id"] == external_id]
        return 200, self._page(tickets, "tickets", "/tickets.json", query)

    def _ticket(self, ticket_id: str) -> dict[str, Any]:
        ticket = self.tickets.get(int(ticket_id))
        if ticket is None:
            raise _Answer(404, _error("RecordNotFound", "Not found"))
        return ticket

    def _show_ticket(self, ticket_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        return 200, {"ticket": self._ticket(ticket_id)}

    def _invalid(self, details: dict[str, list[dict[str, str]]]) -> None:
        if details:
            raise _Answer(422, _error("RecordInvalid", "Record validation errors", details))

    def _check_fields(self, data: dict[str, Any], details: dict[str, list[dict[str, str]]]) -> None:
        priority = data.get("priority")
        if priority is not None and priority not in ("low", "normal", "high", "urgent"):
            details.setdefault("priority", []).append(
                {"description": f"Priority: {priority} is not valid", "error": "InvalidValue"}
            )
        requester_id = data.get("requester_id")
        if requester_id is not None and int(requester_id) not in self.users:
            details.setdefault("requester", []).append(
                {"description": "Requester: is invalid", "error": "InvalidValue"}
            )

    def _create_ticket(self, *, query: Any, body: Any) -> tuple[int, Any]:
        data = dict((body or {}).get("ticket") or {})
        details: dict[str, list[dict[str, str]]] = {}
        comment = data.pop("comment", None) or {}
        text = comment.get("body") or comment.get("html_body") or data.get("description")
        if not text:
            details["base"] = [
                {"description": "Description: cannot be blank", "error": "BlankValue"}
            ]
        self._check_fields(data, details)
        self._invalid(details)
        ticket_id = next(self._ids)
        now = _now()
        tags = set(data.get("tags") or []) | set(data.get("additional_tags") or [])
        ticket = {
            "id": ticket_id,
            "url": f"{PUBLIC}{API}/tickets/{ticket_id}.json",
            "external_id": data.get("external_id"),
            "subject": data.get("subject"),
            "raw_subject": data.get("subject"),
            "description": text,
            "priority": data.get("priority"),
            "status": data.get("status") or "new",
            "type": data.get("type"),
            "requester_id": data.get("requester_id") or 1,
            "submitter_id": 1,
            "assignee_id": data.get("assignee_id"),
            "group_id": data.get("group_id"),
            "tags": sorted(tags),
            "custom_fields": [
                {"id": int(f["id"]), "value": f.get("value")}
                for f in data.get("custom_fields") or []
            ],
            "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
            "created_at": now,
            "updated_at": now,
        }
        self.tickets[ticket_id] = ticket
        self.comments[ticket_id] = []
        self._add_comment(ticket_id, {**comment, "body": text})
        return 201, {"ticket": ticket, "audit": self._audit(ticket_id)}

    def _update_ticket(self, ticket_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        ticket = self._ticket(ticket_id)
        data = dict((body or {}).get("ticket") or {})
        details: dict[str, list[dict[str, str]]] = {}
        self._check_fields(data, details)
        self._invalid(details)
        comment = data.pop("comment", None)
        for name in (
            "subject",
            "priority",
            "status",
            "type",
            "assignee_id",
            "group_id",
            "requester_id",
        ):
            if name in data:
                ticket[name] = data[name]
        tags = set(ticket["tags"])
        if "tags" in data:
            tags = set(data["tags"] or [])
        tags |= set(data.get("additional_tags") or [])
        tags -= set(data.get("remove_tags") or [])
        ticket["tags"] = sorted(tags)
        if "custom_fields" in data:
            fields = {f["id"]: f for f in ticket["custom_fields"]}
            for f in data["custom_fields"] or []:
                fields[int(f["id"])] = {"id": int(f["id"]), "value": f.get("value")}
            ticket["custom_fields"] = sorted(fields.values(), key=lambda f: f["id"])
        if comment:
            self._add_comment(int(ticket_id), comment)
        ticket["updated_at"] = _now()
        return 200, {"ticket": ticket, "audit": self._audit(int(ticket_id))}

    def _add_comment(self, ticket_id: int, comment: dict[str, Any]) -> None:
        text = comment.get("body") or comment.get("html_body") or ""
        self.comments[ticket_id].append(
            {
                "id": next(self._ids),
                "type": "Comment",
                "author_id": comment.get("author_id") or 1,
                "body": text,
                "html_body": f"<p>{text}</p>",
                "plain_body": text,
                "public": bool(comment.get("public", True)),
                "attachments": [],
                "audit_id": next(self._ids),
                "via": {"channel": "api"},
                "created_at": _now(),
                "metadata": {},
            }
        )

    def _audit(self, ticket_id: int) -> dict[str, Any]:
        return {
            "id": next(self._ids),
            "ticket_id": ticket_id,
            "created_at": _now(),
            "author_id": 1,
            "events": [],
            "via": {"channel": "api"},
            "metadata": {},
        }

    def _list_comments(
        self, ticket_id: str, *, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        self._ticket(ticket_id)
        return 200, self._page(
            list(self.comments[int(ticket_id)]),
            "comments",
            f"/tickets/{ticket_id}/comments.json",
            query,
        )

    # -- users -------------------------------------------------------------------------------------

    def _new_user(self, fields: dict[str, Any]) -> dict[str, Any]:
        details: dict[str, list[dict[str, str]]] = {}
        if not fields.get("name"):
            details["name"] = [{"description": "Name: is too short", "error": "BlankValue"}]
        self._invalid(details)
        user_id = next(self._ids)
        user = {
            "id": user_id,
            "url": f"{PUBLIC}{API}/users/{user_id}.json",
            "name": fields.get("name"),
            "email": fields.get("email"),
            "phone": fields.get("phone"),
            "role": fields.get("role") or "end-user",
            "external_id": fields.get("external_id"),
            "active": True,
            "created_at": _now(),
            "updated_at": _now(),
        }
        self.users[user_id] = user
        return user

    def _search_users(self, *, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        q = query.get("query", [""])[0]
        found: list[dict[str, Any]] = []
        for term in q.split():
            name, _, value = term.partition(":")
            if name == "phone":
                digits = re.sub(r"\D", "", value)
                found = [
                    u
                    for u in self.users.values()
                    if u["phone"] and re.sub(r"\D", "", u["phone"]).endswith(digits)
                ]
            elif name == "email":
                found = [u for u in self.users.values() if u["email"] == value]
        return 200, {"users": found, "next_page": None, "previous_page": None, "count": len(found)}

    def _create_user(self, *, query: Any, body: Any) -> tuple[int, Any]:
        return 201, {"user": self._new_user(dict((body or {}).get("user") or {}))}

    def _create_or_update_user(self, *, query: Any, body: Any) -> tuple[int, Any]:
        fields = dict((body or {}).get("user") or {})
        for user in self.users.values():
            if (fields.get("email") and user["email"] == fields["email"]) or (
                fields.get("external_id") and user["external_id"] == fields["external_id"]
            ):
                user.update({k: v for k, v in fields.items() if v is not None})
                return 200, {"user": user}
        return 201, {"user": self._new_user(fields)}

    def _show_user(self, user_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        user = self.users.get(int(user_id))
        if user is None:
            raise _Answer(404, _error("RecordNotFound", "Not found"))
        return 200, {"user": user}

    # -- Talk Partner Edition
    # ------------------------------------------------------------------------

    def _display(
        self, agent_id: str, kind: str, object_id: str, *, query: Any, body: Any
    ) -> tuple[int, Any]:
        if kind == "tickets":
            self._ticket(object_id)
        elif int(object_id) not in self.users:
            raise _Answer(404, _error("RecordNotFound", "Not found"))
        self.screen_pops.append((kind[:-1], int(agent_id), int(object_id)))
        return 200, None

    def iter_requests(self) -> Iterator[Recorded]:
        with self.lock:
            yield from list(self.requests)


class _Handler(FakeHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms
        # each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, body, content_type, extra = self.fake.handle(self.command, self.path, headers, raw)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


FakeZendesk.handler = _Handler
