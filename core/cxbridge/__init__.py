"""cxbridge: carries contact-center AI events into Salesforce, Zendesk and any HTTP endpoint.

The public API is what this module exports; everything else may change between releases.
"""

from cxbridge.destinations import Destination, DestinationType
from cxbridge.errors import (
    ConfigError,
    ConfigProblem,
    CxbridgeError,
    DeliveryError,
    EventValidationError,
    PluginError,
    SignatureError,
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
from cxbridge.outcome import Delivery, Outcome, OutcomeKind, Payload
from cxbridge.retry import RetryPolicy, outcome_for_status, parse_retry_after
from cxbridge.templating import Condition, JsonTemplate, TextTemplate, UrlTemplate

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
    # templating and retries, for plugins
    "Condition",
    "JsonTemplate",
    "RetryPolicy",
    "TextTemplate",
    "UrlTemplate",
    "outcome_for_status",
    "parse_retry_after",
    # errors
    "ConfigError",
    "ConfigProblem",
    "CxbridgeError",
    "DeliveryError",
    "EventValidationError",
    "PluginError",
    "SignatureError",
    "TemplateError",
    "TemplateRenderError",
    "TemplateSyntaxError",
    "__version__",
]
