"""Bearer-key authentication: the key decides the organization."""

from __future__ import annotations

from starlette.requests import Request

from engine.errors import AuthInvalid, AuthRequired
from engine.keys import KeyStore


def organization(request: Request) -> str:
    """The organization whose API key the request carries; AuthRequired or AuthInvalid if none."""
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
