"""Schemathesis against the live OpenAPI document: requests made from the app's own /openapi.json,
valid and invalid, sent to the app in-process. No answer is a 5xx, every answer is one the document
declares (status code, content type, headers, body schema), and every error body is exactly
{error, code, details, hint}. Bounded in examples and seeded, so it runs the same way each time."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import orjson
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.app import create_app
from api.errors import STATUS_BY_CODE
from api.schemas import ErrorCode
from engine.config import load_config
from engine.keys import KeyStore
from engine.memory.index import IndexParams
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

KEY = "key-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_KEYS = {"error", "code", "details", "hint"}
SEED = 2025
BOUNDED = settings(
    max_examples=25,  # generated cases per operation, on top of schemathesis' fixed coverage cases
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _embed(texts: Sequence[str]) -> np.ndarray:
    """A stand-in embedder: 8 dimensions from a hash, so the fuzz loads no model."""
    digests = b"".join(hashlib.sha256(text.encode()).digest()[:8] for text in texts)
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), 8).astype(np.float32) + 1


def _app() -> FastAPI:
    return create_app(
        load_config(),
        transport=lambda c: LocalTransport(c.shards),
        memory=lambda c: LocalMemoryTransport(c.memory.shards, IndexParams(), _embed),
        keys=KeyStore.from_spec(f"{KEY}=fuzz"),
    )


@schemathesis.check
def error_body_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx and 5xx, declared or not (405, unknown routes), is the error body and nothing else."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, f"not the error body: {body!r}"
    assert body["code"] in STATUS_BY_CODE and isinstance(body["details"], dict), body
    assert body["error"] and isinstance(body["hint"], str), body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # invalid input is refused with a 4xx, not accepted
    missing_required_header,
    ignored_auth,  # the same request without the key is 401
    unsupported_method,  # 405 with an Allow header
    error_body_shape,
]

# The document the app serves at /openapi.json; fetching it starts the app's lifespan (shards in this
# process), which runs until the test process exits.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    _app(),
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"deterministic": True},
            "auth": {"openapi": {"bearer": {"bearer": KEY}}},
        }
    ),
)


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    """POST /import's body is NDJSON: a generated string or bytes goes as it is, anything else as
    one JSON line, so the route's own line checks answer it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value) + b"\n"


# The change feeds answer a stream that stays open: a case would never end. Their answers to bad
# input (404, 410, 422) are checked by tests/integration/test_feeds.py on a real server.
schema = schema.exclude(path_regex=r"events$")


@schema.parametrize()
@BOUNDED
def test_every_operation_answers_as_the_document_says(case: Case) -> None:
    case.call_and_validate(checks=CHECKS)


# Session ids drawn from the schema name no session, so the routes under /sessions/{session_id}
# answer 404 above. Here each case gets a live session of its own, with two messages.
live_session = schema.include(path_regex=r"\{session_id\}")


@live_session.parametrize()
@BOUNDED
def test_every_session_operation_answers_as_the_document_says_on_a_live_session(case: Case) -> None:
    # Summarize takes only an ended session; the others mostly an active one.
    case.path_parameters["session_id"] = _live_session(closed=case.path.endswith("/summarize"))
    case.call_and_validate(checks=CHECKS)


def _live_session(*, closed: bool = False) -> str:
    """A new session with two messages, made through the API under test."""
    created = schema["/sessions"]["POST"].Case(body={"name": "fuzz", "context": {"n": 1}}).call(headers=AUTH)
    assert created.status_code == 201, created.text
    session_id: str = created.json()["id"]
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    _call("POST", "/sessions/{session_id}/messages", session_id, body={"messages": messages}, status=201)
    if closed:
        _call("POST", "/sessions/{session_id}/close", session_id, status=200)
    return session_id


def _call(method: str, path: str, session_id: str, *, status: int, **parts: Any) -> None:
    case = schema[path][method].Case(path_parameters={"session_id": session_id}, **parts)
    response = case.call(headers=AUTH)
    assert response.status_code == status, response.text


# Values the generator is unlikely to draw: a version past 64 bits, and a digit that is not 0-9
# ("²".isdigit() is true; int("²") raises). Sent as latin-1 bytes, as an HTTP client sends them.
@pytest.mark.parametrize(
    "if_match",
    ["1" * 30, "²"],
)
def test_an_if_match_that_is_no_version_is_refused_with_an_error_body(if_match: str) -> None:
    case = schema["/sessions/{session_id}/context"]["PUT"].Case(
        path_parameters={"session_id": _live_session()}, headers={"If-Match": if_match}, body={}
    )
    response = case.call_and_validate(headers=AUTH, checks=CHECKS)
    assert response.status_code in (412, 422)


def test_the_documented_error_codes_are_the_codes_the_gateway_sends() -> None:
    assert set(get_args(ErrorCode)) == set(STATUS_BY_CODE)


def test_a_405_allows_every_method_of_the_path() -> None:
    with TestClient(_app()) as client:
        response = client.put("/sessions/sess_0", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PATCH"
    assert response.json()["details"]["allowed"] == "DELETE, GET, PATCH"
