"""The HTTP server: SSE with resume, WebSocket, run channels, compatible endpoints.

`create_app(router, settings)` builds the ASGI app; `llm-router serve` runs it on uvicorn.
"""

from router.server.app import create_app

__all__ = ["create_app"]
