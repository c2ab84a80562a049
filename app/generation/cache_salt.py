"""The prefix-cache namespace of a request (issue 23 #4: no tenant sees another's prompts).

By default every tenant (API key + house id) has its own namespace, further split by the
request's ``cache_salt`` (vLLM's field). A model whose scope is ``shared`` (setting or
registry entry) puts every caller without a ``cache_salt`` in one namespace, for a system
prompt that is deliberately common.
"""

from __future__ import annotations

import hashlib

from app.config import Settings
from app.core.context import RequestContext
from app.generation.request import GenerationSpec
from app.lifecycle.prefix_budget import shared_scope
from app.lifecycle.registry import ModelSpec


def cache_salt(
    ctx: RequestContext, spec: GenerationSpec, model: ModelSpec, settings: Settings
) -> str:
    """The engine's salt for this request's prefix-cache lookups and stores."""
    tenant = "" if shared_scope(model, settings) else ctx.tenant()
    client = spec.cache_salt or ""
    if not tenant and not client:
        return ""
    return hashlib.sha256(f"{tenant}\0{client}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
