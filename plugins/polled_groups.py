"""
The virtual groups of a store that shares them with other processes (the SQLite and Redis
stores): held in memory for the routing, and read back every so often, once someone watches,
when another process may have changed them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from mqttd.interfaces import Group


class PolledGroups:
    """
    L{IGroupSource} for a store, and what its writes and read-backs share.  The store sets
    C{_groups} and calls L{_initGroups} when built, L{_groupsRecorded} after recording a change,
    L{_groupsReadBack} with what it read (unless one of its own writes came in between: compare
    C{_groupWrites} before and after), and L{_stopGroups} when closed.
    """

    _groups: dict[str, Group]

    def _initGroups(
        self, reactor: Any, pollInterval: float, poll: Callable[[], Deferred[None]]
    ) -> None:
        # How many changes this process recorded: a read-back started before the last of them
        # may not have it.
        self._groupWrites = 0
        self._watchers: list[Callable[[], None]] = []
        self._poll = LoopingCall(poll)
        self._poll.clock = reactor
        self._groupPollInterval = pollInterval
        self._groupsStopped = False

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def groupNames(self) -> Iterable[str]:
        return self._groups.keys()

    def watch(self, changed: Callable[[], None]) -> None:
        self._watchers.append(changed)
        # Nobody needs other processes' changes until someone watches.
        if not self._poll.running and not self._groupsStopped:
            self._poll.start(self._groupPollInterval, now=False)

    def _groupsChanged(self) -> None:
        for changed in self._watchers:
            changed()

    def _groupsRecorded(self) -> None:
        self._groupWrites += 1
        self._groupsChanged()

    def _groupsReadBack(self, groups: dict[str, Group]) -> bool:
        """
        Hold the groups read back, and tell the watchers, unless they are the ones held.

        @return: whether they changed.
        """
        # Unchanged groups (those this process wrote itself come back so) keep their objects,
        # and with them what the routing prepared from them.
        for name, group in groups.items():
            if self._groups.get(name) == group:
                groups[name] = self._groups[name]
        if groups.keys() == self._groups.keys() and all(
            groups[name] is self._groups[name] for name in groups
        ):
            return False
        self._groups = groups
        self._groupsChanged()
        return True

    def _stopGroups(self) -> None:
        self._groupsStopped = True
        if self._poll.running:
            self._poll.stop()
