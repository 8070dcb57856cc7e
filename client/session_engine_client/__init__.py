"""Typed Python client for session-engine (sync and async, same surface).

from session_engine_client import Client

with Client(api_key, "http://127.0.0.1:8080") as engine:
    session = engine.create_session("support chat")
    engine.append_message(session.id, "user", "My order #1234 never arrived")
    for event in engine.events(session.id):
        ...
"""

from ._calls import RetryPolicy
from .client import AsyncClient, Client
from .errors import (
    AuthInvalid,
    AuthRequired,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    InternalError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    SessionEngineError,
    TimedOut,
    Unavailable,
    ValidationError,
)
from .models import (
    DeleteResult,
    Event,
    ForkedFrom,
    Highlight,
    ImportResult,
    Match,
    Message,
    NewMessage,
    QueryResult,
    Session,
    SessionPage,
    SessionWithMessages,
    SummaryProvenance,
    UpsertResult,
)

__all__ = [
    "AsyncClient",
    "AuthInvalid",
    "AuthRequired",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DeleteResult",
    "Event",
    "Forbidden",
    "ForkedFrom",
    "Gone",
    "Highlight",
    "ImportResult",
    "InternalError",
    "Match",
    "Message",
    "NewMessage",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "QueryResult",
    "RateLimited",
    "RetryPolicy",
    "Session",
    "SessionEngineError",
    "SessionPage",
    "SessionWithMessages",
    "SummaryProvenance",
    "TimedOut",
    "Unavailable",
    "UpsertResult",
    "ValidationError",
]
