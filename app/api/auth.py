"""Optional API-key auth: every path is guarded unless it is on an explicit allow-list.

The check runs in the outer ASGI middleware, before routing and before the body is read,
so no route (including ones added later, ``/docs`` and unknown paths) can be reached
without a key. Paths are compared exactly as the server received them; ``/health/`` or
``/health/../v1/models`` are not ``/health``.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.types import Scope

from app.core.errors import APIError

PUBLIC_PATHS = frozenset({"/health", "/ready", "/health/ready"})
METRICS_PATH = "/metrics"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class ApiKeyGuard:
    """Accepts any configured key, in constant time, as ``Authorization: Bearer <key>`` or
    as ``x-api-key: <key>`` (how Anthropic's SDKs and Claude Code send it)."""

    def __init__(self, keys: list[str], *, metrics_public: bool = False) -> None:
        if not keys:
            raise ValueError("ApiKeyGuard needs at least one key")
        # Digests have one length, so the comparison time says nothing about the key.
        self._digests = [_digest(k) for k in keys]
        self.public = PUBLIC_PATHS | ({METRICS_PATH} if metrics_public else set())

    def check(self, scope: Scope) -> APIError | None:
        """None when the request may pass, else the 401 to send."""
        if scope["path"] in self.public:
            return None
        headers = Headers(scope=scope)
        token = _bearer(headers.get("authorization")) or headers.get("x-api-key") or None
        if token is not None:
            given = _digest(token)
            matched = False
            for digest in self._digests:  # no early exit: every key costs the same
                matched |= hmac.compare_digest(given, digest)
            if matched:
                return None
        message = (
            "Incorrect API key provided."
            if token is not None
            else "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        )
        return APIError(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
