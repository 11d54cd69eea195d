"""The stored payload: a JSON description of what one delivery does to Zendesk.

``transform`` renders it once; every attempt of the delivery executes the same plan. Executing it is
idempotent: find the ticket by ``external_id`` or create it (with an ``Idempotency-Key``), set
``ticket`` fields, add ``add_tags`` and remove ``remove_tags``, and add ``comment`` unless this
delivery already did.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["CONTENT_TYPE", "CommentPlan", "RequesterPlan", "ScreenPopPlan", "TicketPlan"]

CONTENT_TYPE = "application/vnd.cxbridge.zendesk-plan+json"


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequesterPlan(_Plan):
    """Who the ticket is from: looked up by phone (then email), created when unknown."""

    phone: str | None = None
    name: str | None = None
    email: str | None = None


class CommentPlan(_Plan):
    body: str = Field(min_length=1)
    public: bool = False


class ScreenPopPlan(_Plan):
    """Open the ticket (or the requester) in this agent's browser, if still useful before
    ``not_after``."""

    agent_id: int
    target: Literal["ticket", "user"] = "ticket"
    not_after: AwareDatetime | None = None


class TicketPlan(_Plan):
    version: Literal[1] = 1
    event_type: str
    external_id: str = Field(min_length=1, max_length=255)
    requester: RequesterPlan | None = None
    create: dict[str, Any] = Field(
        default_factory=dict, description="Ticket fields used only when the ticket is created."
    )
    ticket: dict[str, Any] = Field(
        default_factory=dict, description="Ticket fields set whether found or created."
    )
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)
    comment: CommentPlan | None = None
    screen_pop: ScreenPopPlan | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()
