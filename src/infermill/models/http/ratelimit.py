"""Client-side rate limits: paced token buckets for requests and tokens, and a pause after a 429.

Requests are paced from the very first one: the request bucket holds a single request, so requests
leave ``60 / requests_per_minute`` seconds apart and no window of any length sees more than
``rate x window + 1`` of them. (A bucket that starts with a second's worth lets the first second carry
twice the rate, which a provider enforcing per-second or per-window limits answers with 429s.) The token
bucket holds a twentieth of a second's worth (at least one token), so it adds at most 5% to a
one-second window.

Each caller reserves its amount at once, in arrival order (the level may go below zero), and sleeps
until the reservation is covered. A caller that wakes late therefore keeps its turn (no throughput lost
to scheduling jitter), and a request larger than the bucket just waits longer: big prompts neither
deadlock nor exceed the average rate. Callers are threads (``acquire``) or coroutines on an event loop
(``wait``, what the HTTP client uses); the buckets' locks are held for arithmetic only, never across a wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["BURST_SECONDS", "RateLimiter", "TokenBucket"]

BURST_SECONDS = 0.05
"""A token bucket's default capacity, in seconds of its rate (at least one unit)."""


class TokenBucket:
    """A thread-safe token bucket refilled at ``per_minute / 60`` per second, holding at most ``capacity``
    (default: ``BURST_SECONDS`` of the rate, at least 1), full at the start."""

    def __init__(
        self,
        per_minute: float,
        *,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, self.rate * BURST_SECONDS)
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def reserve(self, amount: float = 1.0) -> float:
        """Spend ``amount`` now (into debt if need be) and return the seconds until it is covered."""
        with self._lock:
            self._refill()
            self.level -= amount
            return max(0.0, -self.level / self.rate)

    def acquire(self, amount: float = 1.0) -> float:
        """Wait until ``amount`` may be spent, spend it, and return the seconds waited."""
        wait = self.reserve(amount)
        if wait > 0:
            self._sleep(wait)
        return wait

    def adjust(self, amount: float) -> None:
        """Spend ``amount`` more (or give back a negative amount) after the fact, e.g. reported usage."""
        with self._lock:
            self._refill()
            self.level = min(self.capacity, self.level - amount)


class RateLimiter:
    """The limits one adapter's requests share: requests, tokens, and a pause a 429 asks for."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.requests = (
            TokenBucket(requests_per_minute, capacity=1.0, clock=clock, sleep=sleep) if requests_per_minute else None
        )
        self.tokens = TokenBucket(tokens_per_minute, clock=clock, sleep=sleep) if tokens_per_minute else None
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause_until(self, deadline: float) -> None:
        """Hold every request back until ``deadline`` (a ``clock`` time), e.g. a server's Retry-After."""
        with self._lock:
            self._paused_until = max(self._paused_until, deadline)

    def _waits(self, tokens: float) -> Iterator[float]:
        """The waits, one after the other, before a request of ``tokens`` may leave: the pause, then the
        request and the token reservations (each made only after the wait before it)."""
        while True:
            with self._lock:
                wait = self._paused_until - self._clock()
            if wait <= 0:
                break
            yield wait
        if self.requests is not None:
            wait = self.requests.reserve(1.0)
            if wait > 0:
                yield wait
        if self.tokens is not None and tokens > 0:
            wait = self.tokens.reserve(tokens)
            if wait > 0:
                yield wait

    def acquire(self, tokens: float) -> None:
        """Wait for a pause to end, then for one request and ``tokens`` tokens."""
        for wait in self._waits(tokens):
            self._sleep(wait)

    async def wait(self, tokens: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """:meth:`acquire` for a coroutine on an event loop: the loop goes on with other requests meanwhile."""
        for wait in self._waits(tokens):
            await sleep(wait)

    def used(self, estimated: float, actual: float | None) -> None:
        """Correct the token bucket once the server reports the tokens a request really used."""
        if self.tokens is not None and actual is not None:
            self.tokens.adjust(actual - estimated)
