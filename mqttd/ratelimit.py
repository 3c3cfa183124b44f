"""
A per-address connection rate limit (token bucket), so one address opening
connections in a loop cannot crowd out everyone else.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class ConnectionRateLimiter:
    """
    Allow C{rate} new connections per second per address, in bursts of up to
    C{burst}.

    Only addresses seen within the last C{burst / rate} seconds hold state,
    so a flood from many addresses does not grow memory for long.
    """

    def __init__(self, clock: IReactorTime, rate: float, burst: int) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lastSweep = clock.seconds()

    def allow(self, address: str) -> bool:
        """Take one token for C{address}; C{False} if it has none left."""
        now = self.clock.seconds()
        self._sweep(now)
        tokens, last = self._buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - 1.0, now)
        return True

    def _sweep(self, now: float) -> None:
        # A bucket refilled to the brim is the same as no bucket at all.
        full = self.burst / self.rate
        if now - self._lastSweep < full:
            return
        self._lastSweep = now
        self._buckets = {a: b for a, b in self._buckets.items() if now - b[1] < full}
