"""At debug level each response says which handler answered it (X-Handler) and each request logs a
line with it; at any other level neither, so the hot path pays nothing for them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from engine.config import load_config
from engine.logs import JsonFormatter
from tests.unit.api.apps import AUTH, app_in_process


def handlers_of(client: TestClient) -> dict[str, str | None]:
    """Which handler answered each kind of request, by the X-Handler header."""
    sid = client.post("/sessions", json={"name": "a"}, headers=AUTH).json()["id"]
    too_large = b" " * (load_config().limits.max_body_bytes + 1)
    message = {"role": "user", "content": "hi"}
    answers = {
        "accepted": client.post(f"/sessions/{sid}/messages", json=message, headers=AUTH),
        "refused": client.post(f"/sessions/{sid}/messages", json={"role": "user"}, headers=AUTH),
        "endpoint error": client.get("/sessions/sess_00000000000000000000000000000000", headers=AUTH),
        "no key": client.get(f"/sessions/{sid}"),
        "health": client.get("/healthz"),
        "no route": client.get("/nowhere"),
        "too large": client.post("/sessions", content=too_large, headers=AUTH),
        "compressed": client.post("/sessions", content=b"x", headers={**AUTH, "Content-Encoding": "gzip"}),
    }
    return {label: response.headers.get("x-handler") for label, response in answers.items()}


def client_at(level: str) -> TestClient:
    return TestClient(app_in_process(load_config().model_copy(update={"log_level": level})))


def test_at_debug_level_each_response_names_its_handler() -> None:
    with client_at("debug") as client:
        assert handlers_of(client) == {
            "accepted": "fast-path",
            "refused": "fastapi",
            "endpoint error": "fast-path",  # the fast path took it; the endpoint raised
            "no key": "fast-path",  # the same: the dependency raised
            "health": "fastapi",
            "no route": "fastapi",
            "too large": "middleware",
            "compressed": "middleware",
        }


@pytest.mark.parametrize("level", ["info", "warning", "error"])
def test_at_other_levels_no_response_names_its_handler(level: str) -> None:
    with client_at(level) as client:
        assert set(handlers_of(client).values()) == {None}


class Lines(logging.Handler):
    """The JSON lines a request logs, formatted as it logs them (the request id is read then)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "answered":
            self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def answered() -> Iterator[list[dict[str, Any]]]:
    """The 'answered' lines api.http logs, the logger at debug level as `setup_logging` sets it."""
    logger = logging.getLogger("api.http")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_at_debug_level_each_request_logs_its_handler(answered: list[dict[str, Any]]) -> None:
    with client_at("debug") as client:
        sid = client.post("/sessions", json={"name": "a"}, headers={**AUTH, "X-Request-ID": "r1"}).json()[
            "id"
        ]
        client.post(
            f"/sessions/{sid}/messages", json={"role": "user"}, headers={**AUTH, "X-Request-ID": "r2"}
        )
    kept = [{k: line[k] for k in ("request_id", "method", "path", "status", "handler")} for line in answered]
    assert kept == [
        {"request_id": "r1", "method": "POST", "path": "/sessions", "status": 201, "handler": "fast-path"},
        {
            "request_id": "r2",
            "method": "POST",
            "path": f"/sessions/{sid}/messages",
            "status": 422,
            "handler": "fastapi",
        },
    ]


def test_at_info_level_no_request_logs_its_handler(answered: list[dict[str, Any]]) -> None:
    with client_at("info") as client:
        client.post("/sessions", json={"name": "a"}, headers=AUTH)
    assert answered == []
