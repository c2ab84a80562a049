"""Defences against web pages driving the server through a visitor's browser.

A page on another site cannot read our answers (CORS), but it can still *send* requests:
a form post, a ``fetch`` with ``mode: "no-cors"``, or, after pointing its own DNS name at
127.0.0.1 (DNS rebinding), same-origin requests of any kind. So, before routing:

- ``Host`` must name this server: an IP literal, ``localhost`` (or ``*.localhost``), the
  ``--host`` it listens on, or a name in ``--allowed-hosts``. A rebinding page's requests
  carry its own name. Without the setting the check applies to connections that arrived on
  a loopback address (where the browser is on this machine); with it, to every connection.
  Probes are exempt.
- A state-changing request (not GET/HEAD/OPTIONS) that carries an ``Origin`` other than
  our own and not allowed by ``--cors-origins`` is refused (403): browsers always send
  ``Origin`` on cross-origin posts.
- Bodies must be JSON: a form content type (what an HTML form can post without CORS) is
  refused with 415, whatever the body holds.
"""

from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.types import Scope

from app.core.errors import APIError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
PROBE_PATHS = frozenset({"/health", "/ready", "/health/ready"})


def host_name(host_header: str) -> str:
    """The name or address of a ``Host`` header, without port or IPv6 brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(address: object) -> bool:
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class BrowserGuard:
    """Host, Origin and Content-Type checks; ``check`` returns the error to send, if any."""

    def __init__(self, allowed_hosts: list[str] | None, cors_origins: list[str],
                 bound_host: str | None = None) -> None:
        self.explicit_hosts = allowed_hosts is not None
        self.allowed_hosts = {h.lower() for h in allowed_hosts or []}
        if bound_host:  # the name the server was told to listen on names it too
            self.allowed_hosts.add(host_name(bound_host))
        self.cors_origins = set(cors_origins)

    def check(self, scope: Scope) -> APIError | None:
        headers = Headers(scope=scope)
        return (
            self._check_host(scope, headers.get("host"))
            or self._check_origin(scope, headers)
            or self._check_content_type(scope, headers.get("content-type"))
        )

    def host_allowed(self, name: str) -> bool:
        if "*" in self.allowed_hosts or _is_ip(name) or name in self.allowed_hosts:
            return True
        if name == "localhost" or name.endswith(".localhost"):
            return True
        return any(h.startswith(".") and (name.endswith(h) or name == h[1:])
                   for h in self.allowed_hosts)

    def _check_host(self, scope: Scope, host: str | None) -> APIError | None:
        if host is None or scope["path"] in PROBE_PATHS:
            return None
        server = scope.get("server")
        if not self.explicit_hosts and not (server and _is_loopback(server[0])):
            return None
        name = host_name(host)
        if self.host_allowed(name):
            return None
        return APIError(
            400,
            f"The Host header {name[:100]!r} does not name this server. Use its address, "
            "or add the name to --allowed-hosts.",
            code="invalid_host",
        )

    def _check_origin(self, scope: Scope, headers: Headers) -> APIError | None:
        origin = headers.get("origin")
        if scope["method"] in SAFE_METHODS or origin is None:
            return None
        if "*" in self.cors_origins or origin in self.cors_origins:
            return None
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        if origin.lower() == own.lower():
            return None
        return APIError(
            403,
            f"Cross-origin {scope['method']} requests from {origin[:100]!r} are not allowed; "
            "the server's --cors-origins lists the origins that may send them.",
            code="cross_origin_forbidden",
        )

    def _check_content_type(self, scope: Scope, content_type: str | None) -> APIError | None:
        if scope["method"] in SAFE_METHODS or media_type(content_type) not in FORM_TYPES:
            return None
        return APIError(
            415,
            f"Request bodies must be JSON, sent with 'Content-Type: application/json'; this "
            f"one is {media_type(content_type)!r} (what curl -d sends unless told otherwise).",
            param=None,
            code="unsupported_media_type",
        )
