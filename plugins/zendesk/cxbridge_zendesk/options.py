"""The options of a ``type: zendesk`` destination, as a tenant file writes them.

Every key is optional except the connection (``subdomain`` and one way to authenticate); the
defaults give the behaviour described in :mod:`cxbridge_zendesk.mapping` without writing a template.
Example::

    destinations:
      zendesk:
        type: zendesk
        events: [call_create, call_outcome, call_summary, quality_score]
        subdomain: acme
        email: cx-bot@acme.com
        api_token: ${ACME_ZENDESK_TOKEN}
        custom_fields: {qa_score: 360001234}
        agents: {"agent-17": 381234567, "jane@acme.com": 381234568}
        escalation: {priority: urgent, emotions: [anger, frustration]}
        sales: {group_id: 360000111}
        quality: {pass_threshold: 85}
        mappings:
          call_summary:
            comment: {body: "AI summary: {{ ai.summary }}", public: false}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from cxbridge import AllowNetworks, JsonTemplate, NetworkPolicy

__all__ = [
    "EscalationOptions",
    "EventMapping",
    "QualityOptions",
    "SalesOptions",
    "Template",
    "ZendeskOptions",
]


# Template fields are cxbridge JsonTemplates, compiled and checked when the tenant file loads.
Template = JsonTemplate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EscalationOptions(_Strict):
    """``call_outcome`` escalations: an ``escalation`` signal, or one of ``emotions``."""

    emotions: list[str] = Field(
        default_factory=lambda: ["anger", "angry", "frustration", "frustrated"],
        description="Emotion labels (case-insensitive) that escalate the ticket.",
    )
    signals: list[str] = Field(default_factory=lambda: ["escalation"])
    priority: Literal["low", "normal", "high", "urgent"] = "urgent"
    tag: str = "cxmind_escalation"
    group_id: int | None = None
    assignee_id: int | None = None


class SalesOptions(_Strict):
    """``call_outcome`` sales signals (e.g. the customer asked for pricing)."""

    signals: list[str] = Field(default_factory=lambda: ["sales_lead"])
    tag: str = "sales_lead"
    group_id: int | None = None
    assignee_id: int | None = None


class QualityOptions(_Strict):
    """``quality_score``: the score goes to ``custom_fields[field]``, a tag says pass or review."""

    field: str = Field("qa_score", description="Name of the score's entry in custom_fields.")
    pass_threshold: float = Field(80, ge=0, le=100)
    pass_tag: str = "qa_pass"
    review_tag: str = "qa_review"


class EventMapping(_Strict):
    """Overrides of the default mapping of one event type.

    Each given section replaces that section of the default; each is a JSON document whose string
    leaves are Liquid templates rendered against the event.

    - ``ticket``: fields set on the ticket whether it is found or created (``priority``,
      ``group_id``, ``assignee_id``, ``type``, ``status``, ``custom_fields`` as ``{name or id:
      value}``).
    - ``create``: fields used only when this event creates the ticket (``subject``, ``comment``).
    - ``tags`` / ``remove_tags``: lists of tags to add / remove.
    - ``comment``: ``{body, public}`` added once per delivery (``null`` for none).
    - ``requester``: ``{phone, name, email}`` of the requester, looked up or created.
    """

    ticket: Template | None = None
    create: Template | None = None
    tags: Template | None = None
    remove_tags: Template | None = None
    comment: Template | None = None
    requester: Template | None = None


EventName = Literal["call_create", "call_outcome", "call_summary", "quality_score"]


class ZendeskOptions(_Strict):
    """A Zendesk Support account and how events map onto its tickets."""

    subdomain: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$",
        description="acme for acme.zendesk.com.",
    )
    domain: str = Field(
        "zendesk.com",
        description="Host suffix after the subdomain; change it only for a sandbox host or tests.",
    )
    email: str | None = Field(None, description="The API user's email, with api_token.")
    api_token: SecretStr | None = None
    oauth_token: SecretStr | None = None
    endpoint: str | None = Field(
        None,
        description="Send every request to this base URL instead of https://<subdomain>.<domain>: "
        "a corporate proxy, a mock or a local test server. Plain http:// only to a host inside "
        "allow_networks.",
    )
    allow_networks: AllowNetworks
    connect_timeout: float = Field(5, gt=0, le=60, description="Seconds to connect.")
    read_timeout: float = Field(15, gt=0, le=300, description="Seconds to wait for each answer.")

    custom_fields: dict[str, int] = Field(
        default_factory=dict, description="Ticket custom field ids by the names templates use."
    )
    external_id: Template | None = Field(
        None,
        description="The ticket's external_id (default: the call id); one value per call.",
    )
    tags: list[str] = Field(
        default_factory=lambda: ["cxmind", "voice"],
        description="Tags of every ticket this destination creates (plus voice_<direction>).",
    )
    default_requester_name: str = "Caller {phone}"

    agents: dict[str, int] = Field(
        default_factory=dict,
        description="CXMind agent id or email -> Zendesk agent (user) id, for screen pops.",
    )
    screen_pop: Literal["ticket", "user", "off"] = "ticket"
    screen_pop_max_age: float = Field(
        120, gt=0, description="Seconds after the call started during which a screen pop is useful."
    )

    escalation: EscalationOptions = Field(default_factory=EscalationOptions)
    sales: SalesOptions = Field(default_factory=SalesOptions)
    quality: QualityOptions = Field(default_factory=QualityOptions)
    mappings: dict[EventName, EventMapping] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> ZendeskOptions:
        if self.oauth_token is not None and self.api_token is not None:
            raise ValueError("give either api_token (with email) or oauth_token, not both")
        if self.oauth_token is None and self.api_token is None:
            raise ValueError("give api_token (with email) or oauth_token to authenticate")
        if self.api_token is not None and not self.email:
            raise ValueError("api_token needs the API user's email")
        return self

    @model_validator(mode="after")
    def _reachable(self) -> ZendeskOptions:
        """The address this destination sends to passes the outbound guard (when it is written
        as an IP address; a name is checked when it is resolved, at delivery)."""
        url = self.endpoint or f"https://{self.subdomain}.{self.domain}"
        problem = self.policy.endpoint_problem(url)
        if problem is not None:
            raise ValueError(f"endpoint: {problem}" if self.endpoint else problem)
        return self

    @property
    def policy(self) -> NetworkPolicy:
        """The outbound guard's rules for this destination."""
        return NetworkPolicy.from_cidrs(self.allow_networks)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)
