"""
Every connection's CONNECT timeout and keepalive on one reactor timer.

Twisted's C{callLater} makes a L{DelayedCall} per timer: an object with its own dict, two bound
methods and a keyword dict, ~0.35 KB.  A cancelled one stays in the reactor's heap until fewer
than half of the heap's calls are live, which never happens while every idle connection holds a
live keepalive timer, so each connection paid for two: ~0.7 KB of an idle connection's ~3 KB.
Here a timeout is a four-slot list in one heap; a single L{DelayedCall}, for the earliest due
time, serves them all.  Cancelling lets go of the timeout's target at once; the entry itself
leaves when it comes due, or earlier when cancelled entries reach a quarter of the live ones and
the heap is rebuilt without them.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Any, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

T = TypeVar("T")

# [due time, sequence number (orders equal due times by when they were set), function, target];
# function and target are None once cancelled.
Timeout = list[Any]

# Below this many cancelled entries the heap is left as it is: rebuilding it costs more.
_COMPACT_AT = 64


class Timeouts:
    """
    Calls C{function(target)} once C{delay} seconds have passed, unless cancelled first, for
    many targets on one reactor timer: what L{IReactorTime.callLater} does, at a fraction of the
    memory per timer.
    """

    log = Logger()

    __slots__ = ("_call", "_cancelled", "_expiring", "_heap", "_sequence", "clock")

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: list[Timeout] = []
        self._sequence = count()
        self._cancelled = 0
        # The reactor call for the heap's earliest entry; None while the heap is empty.
        self._call: IDelayedCall | None = None
        # While expired entries are being called: what they set goes on the heap only, and the
        # next reactor call is made once they all have been.
        self._expiring = False

    def set(self, delay: float, function: Callable[[T], object], target: T) -> Timeout:
        """
        Call C{function(target)} in C{delay} seconds.

        @return: the timeout, for L{cancel}.
        """
        due = self.clock.seconds() + delay
        timeout = [due, next(self._sequence), function, target]
        heap = self._heap
        heappush(heap, timeout)
        if self._expiring:
            return timeout
        call = self._call
        if call is None:
            self._call = self.clock.callLater(delay, self._expire)
        elif due < call.getTime():
            call.reset(delay)
        return timeout

    def cancel(self, timeout: Timeout) -> None:
        """Call nothing for C{timeout}, which may have been called or cancelled already."""
        if timeout[2] is None:
            return
        timeout[2] = timeout[3] = None
        self._cancelled += 1
        heap = self._heap
        if self._cancelled == len(heap):
            # Nothing live is left: nor is the reactor call for it.
            heap.clear()
            self._cancelled = 0
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif self._cancelled >= _COMPACT_AT and self._cancelled * 5 >= len(heap):
            # Once a quarter of the live ones (cancelled / (len - cancelled) >= 1/4): not once
            # they outnumber them, which while connections keep arriving never happens, as each
            # adds a cancelled CONNECT timeout and a live keepalive.  Each rebuild waits for the
            # live ones to grow by a quarter, so its cost per timeout stays constant.
            # Filtered in place: _expire may be iterating over this very list.
            heap[:] = [entry for entry in heap if entry[2] is not None]
            heapify(heap)
            self._cancelled = 0

    def __len__(self) -> int:
        """The timeouts set and neither called nor cancelled."""
        return len(self._heap) - self._cancelled

    def _expire(self) -> None:
        self._call = None
        self._expiring = True
        heap = self._heap
        now = self.clock.seconds()
        while heap and heap[0][0] <= now:
            timeout = heappop(heap)
            function, target = timeout[2], timeout[3]
            if function is None:
                self._cancelled -= 1
                continue
            # Marked as done, so that a later cancel() counts nothing.
            timeout[2] = timeout[3] = None
            try:
                function(target)
            except Exception:
                # As the reactor treats a failing DelayedCall: logged, and the others still run.
                self.log.failure("timeout call {function!r} failed", function=function)
        self._expiring = False
        if heap:
            self._call = self.clock.callLater(max(0.0, heap[0][0] - now), self._expire)
