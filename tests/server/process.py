"""`llm-router serve` as a real child process on a loopback port, for the tests that need
one (SIGTERM, slowloris, what reaches the log): `async with served_process(...) as srv`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.server.conftest import key_entry

LLM_ROUTER = str(Path(sys.executable).parent / "llm-router")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServedProcess:
    proc: asyncio.subprocess.Process
    base_url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM, then the exit code (waited for without blocking the loop)."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout_s)

    async def wait(self, timeout_s: float = 30) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


@contextlib.asynccontextmanager
async def served_process(tmp_path: Path, config: Mapping[str, Any], *,
                         keys: Mapping[str, str] | None = None,
                         server: Mapping[str, Any] | None = None,
                         args: Sequence[str] = (), unread_pipe: bool = False
                         ) -> AsyncIterator[ServedProcess]:
    """`unread_pipe`: the server's output goes to a pipe the test reads only when it wants
    (`ServedProcess.proc.stdout`), like a log shipper that falls behind; else to a file."""
    data = dict(config)
    data["server"] = {**data.get("server", {}), **(server or {}),
                      "api_keys": [key_entry(n, k) for n, k in (keys or {}).items()]}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            LLM_ROUTER, "serve", "--config", str(path), "--port", str(port),
            *args, stdout=subprocess.PIPE if unread_pipe else log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    srv = ServedProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        await _until_healthy(srv)
        yield srv
    finally:
        if proc.returncode is None:
            # SIGTERM first, so a `--workers` supervisor drains its workers too.
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)


async def _until_healthy(srv: ServedProcess, within_s: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=2) as c:
        while True:
            if srv.proc.returncode is not None:
                raise AssertionError(f"server exited {srv.proc.returncode}:\n{srv.log()}")
            with contextlib.suppress(httpx.TransportError):
                if (await c.get("/healthz")).status_code == 200:
                    return
            if loop.time() > deadline:
                raise AssertionError(f"server not healthy in {within_s} s:\n{srv.log()}")
            await asyncio.sleep(0.05)
