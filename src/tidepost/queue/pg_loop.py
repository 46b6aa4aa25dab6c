"""An event loop on its own thread, for the PostgreSQL store's connections.

asyncpg connections belong to the event loop that opened them.  The queue
is called from the daemon's loop, but also from CLI commands and tests that
run each call under a fresh `asyncio.run`; so the store keeps its
connections on a loop of its own, in a daemon thread, and every call hops
there and back (`LoopThread.call`).  The hop costs tens of microseconds, as
the SQLite store's hop to its writer thread does.  The loop is uvloop's
when installed (eventloop.new_event_loop): asyncpg's socket writes and
reads in C, a tenth of the store thread's time in asyncio's transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine

from tidepost.eventloop import new_event_loop


class LoopThread:
    """A running event loop in a daemon thread."""

    def __init__(self, name: str):
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Start `coro` on the thread's loop; a thread-safe future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Coroutine) -> Any:
        """Run `coro` on the thread's loop and await its result from the caller's loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def run(self, coro: Coroutine) -> Any:
        """Run `coro` on the thread's loop, blocking this thread until it ends."""
        return self.submit(coro).result()

    def stop(self) -> None:
        """Stop the loop and end the thread (callers have finished their work)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def relay_to(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any]
             ) -> Callable[..., None]:
    """A function that, called on any thread, runs `callback` on `loop`."""
    def relayed(*args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # that loop has closed: nobody is listening any more
    return relayed


