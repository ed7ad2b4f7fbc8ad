"""The playground page at `/`: type a prompt, pick a task and budgets, watch the route table,
tokens, retries/fallbacks and the final cost and latency stream in.

One static HTML page and one script, no build step. The page itself holds no secret, so it is
served without an API key; the key is typed into the page, kept in `sessionStorage`, and
sent with each API call (`/v1/models`, `/v1/stream`), which the auth layer checks.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page runs only its own script; model output is inserted as text, and the policy keeps
# it that way should anything slip.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Paths served without an API key (the auth layer consults this).
PUBLIC_PATHS = frozenset({"/", "/playground.js"})


@cache
def _asset(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


async def page(request: Request) -> Response:
    return Response(_asset("playground.html"), headers=_HEADERS,
                    media_type="text/html; charset=utf-8")


async def script(request: Request) -> Response:
    return Response(_asset("playground.js"), headers=_HEADERS,
                    media_type="text/javascript; charset=utf-8")


routes = [
    Route("/", page, methods=["GET"]),
    Route("/playground.js", script, methods=["GET"]),
]
