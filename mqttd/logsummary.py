"""
Repeated log lines from one address, summarised: a flood of bad connections (a fuzzer, a
misconfigured fleet retrying every second) writes one line per address and kind of event a
minute, then "and 4,812 more in the last minute", instead of one line per connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

# How long after a line is written the same kind of line from the same address is only counted.
WINDOW = 60.0
# Addresses tracked at once; past this the oldest window is closed early (its count written),
# so a flood from many addresses cannot grow memory without bound.
MAX_TRACKED = 10000


class RepeatSummary:
    """
    Writes the first event of each (address, kind) pair, counts the repeats that follow within
    L{WINDOW} seconds, and writes their count when the window closes.

    @ivar clock: what the windows are timed with.
    """

    def __init__(
        self, clock: IReactorTime, logger: Logger | None = None, maxTracked: int = MAX_TRACKED
    ) -> None:
        self.clock = clock
        self.log = logger if logger is not None else Logger()
        self.maxTracked = maxTracked
        # (address, kind) -> [repeats counted, the timer closing the window, level]
        self._windows: dict[tuple[str, str], list[Any]] = {}

    def emit(
        self, level: LogLevel, address: str, kind: str, format: str, **fields: object
    ) -> None:
        """
        Log C{format} with C{fields} at C{level}, unless a line of C{kind} from C{address} was
        written less than L{WINDOW} seconds ago, in which case it is only counted.

        @param address: the peer's host (no port: a reconnecting client changes port).
        @param kind: what happened, e.g. C{"refused"}; also names the summary line.
        """
        key = (address, kind)
        window = self._windows.get(key)
        if window is not None:
            window[0] += 1
            return
        if len(self._windows) >= self.maxTracked:
            self._close(next(iter(self._windows)))
        timer: IDelayedCall = self.clock.callLater(WINDOW, self._close, key)
        self._windows[key] = [0, timer, level]
        self.log.emit(level, format, address=address, kind=kind, **fields)

    def _close(self, key: tuple[str, str]) -> None:
        count, timer, level = self._windows.pop(key)
        if timer.active():
            timer.cancel()
        if count:
            address, kind = key
            self.log.emit(
                level,
                "{address}: {kind}, and {count:,} more in the last minute",
                address=address,
                kind=kind,
                count=count,
                repeated=count,
            )

    def stop(self) -> None:
        """Write every open window's count now (the broker is stopping)."""
        for key in list(self._windows):
            self._close(key)
