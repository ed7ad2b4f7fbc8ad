"""Run channels under a greedy key: byte, event and run-count quotas per key (413/429),
given back when runs expire; one key's greed never limits another key, and a stream whose
run is over quota still ends normally. Once, one key parked 190 MB in 200 events of 1 MB."""

from __future__ import annotations

import pytest

from router.server.eventlog import EventLog
from router.server.runs import RUN_END, RunError, RunQuota, RunRegistry
from tests.server.conftest import read_until_terminal

ALICE = "sk-alice-runs-0123456789"
BOB = "sk-bob-runs-0123456789"
QUOTA = {"run_max_bytes_per_key": 8192, "run_max_events_per_key": 40,
         "run_max_runs_per_key": 3}
PAD = "x" * 1000


async def test_a_key_past_its_byte_quota_gets_413_and_another_key_is_unaffected(serve):
    srv = await serve(keys={"alice": ALICE, "bob": BOB}, server={"limits": QUOTA})
    async with srv.client(ALICE) as alice, srv.client(BOB) as bob:
        statuses = [(await alice.post("/v1/runs/big/events",
                                      json={"type": "blob", "pad": PAD})).status_code
                    for _ in range(10)]
        refused = await alice.post("/v1/runs/big/events", json={"type": "blob", "pad": PAD})
        assert (await bob.post("/v1/runs/big/events", json={"type": "blob"})).status_code == 201
    assert statuses[:7] == [201] * 7 and statuses[-1] == 413
    body = refused.json()
    assert refused.status_code == 413 and body["error"]["code"] == "run_quota_exceeded"
    assert "run_max_bytes_per_key" in body["error"]["message"]


async def test_a_key_past_its_run_count_gets_429(serve):
    srv = await serve(keys={"alice": ALICE}, server={"limits": QUOTA})
    async with srv.client(ALICE) as alice:
        for i in range(3):
            r = await alice.post(f"/v1/runs/r{i}/events", json={"type": "step"})
            assert r.status_code == 201
        r = await alice.post("/v1/runs/r3/events", json={"type": "step"})
        assert r.status_code == 429 and r.json()["error"]["param"] == "run_id"
        # A request naming a fourth run is refused before it starts, not cut later.
        r = await alice.post("/v1/stream", json={"input": "hi", "metadata": {"run_id": "r4"}})
        assert r.status_code == 429
        r = await alice.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"run_id": "r4"}})
        assert r.status_code == 429 and r.json()["error"]["param"] == "metadata.run_id"


async def test_a_stream_into_a_full_run_still_ends_with_done(serve):
    srv = await serve(keys={"alice": ALICE}, server={"limits": QUOTA})
    async with srv.client(ALICE) as alice:
        for _ in range(7):
            await alice.post("/v1/runs/full/events", json={"type": "blob", "pad": PAD})
        async with alice.stream("POST", "/v1/stream", json={
                "input": "hi", "metadata": {"run_id": "full"}}) as r:
            got = await read_until_terminal(r)
    assert got[-1].event == "done"


def test_events_quota_and_expiry_give_the_share_back() -> None:
    now = [0.0]
    runs = RunRegistry(EventLog(1000, 60, expire_idle=True, clock=lambda: now[0]),
                       RunQuota(max_bytes=1 << 20, max_events=5, max_runs=2))
    for _ in range(5):
        runs.publish("a", {"type": "step"}, owner="k")
    with pytest.raises(RunError) as err:
        runs.publish("b", {"type": "step"}, owner="k")
    assert err.value.status == 413
    runs.publish("a", {"type": "step"}, owner="other")  # per key
    with pytest.raises(RunError):
        runs.publish("a", {"type": RUN_END}, owner="k")
    now[0] = 200.0
    assert runs.sweep() == 3  # k's a and b, other's a
    for _ in range(5):
        runs.publish("c", {"type": "step"}, owner="k")
