"""Per-request HTDI context: ids from headers (or the body's ``metadata``) and timing."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

REQUEST_ID_HEADER = "x-request-id"
HOUSE_ID_HEADER = "x-house-id"


def sane_id(value: str | None) -> str | None:
    """Keep an id only if it is a plain token of at most 128 characters."""
    if value and _SANE_ID.match(value):
        return value
    return None


def key_id(authorization: str | None) -> str | None:
    """A non-secret name for the bearer token a request sent (its tenant), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).hexdigest()[:32]


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


@dataclass
class RequestContext:
    request_id: str
    house_id: str | None = None
    source: str | None = None
    model: str | None = None
    request_id_from_header: bool = False
    key_id: str | None = None  # the API key's hash (see key_id): with house_id, the tenant
    started: float = field(default_factory=time.perf_counter)
    # The request's app.generation.timing.RequestTimer: attached by the middleware, fed by
    # the generation core, read by the request log (core does not import the layer above).
    timer: Any = None

    def __post_init__(self) -> None:
        if self.timer is not None:
            self.timer.started = self.started

    def apply_body_metadata(self, metadata: dict[str, Any] | None) -> None:
        """Body ``metadata`` fills what the headers did not set (headers win)."""
        if not metadata:
            return
        if not self.request_id_from_header and sane_id(str(metadata.get("requestId") or "")):
            self.request_id = str(metadata["requestId"])
        if self.house_id is None:
            self.house_id = sane_id(str(metadata.get("houseId") or ""))
        if self.source is None and isinstance(metadata.get("source"), str):
            self.source = metadata["source"][:128]

    def tenant(self) -> str:
        """Who the request is for, as far as caches are concerned: API key and house id."""
        return f"key={self.key_id or ''};house={self.house_id or ''}"

    def client(self) -> str:
        """The fairness and per-client-cap unit: the tenant, or "" when the request names
        neither an API key nor a house (each such request is then its own client)."""
        return self.tenant() if (self.key_id or self.house_id) else ""

    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000.0, 3)

    def htdi(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id,
            "houseId": self.house_id,
            "source": self.source,
            "latencyMs": self.latency_ms(),
            "model": self.model,
        }

    @classmethod
    def from_headers(cls, headers: Any) -> RequestContext:
        """The ids a request's headers carry (a new request id when none is usable)."""
        header_id = sane_id(headers.get(REQUEST_ID_HEADER))
        return cls(
            request_id=header_id or new_request_id(),
            house_id=sane_id(headers.get(HOUSE_ID_HEADER)),
            request_id_from_header=header_id is not None,
            key_id=key_id(headers.get("authorization")),
        )

    def response_headers(self) -> dict[str, str]:
        headers = {"X-Request-ID": self.request_id}
        if self.house_id:
            headers["X-House-ID"] = self.house_id
        return headers
