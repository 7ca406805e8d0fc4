"""A token bucket: how many frames a client may send, on average and in a burst."""

from __future__ import annotations

import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens a second refill a bucket of `burst`; each frame takes one.

    Kept per connection in the reader's own frame, so an idle connection costs nothing.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"Expected rate > 0 and burst >= 1, got {rate=} {burst=}")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
