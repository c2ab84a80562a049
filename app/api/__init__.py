"""The HTTP layer: FastAPI routes, middleware (HTDI, auth, limits, metrics, logs),
error handlers, SSE framing and OpenAPI. Routes parse a body and hand it to a dialect in
``app.handler``; they hold no generation logic.
"""
