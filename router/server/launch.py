"""`llm-router serve` as a process: the banner, one server process on uvicorn (with the
connection limits and deadlines, draining its streams on SIGTERM), or `workers` of them
under `workers.Workers`."""

from __future__ import annotations

import copy
import functools
import gc
import socket
import sys
from typing import Any

from router.config import LoadedConfig
from router.config.schema import ServerConfig
from router.errors import ConfigError
from router.server.app import create_app
from router.server.background_log import write_logs_in_background
from router.server.hub import StreamHub
from router.server.limits import DrainingServer, server_options

__all__ = ["banner", "serve", "serve_loaded"]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def banner(settings: ServerConfig, host: str, port: int, source: str) -> str:
    """The line `serve` prints first: where it listens, whether keys are required, and
    where the playground and the compatible APIs are."""
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    n = len(settings.api_keys)
    auth = (f"on ({n} API key{'s' if n != 1 else ''})" if n
            else "off (no server.api_keys: loopback only)")
    return (f"llm-router serving {source} on {url} · auth {auth} · playground {url}/ · "
            f"OpenAI/Anthropic-compatible base_url {url}/v1")


def serve(config: str | None = None, host: str | None = None, port: int | None = None,
          log_level: str = "info", workers: int = 1) -> int:
    """`llm-router serve`: the router of `config` (discovered if None) on uvicorn; the exit
    code. Host and port default to the `server:` section. A server without API keys only
    binds loopback. `workers` > 1: that many processes on one port (`workers.Workers`), each
    running `serve_loaded` like the single process; only with a shared state backend, which
    `llm-router serve` checks first."""
    import uvicorn

    from router.config import load_config

    loaded = load_config(config)
    settings: ServerConfig = loaded.config.server
    host = host or settings.host
    if not settings.api_keys and host not in _LOOPBACK:
        raise ConfigError(
            f"refusing to serve on {host} without API keys: add server.api_keys "
            "(sha256 of each key) to the config, or bind 127.0.0.1")
    port = settings.port if port is None else port
    print(banner(settings, host, port, str(loaded.source)), file=sys.stderr, flush=True)
    # The server's own log lines (one per stream: id, key name, task; the prompt only with
    # server.log_prompts) go where uvicorn's go.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["router"] = {"handlers": ["default"], "level": log_level.upper(),
                                       "propagate": False}
    # uvloop: the fastest loop measured (README,
    # "ASGI server"); the HTTP protocol is httptools, wrapped by `server_options` with the
    # hostile-client limits.
    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level,
                               "log_config": log_config, "access_log": settings.access_log,
                               "loop": "uvloop"}
    if workers == 1:
        serve_loaded(loaded, options)
        return 0
    from router.server.workers import Workers

    # Each worker loads the same config file (by path) and builds its own router.
    sock = uvicorn.Config(app="", **options).bind_socket()
    return Workers(functools.partial(serve_loaded, loaded.source, options), workers,
                   sock).run()


def serve_loaded(loaded: LoadedConfig | str, options: dict[str, Any],
                 sockets: list[socket.socket] | None = None) -> None:
    """One server process: the router of `loaded` (a loaded config, or its path) on uvicorn
    with the connection limits and deadlines (`server_options`), draining its streams on
    SIGTERM (`DrainingServer`); on `sockets` when a supervisor bound them."""
    import uvicorn

    from router.config import load_config
    from router.core import Router

    if isinstance(loaded, str):
        loaded = load_config(loaded)
    settings: ServerConfig = loaded.config.server
    app = create_app(Router(loaded), settings, close_router=True)
    hub: StreamHub = app.state.hub
    uv_config = uvicorn.Config(app, **options, **server_options(settings))
    write_logs_in_background()  # the handlers uvicorn.Config's logging config just built
    # What is built by now (modules, config, the app) lives as long as the process: out of
    # the collector's generations, a burst of arrivals is not slowed by full collections
    # walking it (in the library benchmark: 73 -> 47 ms of GC in a 500-stream burst).
    gc.freeze()
    DrainingServer(uv_config, lambda: hub.shutdown(settings.shutdown_grace_s)).run(
        sockets=sockets)
