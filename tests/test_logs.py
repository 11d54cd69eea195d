"""Structured logs."""

from __future__ import annotations

import json
import logging

from cxbridge.logs import JsonFormatter


def test_json_logs_are_one_object_per_line_with_extra_fields():
    record = logging.makeLogRecord(
        {"name": "cxbridge.engine", "levelname": "WARNING", "msg": "retry %s", "args": ("x",)}
    )
    record.delivery_id = "dlv_1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "retry x" and data["delivery_id"] == "dlv_1"
    assert data["level"] == "warning" and data["logger"] == "cxbridge.engine"
