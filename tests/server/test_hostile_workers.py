"""`llm-router serve --workers 2` on a real Redis, as a real process tree: every worker
serves what the single process serves — the SIGTERM drain (each open stream ends with one
terminal event, then the supervisor exits 0) and the slow-client deadlines (a connection
that never finishes its headers gets a 408 and is closed). Once, the workers were uvicorn's
own servers, built without either: SIGTERM cut the streams with no terminal event and a
slowloris connection stayed open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.server.process import served_process
from tests.server.test_hostile_shutdown import LONG, _rest, _sse_until_first_text
from tests.server.test_hostile_slowloris import PARTIAL_HEADERS, _answer, _open

KEY = "sk-workers-test-0123456789"
GRACE_S = 1.0
WORKERS = ("--workers", "2")


def _config(fleet: Any, redis_url: str) -> dict[str, Any]:
    return fleet.config(options={"mid": LONG}, state={
        "backend": "redis", "url": redis_url, "prefix": f"w{time.monotonic_ns()}:"})


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
        tmp_path: Path, fleet: Any, redis_url: str) -> None:
    async with served_process(tmp_path, _config(fleet, redis_url), keys={"alice": KEY},
                              server={"shutdown_grace_s": GRACE_S, "heartbeat_s": 0.5},
                              args=WORKERS) as srv:
        stack: list[Any] = []
        async with contextlib.AsyncExitStack() as clients:
            # One client (one connection) per stream: the kernel hands new connections to
            # whichever worker accepts first, so both workers hold streams.
            opened = []
            for i in range(8):
                c = await clients.enter_async_context(httpx.AsyncClient(
                    base_url=srv.base_url, timeout=30,
                    headers={"authorization": f"Bearer {KEY}"}))
                opened.append(await _sse_until_first_text(
                    c, {"input": f"long {i}", "model": "mid"}, stack))
            srv.proc.send_signal(15)  # to the supervisor only, as an orchestrator does
            rests = await asyncio.gather(*[_rest(r) for r in opened])
            for cm in stack:
                await cm.__aexit__(None, None, None)
        code = await srv.wait(GRACE_S + 20)  # bounded: a hung drain fails here
        log = srv.log()

    assert code == 0
    for rest in rests:  # each stream: one terminal event, the retryable `cancelled`
        ends = [f for f in rest if f.event in ("done", "error")]
        assert len(ends) == 1 and rest[-1] is ends[0]
        assert ends[0].data["code"] == "cancelled" and ends[0].data["retryable"] is True
        assert "retry the request" in ends[0].data["suggestion"]
    assert log.count("Application startup complete") == 2  # two workers served
    assert "Traceback" not in log


async def test_a_worker_closes_a_slowloris_connection_with_408(
        tmp_path: Path, fleet: Any, redis_url: str) -> None:
    limits = {"header_timeout_s": 1, "body_timeout_s": 1}
    async with served_process(tmp_path, _config(fleet, redis_url), keys={"alice": KEY},
                              server={"limits": limits}, args=WORKERS) as srv:
        slow = [await _open(srv.port, PARTIAL_HEADERS) for _ in range(6)]
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10,
                                     headers={"authorization": f"Bearer {KEY}"}) as c:
            ok = await c.post("/v1/stream", json={"input": "hi"})
        answers = await asyncio.gather(*[_answer(r) for r, _ in slow])
        for _, w in slow:
            w.close()
    log = srv.log()  # after the exit: the log is written by a thread, flushed at exit

    assert ok.status_code == 200 and "event: done" in ok.text
    for answer in answers:  # a 408 in our JSON shape, then closed (read() reached EOF)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"request_timeout"' in answer and b"server.limits.header_timeout_s" in answer
    assert log.count("not received within the deadline") == len(slow)


def _worker_pids(supervisor: int) -> list[int]:
    """The supervisor's spawned workers (multiprocessing's spawn entry in their cmdline)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def _exited(pid: int) -> None:
    """Until `pid` (not our child) exits: its pidfd becomes readable then."""
    fd = os.pidfd_open(pid)
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_reader(fd, done.set_result, None)
    try:
        await done
    finally:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)


async def test_workers_stop_when_the_supervisor_is_killed_9(
        tmp_path: Path, fleet: Any, redis_url: str) -> None:
    async with served_process(tmp_path, _config(fleet, redis_url), keys={"alice": KEY},
                              args=WORKERS) as srv:
        workers = _worker_pids(srv.proc.pid)
        assert len(workers) == 2
        srv.proc.kill()
        await srv.proc.wait()
        try:  # bounded: a worker serving on orphaned fails here
            await asyncio.wait_for(asyncio.gather(*map(_exited, workers)), 20)
            left = []
        except TimeoutError:
            left = workers
            for pid in left:  # don't leak them into the rest of the suite
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    assert left == []  # each got SIGTERM from the kernel as its parent died, and exited
