"""cxbridge plugin for http destinations (being built)."""

from pydantic import BaseModel, ConfigDict

from cxbridge import hookimpl


class HttpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_destinations(register):  # type: ignore[no-untyped-def]
    register("http", HttpOptions)
