"""The configured state backend: memory, or Redis (`state: {backend: redis}`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from router.config.schema import StateConfig
from router.state.store import MemoryState, StateBackend


def create_state(config: StateConfig, clock: Callable[[], float] = time.time) -> StateBackend:
    if config.backend == "redis":
        from router.state.redis import RedisState  # imports redis: only when configured

        return RedisState(config.url, connect_timeout_s=config.connect_timeout_s,
                          socket_timeout_s=config.socket_timeout_s, clock=clock)
    return MemoryState(clock)
