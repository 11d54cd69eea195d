"""One Salesforce client per destination: token flows, a shared token, one re-login per attempt.

simple-salesforce does the REST calls, but this module owns authentication: it runs the OAuth
flow itself and hands simple-salesforce a ready ``session_id`` + ``instance_url``. In that mode
the library never re-logs in on its own (its record path re-logs in recursively on every 401: one
create sent 544 requests before a ``RecursionError``). Instead a 401 here renews the token once,
under a lock shared by every thread of the destination (so a burst of expired requests costs one
login), and repeats the call; a second 401 in the same attempt is raised to the caller, which
makes it a permanent outcome.

HTTP sessions are one per worker thread, each a :class:`cxbridge.GuardedSession`: every
connection goes through cxbridge's outbound guard (``allow_networks``), redirects are refused,
the options' ``endpoint`` override is applied, and a default (connect, read) timeout is set,
because simple-salesforce's create/update/upsert take no ``timeout`` argument.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import jwt
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceExpiredSession
from simple_salesforce.login import SalesforceLogin

from cxbridge import GuardedSession
from cxbridge_salesforce.options import (
    AccessTokenAuth,
    ClientCredentialsAuth,
    JwtBearerAuth,
    PasswordAuth,
    SalesforceOptions,
    SoapLoginAuth,
)

__all__ = [
    "AuthError",
    "SalesforceClient",
    "Token",
    "client_for",
    "reset_clients",
]

log = logging.getLogger("cxbridge_salesforce")
T = TypeVar("T")


class AuthError(Exception):
    """Getting an access token failed. ``retryable`` for 5xx, timeouts and connection errors."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        provider_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
        self.provider_code = provider_code


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str
    issued_at: float


# -- clients, one per destination ------------------------------------------------------------------

_clients: dict[tuple[str, str], tuple[SalesforceOptions, SalesforceClient]] = {}
_clients_lock = threading.Lock()


def client_for(tenant: str, destination: str, options: SalesforceOptions) -> SalesforceClient:
    """The shared client of one destination; a new one when its options changed (config reload)."""
    key = (tenant, destination)
    with _clients_lock:
        entry = _clients.get(key)
        if entry is not None and (entry[0] is options or entry[0] == options):
            return entry[1]
        client = SalesforceClient(options)
        _clients[key] = (options, client)
    if entry is not None:
        entry[1].close()
    return client


def reset_clients() -> None:
    """Close and forget every client (tests, shutdown)."""
    with _clients_lock:
        entries = list(_clients.values())
        _clients.clear()
    for _, client in entries:
        client.close()


class SalesforceClient:
    """Talks to one org. Thread-safe: HTTP sessions are per thread, the token is shared (locked)."""

    def __init__(self, options: SalesforceOptions) -> None:
        self.options = options
        self._token: Token | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self.logins = 0

    # -- HTTP sessions -----------------------------------------------------------------------------

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = GuardedSession(
                self.options.policy,
                timeout=(self.options.connect_timeout, self.options.read_timeout),
                endpoint=self.options.endpoint,
            )
            session.hooks["response"].append(self._remember_retry_after)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _remember_retry_after(self, response: requests.Response, **_: Any) -> None:
        # simple-salesforce's exceptions carry no headers; the last answer's Retry-After is kept
        # per thread, so the error mapping can honour it.
        self._local.retry_after = response.headers.get("Retry-After")

    def last_retry_after(self) -> str | None:
        """The Retry-After header of the last answer this thread received, if it had one."""
        value: str | None = getattr(self._local, "retry_after", None)
        return value

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # -- tokens ------------------------------------------------------------------------------------

    def token(self, stale: Token | None = None) -> Token:
        """The current token; a new one if there is none or the current one is ``stale`` (a 401).

        Threads that saw the same stale token wait on the lock, then share the one renewed token.
        """
        with self._auth_lock:
            if self._token is not None and self._token is not stale:
                return self._token
            if stale is not None and isinstance(self.options.auth, AccessTokenAuth):
                raise AuthError(
                    "the configured access token was refused (401) and cannot be renewed; "
                    "configure auth type jwt_bearer or client_credentials, or a fresh "
                    "access_token",
                    retryable=False,
                    status_code=401,
                    provider_code="INVALID_SESSION_ID",
                )
            self._token = self._login()
            return self._token

    def _login(self) -> Token:
        auth = self.options.auth
        if isinstance(auth, AccessTokenAuth):
            return Token(auth.access_token.get_secret_value(), auth.instance_url, time.time())
        self.logins += 1
        if isinstance(auth, SoapLoginAuth):
            return self._soap_login(auth)
        url = f"https://{self.options.login_host}/services/oauth2/token"
        headers = {"Accept": "application/json"}
        data: dict[str, str]
        if isinstance(auth, JwtBearerAuth):
            audience = auth.audience or (
                "https://test.salesforce.com"
                if self.options.is_sandbox
                else "https://login.salesforce.com"
            )
            claims = {
                "iss": auth.consumer_key.get_secret_value(),
                "sub": auth.username,
                "aud": audience,
                "exp": int(time.time()) + 180,
            }
            try:
                assertion = jwt.encode(claims, auth.pem(), algorithm="RS256")
            except (OSError, ValueError, TypeError) as exc:
                raise AuthError(
                    f"cannot sign the JWT with the configured private key: {type(exc).__name__}",
                    retryable=False,
                ) from None
            data = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            }
        elif isinstance(auth, ClientCredentialsAuth):
            data = {
                "grant_type": "client_credentials",
                "client_id": auth.consumer_key.get_secret_value(),
                "client_secret": auth.consumer_secret.get_secret_value(),
            }
        elif isinstance(auth, PasswordAuth):
            token = auth.security_token.get_secret_value() if auth.security_token else ""
            data = {
                "grant_type": "password",
                "client_id": auth.consumer_key.get_secret_value(),
                "client_secret": auth.consumer_secret.get_secret_value(),
                "username": auth.username,
                "password": auth.password.get_secret_value() + token,
            }
        else:  # pragma: no cover - the options model admits no other type
            raise AuthError(f"unsupported auth type {type(auth).__name__}", retryable=False)
        return self._token_request(url, data, headers)

    def _token_request(self, url: str, data: dict[str, str], headers: dict[str, str]) -> Token:
        try:
            response = self.session().post(url, data=data, headers=headers, allow_redirects=False)
        except requests.Timeout:
            raise AuthError("timed out getting a Salesforce access token", retryable=True) from None
        except requests.RequestException as exc:
            raise AuthError(
                f"cannot reach the Salesforce token endpoint: {type(exc).__name__}", retryable=True
            ) from None
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status == 200 and isinstance(body, dict) and body.get("access_token"):
            instance_url = str(body.get("instance_url") or "")
            if not urlsplit(instance_url).hostname:
                raise AuthError(
                    "the token response has no instance_url", retryable=False, status_code=status
                )
            log.info("salesforce: new access token for %s", instance_url)
            return Token(str(body["access_token"]), instance_url, time.time())
        code = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        retryable = status >= 500 or status in (408, 429)
        detail = f"{code}: {description}" if code else f"HTTP {status} ({_excerpt(response.text)})"
        raise AuthError(
            f"Salesforce refused the access token request: {detail}"
            + ("" if retryable else "; check the connected app, user and credentials"),
            retryable=retryable,
            status_code=status,
            provider_code=code,
        )

    def _soap_login(self, auth: SoapLoginAuth) -> Token:
        domain = self.options.login_host.removesuffix(".salesforce.com")
        try:
            session_id, instance = SalesforceLogin(
                username=auth.username,
                password=auth.password.get_secret_value(),
                security_token=auth.security_token.get_secret_value(),
                sf_version=self.options.api_version,
                session=self.session(),
                domain=domain,
            )
        except SalesforceAuthenticationFailed as exc:
            retryable = isinstance(exc.code, int) and exc.code >= 500
            raise AuthError(
                f"Salesforce SOAP login failed: {exc.code}",
                retryable=retryable,
                provider_code=str(exc.code),
            ) from None
        except requests.RequestException as exc:
            raise AuthError(
                f"cannot reach the Salesforce login endpoint: {type(exc).__name__}", retryable=True
            ) from None
        return Token(session_id, f"https://{instance}", time.time())

    # -- calls -------------------------------------------------------------------------------------

    def api(self, token: Token) -> Salesforce:
        """A simple-salesforce handle on ``token`` in direct mode (it never re-logs in itself)."""
        return Salesforce(
            session_id=token.access_token,
            instance_url=token.instance_url,
            version=self.options.api_version,
            session=self.session(),
        )

    def attempt(self) -> Attempt:
        return Attempt(self)


class Attempt:
    """The calls of one delivery attempt: a 401 renews the token at most once per attempt."""

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client
        self.relogged = False
        self.last_status: int | None = None

    def call(self, fn: Callable[[Salesforce], T]) -> T:
        token = self.client.token()
        try:
            return fn(self.client.api(token))
        except SalesforceExpiredSession:
            if self.relogged:
                raise
            self.relogged = True
            log.info("salesforce: session expired (401), renewing the token once")
            fresh = self.client.token(stale=token)
            return fn(self.client.api(fresh))

    # -- the few REST operations a write plan needs ------------------------------------------------

    def find_contact_by_phone(self, phone: str) -> str | None:
        query = contact_search(phone)
        if query is None:
            return None
        result = self.call(lambda sf: sf.search(query))
        records = result.get("searchRecords", []) if isinstance(result, dict) else result or []
        for record in records:
            if isinstance(record, dict) and record.get("Id"):
                return str(record["Id"])
        return None

    def get_id(self, object_name: str, field: str, value: str) -> str | None:
        """The Id of the record whose ``field`` is ``value``, or None when there is none."""
        from simple_salesforce.exceptions import SalesforceResourceNotFound

        path = f"{field}/{quote(value, safe='')}"
        try:
            record = self.call(
                lambda sf: getattr(sf, object_name).get(path, params={"fields": "Id"})
            )
        except SalesforceResourceNotFound:
            return None
        return str(record["Id"]) if isinstance(record, dict) and record.get("Id") else None

    def upsert(
        self, object_name: str, field: str, value: str, data: dict[str, Any]
    ) -> tuple[int, str | None, bool]:
        """Upsert on an external id: ``(status, record id or None, created)``."""
        path = f"{field}/{quote(value, safe='')}"
        response = self.call(
            lambda sf: getattr(sf, object_name).upsert(path, data, raw_response=True)
        )
        body = _json_or_none(response)
        record_id = body.get("id") if isinstance(body, dict) else None
        created = response.status_code == 201 or (
            isinstance(body, dict) and body.get("created") is True
        )
        self.last_status = response.status_code
        return response.status_code, record_id, bool(created)

    def create(self, object_name: str, data: dict[str, Any]) -> str | None:
        body = self.call(lambda sf: getattr(sf, object_name).create(data))
        self.last_status = 201
        return str(body["id"]) if isinstance(body, dict) and body.get("id") else None

    def update(self, object_name: str, record_id: str, data: dict[str, Any]) -> int:
        status: int = self.call(lambda sf: getattr(sf, object_name).update(record_id, data))
        self.last_status = status
        return status


# -- SOSL ------------------------------------------------------------------------------------------

# https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_sosl_find.htm
SOSL_RESERVED = frozenset("?&|!{}[]()^~*:\\\"'+-")
PHONE_MAX = 40


def escape_sosl(term: str) -> str:
    """Escape SOSL's reserved characters with a backslash so ``term`` is searched literally."""
    return "".join("\\" + ch if ch in SOSL_RESERVED else ch for ch in term)


def contact_search(phone: str) -> str | None:
    """The SOSL search for Contacts whose phone fields match ``phone``; None if it cannot be one."""
    term = " ".join(phone.split())
    if len(term) > PHONE_MAX or sum(ch.isdigit() for ch in term) < 3:
        return None
    return f"FIND {{{escape_sosl(term)}}} IN PHONE FIELDS RETURNING Contact(Id)"


def _json_or_none(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")
