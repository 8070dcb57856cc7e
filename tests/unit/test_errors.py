from __future__ import annotations

import pickle

import pytest

from api.errors import STATUS_BY_CODE
from engine import errors

ALL_ERRORS = [
    errors.ValidationFailed("bad", {"field": "x"}),
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
    errors.FeedGone("3.0", "7.0", "42.0"),
    errors.Unavailable("down", {"shard": 1}, "later"),
    errors.Internal("bug"),
]


def test_every_error_class_is_covered() -> None:
    covered = {type(e) for e in ALL_ERRORS}
    defined = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.EngineError)}
    assert defined - {errors.EngineError} == covered


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_and_map_to_an_http_status(error: errors.EngineError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.code, copy.message, copy.details, copy.hint) == (
        error.code,
        error.message,
        error.details,
        error.hint,
    )
    assert copy.hint, "every error tells the client what to do"
    assert error.code in STATUS_BY_CODE
