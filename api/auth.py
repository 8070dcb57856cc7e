"""Bearer-key authentication: the key decides the organization."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine.errors import AuthInvalid, AuthRequired
from engine.keys import KeyStore


async def authenticate(request: Request) -> str:
    # async, like every dependency here: FastAPI runs a plain `def` dependency in its thread pool,
    # a thread hop per request that cost a third of the gateway's throughput.
    header = request.headers.get("authorization")
    if not header:
        raise AuthRequired("missing Authorization header")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthRequired("Authorization header must be 'Bearer <api key>'")
    keys: KeyStore = request.app.state.keys
    org = keys.organization_for(key.strip())
    if org is None:
        raise AuthInvalid("API key not recognized")
    return org


Org = Annotated[str, Depends(authenticate)]
