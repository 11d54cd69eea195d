"""The public API changes only on purpose: this list is what plugins may import."""

import cxbridge


def test_exported_names():
    assert sorted(cxbridge.__all__) == sorted(
        [
            "EVENT_TYPES",
            "CallCreate",
            "CallOutcome",
            "CallSummary",
            "Event",
            "QualityScore",
            "parse_event",
            "Delivery",
            "Destination",
            "DestinationType",
            "Outcome",
            "OutcomeKind",
            "Payload",
            "hookimpl",
            "Condition",
            "JsonTemplate",
            "RetryPolicy",
            "TextTemplate",
            "UrlTemplate",
            "outcome_for_status",
            "parse_retry_after",
            "AllowNetworks",
            "GuardedSession",
            "GuardedTransport",
            "NetworkPolicy",
            "guard_outcome",
            "AddressRefused",
            "RedirectRefused",
            "ResolutionFailed",
            "ConfigError",
            "ConfigProblem",
            "ConfigWarning",
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
    )
    for name in cxbridge.__all__:
        assert hasattr(cxbridge, name), name
