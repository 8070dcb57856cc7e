from __future__ import annotations

import pickle
from pathlib import Path

import orjson
import pytest

from api.errors import STATUS_BY_CODE, engine_error_response
from engine import errors

ALL_ERRORS = [
    errors.ValidationFailed("bad", {"field": "x"}),
    errors.NotJson("not json", {"field": "body"}),
    errors.PayloadTooLarge("big"),
    errors.AuthRequired("who"),
    errors.AuthInvalid("no"),
    errors.SessionNotFound("sess_1"),
    errors.SessionNotActive("sess_1", "closed"),
    errors.SessionExists("sess_1"),
    errors.VersionMismatch("sess_1", 2, 3),
    errors.IdempotencyConflict("key-1"),
    errors.QuotaExceeded("max_active_sessions", 10, "close some"),
    errors.SessionNotEnded("sess_1"),
    errors.Forbidden("managed", {"namespace": "session-memory"}),
    errors.ModelMissing("models.summarizer.path: /x is not a model directory", {"setting": "x"}),
    errors.RateLimited(2.5, 0.4),
    errors.TooManyFeeds(100),
    errors.FeedGone("3.0", "7.0", "42.0"),
    errors.Unavailable("down", {"shard": 1}, "later"),
    errors.ModelsLoading(["embedder"]),
    errors.Internal("bug"),
    errors.ConfigError("shards: must be at least 1"),
    errors.StartupError("no alive node can host shards"),
    errors.DirectoryLocked(Path("/data/sessions/0"), "pid 7@host"),
    errors.CorruptFile(Path("/data/sessions/0/wal-1.log"), 4096, "checksum mismatch"),
    errors.LogWriteFailed("cannot write to /data/sessions/0", "No space left on device"),
    errors.SummaryFailed("summarizer produced an empty summary"),
]


def test_every_error_class_is_covered() -> None:
    covered = {type(e) for e in ALL_ERRORS}
    defined = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.EngineError)}
    assert defined - {errors.EngineError, errors.ServerFault} == covered


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_and_map_to_an_http_status(error: errors.EngineError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert vars(copy) == vars(error)  # typed fields (session_id, retry_after_s, path, ...) included
    assert (copy.code, str(copy), copy.hint, copy.retry_after_s) == (
        error.code,
        str(error),
        error.hint,
        error.retry_after_s,
    )
    assert copy.hint, "every error tells the client or the operator what to do"
    # A client's error has its status in the one table; an operator's (a ServerFault) has a code of
    # its own that the table does not hold, so it never reaches a client as itself.
    assert (error.code in STATUS_BY_CODE) != isinstance(error, errors.ServerFault)


def test_server_faults_have_codes_of_their_own() -> None:
    faults = [e for e in ALL_ERRORS if isinstance(e, errors.ServerFault)]
    assert len({e.code for e in faults}) == len(faults)


def _answer(error: errors.EngineError) -> tuple[int, dict[str, str], dict]:
    response = engine_error_response(error)
    return response.status_code, dict(response.headers), orjson.loads(response.body)


def test_a_server_fault_reaches_a_client_as_internal_without_its_paths() -> None:
    status, _, body = _answer(errors.CorruptFile(Path("/data/sessions/0/wal-1.log"), 4096, "checksum"))
    assert status == 500 and body["code"] == "INTERNAL"
    assert body["details"]["fault"] == "CORRUPT_FILE" and "/data" not in orjson.dumps(body).decode()


def test_retry_hints_are_typed_fields_that_become_headers() -> None:
    status, headers, body = _answer(errors.RateLimited(2.5, 0.4))
    assert status == 429 and body["details"] == {"limit_per_s": 2.5, "retry_after_s": 0.4}
    assert (headers["retry-after"], headers["x-ratelimit-limit"], headers["x-ratelimit-reset"]) == (
        "1",
        "2.5",
        "1",
    )
    status, headers, _ = _answer(errors.Unavailable("down"))
    assert status == 503 and headers["retry-after"] == "1"
    status, headers, _ = _answer(errors.SessionNotFound("sess_1"))
    assert status == 404 and "retry-after" not in headers


def test_too_many_feeds_is_a_429_with_retry_after_and_no_rate() -> None:
    status, headers, body = _answer(errors.TooManyFeeds(100))
    assert status == 429 and body["code"] == "RATE_LIMITED" and "GET /events" in body["hint"]
    assert body["details"] == {"limit": 100, "setting": "events.max_feeds_per_org"}
    assert headers["retry-after"] == "10" and "x-ratelimit-limit" not in headers
