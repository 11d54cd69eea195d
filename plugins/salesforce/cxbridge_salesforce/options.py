"""The options of a ``salesforce`` destination, as a tenant file writes them.

Example (``${VAR}`` references are resolved by the core's config loader)::

    destinations:
      crm:
        type: salesforce
        events: [call_create, call_outcome, call_summary, quality_score]
        domain: acme.my.salesforce.com          # login | test | a My Domain host
        auth:
          type: jwt_bearer                      # or client_credentials | access_token
          consumer_key: ${SF_CONSUMER_KEY}
          username: cxmind-integration@acme.com
          private_key_file: /run/secrets/salesforce.key
        mappings:
          call_summary:
            fields: {CallDisposition: "{{ ai.tags | first }}"}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

from cxbridge import AllowNetworks, JsonTemplate, NetworkPolicy

__all__ = [
    "API_NAME",
    "AccessTokenAuth",
    "Auth",
    "ClientCredentialsAuth",
    "JwtBearerAuth",
    "MappingOverride",
    "PasswordAuth",
    "SalesforceOptions",
    "SoapLoginAuth",
]

log = logging.getLogger("cxbridge_salesforce")

# A Salesforce API name (object or field): letters, digits and underscores, starting with a letter.
# Names are put into URL paths, so nothing else is accepted.
API_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,79}$"
ApiName = Annotated[str, Field(pattern=API_NAME)]

LEGACY_WARNING = (
    "salesforce destination uses the legacy %s login: Salesforce is retiring SOAP login (API "
    "v65) and the OAuth username-password flow; switch to auth type jwt_bearer or "
    "client_credentials"
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JwtBearerAuth(_Model):
    """OAuth 2.0 JWT bearer flow (recommended): a connected app signs a JWT for a user."""

    type: Literal["jwt_bearer"]
    consumer_key: SecretStr = Field(description="The connected app's consumer key (client id).")
    username: str = Field(min_length=1, description="The Salesforce user the token acts as.")
    private_key: SecretStr | None = Field(
        None, description="PEM private key, inline (literal '\\n' sequences are accepted)."
    )
    private_key_file: FilePath | None = Field(None, description="Path of a PEM private key file.")
    audience: str | None = Field(
        None,
        description="JWT 'aud'. Default https://test.salesforce.com for test/sandbox domains, else "
        "https://login.salesforce.com.",
    )

    @model_validator(mode="after")
    def _one_key(self) -> JwtBearerAuth:
        if (self.private_key is None) == (self.private_key_file is None):
            raise ValueError("give exactly one of private_key (inline PEM) or private_key_file")
        if self.private_key is not None:
            _check_pem(self.private_key.get_secret_value())
        return self

    def pem(self) -> bytes:
        if self.private_key_file is not None:
            return Path(self.private_key_file).read_bytes()
        assert self.private_key is not None
        return _normalise_pem(self.private_key.get_secret_value()).encode()


class ClientCredentialsAuth(_Model):
    """OAuth 2.0 client credentials flow (recommended); needs a My Domain ``domain``."""

    type: Literal["client_credentials"]
    consumer_key: SecretStr
    consumer_secret: SecretStr


class AccessTokenAuth(_Model):
    """A ready access token and its instance URL. It cannot be renewed: a 401 is permanent."""

    type: Literal["access_token"]
    access_token: SecretStr
    instance_url: str = Field(pattern=r"^https?://[^/\s]+/?$")

    @field_validator("instance_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(
                "instance_url must be https:// (Salesforce serves its API over https only); to "
                "reach a proxy or test server over plain http, set the destination's endpoint "
                "and allow_networks"
            )
        return value


class PasswordAuth(_Model):
    """Legacy: the OAuth username-password flow (being retired by Salesforce; logs a warning)."""

    type: Literal["password"]
    consumer_key: SecretStr
    consumer_secret: SecretStr
    username: str = Field(min_length=1)
    password: SecretStr
    security_token: SecretStr | None = None

    @model_validator(mode="after")
    def _warn(self) -> PasswordAuth:
        log.warning(LEGACY_WARNING, "OAuth username-password")
        return self


class SoapLoginAuth(_Model):
    """Legacy: SOAP ``login()`` with username, password and security token (retired in API v65)."""

    type: Literal["soap"]
    username: str = Field(min_length=1)
    password: SecretStr
    security_token: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _warn(self) -> SoapLoginAuth:
        log.warning(LEGACY_WARNING, "SOAP")
        return self


Auth = Annotated[
    JwtBearerAuth | ClientCredentialsAuth | AccessTokenAuth | PasswordAuth | SoapLoginAuth,
    Field(discriminator="type"),
]

MappingName = Literal["call_create", "call_summary", "quality_score", "escalation", "sales_lead"]


class MappingOverride(_Model):
    """Overrides of one built-in write. ``escalation`` and ``sales_lead`` are the two writes a
    ``call_outcome`` can make; the others are named after their event type.

    ``fields`` and ``create_fields`` are JSON templates (string leaves are Liquid; a leaf that is
    exactly ``{{ expr }}`` keeps its type), rendered against the event. They are merged over the
    built-in fields unless ``default_fields`` is false (the default when ``object`` names a
    different object).
    ``create_fields`` are only sent when the record does not exist yet.
    """

    enabled: bool = True
    object: ApiName | None = None
    operation: Literal["create", "update", "upsert"] | None = None
    external_id_field: ApiName | None = None
    external_id: JsonTemplate | None = Field(
        None, description="Template of the external id value, e.g. '{{ call.id }}:wrapup'."
    )
    fields: JsonTemplate | None = None
    create_fields: JsonTemplate | None = None
    default_fields: bool | None = None

    @field_validator("fields", "create_fields", mode="after")
    @classmethod
    def _mapping(cls, value: JsonTemplate | None) -> JsonTemplate | None:
        if value is not None and not isinstance(value.document, dict):
            raise ValueError("must be a mapping of Salesforce field names to values")
        return value


class SalesforceOptions(_Model):
    """A Salesforce org and how cxbridge events are written into it."""

    auth: Auth
    domain: str = Field(
        "login",
        description="Login host: 'login', 'test', or your My Domain "
        "(acme.my.salesforce.com or acme.my).",
        pattern=r"^(https://)?[A-Za-z0-9][A-Za-z0-9.-]*/?$",
    )
    api_version: str = Field("63.0", pattern=r"^\d{2,3}\.0$")
    connect_timeout: float = Field(5.0, gt=0, le=60)
    read_timeout: float = Field(15.0, gt=0, le=300)
    task_external_id_field: ApiName = Field(
        "CXMind_Call_Id__c", description="External-id field of Task that holds the call id."
    )
    case_external_id_field: ApiName | None = Field(
        None, description="External-id field of Case; defaults to task_external_id_field."
    )
    qa_score_field: ApiName = "CXMind_QA_Score__c"
    contact_lookup: bool = Field(True, description="Find the caller's Contact by phone (SOSL).")
    escalation_emotions: frozenset[str] = Field(
        frozenset({"anger", "angry", "frustrated", "frustration"}),
        description="Emotion labels that open a Case when the outcome has no explicit signal.",
    )
    rate_limit_retry_after: float = Field(
        1800, ge=60, le=24 * 3600, description="Wait after REQUEST_LIMIT_EXCEEDED, in seconds."
    )
    mappings: dict[MappingName, MappingOverride] = Field(default_factory=dict)
    endpoint: str | None = Field(
        None,
        description="Send every request (token, login, REST) to this base URL instead of "
        "Salesforce's hosts: a corporate proxy, a mock or a local test server. Plain http:// only "
        "to a host inside allow_networks.",
    )
    allow_networks: AllowNetworks

    @field_validator("escalation_emotions", mode="after")
    @classmethod
    def _lower(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(label.strip().lower() for label in value)

    @model_validator(mode="after")
    def _check(self) -> SalesforceOptions:
        if isinstance(self.auth, ClientCredentialsAuth) and self.login_host in (
            "login.salesforce.com",
            "test.salesforce.com",
        ):
            raise ValueError(
                "the client_credentials flow needs your My Domain as 'domain' "
                "(e.g. acme.my.salesforce.com), not login or test"
            )
        return self

    @model_validator(mode="after")
    def _reachable(self) -> SalesforceOptions:
        """The addresses this destination sends to pass the outbound guard (when written as IP
        addresses; a name is checked when it is resolved, at delivery)."""
        if self.endpoint:
            urls = {"endpoint": self.endpoint}
        else:
            urls = {"domain": f"https://{self.login_host}"}
            if isinstance(self.auth, AccessTokenAuth):
                urls["instance_url"] = self.auth.instance_url
        for name, url in urls.items():
            problem = self.policy.endpoint_problem(url)
            if problem is not None:
                raise ValueError(f"{name}: {problem}")
        return self

    @property
    def policy(self) -> NetworkPolicy:
        """The outbound guard's rules for this destination."""
        return NetworkPolicy.from_cidrs(self.allow_networks)

    @property
    def login_host(self) -> str:
        """The host that serves the OAuth token endpoint, e.g. ``acme.my.salesforce.com``."""
        host = self.domain.removeprefix("https://").rstrip("/").lower()
        if "." not in host or host.endswith(".my"):
            host = f"{host}.salesforce.com"
        return host

    @property
    def is_sandbox(self) -> bool:
        host = self.login_host
        return host == "test.salesforce.com" or ".sandbox." in host or "--" in host

    @property
    def case_id_field(self) -> str:
        return self.case_external_id_field or self.task_external_id_field


def _normalise_pem(text: str) -> str:
    if "\\n" in text and "\n" not in text.strip():
        text = text.replace("\\n", "\n")
    return text.strip() + "\n"


def _check_pem(text: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(_normalise_pem(text).encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("private_key is not an unencrypted PEM private key") from None
