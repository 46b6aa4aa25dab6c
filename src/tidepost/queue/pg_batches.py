"""Shared transactions: what callers hand in while one is in progress waits for the next.

`Batches` is the writer behind the PostgreSQL store's group commit of new
messages (pg_insert.GroupCommit) and of delivery outcomes
(pg_record.RecordGroup).  A caller's `submit(item)` returns once the
transaction holding its item has ended, with that item's result or its
exception.  `writers` transactions may run at once, on connections of their
own: while one waits for its COMMIT's WAL flush, the next batch is already
being written, and PostgreSQL flushes both commits together.  A batch holds
at most `limit` items, and with a `key` only items of the same key as the
first waiting one (the records of one runner); the others wait their turn in
arrival order.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

Item = TypeVar("Item")
# One result per item of a batch, in order: a value, or the exception to raise.
Write = Callable[[list[Item]], Awaitable[list[Any]]]


class Batches(Generic[Item]):
    """Items written together by `write(batch)` (module docstring)."""

    def __init__(self, write: Write, limit: int, writers: int,
                 key: Callable[[Item], Hashable] | None = None):
        self._write = write
        self._limit = limit
        self._key = key
        self._waiting: list[tuple[Item, asyncio.Future]] = []
        self._wanted = asyncio.Event()
        self._closing = False
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(writers)]

    async def submit(self, item: Item) -> Any:
        """Write `item` in the next batch; its result once that transaction has ended."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._wanted.set()
        return await future

    async def close(self) -> None:
        """Finish the items waiting, then stop."""
        self._closing = True
        self._wanted.set()
        await asyncio.gather(*self._tasks)

    async def _run(self) -> None:
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._wanted.clear()
                await self._wanted.wait()
            batch = self._take()
            results = await self._write([item for item, _ in batch])
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _take(self) -> list[tuple[Item, asyncio.Future]]:
        """The next batch out of the waiting items (module docstring)."""
        if self._key is None:
            batch, self._waiting = self._waiting[:self._limit], self._waiting[self._limit:]
            return batch
        first = self._key(self._waiting[0][0])
        batch, rest = [], []
        for waiting in self._waiting:
            same = self._key(waiting[0]) == first and len(batch) < self._limit
            (batch if same else rest).append(waiting)
        self._waiting = rest
        return batch
