"""The gateway's half of Idempotency-Key (api/idempotency.py): which keys are accepted, and which
requests count as the same one."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from api.idempotency import REPLAYED_HEADERS, answered, fingerprint, idempotency_key
from engine.errors import ValidationFailed
from engine.idempotency import MAX_KEY_CHARS, Replayed


def request(method: str = "POST", path: str = "/sessions", body: bytes = b"", **headers: str) -> Request:
    raw = [(name.replace("_", "-").encode(), value.encode("latin-1")) for name, value in headers.items()]
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "headers": raw, "query_string": b""}
    return Request(scope, receive)


@pytest.mark.parametrize("key", ["a", "7f1c2d3e-uuid", "x" * MAX_KEY_CHARS, "with space ~!"])
def test_printable_ascii_keys_up_to_the_limit_are_taken(key: str) -> None:
    assert idempotency_key(request(idempotency_key=key)) == key


@pytest.mark.parametrize("key", ["", "x" * (MAX_KEY_CHARS + 1), "clé", "tab\there", "nul\x7f"])
def test_other_keys_are_refused_with_the_limit(key: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        idempotency_key(request(idempotency_key=key))
    assert info.value.details == {"field": "Idempotency-Key", "max_chars": MAX_KEY_CHARS}


def test_no_key_is_none() -> None:
    assert idempotency_key(request()) is None


async def test_the_same_json_in_another_spelling_is_the_same_request() -> None:
    first = await fingerprint(request(body=b'{"name": "a", "context": {"x": 1, "y": [1, 2]}}'))
    again = await fingerprint(request(body=b'{"context":{"y":[1,2],"x":1},"name":"a"}'))
    assert first == again


async def test_method_path_if_match_and_body_each_make_another_request() -> None:
    base = await fingerprint(request(body=b'{"a": 1}', if_match="3"))
    others = [
        request(method="PUT", body=b'{"a": 1}', if_match="3"),
        request(path="/sessions/x", body=b'{"a": 1}', if_match="3"),
        request(body=b'{"a": 1}', if_match="4"),
        request(body=b'{"a": 2}', if_match="3"),
        request(body=b"", if_match="3"),
    ]
    prints = {await fingerprint(other) for other in others}
    assert base not in prints and len(prints) == len(others)


async def test_a_body_that_is_not_json_is_fingerprinted_as_it_is() -> None:
    assert await fingerprint(request(body=b"{not json")) != await fingerprint(request(body=b"{not json!"))


def test_an_earlier_runs_answer_is_unwrapped_and_marked() -> None:
    assert answered(Replayed({"id": 1})) == ({"id": 1}, REPLAYED_HEADERS)
    assert answered({"id": 1}) == ({"id": 1}, {})
