"""
The epoll reactor's dispatch of ready sockets, without a log context per event, and the end of
each reactor turn, where the turn's writes are flushed.

Twisted's C{EPollReactor.doPoll} hands every ready socket to its handler through
C{twisted.python.log.callWithLogger}, which asks the transport for its log prefix and pushes a
context dict carrying it as the legacy log's C{system} field, then pops it: per read event,
four Python calls and a dict before the first byte is read.  With many connections each sending a
packet now and then (bench S7: 2,000 users, every delivery answered by a PUBACK read on its own)
that wrapping was ~15 % of the broker's Python CPU, more than decoding every packet.  mqttd's
log lines name the client and its address themselves, so they lose nothing without it; only
Twisted's own text log lines from inside a handler show C{-} where they showed the
connection's prefix.  Errors are handled as before: Twisted's C{_doReadOrWrite} logs what a
handler raises and disconnects that socket; anything escaping it is logged here.

The end of a turn: what the connections wrote while their sockets were dispatched is sent once
every ready socket has been handled (mqttd.writes).  Without this module that takes a
C{callLater(0)} per turn: a L{DelayedCall} made, pushed on the reactor's heap and run by
C{runUntilCurrent}, ~a third of the main loop's own time in S7.  Here the reactor calls the
turn's callables itself, after dispatching, and before polling for what timed calls (which run
between two polls) wrote.
"""

from __future__ import annotations

import errno
import select
import weakref
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mqttd.transports.tcp import Connection

log = Logger()
# Where there is no epoll, nothing is installed and the value is not used.
_EPOLLIN = getattr(select, "EPOLLIN", 1)


class LeanDispatch:
    """
    The C{doIteration} of one epoll reactor: poll, call each ready socket's handler directly,
    then the callables asked for at the end of the turn.

    @ivar turnEnd: what to call once this turn's ready sockets have been handled, in order;
        what they add is called in the same turn.  Appended to by L{turnEnd}'s users.
    """

    __slots__ = ("__weakref__", "reactor", "turnEnd")

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.turnEnd: list[Callable[[], object]] = []

    def doIteration(self, timeout: float | None) -> None:
        """L{EPollReactor.doPoll}, calling handlers directly, ending the turn."""
        reactor = self.reactor
        if self.turnEnd:
            # Written by timed calls or threads' calls since the last poll.
            self._endTurn()
            if reactor._newTimedCalls or reactor.threadCallQueue:
                # The turn's end asked for more: the main loop's timeout did not know.
                timeout = 0
        if timeout is None:
            timeout = -1
        selectables = reactor._selectables
        try:
            ready = reactor._poller.poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        doReadOrWrite = reactor._doReadOrWrite
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:
                # Removed by a handler earlier in this batch.
                continue
            if event == _EPOLLIN and type(selectable) is Connection:
                # The common event, of mqttd's own transport (whose descriptor is never -1
                # while registered): what _doReadOrWrite would do, without its checks.
                try:
                    why = selectable.doRead()
                except Exception as e:
                    log.failure("reading from {selectable!r}", selectable=selectable)
                    why = e
                if why:
                    reactor._disconnectSelectable(selectable, why, True)
                continue
            try:
                doReadOrWrite(selectable, fd, event)
            except Exception:
                log.failure("dispatching an event of {selectable!r}", selectable=selectable)
        if self.turnEnd:
            self._endTurn()

    def _endTurn(self) -> None:
        # In place: users keep a reference to the list.
        pending = self.turnEnd
        i = 0
        while i < len(pending):
            try:
                pending[i]()
            except Exception:
                log.failure("ending a reactor turn: {call!r}", call=pending[i])
            i += 1
        pending.clear()


_installed: weakref.WeakKeyDictionary[object, LeanDispatch] = weakref.WeakKeyDictionary()


def turnEnd(reactor: object) -> list[Callable[[], object]] | None:
    """
    The list of callables C{reactor} calls at the end of its current turn, once it has handled
    every ready socket (before it polls again), if it has lean dispatch installed; else L{None},
    and a C{callLater(0)} is the way to run something at the end of the turn.
    """
    try:
        lean = _installed.get(reactor)
    except TypeError:
        # Not weakly referenceable: no reactor this module installed itself on.
        return None
    return None if lean is None else lean.turnEnd


def installLeanDispatch(reactor: object) -> bool:
    """
    Make C{reactor} dispatch ready sockets without a log context and call L{turnEnd}'s callables
    itself, if it is Twisted's epoll reactor (exactly: a subclass may poll in its own way); any
    other is left as it is.

    @return: whether it was changed (or had been already).
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        # No epoll on this system: whatever reactor runs is not the one this is for.
        return False
    if type(reactor) is not EPollReactor:
        return False
    if reactor in _installed:
        return True
    lean = LeanDispatch(reactor)
    _installed[reactor] = lean
    # Looked up on the instance by mainLoop (self.doIteration), so this reactor alone changes.
    reactor.doIteration = lean.doIteration  # type: ignore[method-assign]
    return True
