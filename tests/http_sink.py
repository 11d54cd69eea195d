"""The fake HTTP target now ships in the test kit (:mod:`cxbridge.testing.target`); this name stays
for the suite's older imports."""

from cxbridge.testing.target import FakeTarget, HttpSink, Recorded, Reply, closed_port

__all__ = ["FakeTarget", "HttpSink", "Recorded", "Reply", "closed_port"]
