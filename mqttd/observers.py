"""
The broker's observers (L{IBrokerObserver}), told of what happens in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from .interfaces import IBrokerObserver


class Observers:
    """
    The observer chain, shared by the broker's parts so that each tells
    the same observers.

    @ivar chain: the observers; empty means nothing is looked up for them.
    """

    log = Logger()

    def __init__(self, chain: Sequence[IBrokerObserver] = ()) -> None:
        self.chain = tuple(chain)

    def notify(self, event: str, *args: object) -> None:
        """
        Call each observer's method C{event} with C{args}; one that raises is
        logged and the others are still told.
        """
        for observer in self.chain:
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure(
                    "observer {observer!r} failed on {event}", observer=observer, event=event
                )
