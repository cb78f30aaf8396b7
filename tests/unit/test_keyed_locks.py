"""services/common/keyed_locks.py: one FIFO lock per key, forgotten when unused."""

from __future__ import annotations

import asyncio

from services.common.keyed_locks import KeyedLocks


async def test_work_on_one_key_goes_one_at_a_time_in_arrival_order() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, name: str, hold: float) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    first = asyncio.create_task(work("lead", "a", 0.05))
    await asyncio.sleep(0)
    others = [asyncio.create_task(work("lead", n, 0.01)) for n in ("b", "c")]
    elsewhere = asyncio.create_task(work("other", "x", 0.0))
    await asyncio.gather(first, *others, elsewhere)
    lead = [step for step in order if not step.startswith("x")]
    assert lead == ["a in", "a out", "b in", "b out", "c in", "c out"]
    assert order.index("x out") < order.index("a out"), "another key does not wait"
    assert locks._locks == {}, "a key nobody holds is forgotten"
