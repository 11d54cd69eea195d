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
            "Accepted",
            "AttemptRecord",
            "Clock",
            "DeliveryRecord",
            "Engine",
            "FakeClock",
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
            "generate_secret",
            "parse_secret",
            "sign",
            "verify",
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
            "StoreUnavailableError",
            "TemplateError",
            "TemplateRenderError",
            "TemplateSyntaxError",
            "__version__",
        ]
    )
    for name in cxbridge.__all__:
        assert hasattr(cxbridge, name), name


def test_an_engine_from_plain_arguments_reads_no_environment_and_reports_attempts(
    tmp_path, monkeypatch
):
    """Item 5 and 6 of issue 14: an embedder builds an engine from plain arguments (a stray
    ``.env`` or ``CXBRIDGE_*`` variable must not redirect it) and reads the attempt log."""
    from datetime import UTC, datetime

    from tests.engine_support import make_event
    from tests.scripted_plugin import ScriptedPlugin

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CXBRIDGE_QUEUE_NAME=from-dotenv\n")
    monkeypatch.setenv("CXBRIDGE_DATABASE_URL", "sqlite:////nonexistent/elsewhere.db")
    config = tmp_path / "tenants"
    config.mkdir()
    (config / "acme.yaml").write_text(
        "tenant: acme\ndestinations:\n  crm:\n    type: scripted\n    events: [quality_score]\n"
    )
    plugin = ScriptedPlugin()
    plugin.script.append(cxbridge.Outcome.retry("HTTP 503", status_code=503))
    clock = cxbridge.FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    engine = cxbridge.Engine.from_config(
        config,
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        broker_url=f"sqlite:///{tmp_path / 'broker.db'}",
        queue_name="embedded",
        clock=clock,
        plugins=[plugin],
        entry_points=False,
    )
    try:
        assert engine.queue_name == "embedded"
        accepted = engine.accept(make_event())
        assert isinstance(accepted, cxbridge.Accepted)
        (delivery_id,) = accepted.delivery_ids
        engine.process(delivery_id)
        clock.advance(3600)
        engine.process(delivery_id)
        record = engine.delivery(delivery_id)
        assert isinstance(record, cxbridge.DeliveryRecord) and record.status == "delivered"
        assert [d.id for d in engine.deliveries(status="delivered")] == [delivery_id]
        first, second = engine.attempts(delivery_id)
        assert isinstance(first, cxbridge.AttemptRecord)
        assert first.outcome.kind is cxbridge.OutcomeKind.RETRY and first.outcome.status_code == 503
        assert second.number == 2 and second.outcome.ok
        again = engine.accept(make_event(event_id=accepted.event_id))
        assert again.duplicate and again.delivery_ids == [delivery_id]
    finally:
        engine.close()
