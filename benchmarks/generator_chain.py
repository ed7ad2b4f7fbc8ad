"""CPU per item of a chain of forwarding async generators, the shape of `router.stream`'s
per-chunk path (body reader -> adapter -> attempt -> failover loop -> settlement loop).

    python -m benchmarks.generator_chain [--items 100000]

Each level is `async for item in inner: yield item`; the source either yields at once or
suspends on the event loop before each item (`asyncio.sleep(0)`: a paced chunk arrives in
its own read, so the task resumes through every level of the chain). The table shows the
best of three runs per depth (uvloop, `time.process_time`) and the cost of one level. It
answers whether removing forwarding levels can pay for a per-chunk gap of microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

DEPTHS = (0, 1, 2, 4)


async def _source(items: int, suspend: bool) -> AsyncIterator[int]:
    for i in range(items):
        if suspend:
            await asyncio.sleep(0)
        yield i


async def _forward(inner: AsyncIterator[int]) -> AsyncIterator[int]:
    async for item in inner:
        yield item


async def _us_per_item(items: int, depth: int, suspend: bool) -> float:
    chain = _source(items, suspend)
    for _ in range(depth):
        chain = _forward(chain)
    cpu0 = time.process_time()
    async for _ in chain:
        pass
    return (time.process_time() - cpu0) / items * 1e6


async def table(items: int) -> list[str]:
    rows = ["| source | " + " | ".join(f"{d} levels µs" for d in DEPTHS) + " | per level µs |",
            "|---|" + "---:|" * (len(DEPTHS) + 1)]
    for suspend in (False, True):
        best = [min([await _us_per_item(items, d, suspend) for _ in range(3)]) for d in DEPTHS]
        per_level = (best[-1] - best[0]) / DEPTHS[-1]
        name = "suspends per item" if suspend else "ready"
        rows.append(f"| {name} | " + " | ".join(f"{b:.2f}" for b in best)
                    + f" | {per_level:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    import uvloop
    print("\n".join(uvloop.run(table(args.items))))


if __name__ == "__main__":
    main()
