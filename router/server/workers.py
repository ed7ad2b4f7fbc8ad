"""`serve --workers N`: N processes accepting on one listening socket, each serving exactly
what the single-process `serve` serves.

uvicorn's own supervisor (`uvicorn.run(..., workers=N)`) builds each worker's server itself,
from a config it must pickle: neither our protocol with the connection limits and deadlines
(`limits.limited_protocol`, a class built from the config) nor the SIGTERM drain
(`limits.DrainingServer`) can get there. So this module binds the socket and supervises the
processes, and each worker runs the `target` it is given (`launch.serve_loaded`, the same
function the single process runs) on the shared socket.

The supervisor forwards SIGTERM/SIGINT to the workers as one SIGTERM and waits for them
(each drains within `shutdown_grace_s` plus a bound); a worker that dies while serving is
replaced, one that dies at startup stops them all (it would fail the same way again).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess

log = logging.getLogger("router.server")

STARTUP_S = 10.0  # a worker that exits sooner failed to start, not while serving
STARTUP_FAILURE = 3  # uvicorn's exit code for a server that could not start
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker(target: Callable[..., None], sockets: list[socket.socket], supervisor: int) -> None:
    """A worker's main: drain and exit (SIGTERM) when the supervisor dies, even by kill -9,
    rather than serve on orphaned with nobody to stop or replace it."""
    # Not Linux: no prctl, and orphaned workers must be stopped by hand.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        return
    target(sockets=sockets)


class Workers:
    """`count` worker processes running `target(sockets=[sock])`."""

    def __init__(self, target: Callable[..., None], count: int, sock: socket.socket) -> None:
        multiprocessing.allow_connection_pickling()  # the listening socket goes to each
        self._spawn = multiprocessing.get_context("spawn")
        self._target, self._count, self._sock = target, count, sock
        self._procs: list[tuple[SpawnProcess, float]] = []
        self._stop = threading.Event()

    def _start(self) -> tuple[SpawnProcess, float]:
        proc = self._spawn.Process(target=_worker, args=(self._target, [self._sock], os.getpid()))
        proc.start()
        return proc, time.monotonic()

    def _replace_dead(self) -> int | None:
        """Start a new worker for each one that died; the exit code that stops all, if any."""
        for i, (proc, started) in enumerate(self._procs):
            if proc.is_alive():
                continue
            if time.monotonic() - started < STARTUP_S:
                log.error("worker %s exited %s at startup; stopping", proc.pid, proc.exitcode)
                return STARTUP_FAILURE
            log.warning("worker %s exited %s; starting another", proc.pid, proc.exitcode)
            self._procs[i] = self._start()
        return None

    def run(self) -> int:
        """Until SIGTERM/SIGINT (or a failed start); the process's exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        self._procs = [self._start() for _ in range(self._count)]
        failed = None
        while failed is None and not self._stop.wait(0.5):
            failed = self._replace_dead()
        for proc, _ in self._procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)  # each drains its streams, then exits
        for proc, _ in self._procs:
            proc.join()
        self._sock.close()
        # A worker ends with the SIGTERM it handled re-raised (uvicorn does so): clean.
        clean = all(p.exitcode in (0, -signal.SIGTERM) for p, _ in self._procs)
        return failed or (0 if clean else 1)
