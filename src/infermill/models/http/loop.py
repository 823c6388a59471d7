"""One asyncio event loop on a thread of its own, to which synchronous code (the engine's model loop)
hands coroutines and waits for their results.

Why not a thread per request: with ``concurrency = 128`` a pool of 128 threads sharing one synchronous
connection pool spent a whole core on the pool's lock and per-request bookkeeping, which grows with the
pool, and the job ran slower at 128 than at 32 (issue 17). On a loop a request in flight is a small
object, and the cost per request stays flat as concurrency grows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An event loop running on a daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "infermill-http") -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self._finishing: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"LoopThread({self._thread.name!r}, {'stopping' if self._stopping else 'running'})"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Whatever is still scheduled (stop() cancelled the tasks; callbacks may remain) ends here.
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; raises RuntimeError once the loop is stopping."""
        if self._stopping:
            coro.close()  # never awaited: close it, so Python does not warn about it
            raise RuntimeError("cannot schedule new work: the HTTP client was shut down")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's own)."""
        return self.submit(coro).result()

    def stop(self, cleanup: Callable[[], Awaitable[None]] | None = None, *, wait: bool = True) -> None:
        """Cancel every task, await ``cleanup()`` (closing connections), and stop the loop, all on the loop's
        thread; wait for that only when ``wait``. Without waiting it is safe where the garbage collector runs
        finalizers: it takes no lock and joins no thread."""
        if self._stopping:
            return
        self._stopping = True

        async def finish() -> None:
            try:
                current = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not current]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if cleanup is not None:
                    await cleanup()
            finally:
                self.loop.stop()

        def start() -> None:
            self._finishing = self.loop.create_task(finish())  # held: the loop keeps only weak references

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed already
            return
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
