"""The admin API's OpenAPI description: valid OpenAPI 3.1, every constraint in it enforced by the app (they cannot
drift), open to routes declared elsewhere, and fuzzed (schemathesis): no 5xx, no schema violation."""

from __future__ import annotations

import copy
import json
import re
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from rq import Queue
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.queues import ADMIN_QUEUE_NAME
from gateway import create_app
from gateway.campaigns import OPERATIONS as CAMPAIGN_OPERATIONS
from gateway.openapi import admin_openapi

TOKEN = "fuzz-admin-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def fuzz_app(env, redis, uponai, twilio, start_workers):
    start_workers(1)
    return create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "10"})


# The document is built without an app (nothing is built at import time); each call goes to the fixture's app.
schema = schemathesis.openapi.from_dict(admin_openapi(extra=CAMPAIGN_OPERATIONS))


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
    assert fuzz_app.test_client().get("/admin/openapi.json").get_json() == admin_openapi(extra=CAMPAIGN_OPERATIONS)


# -- the document is valid, and is the checks ----------------------------------------------------


def test_the_document_is_valid_openapi_3_1():
    document = admin_openapi(extra=CAMPAIGN_OPERATIONS)
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: the OpenAPI 3.1 schema and its JSON Schema dialect


# Every key a schema in the document may use. A key outside these (pydantic once wrote "ge" for a bound
# placed after a validator) is a constraint no tool reads: the document would promise what no one checks.
CONSTRAINTS = {"type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
               "exclusiveMaximum", "minItems", "maxItems", "minProperties", "maxProperties", "required", "not",
               "additionalProperties", "propertyNames"}
ANNOTATIONS = {"title", "description", "examples", "default", "format", "$ref", "anyOf", "oneOf", "allOf", "items",
               "properties"}


def schemas_in(document: dict) -> list[dict]:
    """Every schema object of the document: component schemas, parameters' and media types', and inside them."""
    found, stack = [], [*document["components"]["schemas"].values()]
    for path in document["paths"].values():
        for operation in path.values():
            stack += [parameter["schema"] for parameter in operation.get("parameters", [])]
            bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
            stack += [media["schema"] for body in bodies for media in body.get("content", {}).values()]
    while stack:
        schema = stack.pop()
        found.append(schema)
        stack += list(schema.get("properties", {}).values())
        stack += [schema[key] for key in ("items", "additionalProperties", "propertyNames", "not")
                  if isinstance(schema.get(key), dict)]
        stack += [option for key in ("anyOf", "oneOf", "allOf") for option in schema.get(key, [])]
    return found


def test_every_schema_keyword_is_one_tools_read():
    for schema in schemas_in(admin_openapi(extra=CAMPAIGN_OPERATIONS)):
        assert set(schema) <= CONSTRAINTS | ANNOTATIONS, schema


def resolved(schema: dict, document: dict) -> dict:
    """``schema`` with its $ref to a component replaced by the component (request models are flat)."""
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def constraint_paths(schema, path=()):
    """Where each constraint keyword sits in ``schema``, e.g. ("properties", "message", "anyOf", 0, "maxLength")."""
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from constraint_paths(item, (*path, index))
    elif isinstance(schema, dict) and schema != {"type": "null"}:
        for key, value in schema.items():
            if key in CONSTRAINTS and not (key == "additionalProperties" and value is True):
                yield (*path, key)
            if key in ("properties", "anyOf", "additionalProperties", "propertyNames", "items"):
                if key == "properties":
                    for name, child in value.items():
                        yield from constraint_paths(child, (*path, key, name))
                else:
                    yield from constraint_paths(value, (*path, key))


def without(schema: dict, path: tuple) -> dict:
    relaxed = copy.deepcopy(schema)
    node = relaxed
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return relaxed


def candidates(schema: dict) -> list:
    """Values to break a schema with, made from the numbers and names it holds."""
    numbers, names, stack = set(), set(), [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, int) and not isinstance(item, bool):
            numbers.add(item)
        elif isinstance(item, str):
            names.add(item)
    pool = ["", " ", "a b", "bad.id", "x", "five", "\u00e9", 5, 1.5, True, [], ["x"], {}, {"": "v"}, {"k": 5},
            {"k": {"k": 5}}, {"k": {"": "v"}}]
    for n in sorted(numbers):
        pool += ["a" * (n + 1), n + 1, n - 1, {f"k{i}": "v" for i in range(n + 1)}, {"a" * (n + 1): "v"},
                 ["x"] * (n + 1),
                 {"k": "a" * (n + 1)}, {"k": {"k": "a" * (n + 1)}}, {"k": {"a" * (n + 1): "v"}}]
    pool += [{name: "v"} for name in sorted(names)]
    return pool


def witnesses(schema: dict, baseline: dict | None = None, where: str = "body"):
    """``(constraint path, value, field)``: for each constraint, a value that only that constraint refuses."""
    validator = Draft202012Validator(schema)
    if baseline is None:  # one parameter: text on the wire, a number where the schema says integer
        texts = {value if isinstance(value, str) else json.dumps(value) for value in candidates(schema)}
        # Not in a path: a slash (another route). Not in a query: nothing (an empty value is no value, as HTML
        # forms send it).
        texts = {text for text in texts if not (where == "path" and "/" in text or where != "header" and not text)}
        pool = [(int(text) if schema.get("type") == "integer" and re.fullmatch("-?[0-9]+", text) else text, None)
                for text in sorted(texts)]
    else:  # a body: the baseline with one property changed, left out or added, or no object
        pool = [({**baseline, name: value}, name) for name in schema["properties"] for value in candidates(schema)]
        pool += [({k: v for k, v in baseline.items() if k != name}, name) for name in baseline]
        pool += [({**baseline, "colour": "blue"}, "colour"), ([baseline], "body"), ("text", "body")]
    for path in constraint_paths(schema):
        if baseline is None and path == ("type",) and schema["type"] == "string":
            continue  # any text is a string
        relaxed = Draft202012Validator(without(schema, path))
        found = next(((value, field) for value, field in pool
                      if relaxed.is_valid(value) and not validator.is_valid(value)), None)
        assert found is not None, f"no value breaks only {path} of {schema}: add one to candidates()"
        yield path, *found


def requests_breaking_each_constraint(document: dict):
    """``(operation id, constraint, method, path, field, request)`` for every declared constraint of every route."""
    for template, methods in document["paths"].items():
        for method, operation in methods.items():
            parameters = operation.get("parameters", [])
            good = {(p["in"], p["name"]): p["schema"]["examples"][0] for p in parameters if p["required"]}
            body_schema = None
            if "requestBody" in operation:
                body_schema = resolved(operation["requestBody"]["content"]["application/json"]["schema"], document)
                good["body", ""] = {name: body_schema["properties"][name]["examples"][0]
                                    for name in body_schema.get("required", [])}
            yield operation["operationId"], "none", method, template, None, good
            for p in parameters:
                for constraint, value, _ in witnesses(p["schema"], where=p["in"]):
                    text = str(value)
                    yield (operation["operationId"], (p["name"], *constraint), method, template, p["name"],
                           {**good, (p["in"], p["name"]): text})
            if body_schema is not None:
                for constraint, body, field in witnesses(body_schema, good["body", ""]):
                    yield operation["operationId"], constraint, method, template, field, {**good, ("body", ""): body}


def send(client, method: str, template: str, request: dict):
    path = template
    for (where, name), value in request.items():
        if where == "path":
            path = path.replace("{" + name + "}", quote(value, safe=""))
    query = {name: value for (where, name), value in request.items() if where == "query"}
    headers = {**AUTH_HEADER, **{name: value for (where, name), value in request.items() if where == "header"}}
    body = request.get(("body", ""))
    return client.open(path, method=method.upper(), query_string=query, headers=headers,
                       **({} if body is None else {"data": json.dumps(body), "content_type": "application/json"}))


AUTH_HEADER = {"Authorization": f"Bearer {TOKEN}"}


def test_every_constraint_in_the_document_is_enforced_by_the_app(env, redis):
    """The document and the checks cannot drift: for each route, a request that breaks one declared constraint
    (and nothing else) is a 400 naming the field, from the real app; the same request unbroken is no 400."""
    document = admin_openapi(extra=CAMPAIGN_OPERATIONS)
    client = create_app({**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "0.2"}).test_client()
    checked = set()
    for operation_id, constraint, method, template, field, request in requests_breaking_each_constraint(document):
        response = send(client, method, template, request)
        if field is None:
            assert response.status_code != 400, (operation_id, response.get_json())
            continue
        assert response.status_code == 400, (operation_id, constraint, request, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == "invalid_request" and error["message"].startswith(field), (operation_id, error)
        checked.add((operation_id, constraint))
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).count == 0  # nothing refused was queued
    # The constraints the old hand-written document lacked or wrote twice are among those proven.
    assert {("startOutbound", ("properties", "dynamic_variables", "anyOf", 0, "additionalProperties", "maxLength")),
            ("startOutbound", ("properties", "agent_id", "anyOf", 0, "pattern")),
            ("startOutbound", ("Idempotency-Key", "pattern")), ("listChats", ("pagination_key", "pattern")),
            ("sendOperatorMessage", ("properties", "message", "maxLength"))} <= checked


# -- more routes join the document ----------------------------------------------------------------


def test_operations_declared_elsewhere_join_the_document():
    """The campaign routes (gateway.campaigns) are declared beside their views and join the one document."""
    document = admin_openapi(extra=CAMPAIGN_OPERATIONS)

    validate(document)
    operation = document["paths"]["/admin/campaigns"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CampaignRequest"}
    assert document["components"]["schemas"]["CampaignRequest"]["properties"]["numbers"]["maxItems"] == 10_000
    assert {"Campaign", "CampaignAccepted", "CampaignList"} <= set(document["components"]["schemas"])
    assert "409" in operation["responses"]
    assert "/admin/campaigns" not in admin_openapi()["paths"]
