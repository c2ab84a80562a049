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
ADMIN_PREFIX = "/admin"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class ApiKeyGuard:
    """Accepts ``Authorization: Bearer <key>`` for any configured key, in constant time.

    With ``admin_keys``, ``/admin`` paths take those keys (and only those) instead.
    """

    def __init__(
        self, keys: list[str], *, metrics_public: bool = False,
        admin_keys: list[str] | None = None,
    ) -> None:
        if not keys and not admin_keys:
            raise ValueError("ApiKeyGuard needs at least one key")
        # Digests have one length, so the comparison time says nothing about the key.
        self._digests = [_digest(k) for k in keys]
        self._admin_digests = [_digest(k) for k in admin_keys or []]
        self.public = PUBLIC_PATHS | ({METRICS_PATH} if metrics_public else set())

    def admin_key_given(self, scope: Scope) -> bool:
        """The request carries one of the admin keys."""
        token = _bearer(Headers(scope=scope).get("authorization"))
        return token is not None and _matches(token, self._admin_digests)

    def check(self, scope: Scope) -> APIError | None:
        """None when the request may pass, else the 401 to send."""
        digests = self._digests
        if self._admin_digests and is_admin_path(scope["path"]):
            digests = self._admin_digests
        elif scope["path"] in self.public or not digests:
            return None
        token = _bearer(Headers(scope=scope).get("authorization"))
        if token is not None and _matches(token, digests):
            return None
        message = (
            "Incorrect API key provided."
            if token is not None
            else "Missing API key: send it as 'Authorization: Bearer <key>'."
        )
        return APIError(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


def _matches(token: str, digests: list[bytes]) -> bool:
    given = _digest(token)
    matched = False
    for digest in digests:  # no early exit: every key costs the same
        matched |= hmac.compare_digest(given, digest)
    return matched


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
