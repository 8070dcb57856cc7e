"""Every error answer of the engine as an exception carrying its code (`{error, code, details,
hint}`); the class says the code, so `except NotFound:` reads as what it means."""

from __future__ import annotations

from typing import Any

import httpx


class SessionEngineError(Exception):
    """An error answer (or, for ConnectionFailed, none at all) after any retries. For a write,
    `idempotency_key` is the key its tries were sent with: send the write again with it."""

    code = "INTERNAL"
    idempotency_key: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        hint: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details or {}
        self.hint = hint
        self.request_id = request_id

    @property
    def field(self) -> str | None:
        """What a validation error is about (`details.field`): a field of the body as a dotted path
        (`messages.0.content`), a parameter or header (`limit`, `If-Match`), or `body`."""
        field = self.details.get("field")
        return field if isinstance(field, str) else None

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Each problem of a validation error, `{field, message}` (`details.errors`)."""
        problems = self.details.get("errors")
        return [p for p in problems if isinstance(p, dict)] if isinstance(problems, list) else []

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.hint})" if self.hint else "")


class AuthRequired(SessionEngineError):
    code = "AUTH_REQUIRED"


class AuthInvalid(SessionEngineError):
    code = "AUTH_INVALID"


class Forbidden(SessionEngineError):
    code = "FORBIDDEN"


class NotFound(SessionEngineError):
    code = "NOT_FOUND"


class Conflict(SessionEngineError):
    """Not active, a quota, or an Idempotency-Key reused for another request: see `details`."""

    code = "CONFLICT"


class Gone(SessionEngineError):
    """A feed position older than the server keeps: read the state again, then follow afresh."""

    code = "GONE"


class PreconditionFailed(SessionEngineError):
    """If-Match was not the current context version; `details["current_version"]` is."""

    code = "PRECONDITION_FAILED"


class PayloadTooLarge(SessionEngineError):
    code = "PAYLOAD_TOO_LARGE"


class ValidationError(SessionEngineError):
    code = "VALIDATION_ERROR"


class RateLimited(SessionEngineError):
    code = "RATE_LIMITED"


class Unavailable(SessionEngineError):
    code = "UNAVAILABLE"


class InternalError(SessionEngineError):
    code = "INTERNAL"


class ConnectionFailed(SessionEngineError):
    """No answer at all (refused, reset, timed out) after the retries. A write may or may not have
    been applied: send it again with `idempotency_key` and it takes effect once."""

    code = "CONNECTION"


class TimedOut(SessionEngineError, TimeoutError):
    """A wait (`wait_for_summary`) ran past its timeout. Nothing was changed; wait again if you
    like."""

    code = "TIMEOUT"


BY_CODE: dict[str, type[SessionEngineError]] = {
    cls.code: cls
    for cls in (
        AuthRequired,
        AuthInvalid,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PreconditionFailed,
        PayloadTooLarge,
        ValidationError,
        RateLimited,
        Unavailable,
        InternalError,
    )
}


def error_from(response: httpx.Response) -> SessionEngineError:
    """The typed exception of an error answer (a body that is not the engine's is INTERNAL)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    request_id = response.headers.get("x-request-id")
    if not isinstance(body, dict) or "code" not in body:
        return InternalError(
            f"HTTP {response.status_code}: {response.text[:200]}",
            status=response.status_code,
            request_id=request_id,
        )
    cls = BY_CODE.get(str(body["code"]), SessionEngineError)
    error = cls(
        str(body.get("error", "")),
        status=response.status_code,
        details=body.get("details") or {},
        hint=str(body.get("hint", "")),
        request_id=request_id,
    )
    if cls is SessionEngineError:
        error.code = str(body["code"])
    return error
