"""GET /metrics: Prometheus text exposition (names in docs/PHASE4_TIER3A_CONTRACT.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.core.metrics import CONTENT_TYPE, ServerMetrics

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text format 0.0.4"}},
)
async def metrics(request: Request) -> Response:
    """Scraped by Prometheus; engine gauges are read at scrape time."""
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(server_metrics.exposition(), media_type=CONTENT_TYPE)
