"""Fake Salesforce and Zendesk servers on 127.0.0.1, for tests and for ``cxbridge demo``: threaded
HTTP servers that speak the REST shapes the real clients (simple-salesforce, zenpy) use, keep what they
were sent, and can be told to fail."""

from cxbridge.testing.fakes.salesforce import FakeSalesforce
from cxbridge.testing.fakes.zendesk import FakeZendesk

__all__ = ["FakeSalesforce", "FakeZendesk"]
