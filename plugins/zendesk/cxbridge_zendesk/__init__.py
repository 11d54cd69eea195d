"""cxbridge plugin for zendesk destinations (being built)."""

from pydantic import BaseModel, ConfigDict

from cxbridge import hookimpl


class ZendeskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_destinations(register):  # type: ignore[no-untyped-def]
    register("zendesk", ZendeskOptions)
