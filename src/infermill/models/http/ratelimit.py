"""Client-side rate limits: token buckets for requests and tokens, and a pause after a 429.

A bucket holds at most one second's worth of its rate (at least one request), so a job starts with a
short burst and then keeps to the rate. A request larger than the bucket waits until the bucket is full
and then takes it into debt, so big prompts neither deadlock nor exceed the average rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """A thread-safe token bucket refilled at ``per_minute / 60`` per second."""

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
        self.capacity = capacity if capacity is not None else max(1.0, self.rate)
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def acquire(self, amount: float = 1.0) -> float:
        """Wait until ``amount`` may be spent, spend it, and return the seconds waited."""
        need = min(amount, self.capacity)
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return waited
                wait = (need - self.level) / self.rate
            self._sleep(wait)
            waited += wait

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
        self.requests = TokenBucket(requests_per_minute, clock=clock, sleep=sleep) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, clock=clock, sleep=sleep) if tokens_per_minute else None
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause_until(self, deadline: float) -> None:
        """Hold every request back until ``deadline`` (a ``clock`` time), e.g. a server's Retry-After."""
        with self._lock:
            self._paused_until = max(self._paused_until, deadline)

    def acquire(self, tokens: float) -> None:
        """Wait for a pause to end, then for one request and ``tokens`` tokens."""
        while True:
            with self._lock:
                wait = self._paused_until - self._clock()
            if wait <= 0:
                break
            self._sleep(wait)
        if self.requests is not None:
            self.requests.acquire(1.0)
        if self.tokens is not None and tokens > 0:
            self.tokens.acquire(tokens)

    def used(self, estimated: float, actual: float | None) -> None:
        """Correct the token bucket once the server reports the tokens a request really used."""
        if self.tokens is not None and actual is not None:
            self.tokens.adjust(actual - estimated)
