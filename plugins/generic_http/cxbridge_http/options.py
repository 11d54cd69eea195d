"""The options of an ``http`` destination, as a tenant file writes them.

Example::

    destinations:
      crm-hook:
        type: http
        events: [call_summary]
        url: "https://hooks.example.com/cx/{{ call.externalId }}"
        method: POST
        headers: {X-Team: "support"}
        body: {id: "{{ event.id }}", summary: "{{ ai.summary }}", tags: "{{ ai.tags }}"}
        secrets: ["${HOOK_SECRET}"]
        auth: {type: bearer, token: "${HOOK_TOKEN}"}
"""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

from cxbridge import (
    AllowNetworks,
    ConfigWarning,
    JsonTemplate,
    TextTemplate,
    UrlTemplate,
    parse_secret,
)

__all__ = [
    "AUTH_TYPES",
    "MAX_HEADER_VALUE",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "HttpOptions",
    "MtlsAuth",
    "NoAuth",
    "OAuth2Auth",
    "SigningSecret",
    "Timeout",
    "header_value_problem",
    "is_template",
]

# Errors never echo what was typed: these models hold secrets.
_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: a valid header name
# Headers cxbridge sets itself on every request; a tenant file may not override them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-cxmind-signature",
        "x-cxmind-event",
        "x-cxmind-attempt",
        "idempotency-key",
    }
)


# What HTTP/1.1 can carry in a header value as text: visible ASCII, space and tab. Other
# characters (é, U+2028) cannot be encoded by the client, CR/LF would split the header.
_SENDABLE = re.compile(r"[^\t\x20-\x7e]")


# Longest header value sent: servers commonly refuse longer header lines (HTTP 431).
MAX_HEADER_VALUE = 8 * 1024


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or None. Refused rather than encoded: a
    receiver could not tell an encoding we chose from the data."""
    if len(value) > MAX_HEADER_VALUE:
        return (
            f"{len(value):,} characters is over the limit of {MAX_HEADER_VALUE:,} for a header; "
            "put long values in the body"
        )
    bad = _SENDABLE.search(value)
    if bad is None:
        return None
    char = bad.group()
    return (
        f"character {char!r} (U+{ord(char):04X}) at position {bad.start() + 1} cannot be sent in "
        "a header (only printable ASCII can); encode it, e.g. `| url_encode` or `| base64_encode`"
    )


def is_template(source: str) -> bool:
    """Whether a string option is a Liquid template (rendered per event) or a fixed value."""
    return "{{" in source or "{%" in source


class SigningSecret(BaseModel):
    """One ``whsec_…`` signing secret; after ``expires_at`` it is no longer used (rotation)."""

    model_config = _CONFIG

    secret: SecretStr
    expires_at: datetime | None = None

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        parse_secret(value.get_secret_value())  # raises InvalidSecretError (a ValueError)
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


class NoAuth(BaseModel):
    model_config = _CONFIG
    type: Literal["none"] = "none"


class BearerAuth(BaseModel):
    """``Authorization: Bearer <token>``."""

    model_config = _CONFIG
    type: Literal["bearer"]
    token: SecretStr = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _sendable(cls, value: SecretStr) -> SecretStr:
        if header_value_problem(value.get_secret_value()):
            raise ValueError("token must be printable ASCII, as it is sent in a header")
        return value


class BasicAuth(BaseModel):
    """``Authorization: Basic base64(username:password)``."""

    model_config = _CONFIG
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr


class OAuth2Auth(BaseModel):
    """OAuth 2.0 client credentials (RFC 6749 §4.4). The token is cached per destination until it
    expires; a 401 answer refreshes it once and sends the request once more."""

    model_config = _CONFIG
    type: Literal["oauth2"]
    token_url: str = Field(pattern=r"^https?://")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None
    audience: str | None = None
    client_auth: Literal["basic", "body"] = Field(
        "basic",
        description="Send the client credentials as HTTP Basic (RFC 6749 default) or form fields.",
    )


class MtlsAuth(BaseModel):
    """A client certificate (mutual TLS). ``ca_file`` replaces the default CA bundle."""

    model_config = _CONFIG
    type: Literal["mtls"]
    cert_file: FilePath
    key_file: FilePath
    ca_file: FilePath | None = None
    key_password: SecretStr | None = None


Auth = Annotated[
    NoAuth | BearerAuth | BasicAuth | OAuth2Auth | MtlsAuth, Field(discriminator="type")
]
AUTH_TYPES = ("none", "bearer", "basic", "oauth2", "mtls")


class Timeout(BaseModel):
    """Seconds. ``connect`` bounds opening the connection (and TLS); ``total`` bounds each wait for
    the server after that, and reading the response stops once ``total`` has passed since the
    start."""

    model_config = _CONFIG
    connect: float = Field(5.0, gt=0, le=60)
    total: float = Field(15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _order(self) -> Timeout:
        if self.connect > self.total:
            raise ValueError("timeout.connect cannot be longer than timeout.total")
        return self


class HttpOptions(BaseModel):
    """An ``http`` destination: any HTTPS endpoint, signed with Standard Webhooks headers."""

    model_config = _CONFIG

    url: UrlTemplate = Field(
        description="Liquid template of the URL (http or https): the scheme and host are written "
        "out, values from the event are percent-encoded."
    )
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, TextTemplate] = Field(
        default_factory=dict,
        description="Extra headers; values are Liquid templates. Put credentials in `auth`.",
    )
    body: JsonTemplate | None = Field(
        None, description="JSON-first body template; the event's own JSON when neither body is set."
    )
    text_body: TextTemplate | None = Field(None, description="A non-JSON body (Liquid text).")
    content_type: str | None = Field(
        None,
        description="Content-Type; application/json for `body`, text/plain; charset=utf-8 for "
        "`text_body` unless set.",
    )
    secrets: list[SigningSecret] = Field(
        default_factory=list, description="whsec_ signing secrets; several while rotating."
    )
    auth: Auth = Field(default_factory=NoAuth)
    timeout: Timeout = Field(default_factory=Timeout)
    allow_networks: AllowNetworks
    max_response_excerpt: int = Field(16 * 1024, ge=0, le=1024 * 1024)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("secrets", mode="before")
    @classmethod
    def _secret_list(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            value = [value]
        if isinstance(value, list):
            return [{"secret": v} if isinstance(v, str | SecretStr) else v for v in value]
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, TextTemplate]) -> dict[str, TextTemplate]:
        for name, template in value.items():
            problem = header_value_problem(template.source)
            if problem and not is_template(template.source):
                raise ValueError(f"header {name}: {problem}")
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(
                    f"header {name!r} is set by cxbridge and cannot be configured"
                    + ("; use content_type" if name.lower() == "content-type" else "")
                )
        return value

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or header_value_problem(value)):
            raise ValueError("content_type must be a single non-empty line of printable ASCII")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpOptions:
        if self.body is not None and self.text_body is not None:
            raise ValueError("set either body (JSON) or text_body, not both")
        has_auth_header = any(name.lower() == "authorization" for name in self.headers)
        if has_auth_header and self.auth.type != "none":
            raise ValueError(f"headers.Authorization conflicts with auth.type {self.auth.type!r}")
        if not self.secrets:
            # Loads (a receiver may authenticate otherwise), but `cxbridge validate` says so.
            warnings.warn(
                "no `secrets`: webhooks go out unsigned and the receiver cannot verify them; "
                "add `secrets: [${...}]` (make one with `cxbridge secret`)",
                ConfigWarning,
                stacklevel=2,
            )
        return self

    def active_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets to sign with at ``now``, newest configuration order kept."""
        moment = now or datetime.now(UTC)
        return [s.secret.get_secret_value() for s in self.secrets if s.active(moment)]

    def client_key(self) -> str:
        """What the pooled client depends on; a change builds a new client."""
        mtls: tuple[Path | None, ...] = ()
        if isinstance(self.auth, MtlsAuth):
            mtls = (self.auth.cert_file, self.auth.key_file, self.auth.ca_file)
        nets = sorted(str(n) for n in self.allow_networks)
        return repr((self.timeout.connect, self.timeout.total, nets, mtls))
