"""Client test setup: each client's own environment, installed once and reused, and the
router's server on a loopback port in front of either the simulated fleet or the loopback
provider server.

Environments (the clients' current releases conflict: instructor pins `jiter<0.15`, recent
pydantic-ai needs an openai needing `jiter>=0.16`, so they cannot share one):
    .venv-clients-a   pydantic-ai, langchain-openai, litellm (and the openai SDK they pull)
    .venv-clients-b   instructor
    tests/clients/node/node_modules   the Vercel AI SDK (`npm install`)
Each is created on first use and stamped with what was installed; a later run whose
requirements are unchanged reuses it (CI caches these folders per run). An install that
fails FAILS the test with the installer's output: a client is never silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config import embedded_path, parse_config
from router.core import Router
from router.server import create_app
from router.testing import LoopbackProvider
from tests.server.conftest import uvicorn_on_loopback

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
PY_ENVS: dict[str, tuple[str, ...]] = {
    "a": ("pydantic-ai-slim[openai]", "langchain-openai", "litellm", "openai"),
    "b": ("instructor",),
}
CLIENT_ENV = {"openai": "a", "pydantic_ai": "a", "langchain": "a", "litellm": "a",
              "instructor": "b", "instructor_json": "b"}
CLIENT_TIMEOUT_S = 120.0


def _run(cmd: Sequence[str], cwd: Path | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"client setup failed: {' '.join(cmd)}\n{done.stdout[-3000:]}\n"
                    f"{done.stderr[-3000:]}", pytrace=False)


def python_env(name: str) -> Path:
    """The interpreter of client environment `name`, created and installed when missing."""
    env = ROOT / f".venv-clients-{name}"
    python = env / "bin" / "python"
    wanted = "\n".join(PY_ENVS[name])
    stamp = env / "clients-installed.txt"
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(env)])
    _run([str(python), "-m", "pip", "install", "-q", *PY_ENVS[name]])
    stamp.write_text(wanted)
    return python


def node_env() -> str:
    """`node`, with the Vercel AI SDK installed into tests/clients/node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the Vercel AI SDK tests need node and npm on PATH", pytrace=False)
    stamp = NODE_DIR / "node_modules" / ".clients-installed"
    wanted = (NODE_DIR / "package.json").read_text()
    if not (stamp.exists() and stamp.read_text() == wanted):
        _run([npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR)
        stamp.write_text(wanted)
    return node


async def run_client(cmd: Sequence[str]) -> dict[str, Any]:
    """Run one client process (without blocking the server's event loop); its stdout's
    last line is a JSON result."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # litellm would fetch its model price map from the internet at import (offline: a
        # timeout); its bundled copy is enough here.
        env={**os.environ, "NO_COLOR": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"client timed out: {' '.join(cmd)}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"client failed ({proc.returncode}): {' '.join(cmd)}\n"
                    f"{err.decode()[-4000:]}", pytrace=False)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def simulated_fleet() -> dict[str, Any]:
    """The embedded default fleet, untimed (the same models and behaviour, no waiting)."""
    data: dict[str, Any] = yaml.safe_load(embedded_path("default.yaml").read_text())
    for dep in data["deployments"]:
        dep["options"] = {k: v for k, v in dep.get("options", {}).items()
                          if k not in ("ttft_ms", "tokens_per_s", "jitter")}
    return data


def loopback_fleet(base_url: str) -> dict[str, Any]:
    """One OpenAI-compatible and one Anthropic deployment on the loopback provider server."""
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    caps = ["tools", "structured_output"]
    return {
        "version": 1,
        "providers": {
            "lb-openai": {"kind": "openai_compatible", "base_url": base_url + "/v1",
                          "api_key": "sk-loopback"},
            "lb-anthropic": {"kind": "anthropic", "base_url": base_url,
                             "api_key": "sk-ant-loopback"}},
        "deployments": [
            {"id": "lb-openai", "provider": "lb-openai", "model": "lb-openai", "price": price,
             "capabilities": caps},
            {"id": "lb-anthropic", "provider": "lb-anthropic", "model": "lb-anthropic",
             "price": price, "capabilities": caps}],
        "tasks": {"general": {"candidates": ["lb-openai"]},
                  "claude": {"candidates": ["lb-anthropic"]}},
        "defaults": {"task": "general"},
        "resilience": {"retry": {"attempts": 1}},
    }


@contextlib.asynccontextmanager
async def router_server(config: Mapping[str, Any]) -> AsyncIterator[str]:
    router = Router(parse_config(dict(config), "clients.yaml", env={}))
    async with uvicorn_on_loopback(create_app(router, close_router=True)) as (_, base_url):
        yield base_url


@pytest.fixture
async def loopback() -> AsyncIterator[LoopbackProvider]:
    async with LoopbackProvider() as server:
        yield server
