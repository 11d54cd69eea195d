"""The published OpenAPI document: it matches the routes, and a bounded schemathesis run against the
running service finds no server error (5xx other than the documented 503)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from cxbridge.service import openapi_document
from tests.http_sink import HttpSink
from tests.service_support import ADMIN, KEYS, service_settings, serving

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with (
        HttpSink() as sink,
        serving(service_settings(tmp_path_factory.mktemp("api"), sink.url())) as (url, _),
    ):
        yield url


def test_the_app_publishes_the_document(base_url: str) -> None:
    published = httpx.get(f"{base_url}/openapi.json").json()
    assert published == openapi_document()
    assert "/v1/events:batch" in published["paths"]
    # Every response is described in words (an unquoted comma in a docstring's YAML breaks this).
    for path, operations in published["paths"].items():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                if "$ref" in response:
                    response = published["components"]["responses"][response["$ref"].split("/")[-1]]
                assert isinstance(response.get("description"), str), (path, code)
                assert None not in response.values(), (path, code)


@schema.parametrize()
@settings(
    max_examples=7,  # x 15 operations: about 100 requests
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error(case: schemathesis.Case, base_url: str) -> None:
    token = KEYS["acme"] if case.path.startswith("/v1/events") else ADMIN
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500 or response.status_code == 503, response.text
    assert response.status_code != 503 or "Retry-After" in response.headers
