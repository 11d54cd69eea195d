"""cxbridge: carries contact-center AI events into Salesforce, Zendesk and any HTTP endpoint.

The public API is what this module exports; everything else may change between releases.
"""

from typing import TYPE_CHECKING, Any

from cxbridge.clock import Clock, FakeClock
from cxbridge.destinations import Destination, DestinationType
from cxbridge.engine import Engine
from cxbridge.errors import (
    AddressRefused,
    ConfigError,
    ConfigProblem,
    ConfigWarning,
    CxbridgeError,
    DeliveryError,
    EventValidationError,
    PluginError,
    RedirectRefused,
    ResolutionFailed,
    SignatureError,
    StoreUnavailableError,
    TemplateError,
    TemplateRenderError,
    TemplateSyntaxError,
)
from cxbridge.events import (
    EVENT_TYPES,
    CallCreate,
    CallOutcome,
    CallSummary,
    Event,
    QualityScore,
    parse_event,
)
from cxbridge.hookspecs import hookimpl
from cxbridge.outbound import AllowNetworks, GuardedTransport, NetworkPolicy, guard_outcome
from cxbridge.outcome import Delivery, Outcome, OutcomeKind, Payload
from cxbridge.retry import RetryPolicy, outcome_for_status, parse_retry_after
from cxbridge.routing import Accepted
from cxbridge.signing import generate_secret, parse_secret, sign, verify
from cxbridge.store import AttemptRecord, DeliveryRecord
from cxbridge.templating import Condition, JsonTemplate, TextTemplate, UrlTemplate

if TYPE_CHECKING:
    from cxbridge.outbound import GuardedSession

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - grouped by purpose, like dramatiq's
    # events
    "EVENT_TYPES",
    "CallCreate",
    "CallOutcome",
    "CallSummary",
    "Event",
    "QualityScore",
    "parse_event",
    # plugin API
    "Delivery",
    "Destination",
    "DestinationType",
    "Outcome",
    "OutcomeKind",
    "Payload",
    "hookimpl",
    # embedding and testing: an engine, what it reports, its clock
    "Accepted",
    "AttemptRecord",
    "Clock",
    "DeliveryRecord",
    "Engine",
    "FakeClock",
    # templating and retries, for plugins
    "Condition",
    "JsonTemplate",
    "RetryPolicy",
    "TextTemplate",
    "UrlTemplate",
    "outcome_for_status",
    "parse_retry_after",
    # the outbound guard, for every connection a plugin opens
    "AllowNetworks",
    "GuardedSession",
    "GuardedTransport",
    "NetworkPolicy",
    "guard_outcome",
    # Standard Webhooks signatures: for senders and for receivers
    "generate_secret",
    "parse_secret",
    "sign",
    "verify",
    # errors
    "AddressRefused",
    "ConfigError",
    "ConfigProblem",
    "ConfigWarning",
    "CxbridgeError",
    "DeliveryError",
    "EventValidationError",
    "PluginError",
    "RedirectRefused",
    "ResolutionFailed",
    "SignatureError",
    "StoreUnavailableError",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "GuardedSession":  # imports requests on first use (the cxbridge[requests] extra)
        from cxbridge.outbound import GuardedSession

        return GuardedSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
