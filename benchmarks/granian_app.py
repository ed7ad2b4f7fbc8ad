"""The server's ASGI app for granian (`benchmarks.concurrency --clients server-granian`):
built at import from `$LLM_ROUTER_CONFIG`, as granian imports an app by its path."""

from __future__ import annotations

import os

from router.core import Router
from router.server.app import create_app

app = create_app(Router.from_config(os.environ["LLM_ROUTER_CONFIG"]), close_router=True)
