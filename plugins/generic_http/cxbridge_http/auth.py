"""Request authentication: static headers for bearer and basic, a cached token for OAuth 2.0.

OAuth 2.0 client credentials: one token per destination, fetched on first use and shared by every
worker thread (one fetch even when many deliveries start at once), reused until shortly before it
expires. :meth:`TokenCache.invalidate` drops it after a 401 so that the next call fetches a new one.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from cxbridge import AddressRefused, Outcome, ResolutionFailed, outcome_for_status
from cxbridge_http.options import BasicAuth, BearerAuth, HttpOptions, OAuth2Auth

__all__ = ["AuthFailed", "TokenCache", "secret_values", "static_auth_header"]

# Refresh this long before the server's expiry, so a token never expires in flight.
EXPIRY_MARGIN = 30.0
DEFAULT_LIFETIME = 3600.0


class AuthFailed(Exception):
    """The OAuth 2.0 token could not be obtained; ``outcome`` says whether to retry."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def static_auth_header(options: HttpOptions) -> str | None:
    """The ``Authorization`` value for bearer and basic auth; ``None`` for the other kinds."""
    auth = options.auth
    if isinstance(auth, BearerAuth):
        return f"Bearer {auth.token.get_secret_value()}"
    if isinstance(auth, BasicAuth):
        return _basic(auth.username, auth.password.get_secret_value())
    return None


def secret_values(options: HttpOptions) -> list[str]:
    """Every secret string of a destination's options, for scrubbing text that leaves the plugin."""
    values: list[str] = []
    for item in options.secrets:
        whole = item.secret.get_secret_value()
        values += [whole, whole.removeprefix("whsec_")]
    auth = options.auth
    if isinstance(auth, BearerAuth):
        values.append(auth.token.get_secret_value())
    elif isinstance(auth, BasicAuth):
        password = auth.password.get_secret_value()
        values += [password, _basic(auth.username, password).removeprefix("Basic ")]
    elif isinstance(auth, OAuth2Auth):
        client_secret = auth.client_secret.get_secret_value()
        values += [client_secret, _basic(auth.client_id, client_secret).removeprefix("Basic ")]
    elif getattr(auth, "key_password", None) is not None:
        values.append(auth.key_password.get_secret_value())  # type: ignore[union-attr]
    return [v for v in values if len(v) >= 4]


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic()


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token: _Token | None = None


class TokenCache:
    """OAuth 2.0 access tokens, one per destination key, thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, ...], _Slot] = {}
        self.fetches = 0  # how many token requests were made (for tests and metrics)

    def _slot(self, key: tuple[str, ...]) -> _Slot:
        with self._lock:
            return self._slots.setdefault(key, _Slot())

    @staticmethod
    def key(tenant: str, name: str, auth: OAuth2Auth) -> tuple[str, ...]:
        return (tenant, name, auth.token_url, auth.client_id, auth.scope or "", auth.audience or "")

    def token(self, key: tuple[str, ...], auth: OAuth2Auth, client: httpx.Client) -> str:
        """A valid access token: the cached one, or one new one fetched for every waiting thread."""
        slot = self._slot(key)
        with slot.lock:
            current = slot.token
            if current is not None and self._clock() < current.expires_at:
                return current.value
            slot.token = self._fetch(auth, client)
            return slot.token.value

    def invalidate(self, key: tuple[str, ...], used: str) -> None:
        """Forget the token ``used`` (answered with 401) unless another thread replaced it."""
        slot = self._slot(key)
        with slot.lock:
            if slot.token is not None and slot.token.value == used:
                slot.token = None

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()

    def _fetch(self, auth: OAuth2Auth, client: httpx.Client) -> _Token:
        self.fetches += 1
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        if auth.audience:
            form["audience"] = auth.audience
        headers = {"Accept": "application/json"}
        secret = auth.client_secret.get_secret_value()
        if auth.client_auth == "basic":
            headers["Authorization"] = _basic(auth.client_id, secret)
        else:
            form |= {"client_id": auth.client_id, "client_secret": secret}
        try:
            response = client.post(auth.token_url, data=form, headers=headers)
        except AddressRefused as exc:
            raise AuthFailed(Outcome.permanent(f"OAuth2 token_url {exc}")) from None
        except (httpx.HTTPError, ResolutionFailed) as exc:
            raise AuthFailed(
                Outcome.retry(f"OAuth2 token request to {auth.token_url} failed: {exc}")
            ) from None
        if response.status_code != 200:
            code = _oauth_error(response)
            outcome = outcome_for_status(
                response.status_code,
                retry_after=response.headers.get("Retry-After"),
                provider_code=code,
            )
            if not outcome.ok:
                hint = (
                    "" if outcome.kind.value == "retry" else "; check client_id and client_secret"
                )
                outcome = _with_error(
                    outcome,
                    f"OAuth2 token endpoint answered HTTP {response.status_code}"
                    + (f" {code}" if code else "")
                    + hint,
                )
                raise AuthFailed(outcome)
        try:
            data = response.json()
            value = data["access_token"]
            lifetime = float(data.get("expires_in") or DEFAULT_LIFETIME)
        except (ValueError, KeyError, TypeError):
            raise AuthFailed(
                Outcome.permanent(
                    "OAuth2 token endpoint answered without an access_token (expected JSON "
                    '{"access_token": ..., "expires_in": ...})',
                    status_code=response.status_code,
                )
            ) from None
        if not isinstance(value, str) or not value:
            raise AuthFailed(Outcome.permanent("OAuth2 access_token is empty or not a string"))
        margin = min(EXPIRY_MARGIN, lifetime / 10)
        return _Token(value, self._clock() + max(0.0, lifetime - margin))


def _oauth_error(response: httpx.Response) -> str | None:
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _with_error(outcome: Outcome, error: str) -> Outcome:
    from dataclasses import replace

    return replace(outcome, error=error)
