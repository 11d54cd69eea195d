"""A fake Salesforce org for tests: a threaded HTTP server on 127.0.0.1 speaking the REST shapes.

It serves the OAuth token endpoint (JWT bearer, client credentials and the legacy password
grant), the legacy SOAP ``login()``, sObject create / get / update / upsert on an external id and
SOSL search, keeps the records it was sent (``fake.records``), counts requests and can be told
to fail::

    with FakeSalesforce() as fake:
        fake.add_contact("Ada", "Lovelace", phone="(555) 010-9999")
        fake.fail(503, times=1)                 # the next data request answers 503
        fake.expire_sessions()                  # every token issued so far answers 401 from now on
        ...
        fake.find("Task", CXMind_Call_Id__c="call-1")

simple-salesforce always builds ``https://`` URLs on ``*.salesforce.com``; point a destination at the
fake with its endpoint override (``endpoint: fake.url``, ``allow_networks: [127.0.0.0/8]``), which
sends every request here and the original host in ``X-Forwarded-Host``.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from cxbridge.testing.fakes.server import FakeHandler, FakeServer

__all__ = ["FakeSalesforce", "Fault"]

INSTANCE_URL = "https://acme.my.salesforce.com"
ID_PREFIX = {"Task": "00T", "Case": "500", "Contact": "003"}
SCHEMA: dict[str, set[str]] = {
    "Task": {
        "Subject", "Status", "Priority", "TaskSubtype", "CallType", "CallDisposition",
        "CallDurationInSeconds", "Description", "WhoId", "WhatId", "ActivityDate", "OwnerId",
        "CallObject", "CXMind_Call_Id__c", "CXMind_QA_Score__c",
    },
    "Case": {
        "Subject", "Description", "Priority", "Origin", "Status", "ContactId", "Type", "Reason",
        "CXMind_Call_Id__c",
    },
    "Contact": {"FirstName", "LastName", "Phone", "MobilePhone", "Email"},
}  # fmt: skip
CREATE_ONLY = {"Task": {"TaskSubtype"}}
EXTERNAL_IDS = {"Task": {"CXMind_Call_Id__c"}, "Case": {"CXMind_Call_Id__c"}}
PICKLISTS = {
    ("Task", "Status"): {"Not Started", "In Progress", "Completed", "Waiting on someone else"},
    ("Task", "TaskSubtype"): {"Task", "Email", "Call", "ListEmail", "Cadence"},
    ("Task", "CallType"): {"Internal", "Inbound", "Outbound"},
    ("Task", "Priority"): {"High", "Normal", "Low"},
    ("Case", "Priority"): {"High", "Medium", "Low"},
    ("Case", "Origin"): {"Phone", "Email", "Web"},
    ("Case", "Status"): {"New", "Working", "Escalated", "Closed"},
}
SOSL_RESERVED = set("?&|!{}[]()^~*:\\\"'+-")
SOSL_TAIL = " IN PHONE FIELDS RETURNING Contact(Id)"


@dataclass
class Fault:
    """An answer given instead of the real one, ``times`` times, to matching requests."""

    status: int
    body: Any = None
    content_type: str = "application/json"
    times: int = 1
    match: Callable[[str, str], bool] | None = None  # (method, path) -> applies?
    delay: float = 0.0
    on_token: bool = False  # applies to the OAuth token endpoint instead of the data API
    headers: dict[str, str] | None = None  # e.g. Retry-After


class FakeSalesforce(FakeServer):
    """The fake org. Thread-safe; start with ``with FakeSalesforce() as fake`` or :meth:`start`."""

    thread_name = "fake-salesforce"
    poll_interval = 0.02

    def __init__(self, *, api_version: str = "63.0") -> None:
        self.api_version = api_version
        self.lock = threading.RLock()
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SCHEMA}
        self.schema = {name: set(fields) for name, fields in SCHEMA.items()}
        self._ids = itertools.count(1)
        # auth
        self.consumer_key = "fake-consumer-key"
        self.consumer_secret = "fake-consumer-secret"
        self.username = "integration@acme.example"
        self.password = "fake-password"
        self.security_token = "TOKEN"
        self.jwt_public_key: bytes | None = None
        self.valid_tokens: set[str] = set()
        self.tokens_work = True  # False: even fresh tokens are refused (a broken integration user)
        self.token_hosts: list[str] = []
        self.token_grants: list[str] = []
        # behaviour
        self.upsert_update_status = 200  # 200 with a body (API >= 46) or 204
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self.search_terms: list[str] = []

    def options(self, **more: Any) -> dict[str, Any]:
        """The options that point a destination at this fake (merge them into its options)."""
        return {"endpoint": self.url, "allow_networks": ["127.0.0.0/8"], **more}

    # -- programming it ----------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        error_code: str | None = None,
        message: str = "fault injected by the test",
        *,
        times: int = 1,
        fields: list[str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        match: Callable[[str, str], bool] | None = None,
        delay: float = 0.0,
        on_token: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching data requests (or token requests, ``on_token``) with
        ``status`` and a Salesforce error body ``[{"message", "errorCode", "fields"}]``."""
        if body is None and error_code is not None:
            body = [{"message": message, "errorCode": error_code, "fields": fields or []}]
        fault = Fault(status, body, content_type, times, match, delay, on_token, headers)
        with self.lock:
            self.faults.append(fault)
        return fault

    def expire_sessions(self) -> None:
        """Every access token issued so far is now invalid (401 INVALID_SESSION_ID)."""
        with self.lock:
            self.valid_tokens.clear()

    def add_contact(self, first: str, last: str, *, phone: str) -> str:
        return self.insert("Contact", {"FirstName": first, "LastName": last, "Phone": phone})

    def insert(self, object_name: str, fields: dict[str, Any]) -> str:
        """Put a record in directly (no validation), e.g. to make duplicates of an external id."""
        with self.lock:
            record_id = self._new_id(object_name)
            self.records[object_name][record_id] = {"Id": record_id, **fields}
            return record_id

    # -- reading it --------------------------------------------------------------------------------

    def find(self, object_name: str, **where: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [
                dict(r)
                for r in self.records[object_name].values()
                if all(r.get(k) == v for k, v in where.items())
            ]

    def count(self, kind: str | None = None) -> int:
        """Requests seen: all, or of one kind (``token``, ``soap``, ``search``, ``get``, ``create``,
        ``upsert``, ``update``)."""
        with self.lock:
            if kind is None:
                return len(self.log)
            return sum(1 for k, _, _ in self.log if k == kind)

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(k for k, _, _ in self.log)

    # -- internals ---------------------------------------------------------------------------------

    def _new_id(self, object_name: str) -> str:
        return f"{ID_PREFIX.get(object_name, 'a00')}{next(self._ids):012d}AAA"

    def _take_fault(self, method: str, path: str, *, on_token: bool = False) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.on_token != on_token or fault.times <= 0:
                    continue
                if fault.match is None or fault.match(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _issue_token(self, host: str, grant: str) -> dict[str, Any]:
        token = f"00D000000000001!{next(self._ids):08d}"
        with self.lock:
            if self.tokens_work:
                self.valid_tokens.add(token)
            self.token_hosts.append(host)
            self.token_grants.append(grant)
        return {
            "access_token": token,
            "instance_url": INSTANCE_URL,
            "id": "https://login.salesforce.com/id/00D000000000001/005000000000001",
            "token_type": "Bearer",
            "issued_at": str(int(time.time() * 1000)),
            "scope": "api",
        }


class _Handler(FakeHandler):
    # -- plumbing ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: Any = None,
        content_type: str = "application/json",
        kind: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        with self.fake.lock:
            self.fake.log.append((kind, self.path, status))
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        try:
            self.send_response(status)
            if data:
                self.send_header("Content-Type", f"{content_type};charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        body = self._body()
        if path == "/services/oauth2/token" and method == "POST":
            return self._token(body)
        if path.startswith("/services/Soap/u/") and method == "POST":
            return self._soap_login(body)
        prefix = f"/services/data/v{self.fake.api_version}/"
        if not parts.path.startswith(prefix):
            return self._send(404, [{"errorCode": "NOT_FOUND", "message": "no such resource"}])
        kind = _kind(method, parts.path[len(prefix) :])
        fault = self.fake._take_fault(method, parts.path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            return self._send(fault.status, fault.body, fault.content_type, kind, fault.headers)
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        with self.fake.lock:
            valid = token in self.fake.valid_tokens
        if not valid:
            error = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
            return self._send(401, error, kind=kind)
        rest = parts.path[len(prefix) :]
        if rest.startswith("search"):
            return self._search(parse_qs(parts.query).get("q", [""])[0])
        segments = [unquote(s) for s in rest.split("/") if s]
        if not segments or segments[0] != "sobjects" or len(segments) < 2:
            return self._send(404, [{"errorCode": "NOT_FOUND", "message": "no such resource"}])
        object_name = segments[1]
        if object_name not in self.fake.records:
            return self._send(
                404,
                [{"errorCode": "NOT_FOUND", "message": f"sObject type '{object_name}' unknown"}],
                kind=kind,
            )
        data = json.loads(body) if body else {}
        with self.fake.lock:
            return self._sobject(method, kind, object_name, segments[2:], data)

    # -- OAuth and SOAP ----------------------------------------------------------------------------

    def _token(self, body: bytes) -> None:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        host = self.headers.get("X-Forwarded-Host", "")
        fake = self.fake
        grant = form.get("grant_type", "")

        def refuse(error: str, description: str, status: int = 400) -> None:
            self._send(status, {"error": error, "error_description": description}, kind="token")

        fault = fake._take_fault("POST", "/services/oauth2/token", on_token=True)
        if fault is not None:
            return self._send(fault.status, fault.body, fault.content_type, "token")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            if fake.jwt_public_key is None:
                return refuse("invalid_grant", "no certificate registered for the connected app")
            import jwt  # PyJWT comes with simple-salesforce, not with the core

            try:
                claims = jwt.decode(
                    form.get("assertion", ""),
                    fake.jwt_public_key,
                    algorithms=["RS256"],
                    audience=["https://login.salesforce.com", "https://test.salesforce.com"],
                    options={"require": ["exp", "iss", "sub", "aud"]},
                )
            except jwt.PyJWTError as exc:
                return refuse("invalid_grant", f"invalid assertion: {exc}")
            if claims["iss"] != fake.consumer_key:
                return refuse("invalid_client_id", "client identifier invalid")
            if claims["sub"] != fake.username:
                return refuse("invalid_grant", "user hasn't approved this consumer")
        elif grant == "client_credentials":
            client_id, secret = form.get("client_id"), form.get("client_secret")
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            if host in ("login.salesforce.com", "test.salesforce.com"):
                return refuse("invalid_grant", "request not supported on this domain")
            if client_id != fake.consumer_key or secret != fake.consumer_secret:
                return refuse("invalid_client", "invalid client credentials")
        elif grant == "password":
            if form.get("client_id") != fake.consumer_key:
                return refuse("invalid_client_id", "client identifier invalid")
            expected = (fake.password, fake.password + fake.security_token)
            if form.get("username") != fake.username or form.get("password") not in expected:
                return refuse("invalid_grant", "authentication failure")
        else:
            return refuse("unsupported_grant_type", "grant type not supported")
        self._send(200, fake._issue_token(host, grant), kind="token")

    def _soap_login(self, body: bytes) -> None:
        text = body.decode()
        username = _xml_text(text, "username")
        password = _xml_text(text, "password")
        fake = self.fake
        if username != fake.username or password != fake.password + fake.security_token:
            fault = (
                '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
                'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body><soapenv:Fault>'
                "<faultcode>INVALID_LOGIN</faultcode><detail><sf:LoginFault>"
                "<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid "
                "username, password, security token; or user locked out.</sf:exceptionMessage>"
                "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
            )
            return self._send(500, fault, "text/xml", "soap")
        token = fake._issue_token(self.headers.get("X-Forwarded-Host", ""), "soap")["access_token"]
        server_url = f"{INSTANCE_URL}/services/Soap/u/{fake.api_version}/00D000000000001"
        ok = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
            f"<serverUrl>{escape(server_url)}</serverUrl><sessionId>{escape(token)}</sessionId>"
            "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        self._send(200, ok, "text/xml", "soap")

    # -- SOSL --------------------------------------------------------------------------------------

    def _search(self, query: str) -> None:
        term, error = _parse_sosl(query)
        if error is not None:
            return self._send(
                400, [{"errorCode": "MALFORMED_SEARCH", "message": error}], kind="search"
            )
        assert term is not None
        fake = self.fake
        with fake.lock:
            fake.search_terms.append(term)
            wanted = re.sub(r"\D", "", term)
            hits = []
            for record in fake.records["Contact"].values():
                for key in ("Phone", "MobilePhone"):
                    have = re.sub(r"\D", "", str(record.get(key) or ""))
                    short, long_ = sorted((have, wanted), key=len)
                    if len(short) >= 7 and long_.endswith(short):
                        hits.append(record["Id"])
                        break
        url = f"/services/data/v{fake.api_version}/sobjects/Contact/"
        records = [{"attributes": {"type": "Contact", "url": url + i}, "Id": i} for i in hits]
        self._send(200, {"searchRecords": records}, kind="search")

    # -- sObjects ----------------------------------------------------------------------------------

    def _sobject(
        self, method: str, kind: str, object_name: str, rest: list[str], data: dict[str, Any]
    ) -> None:
        fake = self.fake
        store = fake.records[object_name]
        url = f"/services/data/v{fake.api_version}/sobjects/{object_name}/"

        def error(status: int, code: str, message: str, fields: list[str] | None = None) -> None:
            body = [{"message": message, "errorCode": code, "fields": fields or []}]
            self._send(status, body, kind=kind)

        def check(values: dict[str, Any], *, update: bool) -> bool:
            for name, value in values.items():
                if name not in fake.schema[object_name]:
                    error(
                        400,
                        "INVALID_FIELD",
                        f"No such column '{name}' on sobject of type {object_name}",
                        [name],
                    )
                    return False
                if update and name in CREATE_ONLY.get(object_name, set()):
                    error(
                        400,
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {name}. Please check the security "
                        "settings of this field.",
                        [name],
                    )
                    return False
                allowed = PICKLISTS.get((object_name, name))
                if allowed is not None and value is not None and value not in allowed:
                    error(
                        400,
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{name}: bad value for restricted picklist field: {value}",
                        [name],
                    )
                    return False
            return True

        if method == "POST" and not rest:
            if not check(data, update=False):
                return None
            record_id = fake._new_id(object_name)
            store[record_id] = {"Id": record_id, **data}
            return self._send(201, {"id": record_id, "success": True, "errors": []}, kind=kind)

        if len(rest) == 1:  # by Id
            record = store.get(rest[0])
            if record is None:
                return error(404, "NOT_FOUND", "The requested resource does not exist")
            if method == "GET":
                attributes = {"type": object_name, "url": url + record["Id"]}
                return self._send(200, {"attributes": attributes, **record}, kind=kind)
            if method == "PATCH":
                if not check(data, update=True):
                    return None
                record.update(data)
                return self._send(204, kind=kind)

        if len(rest) == 2:  # by external id
            field_name, value = rest
            if field_name not in EXTERNAL_IDS.get(object_name, set()):
                return error(
                    404,
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {field_name}",
                )
            matches = [r for r in store.values() if r.get(field_name) == value]
            if len(matches) > 1:
                return self._send(300, [url + r["Id"] for r in matches], kind=kind)
            if method == "GET":
                if not matches:
                    return error(404, "NOT_FOUND", "The requested resource does not exist")
                record = matches[0]
                attributes = {"type": object_name, "url": url + record["Id"]}
                return self._send(200, {"attributes": attributes, **record}, kind=kind)
            if method == "PATCH":
                if data.get(field_name, value) != value:
                    return error(400, "INVALID_FIELD", "external id in body does not match url")
                if not matches:
                    if not check(data, update=False):
                        return None
                    record_id = fake._new_id(object_name)
                    store[record_id] = {"Id": record_id, **data, field_name: value}
                    body = {"id": record_id, "success": True, "errors": [], "created": True}
                    return self._send(201, body, kind=kind)
                if not check(data, update=True):
                    return None
                matches[0].update(data)
                if fake.upsert_update_status == 204:
                    return self._send(204, kind=kind)
                body = {"id": matches[0]["Id"], "success": True, "errors": [], "created": False}
                return self._send(200, body, kind=kind)
        return error(405, "METHOD_NOT_ALLOWED", f"{method} not allowed here")


FakeSalesforce.handler = _Handler


def _kind(method: str, rest: str) -> str:
    if rest.startswith("search"):
        return "search"
    depth = len([s for s in rest.split("?")[0].split("/") if s])
    if method == "POST":
        return "create"
    if method == "GET":
        return "get"
    if method == "PATCH":
        return "upsert" if depth == 4 else "update"
    return method.lower()


def _xml_text(text: str, tag: str) -> str | None:
    match = re.search(rf"<(?:\w+:)?{tag}>(.*?)</(?:\w+:)?{tag}>", text, re.S)
    if match is None:
        return None
    from html import unescape

    return unescape(match.group(1))


def _parse_sosl(query: str) -> tuple[str | None, str | None]:
    """The search term of ``FIND {term} IN PHONE FIELDS RETURNING Contact(Id)``, unescaped; or an
    error. An unescaped reserved character inside the braces is an error here (Salesforce would
    silently search something else), so tests catch a missing escape."""
    if not query.startswith("FIND {"):
        return None, "search must start with FIND {"
    term: list[str] = []
    i = len("FIND {")
    while i < len(query):
        ch = query[i]
        if ch == "\\":
            if i + 1 >= len(query):
                return None, "dangling escape"
            term.append(query[i + 1])
            i += 2
            continue
        if ch == "}":
            break
        if ch in SOSL_RESERVED:
            return None, f"unescaped reserved character {ch!r} in search term"
        term.append(ch)
        i += 1
    else:
        return None, "unterminated search term"
    if query[i + 1 :] != SOSL_TAIL:
        return None, f"unexpected search clauses: {query[i + 1 :]!r}"
    return "".join(term), None
