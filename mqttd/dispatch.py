"""
The epoll reactor's dispatch of ready sockets, without a log context per event.

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
"""

from __future__ import annotations

import errno
import types
from typing import Any

from twisted.logger import Logger

log = Logger()


def _doPoll(self: Any, timeout: float | None) -> None:
    """L{EPollReactor.doPoll}, calling each ready socket's handler directly."""
    if timeout is None:
        timeout = -1
    try:
        ready = self._poller.poll(timeout, len(self._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    doReadOrWrite = self._doReadOrWrite
    for fd, event in ready:
        selectable = selectables.get(fd)
        if selectable is None:
            # Removed by a handler earlier in this batch.
            continue
        try:
            doReadOrWrite(selectable, fd, event)
        except Exception:
            log.failure("dispatching an event of {selectable!r}", selectable=selectable)


def installLeanDispatch(reactor: object) -> bool:
    """
    Make C{reactor} dispatch ready sockets without a log context, if it is Twisted's epoll
    reactor (exactly: a subclass may poll in its own way); any other is left as it is.

    @return: whether it was changed.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        # No epoll on this system: whatever reactor runs is not the one this is for.
        return False
    if type(reactor) is not EPollReactor:
        return False
    # Looked up on the instance by mainLoop (self.doIteration), so this reactor alone changes.
    reactor.doIteration = types.MethodType(_doPoll, reactor)  # type: ignore[method-assign]
    return True
