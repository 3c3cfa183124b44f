"""
The durable stores' writer (L{mqttd.durable.Writer}) in batched mode keeps its promise however
slow the disk: when a batch comes due while the one before is still committing, the writer is
behind, L{Writer.flush} holds its caller (the broker stops reading from the publisher) until
that commit ends, and the overdue batch is handed over at once rather than a whole interval
later.  The commit here is a function the test lets finish.
"""

from __future__ import annotations

import threading
import time

import pytest
from twisted.internet.defer import Deferred

from mqttd.durable import Writer
from tests import e2e

pytestmark = pytest.mark.usefixtures("twisted_reactor")


class SlowDisk:
    """Commits that each wait for the test to release them, recording the batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def apply(self, ops: list[int]) -> None:
        self.started.release()
        self.release.acquire()
        self.batches.append(ops)


def test_behindHoldsTheCallerAndHandsOverAtOnce() -> None:
    """
    While a commit lags, flush returns a Deferred (it returned None while the writer kept up),
    which fires when that commit ends; the operations recorded meanwhile form the next batch,
    handed over as soon as the slow commit is done.
    """
    disk = SlowDisk()
    writer: Writer[int] = e2e.in_reactor(
        lambda: Writer(e2e.reactor, disk.apply, sync=False, flushInterval=0.01, name="slow")
    )
    e2e.in_reactor(writer.record, 1)
    assert e2e.in_reactor(lambda: [writer.flush()]) == [None]
    # The first batch is handed over after the interval and blocks in the "disk".
    assert disk.started.acquire(timeout=e2e.TIMEOUT)
    e2e.in_reactor(writer.record, 2)
    # Once the second batch's interval has passed it is overdue: the writer is behind.
    held: list[Deferred[None] | None] = []

    def behind() -> bool:
        # In a list: in_reactor would wait for a Deferred to fire.
        held[:] = e2e.in_reactor(lambda: [writer.flush()])
        return held[0] is not None

    e2e.wait_until(behind, "the writer to fall behind")
    fired: list[bool] = []
    held[0].addCallback(lambda _: fired.append(True))  # type: ignore[union-attr]
    time.sleep(0.05)
    assert fired == [], "released before the commit ended"
    disk.release.release()
    e2e.wait_until(lambda: fired == [True], "the held flush to fire")
    # The overdue batch goes at once: it is committing already, not waiting out an interval.
    assert disk.started.acquire(timeout=e2e.TIMEOUT)
    disk.release.release()
    e2e.wait_until(lambda: disk.batches == [[1], [2]], "both batches")
    e2e.in_reactor(lambda: writer.close(lambda: None))
