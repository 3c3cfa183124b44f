"""
Repeated log lines from one source, summarised: a flood of bad connections (a fuzzer, a
misconfigured fleet retrying every second) writes one line per address and kind of event a
minute, then "and 4,812 more in the last minute", instead of one line per connection.  A
client whose messages an ACL keeps denying is summarised the same way, by client id.
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
    Writes the first event of each (source, kind) pair, counts the repeats that follow within
    L{WINDOW} seconds, and writes their count when the window closes.

    @ivar clock: what the windows are timed with.
    """

    def __init__(
        self, clock: IReactorTime, logger: Logger | None = None, maxTracked: int = MAX_TRACKED
    ) -> None:
        self.clock = clock
        self.log = logger if logger is not None else Logger()
        self.maxTracked = maxTracked
        # (source, kind) -> [repeats counted, the timer closing the window, level]
        self._windows: dict[tuple[str, str], list[Any]] = {}

    def emit(self, level: LogLevel, source: str, kind: str, format: str, **fields: object) -> None:
        """
        Log C{format} with C{fields} at C{level}, unless a line of C{kind} from C{source} was
        written less than L{WINDOW} seconds ago, in which case it is only counted.

        @param source: a peer's host (no port: a reconnecting client changes port), or a
            client id.
        @param kind: what happened, e.g. C{"connections refused"}; names the summary line.
        """
        key = (source, kind)
        window = self._windows.get(key)
        if window is not None:
            window[0] += 1
            return
        if len(self._windows) >= self.maxTracked:
            self._close(next(iter(self._windows)))
        timer: IDelayedCall = self.clock.callLater(WINDOW, self._close, key)
        self._windows[key] = [0, timer, level]
        self.log.emit(level, format, source=source, kind=kind, **fields)

    def _close(self, key: tuple[str, str]) -> None:
        count, timer, level = self._windows.pop(key)
        if timer.active():
            timer.cancel()
        if count:
            source, kind = key
            self.log.emit(
                level,
                "{source}: {kind}, and {count:,} more in the last minute",
                source=source,
                kind=kind,
                count=count,
                repeated=count,
            )

    def stop(self) -> None:
        """Write every open window's count now (the broker is stopping)."""
        for key in list(self._windows):
            self._close(key)
