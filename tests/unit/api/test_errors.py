"""One shape of error details (api/errors.py): every VALIDATION_ERROR names a `field` and lists its
`errors`, each with a field and a message, whether the schema or the engine's own checks refused
the request; an MCP tool's error body is the HTTP answer's body."""

from __future__ import annotations

import orjson

from api.errors import (
    describe,
    details_of,
    engine_error_body,
    engine_error_response,
    invalid_request,
    status_of,
)
from engine.errors import NotJson, SessionNotFound, ValidationFailed


def test_an_engine_check_names_its_field_and_lists_itself() -> None:
    refused = ValidationFailed("name: at most 5 characters", {"field": "name", "limit": 5})
    assert details_of(refused) == {
        "field": "name",
        "limit": 5,
        "errors": [{"field": "name", "message": "name: at most 5 characters"}],
    }


def test_a_check_that_names_no_field_is_about_the_body() -> None:
    refused = ValidationFailed("vectors must share a dimension", {"dimensions": [2, 3]})
    assert details_of(refused)["field"] == "body"
    assert details_of(refused)["errors"] == [{"field": "body", "message": "vectors must share a dimension"}]


def test_other_errors_keep_their_details() -> None:
    assert details_of(SessionNotFound("sess_1")) == {"session_id": "sess_1"}


def test_schema_errors_name_the_field_where_it_is() -> None:
    body = describe(
        {"loc": ("body", "messages", 1, "role"), "msg": "Input should be 'user'", "type": "literal_error"}
    )
    assert body == {
        "field": "messages.1.role",
        "message": "Input should be 'user'",
        "in": "body",
        "type": "literal_error",
    }
    query = describe(
        {"loc": ("query", "limit"), "msg": "Input should be greater than or equal to 1", "type": "x"}
    )
    assert (query["field"], query["in"]) == ("limit", "query")
    whole = describe(
        {"loc": ("body",), "msg": "Value error, send exactly one of 'text' or 'values'", "type": "v"}
    )
    assert (whole["field"], whole["message"]) == ("body", "send exactly one of 'text' or 'values'")
    not_json = describe(
        {"loc": ("body", 6), "msg": "JSON decode error", "type": "json_invalid", "ctx": {"error": "x"}}
    )
    assert (not_json["field"], not_json["message"]) == ("body", "JSON decode error: x")


def test_a_schema_refusal_names_its_first_field() -> None:
    refused = invalid_request(
        [describe({"loc": ("body", "name"), "msg": "Field required", "type": "missing"})]
    )
    assert refused.message == "name: Field required" and details_of(refused)["field"] == "name"


def test_a_body_that_is_not_json_is_400_and_any_other_validation_error_422() -> None:
    assert status_of(NotJson("request body is not valid JSON", {"field": "body"})) == 400
    assert status_of(ValidationFailed("x", {"field": "x"})) == 422


def test_a_tools_error_body_is_the_http_answers_body() -> None:
    refused = ValidationFailed("top_k: at most 100", {"field": "top_k", "limit": 100})
    assert engine_error_body(refused) == orjson.loads(engine_error_response(refused).body)
