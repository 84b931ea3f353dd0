"""Fuzzing the admin API from its own OpenAPI description (schemathesis): no 5xx, no schema violation."""

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

from gateway import create_app
from gateway.openapi import admin_openapi

TOKEN = "fuzz-admin-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def fuzz_app(env, redis, uponai, twilio, start_workers):
    start_workers(1)
    return create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "10"})


# The document is built without an app (nothing is built at import time); each call goes to the fixture's app.
schema = schemathesis.openapi.from_dict(admin_openapi())


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_api_fuzz(fuzz_app, case):
    case.call_and_validate(app=fuzz_app, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_api_fuzz_without_the_token(fuzz_app, case):
    response = case.call(app=fuzz_app, headers={"Authorization": "Bearer wrong"})
    # Schemathesis also tries methods a path does not have (405).
    expected = (200, 405) if case.path == "/admin/openapi.json" else (401, 405)
    assert response.status_code in expected, response.text


def test_served_description_is_the_fuzzed_one(fuzz_app):
    assert fuzz_app.test_client().get("/admin/openapi.json").get_json() == admin_openapi()
