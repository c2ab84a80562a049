"""schemathesis against the live /openapi.json: no 5xx, every response matches its schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.robustness.conftest import Server, assert_still_serving

MAX_EXAMPLES = 25  # per operation; keeps the whole fuzz run to well under a minute
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="session")
def api_schema(server: Server):
    return schemathesis.openapi.from_url(server.base_url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_contract(case) -> None:
    case.call_and_validate(checks=CHECKS, timeout=60)


def test_server_still_serving_after_fuzzing(server: Server) -> None:
    assert_still_serving(server.base_url)
